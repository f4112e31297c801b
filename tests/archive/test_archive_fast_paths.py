"""The fast paths of the tar-layer code must behave exactly like the plain reference paths
they short-cut: gopath.clean's shortcut, the cached header decoding and encoding, the
create-first unpacking (with its lstat+remove fallback), the splice/memoryview body copy,
the lazily loaded package and the start-up of the chrooted helper."""
from __future__ import annotations

import io
import itertools
import os
import random
import subprocess
import sys

import pytest

from overlaylab.archive import gopath, tarheader, tarreader
from overlaylab.archive.errors import ArchiveError
from overlaylab.archive.tarheader import Header, TarWriter
from overlaylab.archive.tarreader import TarReader
from overlaylab.archive.unpack import TarOptions, apply_layer_in_process
from overlaylab.idtools import IDMap

from .helpers import dirent, hardlink, make_tar, reg, snapshot, symlink

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _clean_reference(path: str) -> str:
    """filepath.Clean, the plain way (no shortcut)."""
    if path == "":
        return "."
    rooted = path[0] == "/"
    out = []
    floor = 0
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if len(out) > floor:
                out.pop()
            elif not rooted:
                out.append("..")
                floor += 1
            continue
        out.append(comp)
    joined = "/".join(out)
    return "/" + joined if rooted else (joined or ".")


def test_clean_shortcut_agrees_with_the_plain_algorithm():
    for length in range(9):
        for chars in itertools.product("a./", repeat=length):
            path = "".join(chars)
            assert gopath.clean(path) == _clean_reference(path), path
    for path in ["./d000/s000/f00001", "./d000/", "/a/b", "a/.wh.x", "./.wh..wh..opq", ".//x",
                 "./", "x/./", "a/b/", "/", "//", "./../x"]:
        assert gopath.clean(path) == _clean_reference(path), path
        assert gopath.dirname(path) == _clean_reference(path[: path.rfind("/") + 1]), path


# -- header decoding -----------------------------------------------------------------------


def _one_header(hdr: Header, body: bytes = b"") -> bytes:
    return make_tar([(hdr, body)])


def test_cached_numeric_fields_do_not_hide_bad_headers():
    good = _one_header(reg("a", b"x", mode=0o100644, uid=1000, gid=1000)[0], b"x")
    for _ in range(3):  # the same fields over and over: served from the caches
        hs = list(TarReader(io.BytesIO(good)))
        assert [(h.name, h.mode, h.uid, h.gid, h.size) for h in hs] == [("a", 0o100644, 1000, 1000, 1)]
    bad = bytearray(good)
    bad[108:116] = b"00017x0\x00"  # uid not octal; checksum fixed so that the field is parsed
    bad[148:156] = b"        "
    bad[148:155] = b"%06o\x00" % sum(bad[:512])
    with pytest.raises(ArchiveError, match="invalid tar header"):
        list(TarReader(io.BytesIO(bytes(bad))))
    bad = bytearray(good)
    bad[0] = ord("b")  # checksum no longer matches
    with pytest.raises(ArchiveError, match="invalid tar header"):
        list(TarReader(io.BytesIO(bytes(bad))))


def test_signed_checksum_is_accepted():
    block = bytearray(_one_header(reg("abcde", b"")[0])[:512])
    block[0:5] = "\u00e9t\u00e9".encode()  # bytes >= 0x80 in the name field
    block[148:156] = b"        "
    rest = bytes(block[:148] + block[156:])
    signed = sum(rest) + 256 - 256 * sum(1 for c in rest if c >= 0x80)
    assert signed != sum(block)
    block[148:155] = b"%06o\x00" % signed
    hs = list(TarReader(io.BytesIO(bytes(block) + bytes(1024))))
    assert [h.name for h in hs] == ["\u00e9t\u00e9"]


def test_reader_agrees_with_itself_over_chunkings():
    rng = random.Random(7)
    entries = [dirent("d/")]
    for i in range(200):
        size = rng.choice([0, 1, 511, 512, 513, 4096, 70000])
        entries.append(reg("d/f%03d" % i, bytes([i % 251]) * size, uid=i % 3, mtime_ns=(1500000000 + i % 5) * 10 ** 9))
    data = make_tar(entries)

    class Chunky(io.RawIOBase):
        def __init__(self, n):
            self.b, self.n = io.BytesIO(data), n

        def readable(self):
            return True

        def readinto(self, buf):
            chunk = self.b.read(min(len(buf), self.n))
            buf[:len(chunk)] = chunk
            return len(chunk)

    want = None
    for n in (1, 100, 512, 65536, 1 << 20):
        r = TarReader(Chunky(n))
        got = []
        for h in r:
            got.append((h.name, h.size, h.uid, h.mtime_ns, r.read()))
        want = want or got
        assert got == want
    assert [g[4] for g in want[1:]] == [e[1] for e in entries[1:]]


