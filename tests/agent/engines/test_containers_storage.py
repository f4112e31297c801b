"""containers/storage's overlay driver, native and through fuse-overlayfs, on real backing
filesystems: the verdict with its evidence, whiteouts seen through a container, changes and
exported diffs, removal, and a teardown that leaves no mount and no FUSE daemon behind.

The expectations pin what containers-storage 1.43 (Debian) was observed to do, including its
surprise on ext4 without ``filetype``: Init caches ``overlay-false`` with the d_type message,
then carries on with ``fuse-overlayfs`` from PATH (``drivers/overlay/overlay.go``, ``Init``).
"""
from __future__ import annotations

import json
import os
import tarfile

import pytest

from .layers import tar_file
from overlaylab import mountutil
from overlaylab.agent.engines import EngineError, EngineRefused, get_engine
from overlaylab.agent.engines.base import wait_for
from overlaylab.agent.engines.containers_storage import PACKAGES, fuse_processes_under
from tests.needs import need, need_tool

ENGINES = ["containers-storage", "fuse-overlayfs"]
FILESYSTEMS = ["ext4", "ext4-nofiletype", "xfs", "btrfs", "tmpfs"]
MATRIX = [(e, fs) for e in ENGINES for fs in FILESYSTEMS]
#: the backing filesystem as the driver names it in ``status``
FS_NAMES = {"ext4": "extfs", "ext4-nofiletype": "extfs", "xfs": "xfs", "btrfs": "btrfs", "tmpfs": "tmpfs"}


def uses_fuse(engine: str, fs: str) -> bool:
    """Where a container's rootfs is a fuse-overlayfs mount: always for the fuse engine, and
    for the native one where its overlay check failed and Init fell back to fuse-overlayfs."""
    return engine == "fuse-overlayfs" or fs == "ext4-nofiletype"


@pytest.fixture
def layers(tmp_path):
    """Two layers: a base, and one that deletes ``dir/gone`` and makes ``opq`` opaque."""
    base = tar_file(str(tmp_path / "base.tar"), [
        ("etc", None), ("etc/a", b"a\n"), ("dir", None), ("dir/gone", b"gone\n"), ("dir/keep", b"keep\n"),
        ("opq", None), ("opq/old", b"old\n"), ("opq/sub", None), ("opq/sub/deep", b"deep\n")])
    top = tar_file(str(tmp_path / "top.tar"), [
        ("dir", None), ("dir/.wh.gone", b""), ("opq", None), ("opq/.wh..wh..opq", b""), ("opq/new", b"new\n")])
    return [base, top]


@pytest.fixture
def lab(backing_fs, tmp_path):
    """``lab(engine, fs)`` -> (engine, backing fs, workdir); afterwards nothing may be left:
    no mount below the backing fs, no fuse-overlayfs serving it, no graph root, no run root."""
    made = []
    workdir = str(tmp_path / "work")
    os.mkdir(workdir)

    def make(engine_name: str, fs: str):
        engine = get_engine(engine_name)
        for program in engine.programs:
            need_tool(program, PACKAGES[program])
        if engine_name == "fuse-overlayfs":
            need(os.path.exists("/dev/fuse"), "/dev/fuse is missing (fuse-overlayfs needs FUSE)")
        bfs = backing_fs(fs)
        made.append(bfs)
        return engine, bfs, workdir

    yield make
    for bfs in made:
        below = [m.mountpoint for m in mountutil.mounts_under(bfs.mountpoint) if m.mountpoint != bfs.mountpoint]
        assert below == [], "mounts left under the backing fs"
        assert fuse_processes_under(bfs.root) == [], "fuse-overlayfs processes left"
        assert [n for n in os.listdir(bfs.mountpoint) if n.startswith("cs.")] == [], "graph root left"
    assert os.listdir(workdir) == [], "run root left"


