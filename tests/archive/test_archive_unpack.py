"""UnpackLayer / createTarFile (moby v1.10.3 pkg/archive/diff.go, archive.go, diff_test.go), including hostile
streams: every refusal is an ArchiveError/BreakoutError and nothing outside dest changes."""
from __future__ import annotations

import io
import errno
import os
import stat
import struct

import pytest

from tests.needs import missing

from overlaylab.archive import (
    ArchiveError, BreakoutError, TarOptions, apply_layer_in_process, changes_dirs,
    export_changes, tar_tree, unpack_layer,
)
from overlaylab.archive.tarheader import Header
from overlaylab.goerrors import SyscallError
from overlaylab.idtools import IDMap

from .helpers import (
    copy_dir, create_sample_dir, dirent, hardlink, make_tar, mutate_sample_dir,
    read_dir_contents, reg, symlink, write_file,
)

T0 = 1500000000


def unpack(dest, entries, **kw):
    return unpack_layer(dest, io.BytesIO(make_tar(entries)), kw.get("options"))


# -- ports of the reference tests ------------------------------------------------------------

def test_apply_layer_round_trip(tmp_path):
    """TestApplyLayer: ChangesDirs -> ExportChanges -> ApplyLayer makes the trees equal."""
    src = str(tmp_path / "src")
    os.mkdir(src)
    create_sample_dir(src)
    dst = src + "-copy"
    copy_dir(src, dst)
    mutate_sample_dir(dst)
    changes = changes_dirs(dst, src)
    stream = export_changes(dst, changes)
    try:
        layer = stream.read()
    finally:
        stream.close()
    apply_layer_in_process(src, io.BytesIO(layer))
    assert changes_dirs(src, dst) == []


def make_layer(tmp_path, paths, n):
    """``makeTestLayer``: files 0600 / dirs 0700 tarred with Tar()."""
    root = tmp_path / ("layer%d" % n)
    root.mkdir()
    for p in paths:
        if p.endswith("/"):
            os.makedirs(root / p, 0o700, exist_ok=True)
        else:
            write_file(str(root / p), b"", 0o600)
    stream = tar_tree(str(root))
    try:
        return stream.read()
    finally:
        stream.close()


def test_apply_layer_whiteouts(tmp_path):
    wd = str(tmp_path / "wd")
    os.mkdir(wd)
    base = [".baz", "bar/", "bar/bax", "bar/bay/", "baz", "foo/", "foo/.abc", "foo/.bcd/",
            "foo/.bcd/a", "foo/cde/", "foo/cde/def", "foo/cde/efg", "foo/fgh", "foobar"]
    cases = [
        (base, base),
        ([".bay", ".wh.baz", "foo/", "foo/.bce", "foo/.wh..wh..opq", "foo/cde/", "foo/cde/efg"],
         [".bay", ".baz", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.bce", "foo/cde/",
          "foo/cde/efg", "foobar"]),
        ([".bay", ".wh..baz", ".wh.foobar", "foo/", "foo/.abc", "foo/.wh.cde", "bar/"],
         [".bay", "bar/", "bar/bax", "bar/bay/", "foo/", "foo/.abc", "foo/.bce"]),
        ([".abc", ".wh..wh..opq", "foobar"], [".abc", "foobar"]),
    ]
    for i, (change, expected) in enumerate(cases):
        layer = make_layer(tmp_path, change, i)
        unpack_layer(wd, io.BytesIO(layer))
        assert read_dir_contents(wd) == expected, "step %d" % i


def breakout(jail, entries):
    """testBreakout: a breakout error is fine, any other error is not; then nothing outside
    dest may have changed and nothing in dest may have the sentinel's content."""
    dest, check = jail
    try:
        unpack(dest, entries)
    except BreakoutError:
        pass
    check()
    victim = os.path.join(os.path.dirname(dest), "victim", "hello")
    hello = open(victim, "rb").read()
    for dirpath, _, files in os.walk(dest):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                assert open(p, "rb").read() != hello, "%s reached the victim" % p


@pytest.mark.parametrize("entries", [
    [reg("../victim/dotdot")],
    [reg("/../victim/slash-dotdot")],
])
def test_apply_layer_invalid_filenames(jail, entries):
    breakout(jail, entries)