@pytest.mark.parametrize("use_pipe", [False, True])
def test_copy_to_fd_writes_the_body_and_reports_short_streams(tmp_path, use_pipe):
    body = os.urandom(300000)
    data = make_tar([reg("big", body), reg("small", b"tail")])
    out = str(tmp_path / "out")

    def run(payload):
        if use_pipe:  # an unbuffered pipe: the splice path, where the platform has it
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                try:
                    os.write(w, payload) if len(payload) < 60000 else [
                        os.write(w, payload[i:i + 4096]) for i in range(0, len(payload), 4096)]
                finally:
                    os._exit(0)
            os.close(w)
            stream = io.FileIO(r, "rb")
        else:
            stream, pid = io.BytesIO(payload), 0
        try:
            reader = TarReader(stream)
            hdr = reader.next()
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                reader.copy_to_fd(fd)
            finally:
                os.close(fd)
            return hdr, reader
        finally:
            if pid:
                os.waitpid(pid, 0)
                stream.close()

    hdr, reader = run(data)
    assert hdr.name == "big" and open(out, "rb").read() == body
    if not use_pipe:
        assert reader.next().name == "small" and reader.read() == b"tail"
    cut = data[:512 + 200000]
    with pytest.raises(ArchiveError, match="unexpected EOF"):
        run(cut)
    assert open(out, "rb").read() == body[:200000]


# -- header encoding -----------------------------------------------------------------------


def test_fast_encoding_equals_the_general_encoding():
    rng = random.Random(3)
    for _ in range(3000):
        hdr = Header(
            name=rng.choice(["a", "d/f%05d" % rng.randrange(10 ** 5), "x" * rng.randrange(1, 101)]),
            mode=rng.choice([0o100644, 0o40755, 0o120777, rng.randrange(8 ** 7)]),
            uid=rng.choice([0, 1000, rng.randrange(8 ** 7)]), gid=rng.choice([0, 50, rng.randrange(8 ** 7)]),
            size=rng.choice([0, 1, 512, rng.randrange(8 ** 11)]),
            mtime_ns=rng.choice([0, rng.randrange(2 ** 33) * 10 ** 9 + rng.randrange(10 ** 9)]),
            typeflag=rng.choice([0, 48, 49, 50, 51, 52, 53, 54]),
            linkname=rng.choice(["", "target", "l" * 100]),
            devmajor=rng.choice([0, 0, 8, rng.randrange(8 ** 7)]), devminor=rng.choice([0, 1, rng.randrange(8 ** 7)]))
        enc = tarheader._Encoder()
        fast = enc.encode(hdr)
        general = tarheader._Encoder()._encode_general(
            hdr, hdr.name.encode(), hdr.linkname.encode(), True)
        assert fast == general, hdr
        assert len(fast) == 512 and not enc.used_binary


def test_fast_encoding_falls_back_for_big_numbers():
    enc = tarheader._Encoder()
    block = enc.encode(Header(name="big", mode=0o100644, size=8 ** 11, typeflag=48))
    assert block[124] & 0x80 and enc.used_binary  # base-256, and GNU magic from now on
    block2 = enc.encode(Header(name="next", mode=0o100644, size=1, typeflag=48))
    assert block2[257:265] == b"ustar  \x00"
    assert TarReader(io.BytesIO(block)).next().size == 8 ** 11


# -- unpacking -------------------------------------------------------------------------------


def _layer():
    return make_tar([
        dirent("d/", mode=0o750, uid=7, gid=8),
        reg("d/f", b"hello", mode=0o4755, uid=7, gid=8, mtime_ns=1400000000 * 10 ** 9),
        symlink("d/l", "f", uid=7, gid=8),
        hardlink("d/h", "d/f", mode=0o4755, uid=7, gid=8, mtime_ns=1400000000 * 10 ** 9),
        reg("d/plain", b"p", mode=0o2750, uid=9, gid=10, mtime_ns=1300000000 * 10 ** 9),
        dirent("d/e/"),
        reg("d/e/g", os.urandom(100000), mode=0o600),
        reg("top", b""),
    ])