@pytest.mark.parametrize("engine_name,fs", MATRIX)
def test_verdict_records_status_rows_and_cached_checks(lab, engine_name, fs):
    engine, bfs, workdir = lab(engine_name, fs)
    with engine.open(bfs.mountpoint, workdir) as session:
        verdict = session.verdict
        status = verdict.evidence["status"]
        checks = verdict.evidence["cached_checks"]
        assert verdict.accepted, verdict.message
        # its own store, never the system's: /var/lib/containers and /run/containers untouched
        assert status["Root"] == session.graph_root and session.graph_root.startswith(bfs.mountpoint + "/")
        assert status["Run Root"] == session.run_root and session.run_root.startswith(workdir + "/")
        assert status["Backing Filesystem"] == FS_NAMES[fs]
        assert status["Supports d_type"] == "true"  # even where the d_type check failed (below)
        assert "Backing Filesystem: %s" % FS_NAMES[fs] in verdict.message
        # what the engine scenarios' expectations read: the driver's own flag, not the engine's name
        assert verdict.evidence["mount_program"] is uses_fuse(engine_name, fs)
        assert ("mounts through fuse-overlayfs" in verdict.message) is uses_fuse(engine_name, fs)
        if engine_name == "fuse-overlayfs":
            assert "mount_program=/usr/bin/fuse-overlayfs" in status["Driver Options"]
            assert not [n for n in checks if n.startswith("overlay-")]  # no native check is made
            assert verdict.evidence["mount_program_flag"] == "true"
        elif fs == "ext4-nofiletype":
            assert "formatted without d_type support" in checks["overlay-false"]
            assert "overlay-false: kernel does not support overlay fs" in verdict.message
            assert status["Driver Options"] == "[]"
            assert verdict.evidence["mount_program_flag"] == "true"  # ... and fell back to fuse-overlayfs
        else:
            assert checks["overlay-true"] == ""
            assert verdict.evidence["mount_program_flag"] == "false"


@pytest.mark.parametrize("engine_name,fs", MATRIX)
def test_pulled_whiteouts_and_opaque_dirs_hide_lower_files(lab, layers, engine_name, fs):
    engine, bfs, workdir = lab(engine_name, fs)
    with engine.open(bfs.mountpoint, workdir) as session:
        container = session.create(session.pull(layers))
        with session.rootfs(container) as root:
            assert sorted(os.listdir(os.path.join(root, "dir"))) == ["keep"]
            assert sorted(os.listdir(os.path.join(root, "opq"))) == ["new"]
            for hidden in ("dir/gone", "dir/.wh.gone", "opq/old", "opq/sub", "opq/.wh..wh..opq"):
                assert not os.path.lexists(os.path.join(root, hidden)), hidden
            with open(os.path.join(root, "dir/keep"), "rb") as f:
                assert f.read() == b"keep\n"
            fstype = session.verdict.evidence["rootfs_fstype"]
            assert fstype == ("fuse.fuse-overlayfs" if uses_fuse(engine_name, fs) else "overlay")
        assert not mountutil.is_mounted(root)


