"""The port as an engine (``overlaylab.agent.engines.port``) on real filesystems.

Each test opens :class:`PortEngine` on a real backing filesystem (loop device or tmpfs), drives
the adapter the way the ``engine`` scenarios do and checks what the driver really did: the
verdict (Init's own words on btrfs), the container's view, its changes and exported diff, the
driver's error texts, and that nothing (mount, driver root) outlives the session.
"""
from __future__ import annotations

import os
import tarfile

import pytest

from overlaylab.agent.engines import get_engine
from overlaylab.agent.engines.base import EngineError, EngineRefused
from overlaylab.agent.scenarios._layers import LayerTar
from overlaylab.mountutil import mounts_under


def _tars(tmp_path):
    base = LayerTar().dir("lab").file("lab/keep", b"keep").file("lab/gone", b"gone").dir("lab/d").file("lab/d/x", b"x")
    top = LayerTar().dir("lab").whiteout("lab/gone").file("lab/top", b"top")
    return [base.write(str(tmp_path / "base.tar")), top.write(str(tmp_path / "top.tar"))]


def _leftovers(mountpoint):
    return ([n for n in os.listdir(mountpoint) if n.startswith("port-")],
            [m.mountpoint for m in mounts_under(mountpoint) if m.mountpoint != mountpoint])


@pytest.mark.parametrize("profile", ["ext4", "tmpfs"])
def test_port_pulls_mounts_lists_changes_exports_and_removes(backing_fs, profile, tmp_path):
    bfs = backing_fs(profile)
    with get_engine("port").open(bfs.mountpoint, str(tmp_path)) as session:
        assert session.verdict.accepted and session.verdict.message == ""
        assert session.verdict.evidence["home"].startswith(bfs.mountpoint + "/port-")
        image = session.pull(_tars(tmp_path))
        ctr = session.create(image)
        with session.rootfs(ctr) as root:
            assert os.path.ismount(root)
            assert sorted(os.listdir(os.path.join(root, "lab"))) == ["d", "keep", "top"]
            os.unlink(os.path.join(root, "lab", "keep"))
            with open(os.path.join(root, "lab", "new"), "wb") as f:
                f.write(b"new")
        assert not os.path.ismount(root)
        assert session.changes(ctr) == [("C", "/lab"), ("D", "/lab/keep"), ("A", "/lab/new")]
        dest = str(tmp_path / "diff.tar")
        session.export_diff(ctr, dest)
        with tarfile.open(dest) as tar:
            assert sorted(m.name.rstrip("/") for m in tar.getmembers()) == ["lab", "lab/.wh.keep", "lab/new"]
        session.remove(ctr)
        session.remove(image)
        ops = [c["argv"][0] for c in session.commands]
        assert ops[:4] == ["Create", "ApplyDiff", "Create", "ApplyDiff"] and ops.count("Remove") == 3
        assert all(c["rc"] == 0 for c in session.commands)
        evidence = session.evidence()
        assert evidence["engine"] == "port" and evidence["version"].startswith("v1.10.3")
        assert os.listdir(os.path.join(session.verdict.evidence["home"])) == []
    assert _leftovers(bfs.mountpoint) == ([], [])


def test_port_on_btrfs_is_refused_with_inits_words(backing_fs, tmp_path):
    bfs = backing_fs("btrfs")
    with get_engine("port").open(bfs.mountpoint, str(tmp_path)) as session:
        assert not session.verdict.accepted
        assert session.verdict.message == "backing file system is unsupported for this graph driver"
        assert any(line.endswith("'overlay' is not supported over btrfs.") for line in session.verdict.evidence["init_log"])
        with pytest.raises(EngineRefused, match="^backing file system is unsupported for this graph driver$"):
            session.pull(_tars(tmp_path))
        assert session.commands == []
    assert _leftovers(bfs.mountpoint) == ([], [])


def test_port_errors_carry_the_drivers_text_and_a_failed_pull_leaves_no_layer(backing_fs, tmp_path):
    bfs = backing_fs("ext4")
    with get_engine("port").open(bfs.mountpoint, str(tmp_path)) as session:
        home = session.verdict.evidence["home"]
        image = session.pull(_tars(tmp_path))
        ctr = session.create(image)
        with session.rootfs(ctr):
            # Remove recurses through the live mount (v1.10.3 does not unmount): merged/ is busy,
            # or, in the fs's readdir order, a lower dir deleted through it is not empty first.
            with pytest.raises(EngineError, match="(device or resource busy|directory not empty)$") as busy:
                session.remove(ctr)
            assert busy.value.evidence["operation"] == ["Remove", ctr] and busy.value.evidence["errno"] in (16, 39)
        session.remove(ctr)  # after Put it goes
        broken = tmp_path / "broken.tar"
        broken.write_bytes(b"not a tar" * 100)
        layers_before = sorted(os.listdir(home))
        with pytest.raises(EngineError):
            session.pull([_tars(tmp_path)[0], str(broken)])
        assert sorted(os.listdir(home)) == layers_before
        with pytest.raises(EngineError, match="^no such image: nosuch$"):
            session.create("nosuch")
        # Leaving the block with a rootfs still got: the session puts and unmounts it.
        ctr = session.create(image)
        with pytest.raises(RuntimeError):
            with session.rootfs(ctr):
                raise RuntimeError("the caller failed")
        inner = session.create(image)
        cm = session.rootfs(inner)
        cm.__enter__()  # never left: the session's close must release it
    assert _leftovers(bfs.mountpoint) == ([], [])

