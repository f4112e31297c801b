"""Tar encoding and export (docs/reference-behaviour.md#the-tar-layer): Go 1.5 USTAR headers with file-type bits in the
mode, whiteouts, long names, PAX records, devices, hard links, streaming."""
from __future__ import annotations

import io
import os
import socket
import stat
import struct
import subprocess
import tarfile
import time

from tests.needs import missing, need_tool

from overlaylab.archive import (
    Change, ChangeKind, changes_dirs, export_changes, sort_key, tar_tree,
)
from overlaylab.archive.tarheader import Header, TarWriter
from overlaylab.archive.tarreader import TarReader
from overlaylab.idtools import IDMap

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


def read_all(stream) -> bytes:
    try:
        return stream.read()
    finally:
        stream.close()


def blocks(data: bytes):
    """Raw header blocks of a plain (non-PAX) stream: (block, body) in order."""
    out, off = [], 0
    while off + 512 <= len(data):
        blk = data[off:off + 512]
        if blk == bytes(512):
            break
        size = int(blk[124:136].rstrip(b"\x00 ") or b"0", 8)
        out.append((blk, data[off + 512:off + 512 + size]))
        off += 512 + size + (-size % 512)
    return out


def field(blk: bytes, start: int, end: int) -> bytes:
    return blk[start:end].split(b"\x00", 1)[0]


def checksum_ok(blk: bytes) -> bool:
    s = sum(blk[:148]) + 256 + sum(blk[156:])
    return int(field(blk, 148, 155), 8) == s and blk[155:156] == b" "


def members(data: bytes):
    return list(tarfile.open(fileobj=io.BytesIO(data), mode="r:"))


