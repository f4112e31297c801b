"""copyDir (docs/reference-behaviour.md#copydir-quirks): the descriptor-based fast paths of ``copy_dir`` must give what the
plain path-based walk gives — on a filesystem whose readdir has d_type and on one without
(DT_UNKNOWN), past the depth where directory descriptors are no longer held, and over a
destination that already has files in it (the no-O_TRUNC quirk)."""
from __future__ import annotations

import os
import stat

import pytest

from tests.needs import need_root

from overlaylab.graphdriver import copy as copymod
from overlaylab.graphdriver.copy import COPY_HARDLINK, copy_dir


@pytest.fixture(autouse=True)
def _need_root():
    need_root("copy_dir tests (chown, mknod, trusted xattrs)")


def make_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "a", "b"))
    os.mkdir(os.path.join(root, "empty"), 0o700)
    for i, (rel, mode, uid) in enumerate([("f", 0o644, 0), ("a/x", 0o4755, 7), ("a/b/y", 0o2640, 8),
                                          ("\u00e9t\u00e9", 0o600, 9), ("Z", 0o1777, 0)]):
        p = os.path.join(root, rel)
        with open(p, "wb") as f:
            f.write(bytes([i]) * (i * 70000))
        os.chown(p, uid, uid + 1)
        os.chmod(p, mode)
        os.utime(p, ns=(1500000000 * 10 ** 9 + i, 1400000000 * 10 ** 9 + i))
    os.setxattr(os.path.join(root, "a", "x"), "security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
    os.setxattr(os.path.join(root, "a"), "trusted.overlay.opaque", b"y")
    os.symlink("a/x", os.path.join(root, "lnk"))
    os.link(os.path.join(root, "f"), os.path.join(root, "a", "hard"))
    os.mkfifo(os.path.join(root, "fifo"), 0o640)
    os.mknod(os.path.join(root, "wh"), stat.S_IFCHR | 0o600, 0)
    os.utime(os.path.join(root, "empty"), ns=(1, 2))


def state(root: str, with_dir_times: bool = False):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                  for k in os.listxattr(p, follow_symlinks=False)))
            data = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            # mtimes only: reading the files here moves their atimes (see atimes())
            times = st.st_mtime_ns if stat.S_ISREG(st.st_mode) or (
                stat.S_ISDIR(st.st_mode) and (with_dir_times or not os.listdir(p))) else None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_rdev, xattrs, data, times)
    return out


