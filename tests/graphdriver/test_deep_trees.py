"""Deep trees (issue 9.3): a layer that can be applied can also be copied, listed, exported,
measured and removed, however deep, and also where its paths are longer than PATH_MAX from
the host (they fit inside the apply chroot, where the layer root is ``/``)."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from overlaylab.archive import changes as changesmod
from overlaylab.archive.changes import Change, ChangeKind

PATH_MAX = 4096


def deep_tar(levels, comp, files=(), symlinks=()):
    """``levels`` nested directories named ``comp``, then ``files`` (name, data) and
    ``symlinks`` (name, target) at the bottom."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        p = ""
        for _ in range(levels):
            p += comp + "/"
            info = tarfile.TarInfo(p)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1500000000
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(p + name)
            info.size, info.mtime = len(data), 1500000000
            tar.addfile(info, io.BytesIO(data))
        for name, target in symlinks:
            info = tarfile.TarInfo(p + name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1500000000
            tar.addfile(info)
    buf.seek(0)
    return buf


def top_tar(name, data):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def read_tar(stream):
    data = stream.read()
    stream.close()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for m in tar:
            out[m.name] = (m.type, tar.extractfile(m).read() if m.isfile() else m.linkname)
    return out


def test_a_thousand_level_layer_is_copied_listed_and_removed(make_driver):
    """The 1000-level layer: ApplyDiff's hard-link copy of it, Changes over it and Remove of
    both layers (Remove recursed: RecursionError, the layer stayed)."""
    driver = make_driver("tmpfs")
    levels = 1000
    driver.create("base", "")
    driver.apply_diff("base", "", deep_tar(levels, "d", [("f", b"bottom")]))
    driver.create("child", "base")
    driver.apply_diff("child", "base", top_tar("top", b"new"))  # copy_dir of all 1000 levels
    bottom = "/d" * levels + "/f"
    fd = os.open(os.path.join(driver.home, "child", "root"), os.O_RDONLY)
    try:
        for _ in range(levels):
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        st = os.lstat("f", dir_fd=fd)
    finally:
        os.close(fd)
    assert st.st_nlink == 2  # the parent's inode, hard-linked
    assert driver.changes("child", "base") == [Change("/top", ChangeKind.ADD)]
    everything = driver.changes("base", "")
    assert len(everything) == levels + 1 and Change(bottom, ChangeKind.ADD) in everything
    driver.remove("child")
    driver.remove("base")
    assert os.listdir(driver.home) == []


def test_a_layer_longer_than_path_max_from_the_host(make_driver):
    """Paths that fit in the chroot but not from the host: changes, diff-size and both
    exports see the deep entries (export used to drop them and succeed), and Remove works."""
    driver = make_driver("tmpfs")
    comp = "d" * 50
    levels = (PATH_MAX - 40) // (len(comp) + 1)  # < PATH_MAX inside the layer root
    deep = ("/" + comp) * levels
    assert len(deep) + 10 < PATH_MAX < len(driver.home) + len("/child/root") + len(deep)
    driver.create("base", "")
    driver.apply_diff("base", "", deep_tar(levels, comp, [("f", b"old"), ("keep", b"k")],
                                           [("lnk", "f")]))
    driver.create("child", "base")
    driver.apply_diff("child", "base", deep_tar(levels, comp, [("f", b"changed"), ("new", b"brand new")]))

    got = driver.changes("child", "base")
    assert Change(deep + "/f", ChangeKind.MODIFY) in got
    assert Change(deep + "/new", ChangeKind.ADD) in got
    assert driver.diff_size("child", "base") == len(b"changed") + len(b"brand new")

    entries = read_tar(driver.diff("child", "base"))
    assert entries[deep[1:] + "/f"] == (tarfile.REGTYPE, b"changed")
    assert entries[deep[1:] + "/new"] == (tarfile.REGTYPE, b"brand new")

    full = read_tar(driver.diff("base", ""))
    assert full[deep[1:] + "/f"] == (tarfile.REGTYPE, b"old")
    assert full[deep[1:] + "/keep"] == (tarfile.REGTYPE, b"k")
    assert full[deep[1:] + "/lnk"] == (tarfile.SYMTYPE, "f")
    assert len(full) == levels + 3

    driver.remove("child")
    driver.remove("base")
    assert os.listdir(driver.home) == []


def test_a_failed_apply_diff_removes_its_tmproot_and_reports_its_own_error(make_driver):
    """Over a deep parent the tmproot cleanup used to fail (RecursionError), replacing the
    apply's error and leaving the tmproot* in the layer."""
    driver = make_driver("tmpfs")
    driver.create("base", "")
    driver.apply_diff("base", "", deep_tar(1000, "d", [("f", b"x")]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hl")
        info.type, info.linkname = tarfile.LNKTYPE, "missing"
        tar.addfile(info)
    driver.create("child", "base")
    buf.seek(0)
    with pytest.raises(Exception) as exc:
        driver.apply_diff("child", "base", buf)
    assert "recursion" not in str(exc.value)
    assert "missing" in str(exc.value) and "no such file or directory" in str(exc.value)
    assert sorted(os.listdir(os.path.join(driver.home, "child"))) == ["lower-id", "merged", "upper", "work"]


def test_changes_of_a_tree_past_path_max_without_a_driver(tmp_path):
    """ChangesDirs itself on two trees deeper than PATH_MAX (and than the held descriptors)."""
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    comp = "e" * 100
    for top in (old, new):
        os.mkdir(top)
        fd = os.open(top, os.O_RDONLY)
        for _ in range(80):
            os.mkdir(comp, dir_fd=fd)
            nfd = os.open(comp, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"new" if top == new else b"old!")
        os.close(fd)
    deep = ("/" + comp) * 80
    got = changesmod.changes_dirs(new, old)
    assert got[-1] == Change(deep + "/f", ChangeKind.MODIFY)
    assert changesmod.changes_size(new, got) == 3


_EXPORT_WITH_FEW_FDS = r"""
import os, resource, sys
from overlaylab.archive import ArchiveError, tar_tree
root = sys.argv[1]
# Almost no descriptors left before the walk starts: room for the stream's pipe (2) and 6
# more. (Lowered after tar_tree returned, the thread could have walked the whole tree first.)
low = len(os.listdir("/proc/self/fd")) + 2 + 6
resource.setrlimit(resource.RLIMIT_NOFILE, (low, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
stream = tar_tree(root)
try:
    while stream.read(1 << 16):
        pass
except ArchiveError as err:
    print("ERR", err)
    sys.exit(3)
print("OK")
"""


def test_an_export_that_cannot_reach_an_entry_fails_naming_it(tmp_path):
    """Out of descriptors deep in a tree, the export fails with the path instead of leaving
    the subtree out of a tar that looks complete."""
    import subprocess
    import sys
    root = str(tmp_path / "t")
    os.makedirs(os.path.join(root, *["d"] * 30))
    res = subprocess.run([sys.executable, "-c", _EXPORT_WITH_FEW_FDS, root], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.startswith("ERR Tar: Can't read directory %s/d" % root)
    assert "too many open files" in res.stdout