@pytest.mark.parametrize("engine_name,fs", MATRIX)
def test_changes_and_exported_diff_list_what_the_container_did(lab, layers, tmp_path, engine_name, fs):
    engine, bfs, workdir = lab(engine_name, fs)
    with engine.open(bfs.mountpoint, workdir) as session:
        image = session.pull(layers)
        container = session.create(image)
        with session.rootfs(container) as root:
            with open(os.path.join(root, "newfile"), "wb") as f:
                f.write(b"hi\n")
            os.unlink(os.path.join(root, "etc/a"))
        assert session.changes(container) == [("C", "/etc"), ("D", "/etc/a"), ("A", "/newfile")]
        dest = str(tmp_path / "diff.tar")
        session.export_diff(container, dest)
        with tarfile.open(dest, "r:") as tar:  # "r:" refuses a compressed stream
            names = sorted(m.name.rstrip("/") for m in tar.getmembers())
            assert tar.extractfile("newfile").read() == b"hi\n"
        assert names == ["etc", "etc/.wh.a", "newfile"]

        session.remove(container)
        session.remove(image)
        assert session.run(session.command("layers")).stdout.strip() == ""


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_container_removed_inside_rootfs_is_unmounted_and_leaving_the_block_does_nothing_more(
        lab, layers, engine_name):
    engine, bfs, workdir = lab(engine_name, "ext4")
    with engine.open(bfs.mountpoint, workdir) as session:
        image = session.pull(layers)
        container = session.create(image)
        with session.rootfs(container) as root:
            assert mountutil.is_mounted(root)
            session.remove(container)  # containers/storage layers.go Delete unmounts first
            assert not mountutil.is_mounted(root)
        assert session.commands[-1]["argv"][-2:] == ["delete-layer", container]  # no unmount after it
        assert wait_for(lambda: fuse_processes_under(session.graph_root) == [], 5.0)
        session.remove(image)
        assert session.run(session.command("layers")).stdout.strip() == ""


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_failed_pull_leaves_no_layer_behind(lab, layers, tmp_path, engine_name):
    """A second layer whose tar breaks off: ``import-layer`` (``store.PutLayer``) deletes the
    half-applied layer, the adapter the base layer it made; no dir, ``l/`` link or record stays."""
    engine, bfs, workdir = lab(engine_name, "ext4")
    broken = str(tmp_path / "broken.tar")
    with open(layers[0], "rb") as f:
        data = f.read()
    with open(broken, "wb") as f:
        f.write(data[:2 * 512 + 1])  # "etc" and the header of "etc/a", then one byte of its two
    with engine.open(bfs.mountpoint, workdir) as session:
        session.remove(session.pull(layers[:1]))  # the store's own files (locks, layers.json) exist now
        inodes = os.statvfs(bfs.mountpoint).f_ffree
        with pytest.raises(EngineError) as exc_info:
            session.pull([layers[0], broken])
        assert "unexpected EOF" in str(exc_info.value)
        assert session.run(session.command("layers")).stdout.strip() == ""
        home = os.path.join(session.graph_root, "overlay")
        assert sorted(n for n in os.listdir(home) if not n.startswith(".")) == ["l"]
        assert os.listdir(os.path.join(home, "l")) == []
        with open(os.path.join(session.graph_root, "overlay-layers", "layers.json")) as f:
            assert json.load(f) in ([], None)
        assert os.statvfs(bfs.mountpoint).f_ffree == inodes
        assert session.images == {}


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_full_backing_fs_is_refused_and_ops_raise_the_verdict(lab, layers, engine_name):
    engine, bfs, workdir = lab(engine_name, "tmpfs")
    with open(os.path.join(bfs.mountpoint, "fill"), "wb") as f:  # tmpfs: mkdir still works, writes do not
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    with engine.open(bfs.mountpoint, workdir) as session:
        assert not session.verdict.accepted
        assert session.verdict.message.startswith("error initializing: ")
        assert "no space left on device" in session.verdict.message
        with pytest.raises(EngineRefused) as exc_info:
            session.pull(layers)
        assert str(exc_info.value) == session.verdict.message


@pytest.mark.parametrize("engine_name", ENGINES)
def test_ctrl_c_with_a_layer_left_mounted_leaves_nothing_behind(lab, layers, engine_name):
    engine, bfs, workdir = lab(engine_name, "ext4")
    with pytest.raises(KeyboardInterrupt):
        with engine.open(bfs.mountpoint, workdir) as session:
            container = session.create(session.pull(layers))
            merged = session.cs("mount", container).stdout.strip()  # mounted, never unmounted
            assert mountutil.is_mounted(merged)
            if engine_name == "fuse-overlayfs":
                assert fuse_processes_under(session.graph_root)
            raise KeyboardInterrupt
    assert not os.path.exists(session.graph_root)  # and the lab fixture checks mounts and processes


@pytest.mark.parametrize("engine_name,expected", [("containers-storage", "containers-storage 1.43."),
                                                  ("fuse-overlayfs", "fuse-overlayfs: version ")])
def test_version_names_the_installed_release(engine_name, expected):
    engine = get_engine(engine_name)
    for program in engine.programs:
        need_tool(program, PACKAGES[program])
    need_tool("dpkg-query", "dpkg")
    version = engine.version()
    assert expected in version and "\n" not in version