@pytest.mark.parametrize("entries", [
    [hardlink("dotdot", "../victim/hello")],
    [hardlink("slash-dotdot", "/../victim/hello")],
    [hardlink("loophole-victim", "../victim", 0o755), reg("loophole-victim/file")],
    [hardlink("loophole-victim", "../victim", 0o755), symlink("symlink", "loophole-victim/hello")],
    [hardlink("loophole-victim", "../victim", 0o755), hardlink("hardlink", "loophole-victim/hello")],
    [hardlink("loophole-victim", "../victim", 0o755), reg("loophole-victim")],
])
def test_apply_layer_invalid_hardlink(jail, entries):
    breakout(jail, entries)


@pytest.mark.parametrize("entries", [
    [symlink("dotdot", "../victim/hello")],
    [symlink("slash-dotdot", "/../victim/hello")],
    [symlink("loophole-victim", "../victim"), reg("loophole-victim/file")],
    [symlink("loophole-victim", "../victim"), symlink("symlink", "loophole-victim/hello")],
    [symlink("loophole-victim", "../victim"), hardlink("hardlink", "loophole-victim/hello")],
    [symlink("loophole-victim", "../victim"), reg("loophole-victim")],
])
def test_apply_layer_invalid_symlink(jail, entries):
    breakout(jail, entries)


# -- hostile input: exact errors, nothing outside dest ---------------------------------------

def test_dotdot_name_is_breakout_before_any_parent_is_created(jail):
    dest, check = jail
    with pytest.raises(BreakoutError) as exc:
        unpack(dest, [reg("../newdir/x", b"pwned")])
    assert str(exc.value) == '"../newdir/x" is outside of "%s"' % dest
    check()


def test_name_cleaning_to_dotdot_is_breakout(jail):
    dest, check = jail
    with pytest.raises(BreakoutError):
        unpack(dest, [dirent("a/../..")])
    check()


def test_absolute_name_is_breakout(jail):
    dest, check = jail
    victim = os.path.join(os.path.dirname(dest), "victim", "hello")
    with pytest.raises(BreakoutError) as exc:
        unpack(dest, [reg(victim, b"pwned")])
    assert str(exc.value) == '"%s" is outside of "%s"' % (victim, dest)
    check()


def test_absolute_symlink_then_write_through_stays_inside(jail):
    """An absolute symlink is legal (it resolves inside the chroot); writing below it must
    land inside dest, as it does in the chroot, never in the host directory it names."""
    dest, check = jail
    victim_dir = os.path.join(os.path.dirname(dest), "victim")
    unpack(dest, [symlink("evil", victim_dir), reg("evil/hello", b"pwned"),
                  reg("evil/sub/f", b"pwned too")])
    check()
    inside = dest + victim_dir
    assert open(os.path.join(inside, "hello"), "rb").read() == b"pwned"
    assert open(os.path.join(inside, "sub", "f"), "rb").read() == b"pwned too"
    assert os.readlink(os.path.join(dest, "evil")) == victim_dir


def test_symlink_to_root_then_dotdot_through_it_stays_inside(jail):
    dest, check = jail
    unpack(dest, [symlink("up", "/"), reg("up/x", b"1"), symlink("deep", "/up/up/../../")])
    unpack(dest, [reg("deep/y", b"2")])
    check()
    assert open(os.path.join(dest, "x"), "rb").read() == b"1"
    assert open(os.path.join(dest, "y"), "rb").read() == b"2"


def test_hardlink_through_absolute_symlink_links_inside(jail):
    dest, check = jail
    victim_dir = os.path.join(os.path.dirname(dest), "victim")
    os.makedirs(dest + victim_dir)
    with open(dest + victim_dir + "/hello", "wb") as f:
        f.write(b"inside copy")
    unpack(dest, [symlink("evil", victim_dir), hardlink("hl", "evil/hello", mode=0o600)])
    check()
    assert os.path.samefile(os.path.join(dest, "hl"), dest + victim_dir + "/hello")


def test_hardlink_escape_error_text(jail):
    dest, check = jail
    with pytest.raises(BreakoutError) as exc:
        unpack(dest, [hardlink("x", "../victim/hello")])
    target = os.path.join(os.path.dirname(dest), "victim", "hello")
    assert str(exc.value) == 'invalid hardlink "%s" -> "../victim/hello"' % target
    check()