def atimes(root: str):
    """Access times of the regular files, by lstat only (nothing read)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(os.path.join(dirpath, name), root)] = st.st_atime_ns
    return out


def test_content_copy_replicates_everything(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_tree(src)
    want_atimes = atimes(src)
    copy_dir(src, dst, 0)
    assert atimes(dst) == want_atimes
    want = state(src)
    got = state(dst)
    assert got == want
    assert os.lstat(os.path.join(dst, "f")).st_ino != os.lstat(os.path.join(dst, "a", "hard")).st_ino


def test_hardlink_copy_links_files_and_recreates_the_rest(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    make_tree(src)
    want = state(src)
    copy_dir(src, dst, COPY_HARDLINK)
    assert state(dst) == want
    for rel in ("f", "a/x", "a/b/y", "a/hard", "\u00e9t\u00e9"):
        assert os.path.samefile(os.path.join(src, rel), os.path.join(dst, rel))
    assert not os.path.samefile(os.path.join(src, "a"), os.path.join(dst, "a"))
    assert os.lstat(os.path.join(dst, "lnk")).st_ino != os.lstat(os.path.join(src, "lnk")).st_ino


def _deep_tree_copies_alike(base: str) -> None:
    src = os.path.join(base, "src")
    deep = os.path.join(src, *["d%d" % i for i in range(6)])
    os.makedirs(deep)
    make_tree(os.path.join(deep, "t"))
    for flags in (0, COPY_HARDLINK):
        dst = os.path.join(base, "dst%d" % flags)
        copy_dir(src, dst, flags)
        assert state(dst) == state(src)


def test_past_the_descriptor_depth(tmp_path, monkeypatch):
    """Deeper than the directories whose descriptors are held: full paths from there on."""
    monkeypatch.setattr(copymod, "_MAX_FD_DEPTH", 2)
    _deep_tree_copies_alike(str(tmp_path))


def test_without_dtype(backing_fs):
    """ext4 without the filetype feature: readdir gives DT_UNKNOWN, so every entry is
    lstat-ed, hard-link mode included."""
    fs = backing_fs("ext4-nofiletype")
    probe = os.path.join(fs.mountpoint, "probe")
    with open(probe, "wb"):
        pass
    with os.scandir(fs.mountpoint) as it:
        entry = next(e for e in it if e.name == "probe")
        # DirEntry answers from d_type when it has one; without, it must stat
        assert entry.is_file() and entry.inode()
    os.unlink(probe)
    _deep_tree_copies_alike(fs.mountpoint)


def test_content_copy_over_an_existing_longer_file_keeps_its_tail(tmp_path):
    """No O_TRUNC (the re-Create quirk, docs/reference-behaviour.md#create): the existing file is written over, not replaced."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    os.makedirs(src)
    with open(os.path.join(src, "f"), "wb") as f:
        f.write(b"new")
    os.chmod(os.path.join(src, "f"), 0o600)
    os.makedirs(dst)
    with open(os.path.join(dst, "f"), "wb") as f:
        f.write(b"old content")
    ino = os.lstat(os.path.join(dst, "f")).st_ino
    copy_dir(src, dst, 0)
    with open(os.path.join(dst, "f"), "rb") as f:
        assert f.read() == b"new content"
    st = os.lstat(os.path.join(dst, "f"))
    assert st.st_ino == ino and stat.S_IMODE(st.st_mode) == 0o600


def _outside(tmp_path):
    """A directory and a file outside the copy, and a snapshot of them to compare with."""
    out = tmp_path / "outside"
    out.mkdir(mode=0o700)
    os.utime(str(out), ns=(10 ** 9, 10 ** 9))
    (out / "victim").write_bytes(b"precious")
    os.chmod(str(out / "victim"), 0o600)
    return str(out), lambda: (sorted(os.listdir(str(out))), state(str(out), True),
                              stat.S_IMODE(os.lstat(str(out)).st_mode), os.lstat(str(out)).st_mtime_ns)


@pytest.mark.parametrize("flags", [0, COPY_HARDLINK])
@pytest.mark.parametrize("where,kind,op", [
    ("etc", "dir", "mkdir"),          # a directory to copy where a symlink to a dir sits
    ("a/b/deep", "dir", "mkdir"),     # the same, below the top
    ("victim", "file", "open"),       # a regular file where a symlink to a file sits
    ("a/b/victim", "file", "open"),
    ("etc", "fifo", None),            # a fifo where the symlink sits: EEXIST from mknod
    ("etc", "link", None),            # a symlink where a symlink sits: EEXIST from symlink
])
def test_copy_never_follows_a_symlink_already_in_the_destination(tmp_path, flags, where, kind, op):
    """Issue 9.2: whatever sits in the destination, the copy does not go through it. The
    reference would chmod/utimes the link's target dir (mkdir EEXIST ignored) and write the
    file through the link (open without O_NOFOLLOW); here it fails with EEXIST."""
    outside, snapshot = _outside(tmp_path)
    before = snapshot()
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    os.makedirs(os.path.join(src, os.path.dirname(where)), exist_ok=True)
    os.makedirs(os.path.join(dst, os.path.dirname(where)), exist_ok=True)
    s = os.path.join(src, where)
    if kind == "dir":
        os.mkdir(s, 0o777)
        with open(os.path.join(s, "hosts"), "wb") as f:
            f.write(b"127.0.0.1 evil\n")
        target = outside
    elif kind == "file":
        with open(s, "wb") as f:
            f.write(b"overwritten")
        os.chmod(s, 0o777)
        target = os.path.join(outside, "victim")
    elif kind == "fifo":
        os.mkfifo(s, 0o777)
        target = outside
    else:
        os.symlink("somewhere", s)
        target = outside
    os.symlink(target, os.path.join(dst, where))
    with pytest.raises(OSError) as exc:
        copy_dir(src, dst, flags)
    d = os.path.join(dst, where)
    if kind == "file" and flags & COPY_HARDLINK:
        assert str(exc.value) == "link %s %s: file exists" % (s, d)
    elif op is not None:
        assert str(exc.value) == "%s %s: file exists" % (op, d)
    elif kind == "fifo":
        assert str(exc.value) == "file exists"
    else:
        assert str(exc.value) == "symlink somewhere %s: file exists" % d
    assert os.readlink(d) == target
    assert snapshot() == before


def test_content_copy_over_an_existing_fifo_or_device_fails_without_opening_it(tmp_path):
    """A fifo where a file is copied would block the open, a device would be written to."""
    for kind in ("fifo", "chr"):
        src, dst = str(tmp_path / ("src" + kind)), str(tmp_path / ("dst" + kind))
        os.makedirs(src)
        os.makedirs(dst)
        with open(os.path.join(src, "f"), "wb") as f:
            f.write(b"data")
        if kind == "fifo":
            os.mkfifo(os.path.join(dst, "f"))
        else:
            os.mknod(os.path.join(dst, "f"), stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null
        with pytest.raises(OSError) as exc:
            copy_dir(src, dst, 0)
        assert str(exc.value) == "open %s: file exists" % os.path.join(dst, "f")


def test_errors_name_the_full_paths(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    os.makedirs(os.path.join(src, "a"))
    with open(os.path.join(src, "a", "f"), "wb") as f:
        f.write(b"x")
    os.makedirs(os.path.join(dst, "a"))
    os.mkdir(os.path.join(dst, "a", "f"))  # a directory where the link goes
    with pytest.raises(OSError) as exc:
        copy_dir(src, dst, COPY_HARDLINK)
    assert str(exc.value) == "link %s %s: file exists" % (
        os.path.join(src, "a", "f"), os.path.join(dst, "a", "f"))


def test_xattrs_of_later_files_are_copied_once_the_filesystem_has_answered(tmp_path):
    """The first entries read both copied xattrs the reference's way (ENODATA); after that a
    listing picks which to read: files, directories and fifos further on keep theirs, and
    other xattrs are still not copied."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    os.makedirs(os.path.join(src, "d", "e"))
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
    for i in range(4):
        with open(os.path.join(src, "d", "f%d" % i), "wb") as f:
            f.write(b"x" * i)
    os.setxattr(os.path.join(src, "d", "f2"), "security.capability", cap)
    os.setxattr(os.path.join(src, "d", "f2"), "trusted.overlay.opaque", b"y")
    os.setxattr(os.path.join(src, "d", "f3"), "trusted.other", b"z")
    os.setxattr(os.path.join(src, "d", "e"), "trusted.overlay.opaque", b"y")
    copy_dir(src, dst, 0)
    got = {rel: sorted(os.listxattr(os.path.join(dst, rel))) for rel in ("d/f0", "d/f2", "d/f3", "d/e")}
    assert got == {"d/f0": [], "d/f2": ["security.capability", "trusted.overlay.opaque"],
                   "d/f3": [], "d/e": ["trusted.overlay.opaque"]}
    assert os.getxattr(os.path.join(dst, "d", "f2"), "security.capability") == cap