def test_create_first_equals_the_reference_sequence_over_existing_paths(tmp_path):
    """Fresh destination: every entry takes the create-first path. Destination where every
    path already exists with the wrong type or content: every entry takes the lstat + remove
    + create sequence. The results must be identical."""
    data = _layer()
    fresh, busy = tmp_path / "fresh", tmp_path / "busy"
    fresh.mkdir()
    busy.mkdir()
    (busy / "d").mkdir()
    (busy / "d" / "f").mkdir()  # a dir where a file goes
    (busy / "d" / "f" / "x").write_bytes(b"x")
    (busy / "d" / "l").write_bytes(b"not a link")
    os.symlink("/nowhere", str(busy / "d" / "h"))
    (busy / "d" / "e").write_bytes(b"a file where a dir goes")
    (busy / "top").write_bytes(b"longer old content")
    assert apply_layer_in_process(str(fresh), io.BytesIO(data)) == apply_layer_in_process(
        str(busy), io.BytesIO(data))

    st = os.lstat(str(fresh / "d" / "f"))  # before anything reads the files (atime)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_nlink) == (0o4755, 7, 8, 2)
    assert st.st_mtime_ns == 1400000000 * 10 ** 9 and st.st_atime_ns == st.st_mtime_ns
    st = os.lstat(str(fresh / "d" / "plain"))  # set-gid survives the chown: chmod comes after
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_nlink) == (0o2750, 9, 10, 1)
    assert st.st_mtime_ns == 1300000000 * 10 ** 9 and st.st_atime_ns == st.st_mtime_ns

    def rel(snap, root):
        return {os.path.relpath(k, root): v for k, v in snap.items() if k != root}

    assert rel(snapshot(str(fresh)), str(fresh)) == rel(snapshot(str(busy)), str(busy))


def test_failed_id_mapping_removes_what_is_in_the_way_first(tmp_path):
    """Reference order: the existing path is removed, then the id mapping fails."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").write_bytes(b"old")
    opts = TarOptions(uid_maps=[IDMap(0, 100000, 10)], gid_maps=[IDMap(0, 100000, 10)])
    with pytest.raises(ArchiveError, match="Container ID 50 cannot be mapped"):
        apply_layer_in_process(str(dest), io.BytesIO(make_tar([reg("f", b"new", uid=50)])), opts)
    assert not os.path.lexists(str(dest / "f"))
    with pytest.raises(ArchiveError, match="Container ID 50 cannot be mapped"):
        apply_layer_in_process(str(dest), io.BytesIO(make_tar([reg("g", b"new", uid=50)])), opts)
    assert not os.path.lexists(str(dest / "g"))


def test_directory_cache_follows_replacements(jail):
    """Directories seen (and remembered) early, then replaced by absolute symlinks: later
    entries below them must go where the chroot would put them, inside dest."""
    dest, check = jail
    victim_dir = os.path.join(os.path.dirname(dest), "victim")
    data = make_tar([
        dirent("a/"), reg("a/one", b"1"),
        symlink("a", victim_dir),  # replaces the directory
        reg("a/two", b"2"), dirent("a/sub/"), reg("a/sub/three", b"3"),
        reg("b/c/d", b"4"), symlink("b/c", "/"), reg("b/c" + victim_dir + "/hello", b"inside"),
    ])
    apply_layer_in_process(dest, io.BytesIO(data))
    check()
    inside = dest + victim_dir
    assert open(os.path.join(inside, "two"), "rb").read() == b"2"
    assert open(os.path.join(inside, "sub", "three"), "rb").read() == b"3"
    assert open(os.path.join(inside, "hello"), "rb").read() == b"inside"
    assert os.readlink(os.path.join(dest, "a")) == victim_dir
    assert not os.path.exists(os.path.join(inside, "one"))


# -- the package and the chrooted helper's start-up -------------------------------------------


def test_package_names_load_lazily():
    import overlaylab.archive as archive

    ns = {}
    exec("from overlaylab.archive import *", ns)  # noqa: S102 - the star-import surface
    assert set(archive.__all__) <= set(ns)
    assert set(archive.__all__) <= set(dir(archive))
    with pytest.raises(AttributeError):
        archive.no_such_name  # noqa: B018


def test_apply_helper_imports_only_what_it_needs():
    code = ("import sys; sys.path[0] = %r; import overlaylab.archive.applylayer; "
            "print(' '.join(sorted(sys.modules)))" % ROOT)
    mods = set(subprocess.run([sys.executable, "-S", "-c", code], check=True,
                              capture_output=True, text=True).stdout.split())
    assert "overlaylab.archive.unpack" in mods
    for heavy in ("logging", "threading", "subprocess", "overlaylab.archive.export",
                  "overlaylab.archive.changes", "site"):
        assert heavy not in mods, heavy


def test_chrooted_apply_runs_this_package_whatever_the_working_directory(tmp_path, monkeypatch):
    from overlaylab.archive.chroot import apply_uncompressed_layer

    decoy = tmp_path / "cwd" / "overlaylab"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('decoy package imported')\n")
    monkeypatch.chdir(str(tmp_path / "cwd"))
    dest = tmp_path / "dest"
    dest.mkdir()
    assert apply_uncompressed_layer(str(dest), io.BytesIO(_layer())) == 5 + 1 + 100000
    assert open(str(dest / "d" / "f"), "rb").read() == b"hello"
