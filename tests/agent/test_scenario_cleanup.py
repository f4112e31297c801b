"""What a cell leaves behind: nothing mounted, no workspace, whichever way the mount-table check
(:func:`overlaylab.agent.backingfs.mounts_below`, which skips the parse when the table does not
name the path) answers."""
from __future__ import annotations

import contextlib
import os
import tempfile

from overlaylab import mountutil
from overlaylab.agent.scenario import ScenarioContext
from overlaylab.agent.scenarios._layers import mounts
from overlaylab.agent.scenarios.breakages import workspace


def _mounted(path: str) -> bool:
    return any(m.mountpoint == path for m in mountutil.mountinfo())


def test_breakage_workspace_unmounts_what_a_case_left_mounted_and_removes_itself():
    with tempfile.TemporaryDirectory(prefix="cleanup.") as backing:
        ctx = ScenarioContext(backing, {}, backing)
        inner = None
        try:
            with workspace(ctx) as ws:
                inner = os.path.join(ws.root, "a", "m")
                os.makedirs(inner)
                mountutil.mount("tmpfs", inner, "tmpfs", 0, "size=1m")
                assert _mounted(inner)
            assert not _mounted(inner)
            assert not os.path.exists(ws.root)
        finally:
            if inner and _mounted(inner):
                mountutil.umount(inner, mountutil.MNT_DETACH)


def test_breakage_workspace_without_mounts_is_removed():
    with tempfile.TemporaryDirectory(prefix="cleanup.") as backing:
        ctx = ScenarioContext(backing, {}, backing)
        with workspace(ctx) as ws:
            os.makedirs(os.path.join(ws.root, "d"))
        assert not os.path.exists(ws.root)
        assert os.listdir(backing) == []


class _Home:
    def __init__(self, home: str):
        self.home = home


def test_mounts_lists_the_mounts_below_a_driver_home_and_nothing_else():
    with tempfile.TemporaryDirectory(prefix="cleanup.") as home:
        target = os.path.join(home, "layer", "merged")
        os.makedirs(target)
        assert mounts(_Home(home)) == []
        mountutil.mount("tmpfs", target, "tmpfs", 0, "size=1m")
        try:
            assert [m.mountpoint for m in mounts(_Home(home))] == [target]
            assert mounts(_Home(home + "-other")) == []
        finally:
            with contextlib.suppress(OSError):
                mountutil.umount(target)