def test_tar_tree_modes_carry_file_type_bits(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    os.chmod(root / "d", 0o750)
    (root / "d" / "f").write_bytes(b"hello")
    os.chmod(root / "d" / "f", 0o4755)
    os.symlink("d/f", root / "l")
    os.mkfifo(root / "p", 0o640)
    os.chmod(root / "p", 0o1640)
    data = read_all(tar_tree(str(root)))
    raw = {field(b, 0, 100): b for b, _ in blocks(data)}
    assert list(raw) == [b"d/", b"d/f", b"l", b"p"]
    assert field(raw[b"d/"], 100, 108) == b"0040750" and raw[b"d/"][156:157] == b"5"
    assert field(raw[b"d/f"], 100, 108) == b"0104755" and raw[b"d/f"][156:157] == b"0"
    assert field(raw[b"l"], 100, 108) == b"0120777" and raw[b"l"][156:157] == b"2"
    assert field(raw[b"l"], 157, 257) == b"d/f"
    assert field(raw[b"p"], 100, 108) == b"0011640" and raw[b"p"][156:157] == b"6"
    for b in raw.values():
        assert b[257:265] == b"ustar\x0000"
        assert field(b, 265, 297) == b"" and field(b, 297, 329) == b""  # no uname/gname
        assert checksum_ok(b)
    # Python's tarfile reads it and sees the raw mode field
    ms = {m.name: m for m in members(data)}
    assert ms["d/f"].mode == 0o104755 and ms["d/f"].size == 5
    assert ms["d"].isdir() and ms["l"].issym() and ms["p"].isfifo()
    assert data.endswith(bytes(1024)) and len(data) % 512 == 0
    # no record padding: headers + one body block + the two zero blocks
    assert len(data) == 4 * 512 + 512 + 1024


def test_socket_has_nul_typeflag_and_socket_mode(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(root / "sock"))
        data = read_all(tar_tree(str(root)))
    finally:
        s.close()
    (blk, _), = blocks(data)
    assert field(blk, 0, 100) == b"sock"
    assert blk[156] == 0
    assert int(field(blk, 100, 108), 8) & 0o170000 == 0o140000


def test_device_numbers_old_encoding(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    try:
        os.mknod(root / "c", 0o620 | stat.S_IFCHR, os.makedev(10, 0x12345))
        os.mknod(root / "b", 0o600 | stat.S_IFBLK, os.makedev(7, 3))
    except OSError as err:
        missing("mknod: %s" % err)
    os.chmod(root / "c", 0o620)
    data = read_all(tar_tree(str(root)))
    raw = {field(b, 0, 100): b for b, _ in blocks(data)}
    c, b = raw[b"c"], raw[b"b"]
    assert c[156:157] == b"3" and field(c, 100, 108) == b"0020620"
    assert int(field(c, 329, 337), 8) == 10 and int(field(c, 337, 345), 8) == 0x12345
    assert b[156:157] == b"4" and int(field(b, 329, 337), 8) == 7
    assert int(field(b, 337, 345), 8) == 3
    ms = {m.name: m for m in members(data)}
    assert (ms["c"].devmajor, ms["c"].devminor) == (10, 0x12345)


def test_whiteout_entry_fields(tmp_path):
    before = int(time.time())
    data = read_all(export_changes(str(tmp_path), [Change("/etc/foo", D), Change("/top", D)]))
    after = int(time.time())
    hdrs = blocks(data)
    assert [field(b, 0, 100) for b, _ in hdrs] == [b"etc/.wh.foo", b".wh.top"]
    for blk, body in hdrs:
        assert body == b""
        assert blk[156] == 0  # no type flag
        assert field(blk, 100, 108) == b"0000000"
        assert field(blk, 108, 116) == b"0000000" and field(blk, 116, 124) == b"0000000"
        assert field(blk, 124, 136) == b"00000000000"
        assert before <= int(field(blk, 136, 148), 8) <= after
        assert checksum_ok(blk)
    m = members(data)[0]
    assert m.isreg() and m.mode == 0 and m.size == 0


def test_long_name_uses_ustar_prefix(tmp_path):
    name = "p" * 120 + "/" + "n" * 90
    hdr = Header(name=name, mode=0o100644, typeflag=ord("0"))
    out = io.BytesIO()
    w = TarWriter(out.write)
    w.write_header(hdr)
    w.close()
    data = out.getvalue()
    (blk, _), = blocks(data)  # a single header: no PAX
    assert field(blk, 0, 100) == b"n" * 90
    assert field(blk, 345, 500) == b"p" * 120
    assert members(data)[0].name == name


def test_unsplittable_long_name_and_long_link_use_pax(tmp_path):
    name = "x" * 130
    link = "t" * 150
    out = io.BytesIO()
    w = TarWriter(out.write)
    w.write_header(Header(name=name, mode=0o120777, typeflag=ord("2"), linkname=link,
                          mtime_ns=1500000000 * 10 ** 9))
    w.close()
    data = out.getvalue()
    pax, entry = data[:512], data[1024:1536]
    assert pax[156:157] == b"x"
    assert field(pax, 0, 100) == (b"PaxHeaders.%d/" % os.getpid() + name.encode())[:100]
    body = data[512:1024].rstrip(b"\x00")
    assert b"linkpath=" + link.encode() + b"\n" in body and b"path=" + name.encode() + b"\n" in body
    assert field(entry, 0, 100) == b"" and field(entry, 157, 257) == b""  # moved to PAX
    m = members(data)[0]
    assert (m.name, m.linkname) == (name, link)
    # every record's length prefix counts the whole record
    for rec in body.split(b"\n")[:-1]:
        n = int(rec.split(b" ", 1)[0])
        assert n == len(rec) + 1


def test_non_ascii_name_uses_pax(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "h\u00e9llo").write_bytes(b"x")
    (root / b"raw\xff".decode("utf-8", "surrogateescape")).write_bytes(b"y")
    data = read_all(tar_tree(str(root)))
    names = sorted(m.name for m in members(data))
    assert "h\u00e9llo" in names
    got = [h.name for h in TarReader(io.BytesIO(data))]
    assert os.fsencode(got[0]) == b"h\xc3\xa9llo" and os.fsencode(got[1]) == b"raw\xff"


def test_capability_xattr_is_a_pax_record(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ping").write_bytes(b"\x7fELF")
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    try:
        os.setxattr(root / "ping", "security.capability", cap)
        os.setxattr(root / "ping", "user.other", b"not exported")
    except OSError as err:
        missing("xattrs: %s" % err)
    data = read_all(tar_tree(str(root)))
    pax = data[:512]
    assert pax[156:157] == b"x"
    assert field(pax, 0, 100) == b"PaxHeaders.%d/ping" % os.getpid()
    size = int(field(pax, 124, 136), 8)
    body = data[512:512 + size]
    record = b"SCHILY.xattr.security.capability=" + cap + b"\n"
    assert body == b"%d %s" % (len(record) + 3, record)
    assert b"user.other" not in data
    m = members(data)[0]
    assert m.name == "ping" and m.pax_headers["SCHILY.xattr.security.capability"]
    hdr = next(iter(TarReader(io.BytesIO(data))))
    assert hdr.xattrs == {"security.capability": cap}


def test_big_uid_uses_base256_and_gnu_magic_for_the_rest_of_the_stream():
    out = io.BytesIO()
    w = TarWriter(out.write)
    w.write_header(Header(name="a", mode=0o100644, typeflag=ord("0")))
    w.write_header(Header(name="b", mode=0o100644, typeflag=ord("0"), uid=3000000))
    w.write_header(Header(name="c", mode=0o100644, typeflag=ord("0")))
    w.close()
    (a, _), (b, _), (c, _) = blocks(out.getvalue())
    assert a[257:265] == b"ustar\x0000"
    assert b[108] & 0x80 and int.from_bytes(b[109:116], "big") == 3000000
    assert b[257:265] == c[257:265] == b"ustar  \x00"
    assert [m.uid for m in members(out.getvalue())] == [0, 3000000, 0]


def test_export_changes_sorted_hardlinks_and_dirs_without_contents(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "inner").write_bytes(b"not exported")
    (root / "z").write_bytes(b"zz")
    os.link(root / "z", root / "a")
    changes = [Change("/z", A), Change("/d", C), Change("/a", A), Change("/gone", D)]
    data = read_all(export_changes(str(root), changes))
    hs = list(TarReader(io.BytesIO(data)))
    assert [h.name for h in hs] == ["a", "d/", ".wh.gone", "z"]
    assert hs[0].typeflag == ord("0") and hs[0].size == 2
    assert hs[3].typeflag == ord("1") and hs[3].linkname == "a" and hs[3].size == 0
    assert hs[3].mode == 0o100000 | stat.S_IMODE(os.lstat(root / "a").st_mode)


def test_hard_link_order(tmp_path):
    """TestHardLinkOrder: the export is the same whatever the order of the change list."""
    names = ["file1.txt", "file2.txt", "file3.txt"]
    src = tmp_path / "src"
    src.mkdir()
    for n in names:
        (src / n).write_bytes(b"Hey y'all")
    dest = str(tmp_path / "dest")
    subprocess.run(["cp", "-a", str(src), dest], check=True)
    for n in names:
        for i in range(5):
            os.link(os.path.join(dest, n), os.path.join(dest, "%s.link%d" % (n, i)))
    changes = sorted(changes_dirs(dest, str(src)), key=sort_key)
    hdrs = list(TarReader(io.BytesIO(read_all(export_changes(dest, changes)))))
    rev = list(TarReader(io.BytesIO(read_all(export_changes(dest, list(reversed(changes)))))))
    key = lambda h: h.name  # noqa: E731
    a, b = sorted(hdrs, key=key), sorted(rev, key=key)
    assert [(h.name, h.size, h.linkname) for h in a] == [(h.name, h.size, h.linkname) for h in b]
    assert len(a) == 15
    links = [h for h in a if h.typeflag == ord("1")]
    assert len(links) == 12 and all(h.linkname.endswith(".link0") for h in links)


def test_export_maps_ids_to_container_but_not_whiteout_names(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    (root / ".wh.k").write_bytes(b"")
    os.chown(root / "f", 100005, 100007)
    os.chown(root / ".wh.k", 42, 43)
    maps = [IDMap(0, 100000, 65536)]
    data = read_all(export_changes(str(root), [Change("/f", A), Change("/.wh.k", A)], maps, maps))
    hs = {h.name: h for h in TarReader(io.BytesIO(data))}
    assert (hs["f"].uid, hs["f"].gid) == (5, 7)
    assert (hs[".wh.k"].uid, hs[".wh.k"].gid) == (42, 43)


def test_export_skips_vanished_and_unmappable_entries(tmp_path, caplog):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok").write_bytes(b"ok")
    (root / "unmapped").write_bytes(b"u")
    os.chown(root / "ok", 100000, 100000)
    maps = [IDMap(0, 100000, 10)]
    with caplog.at_level("DEBUG", logger="overlaylab.archive"):
        data = read_all(export_changes(str(root), [
            Change("/gone", A), Change("/ok", A), Change("/unmapped", A)], maps, maps))
    assert [h.name for h in TarReader(io.BytesIO(data))] == ["ok"]
    assert "Can't add file %s/gone to tar: lstat %s/gone: no such file or directory" % (
        root, root) in caplog.text
    assert "Host ID 0 cannot be mapped to a container ID" in caplog.text


def test_export_stream_close_early_stops_the_writer(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    chunk = os.urandom(1 << 20)
    with open(root / "big", "wb") as f:
        for _ in range(16):
            f.write(chunk)
    for i in range(200):
        (root / ("s%03d" % i)).write_bytes(b"s")
    changes = changes_dirs(str(root), "")
    stream = export_changes(str(root), changes)
    head = stream.read(4096)
    assert len(head) > 0
    t0 = time.monotonic()
    stream.close()
    assert time.monotonic() - t0 < 5
    assert not stream._thread.is_alive()  # noqa: SLF001
    assert stream.closed
    stream.close()  # idempotent


def test_tar_tree_large_file_streams_exactly(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    payload = os.urandom(3 * (1 << 20) + 17)
    (root / "big").write_bytes(payload)
    data = read_all(tar_tree(str(root)))
    m = members(data)[0]
    assert m.size == len(payload)
    assert tarfile.open(fileobj=io.BytesIO(data)).extractfile("big").read() == payload


def test_gnu_tar_lists_our_stream(tmp_path):
    need_tool("tar")
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / ("n" * 150)).write_bytes(b"long")
    os.symlink("d", root / "l")
    data = read_all(tar_tree(str(root)))
    out = subprocess.run(["tar", "-tf", "-"], input=data, stdout=subprocess.PIPE, check=True)
    assert out.stdout.decode().splitlines() == ["d/", "d/" + "n" * 150, "l"]
