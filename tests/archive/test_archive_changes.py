"""ChangesDirs / ChangesSize / aufs Changes (moby v1.10.3 pkg/archive/changes.go, changes_test.go)."""
from __future__ import annotations

import errno
import logging
import os
import struct

import pytest

from tests.needs import missing

from overlaylab.archive import (
    Change, ChangeKind, aufs_changes, changes_dirs, changes_size, sort_key,
)
from overlaylab.goerrors import PathError

from .helpers import copy_dir, create_sample_dir, mutate_sample_dir, write_file

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE


def srt(changes):
    return sorted(changes, key=sort_key)


def test_change_kind_letters_and_str():
    assert [k.letter for k in (C, A, D)] == ["C", "A", "D"]
    assert (int(C), int(A), int(D)) == (0, 1, 2)
    assert str(Change("/etc/foo", C)) == "C /etc/foo"
    assert str(Change("/x", D)) == "D /x"


def test_changes_dirs_empty(tmp_path):
    src = str(tmp_path / "src")
    os.mkdir(src)
    create_sample_dir(src)
    dst = src + "-copy"
    copy_dir(src, dst)
    assert changes_dirs(dst, src) == []


def test_changes_dirs_mutated(tmp_path):
    src = str(tmp_path / "src")
    os.mkdir(src)
    create_sample_dir(src)
    dst = src + "-copy"
    copy_dir(src, dst)
    mutate_sample_dir(dst)
    got = srt(changes_dirs(dst, src))
    expected = [
        Change("/dir1", D), Change("/dir2", C), Change("/dirnew", A), Change("/file1", D),
        Change("/file2", C), Change("/file3", C), Change("/file4", C), Change("/file5", C),
        Change("/filenew", A), Change("/symlink1", D), Change("/symlink2", C),
        Change("/symlinknew", A),
    ]
    assert got == expected


def test_changes_dirs_old_empty_means_all_added(tmp_path):
    new = tmp_path / "new"
    (new / "d").mkdir(parents=True)
    (new / "d" / "f").write_bytes(b"x")
    got = srt(changes_dirs(str(new), ""))
    assert got == [Change("/d", A), Change("/d/f", A)]


def test_changes_dirs_missing_dir_is_go_error(tmp_path):
    with pytest.raises(PathError) as exc:
        changes_dirs(str(tmp_path), str(tmp_path / "nope"))
    assert str(exc.value) == "lstat %s: no such file or directory" % (tmp_path / "nope")