def test_symlink_escape_error_text(jail):
    dest, check = jail
    with pytest.raises(BreakoutError) as exc:
        unpack(dest, [symlink("x", "../victim")])
    assert str(exc.value) == 'invalid symlink "%s/x" -> "../victim"' % dest
    check()


def test_sibling_prefix_is_not_inside(tmp_path):
    """The reference's string-prefix test would accept /.../dest2 for /.../dest."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "dest2").mkdir()
    with pytest.raises(BreakoutError):
        unpack(str(dest), [symlink("x", "../dest2/f")])
    assert os.listdir(tmp_path / "dest2") == []


@pytest.mark.parametrize("name", [".wh...", ".wh.", ".wh.."])
def test_whiteout_of_dest_or_above_is_breakout(jail, name):
    dest, check = jail
    open(os.path.join(dest, "keep"), "wb").close()
    with pytest.raises(BreakoutError):
        unpack(dest, [reg(name)])
    check()
    assert os.listdir(dest) == ["keep"]


def test_unknown_typeflag(jail):
    dest, check = jail
    hdr, body = reg("contiguous", b"data")
    hdr.typeflag = ord("7")
    with pytest.raises(ArchiveError) as exc:
        unpack(dest, [(hdr, body)])
    assert str(exc.value) == "Unhandled tar header type 55\n"
    check()


def test_truncated_body(jail):
    dest, check = jail
    data = make_tar([reg("f", b"x" * 5000)])
    with pytest.raises(ArchiveError) as exc:
        unpack_layer(dest, io.BytesIO(data[:512 + 1000]))
    assert str(exc.value) == "unexpected EOF"
    check()


def test_truncated_header(jail):
    dest, check = jail
    data = make_tar([reg("f", b"x"), reg("g", b"y")])
    with pytest.raises(ArchiveError) as exc:
        unpack_layer(dest, io.BytesIO(data[:1024 + 100]))
    assert str(exc.value) == "unexpected EOF"
    check()


def test_stream_ending_at_header_boundary_is_a_clean_end(tmp_path):
    data = make_tar([reg("f", b"x")], end=False)
    assert unpack_layer(str(tmp_path), io.BytesIO(data)) == 1
    assert (tmp_path / "f").read_bytes() == b"x"


@pytest.mark.parametrize("garbage", [
    os.urandom(4096),
    b"\x00" * 512 + b"\x01" * 512,
    b"not a tar at all",
])
def test_garbage(jail, garbage):
    dest, check = jail
    with pytest.raises(ArchiveError) as exc:
        unpack_layer(dest, io.BytesIO(garbage))
    assert str(exc.value) in ("archive/tar: invalid tar header", "unexpected EOF")
    check()
    assert os.listdir(dest) == []


def test_bad_octal_field_is_invalid_header(tmp_path):
    data = bytearray(make_tar([reg("f", b"x")]))
    data[100:108] = b"0009999\x00"
    chk = sum(data[:148]) + 256 + sum(data[156:512])
    data[148:156] = b"%06o\x00 " % chk
    with pytest.raises(ArchiveError, match="invalid tar header"):
        unpack_layer(str(tmp_path), io.BytesIO(bytes(data)))


def test_dot_entry_must_be_a_directory(jail):
    dest, check = jail
    with pytest.raises(ArchiveError):
        unpack(dest, [reg("./", b"")])
    check()
    assert os.path.isdir(dest)


def test_deep_nesting_does_not_recurse(tmp_path):
    name = "/".join(["d"] * 600)
    entries = [reg(name + "/f", b"x")]
    unpack(str(tmp_path), entries)
    unpack(str(tmp_path), [reg(".wh.d")])
    assert os.listdir(tmp_path) == []


# -- semantics ------------------------------------------------------------------------------

def test_size_counts_every_entry_and_implicit_parents_are_0600(tmp_path):
    g = Header(name="pax_global_header", typeflag=ord("g"), size=7)
    meta = reg(".wh..wh.aufs", b"12345")
    size = unpack(str(tmp_path), [(g, b"comment"), meta, reg("a/b/c", b"xyz"), reg(".wh.nothing")])
    assert size == 7 + 5 + 3
    assert stat.S_IMODE(os.lstat(tmp_path / "a").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(tmp_path / "a" / "b").st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["a"]  # meta entry and global header not written


def test_modes_owners_and_special_bits(tmp_path):
    entries = [dirent("d", 0o1777, uid=12, gid=34), reg("d/s", b"#!", 0o6755, uid=5, gid=6),
               reg("modebits", b"m", 0o100640)]
    unpack(str(tmp_path), entries)
    st = os.lstat(tmp_path / "d")
    assert stat.S_IMODE(st.st_mode) == 0o1777 and (st.st_uid, st.st_gid) == (12, 34)
    st = os.lstat(tmp_path / "d" / "s")
    assert stat.S_IMODE(st.st_mode) == 0o6755 and (st.st_uid, st.st_gid) == (5, 6)
    assert stat.S_IMODE(os.lstat(tmp_path / "modebits").st_mode) == 0o640


def test_times(tmp_path):
    entries = [dirent("d", mtime_ns=T0 * 10 ** 9), reg("d/f", b"x", mtime_ns=(T0 + 5) * 10 ** 9),
               symlink("d/l", "f", mtime_ns=(T0 + 9) * 10 ** 9), reg("implicit/g", b"y")]
    unpack(str(tmp_path), entries)
    d = os.lstat(tmp_path / "d")
    assert d.st_mtime_ns == T0 * 10 ** 9
    assert d.st_atime_ns == 0  # a USTAR header has no atime: clamped to the epoch
    f = os.lstat(tmp_path / "d" / "f")
    assert f.st_mtime_ns == f.st_atime_ns == (T0 + 5) * 10 ** 9  # atime raised to mtime
    lnk = os.lstat(tmp_path / "d" / "l")
    assert lnk.st_mtime_ns == (T0 + 9) * 10 ** 9
    # a parent that is not an entry keeps "now"
    assert os.lstat(tmp_path / "implicit").st_mtime_ns > (T0 + 10 ** 8) * 10 ** 9


def test_pre_epoch_times_are_clamped(tmp_path):
    unpack(str(tmp_path), [reg("f", b"x", mtime_ns=-5 * 10 ** 9)])
    assert os.lstat(tmp_path / "f").st_mtime_ns == 0


def test_non_dir_replaces_dir_and_dir_merges_into_dir(tmp_path):
    (tmp_path / "x" / "deep").mkdir(parents=True)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "keep").write_bytes(b"k")
    unpack(str(tmp_path), [reg("x", b"file now"), dirent("y", 0o700)])
    assert (tmp_path / "x").read_bytes() == b"file now"
    assert (tmp_path / "y" / "keep").read_bytes() == b"k"
    assert stat.S_IMODE(os.lstat(tmp_path / "y").st_mode) == 0o700


def test_nested_meta_prefix_is_an_ordinary_whiteout(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".wh.x").write_bytes(b"")
    (tmp_path / "a" / "keep").write_bytes(b"")
    unpack(str(tmp_path), [reg("a/.wh..wh.x")])
    assert os.listdir(tmp_path / "a") == ["keep"]


def test_opaque_marker_requires_its_directory(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError) as exc:
        unpack(str(tmp_path), [reg("file/sub/.wh..wh..opq")])
    assert str(exc.value) == "lstat %s/file/sub: not a directory" % tmp_path


def test_aufs_plnk_hardlinks_become_copies(tmp_path):
    entries = [reg(".wh..wh.plnk/123.456", b"shared data", 0o640, uid=7, gid=8),
               hardlink("bin/a", ".wh..wh.plnk/123.456"),
               hardlink("bin/b", ".wh..wh.plnk/123.456")]
    size = unpack(str(tmp_path), entries)
    assert size == len(b"shared data")
    a, b = os.lstat(tmp_path / "bin" / "a"), os.lstat(tmp_path / "bin" / "b")
    assert (tmp_path / "bin" / "a").read_bytes() == b"shared data"
    assert a.st_ino != b.st_ino and a.st_nlink == 1
    assert stat.S_IMODE(a.st_mode) == 0o640 and (a.st_uid, a.st_gid) == (7, 8)
    # the implicit-parent step runs before the meta check: an empty 0600 plnk dir remains
    assert os.listdir(tmp_path / ".wh..wh.plnk") == []
    assert stat.S_IMODE(os.lstat(tmp_path / ".wh..wh.plnk").st_mode) == 0o600


def test_invalid_aufs_hardlink(tmp_path):
    with pytest.raises(ArchiveError) as exc:
        unpack(str(tmp_path), [hardlink("x", ".wh..wh.plnk/nope")])
    assert str(exc.value) == "Invalid aufs hardlink"


def test_hardlink_gets_mode_and_times_of_header(tmp_path):
    unpack(str(tmp_path), [reg("t", b"x", 0o600), hardlink("l", "t", 0o644, mtime_ns=7 * 10 ** 9)])
    st = os.lstat(tmp_path / "l")
    assert st.st_nlink == 2 and stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_mtime_ns == 7 * 10 ** 9


def test_devices_and_fifos(tmp_path):
    chr_dev = Header(name="null", mode=0o666, typeflag=ord("3"), devmajor=1, devminor=3)
    fifo = Header(name="p", mode=0o600, typeflag=ord("6"))
    try:
        unpack(str(tmp_path), [(chr_dev, b""), (fifo, b"")])
    except SyscallError as err:
        missing("mknod: %s" % err)
    st = os.lstat(tmp_path / "null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_ISFIFO(os.lstat(tmp_path / "p").st_mode)


def test_xattrs_applied_and_failures_fatal(tmp_path):
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    hdr, body = reg("ping", b"elf")
    hdr.xattrs = {"security.capability": cap, "user.k": b"v"}
    try:
        unpack(str(tmp_path), [(hdr, body)])
    except SyscallError as err:
        missing("xattrs not supported here: %s" % err)
    assert os.getxattr(tmp_path / "ping", "security.capability") == cap
    bad, body = reg("bad", b"")
    bad.xattrs = {"bogus.namespace": b"x"}
    with pytest.raises(SyscallError) as exc:
        unpack(str(tmp_path), [(bad, body)])
    # Go prints the bare errno; the port names the entry and the xattr (and keeps the errno)
    assert str(exc.value) == ('lsetxattr %s/bad xattr "bogus.namespace" (1-byte value): '
                              "operation not supported" % tmp_path)
    assert exc.value.errno == errno.EOPNOTSUPP and exc.value.strerror == "operation not supported"


@pytest.mark.parametrize("name,value,shown,size,text", [
    ("user." + "n" * 300, b"v", '"user.%s"... (305 characters)' % ("n" * 59), 1, "numerical result out of range"),
    ("user.big", b"v" * 70000, '"user.big"', 70000, "argument list too long"),
    ("user.\x1b]0;owned\x07", b"v", '"user.\\x1b]0;owned\\a"', 1, None),
])
def test_odd_xattrs_name_the_entry_and_the_xattr(tmp_path, name, value, shown, size, text):
    """Odd names or values (too long, too big, terminal escapes) say which entry and which
    xattr failed, escaped, instead of a bare ``numerical result out of range``."""
    hdr, body = reg("dir/odd", b"")
    hdr.xattrs = {name: value}
    try:
        unpack(str(tmp_path), [(hdr, body)])
    except SyscallError as err:
        got = str(err)
        assert got.startswith("lsetxattr %s/dir/odd xattr %s (%d-byte value): " % (tmp_path, shown, size)), got
        if text is not None:
            assert got.endswith(": " + text) and err.errno is not None
        assert "\x1b" not in got
    else:
        assert text is None  # only the escape-laden (but valid) name may be set
        assert os.getxattr(tmp_path / "dir" / "odd", name) == value


def test_id_mapping(tmp_path):
    maps = [IDMap(0, 100000, 65536)]
    opts = TarOptions(maps, maps)
    unpack(str(tmp_path), [reg("f", b"x", uid=5, gid=6), reg("r", b"x", uid=0, gid=0)],
           options=opts)
    assert (os.lstat(tmp_path / "f").st_uid, os.lstat(tmp_path / "f").st_gid) == (100005, 100006)
    assert os.lstat(tmp_path / "r").st_uid == 100000
    with pytest.raises(ArchiveError) as exc:
        unpack(str(tmp_path), [reg("g", b"x", uid=70000)], options=opts)
    assert str(exc.value) == "Container ID 70000 cannot be mapped to a host ID"


def test_tar_options_json():
    opts = TarOptions([IDMap(0, 1000, 10)], None)
    text = opts.to_json()
    assert '"UIDMaps":[{"container_id":0,"host_id":1000,"size":10}]' in text
    assert '"GIDMaps":null' in text and '"ExcludePatterns":[]' in text
    assert TarOptions.from_json(text) == opts
    assert TarOptions.from_json("null") == TarOptions()


def test_pax_and_gnu_long_names_and_pax_times(tmp_path):
    long = "dir/" + "n" * 200
    hdr, body = reg(long, b"data")
    hdr.mtime_ns = T0 * 10 ** 9 + 123456789  # not representable in USTAR: dropped by writer
    unpack(str(tmp_path), [(hdr, body)])
    assert (tmp_path / long).read_bytes() == b"data"
    # GNU long name ('L') produced by hand, followed by PAX mtime with nanoseconds
    name = b"g" * 150
    def block(n, size, flag):
        b = bytearray(512)
        b[0:len(n)] = n
        b[100:108] = b"0000644\x00"
        b[124:136] = b"%011o\x00" % size
        b[136:148] = b"%011o\x00" % T0
        b[156] = flag
        b[257:265] = b"ustar  \x00"
        b[148:156] = b"%06o\x00 " % (sum(b[:148]) + 256 + sum(b[156:]))
        return bytes(b)
    rec = b"mtime=1500000000.5\n"
    rec = b"%d %s" % (len(rec) + 3, rec)
    lname = name + b"\x00"
    data = (block(b"././@LongLink", len(lname), ord("L")) + lname + bytes(-len(lname) % 512)
            + block(b"pax", len(rec), ord("x")) + rec + bytes(-len(rec) % 512)
            + block(b"short", 2, ord("0")) + b"hi" + bytes(510) + bytes(1024))
    os.makedirs(tmp_path / "g")
    assert unpack_layer(str(tmp_path / "g"), io.BytesIO(data)) == 2
    st = os.lstat(tmp_path / "g" / name.decode())
    assert (tmp_path / "g" / name.decode()).read_bytes() == b"hi"
    assert st.st_mtime_ns == T0 * 10 ** 9 + 500000000


def test_mutated_streams_fail_cleanly_and_stay_inside(tmp_path):
    """Random byte flips of a valid layer: the only failures allowed are ArchiveError or a
    Go-style OSError, and nothing outside dest ever changes."""
    import random

    from overlaylab.goerrors import LinkError, PathError

    rng = random.Random(1055)
    good = make_tar([dirent("d"), reg("d/f", b"x" * 700), symlink("d/l", "f"),
                     hardlink("d/h", "d/f"), reg(".wh.gone"), reg("d/.wh..wh..opq"),
                     reg("e/g", b"y" * 10)])
    sentinel = tmp_path / "victim"
    sentinel.mkdir()
    (sentinel / "hello").write_bytes(b"hello")
    from .helpers import snapshot
    before = snapshot(str(sentinel))
    offsets, off = [], 0
    while good[off:off + 512] != bytes(512):
        offsets.append(off)
        size = int(good[off + 124:off + 136].rstrip(b"\x00"), 8)
        off += 512 + size + (-size % 512)
    for i in range(150):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.7:  # inside a header, checksum fixed so it gets parsed
                base = rng.choice(offsets)
                data[base + rng.choice([rng.randrange(148), 156 + rng.randrange(356)])] = (
                    rng.choice(b"./.. 0127x\x00\xff" + bytes([rng.randrange(256)])))
                data[base + 148:base + 156] = b"%06o\x00 " % (
                    sum(data[base:base + 148]) + 256 + sum(data[base + 156:base + 512]))
            else:
                data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        dest = tmp_path / ("dest%03d" % i)
        dest.mkdir()
        try:
            unpack_layer(str(dest), io.BytesIO(bytes(data)))
        except (ArchiveError, PathError, LinkError, SyscallError):
            pass
    assert snapshot(str(sentinel)) == before
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["victim"] + ["dest%03d" % i for i in range(150)])