def test_modify_of_parent_inserted_before_children(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for root in (old, new):
        (root / "a" / "b").mkdir(parents=True)
    (new / "a" / "b" / "f").write_bytes(b"x")
    got = changes_dirs(str(new), str(old))
    assert got == [Change("/a", C), Change("/a/b", C), Change("/a/b/f", A)]


def test_dir_replaced_by_file_hides_old_children(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "x").mkdir(parents=True)
    (old / "x" / "child").write_bytes(b"c")
    new.mkdir()
    (new / "x").write_bytes(b"now a file")
    assert srt(changes_dirs(str(new), str(old))) == [Change("/x", C)]
    # and a file replaced by a directory reports every new child as added
    assert srt(changes_dirs(str(old), str(new))) == [Change("/x", C), Change("/x/child", A)]


def _same_second(path_a, path_b, sec, nsec_a, nsec_b):
    os.utime(path_a, ns=(sec * 10 ** 9 + nsec_a, sec * 10 ** 9 + nsec_a))
    os.utime(path_b, ns=(sec * 10 ** 9 + nsec_b, sec * 10 ** 9 + nsec_b))


def test_moby_21555_same_size_same_second_zero_ns_not_detected(tmp_path):
    """A same-size rewrite in the same second as a 0-ns mtime (e.g. from a tar) is missed."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "f").write_bytes(b"aaaa")
    (new / "f").write_bytes(b"bbbb")  # different content, same size
    _same_second(old / "f", new / "f", 1500000000, 0, 123456789)
    assert changes_dirs(str(new), str(old)) == []
    # identical mtimes: missed as well
    _same_second(old / "f", new / "f", 1500000000, 5, 5)
    assert changes_dirs(str(new), str(old)) == []


def test_mtime_change_detected_when_second_or_ns_differ(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "f").write_bytes(b"aaaa")
    (new / "f").write_bytes(b"bbbb")
    _same_second(old / "f", new / "f", 1500000000, 0, 0)
    os.utime(new / "f", ns=(1500000001 * 10 ** 9, 1500000001 * 10 ** 9))
    assert changes_dirs(str(new), str(old)) == [Change("/f", C)]
    _same_second(old / "f", new / "f", 1500000000, 7, 8)  # both non-zero and different
    assert changes_dirs(str(new), str(old)) == [Change("/f", C)]


def test_same_inode_same_device_is_pruned(tmp_path):
    """The hard-link optimisation: a name with the same d_ino on both sides is skipped even
    if its metadata changed (both names see the same inode)."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "f").write_bytes(b"shared")
    os.link(old / "f", new / "f")
    (new / "g").write_bytes(b"g")
    os.chmod(new / "f", 0o600)
    assert srt(changes_dirs(str(new), str(old))) == [Change("/g", A)]


def test_capability_xattr_difference_is_a_modify(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    for root in (old, new):
        (root / "ping").write_bytes(b"elf")
    os.utime(old / "ping", ns=(10 ** 18, 10 ** 18))
    os.utime(new / "ping", ns=(10 ** 18, 10 ** 18))
    assert changes_dirs(str(new), str(old)) == []
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep, v2
    try:
        os.setxattr(new / "ping", "security.capability", cap, follow_symlinks=False)
    except OSError as err:
        missing("no security.capability here: %s" % err)
    os.utime(new / "ping", ns=(10 ** 18, 10 ** 18))
    assert changes_dirs(str(new), str(old)) == [Change("/ping", C)]


def test_block_device_size_and_mtime_never_compared(tmp_path):
    """The S_IFDIR bit test also matches block devices: their mtime is ignored, while a
    char device (no 040000 bit) is compared on mtime."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    try:
        for root in (old, new):
            os.mknod(root / "blk", 0o600 | 0o060000, os.makedev(7, 0))
            os.mknod(root / "chr", 0o600 | 0o020000, os.makedev(1, 3))
    except OSError as err:
        missing("mknod not allowed: %s" % err)
    for name in ("blk", "chr"):
        os.utime(old / name, ns=(10 ** 18, 10 ** 18))
        os.utime(new / name, ns=(2 * 10 ** 18, 2 * 10 ** 18))
    assert changes_dirs(str(new), str(old)) == [Change("/chr", C)]


def test_changes_with_changes(tmp_path):
    layer = str(tmp_path / "layer")
    os.mkdir(layer)
    create_sample_dir(layer)
    os.makedirs(os.path.join(layer, "dir1/subfolder"), 0o740)
    rw = tmp_path / "rw"
    dir1 = rw / "dir1"
    os.makedirs(dir1, 0o740)
    write_file(str(dir1 / ".wh.file1-2"), b"", 0o600)
    write_file(str(dir1 / "file1-1"), b"\x00", 0o1444)
    os.makedirs(dir1 / "subfolder", 0o740)
    write_file(str(dir1 / "subfolder" / "newFile"), b"", 0o740)
    got = srt(aufs_changes([layer], str(rw)))
    assert got == [
        Change("/dir1", C), Change("/dir1/file1-1", C), Change("/dir1/file1-2", D),
        Change("/dir1/subfolder", C), Change("/dir1/subfolder/newFile", A),
    ]


def test_changes_with_changes_gh13590(tmp_path):
    base = tmp_path / "base"
    dir3 = base / "dir1" / "dir2" / "dir3"
    os.makedirs(dir3, 0o7400)
    write_file(str(dir3 / "file.txt"), b"hello", 0o666)

    layer = tmp_path / "layer2"
    layer.mkdir()
    copy_dir(str(base / "dir1"), str(layer) + "/")
    os.remove(layer / "dir1/dir2/dir3/file.txt")
    write_file(str(layer / "dir1/dir2/dir3/file1.txt"), b"bye", 0o666)
    assert srt(aufs_changes([str(base)], str(layer))) == [
        Change("/dir1/dir2/dir3", C), Change("/dir1/dir2/dir3/file1.txt", A)]

    layer = tmp_path / "layer3"
    layer.mkdir()
    copy_dir(str(base / "dir1"), str(layer) + "/")
    write_file(str(layer / "dir1/dir2/dir3/file.txt"), b"bye", 0o666)
    assert srt(aufs_changes([str(base)], str(layer))) == [
        Change("/dir1/dir2/dir3/file.txt", C)]


def test_aufs_changes_skips_top_level_meta_only(tmp_path):
    rw = tmp_path / "rw"
    (rw / ".wh..wh.plnk").mkdir(parents=True)
    (rw / ".wh..wh.plnk" / "x").write_bytes(b"")
    (rw / ".wh.gone").write_bytes(b"")
    got = srt(aufs_changes([], str(rw)))
    # the meta dir itself is skipped but its child is still walked (glob * stops at "/")
    assert got == [Change("/.wh..wh.plnk", C), Change("/.wh..wh.plnk/x", A), Change("/gone", D)]


def test_changes_size_with_no_changes():
    assert changes_size("/tmp", []) == 0


def test_changes_size_with_only_delete_changes():
    assert changes_size("/tmp", [Change("deletedPath", D)]) == 0


def test_changes_size(tmp_path):
    write_file(str(tmp_path / "addition"), b"\x01\x01\x01", 0o744)
    write_file(str(tmp_path / "modification"), b"\x01\x01\x01", 0o744)
    changes = [Change("addition", A), Change("modification", C)]
    assert changes_size(str(tmp_path), changes) == 6


def test_changes_size_with_hardlinks(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    for n in range(100):
        write_file(str(dest / ("file-%d" % n)), b"fooo", 0o700)
        os.link(dest / ("file-%d" % n), dest / ("file-%d-link" % n))
    changes = changes_dirs(str(dest), str(src))
    assert len(changes) == 200
    assert changes_size(str(dest), changes) == 100 * 4


def test_changes_size_logs_and_skips_unstatable(tmp_path, caplog):
    (tmp_path / "there").write_bytes(b"12345")
    with caplog.at_level(logging.ERROR, logger="overlaylab.archive"):
        size = changes_size(str(tmp_path), [Change("/gone", A), Change("/there", C)])
    assert size == 5
    expected = 'Can not stat "%s/gone": lstat %s/gone: %s' % (
        tmp_path, tmp_path, os.strerror(errno.ENOENT).lower())
    assert expected in caplog.text


def test_changes_size_counts_symlink_target_length(tmp_path):
    os.symlink("0123456789", tmp_path / "l")
    assert changes_size(str(tmp_path), [Change("/l", A)]) == 10


def _deep(top, comp, levels):
    """Make ``levels`` nested ``comp`` directories below ``top`` by descriptor (past PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir(comp, dir_fd=fd)
            nfd = os.open(comp, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def test_changes_climb_back_from_a_deep_one_sided_subtree(tmp_path):
    """A subtree only the new side has, deeper than the directories whose descriptors are
    held: climbing back to a directory both sides have reopens the old side's descriptor by
    name (the new side's through ``..``), and the walk goes on with the next sibling."""
    old, new = tmp_path / "old", tmp_path / "new"
    for top in (old, new):
        (top / "a" / "y").mkdir(parents=True)
        (top / "a" / "y" / "f").write_bytes(b"old")
    (new / "a" / "y" / "f").write_bytes(b"new!")
    (new / "a" / "x").mkdir()
    _deep(str(new / "a" / "x"), "x" * 60, 100)
    got = changes_dirs(str(new), str(old))
    deep = "/a/x" + ("/" + "x" * 60) * 100
    assert Change(deep, ChangeKind.ADD) in got
    assert got[-1] == Change("/a/y/f", ChangeKind.MODIFY)
    assert len(got) == 1 + 1 + 100 + 2  # C /a, A /a/x and the 100 below, C /a/y, C /a/y/f


@pytest.mark.parametrize("which", ["go15", "driver"])
def test_remove_all_of_a_tree_deeper_than_path_max(tmp_path, which):
    from overlaylab.archive import gofs
    from overlaylab.graphdriver import copy as copymod
    top = tmp_path / "t"
    top.mkdir()
    _deep(str(top), "d" * 10, 1500)  # 16500 characters: no path-based call could reach the bottom
    (gofs.remove_all if which == "go15" else copymod.remove_all)(str(top))
    assert not top.exists()
