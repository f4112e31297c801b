"""Fixtures for the agent tests (backing filesystems, probes): profiles, and backing filesystems that are always torn down.

``fs_factory(name_or_profile, device=None)`` makes a real backing filesystem (loop device,
mkfs, mount) for the duration of one test; ``module_fs_factory`` the same for a whole module.
Both close every filesystem they made at teardown, whatever the test did, and then check
that nothing is left mounted under their work directory. Unlike the suite-wide
``backing_fs`` (which skips a profile the kernel cannot make), these raise
:class:`BackingFsUnavailable`, because the backing-fs and probe tests assert on exactly that.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Union

import pytest

from overlaylab import mountutil
from overlaylab.agent.backingfs import BackingFs, make_backing_fs, unmount_tree
from overlaylab.agent.profiles import FsProfile, load_profiles
from tests.needs import need, which


def _why_no_real_mounts() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root (real loop devices, mkfs and mounts)"
    if which("losetup") is None:
        return "losetup (util-linux) is not installed"
    return None


NO_REAL_MOUNTS = _why_no_real_mounts()
# Skipped locally, failed under CI (tests/needs.py): root and losetup are the machine's to provide.
requires_root = pytest.mark.usefixtures("_real_mounts")


@pytest.fixture
def _real_mounts():
    need(NO_REAL_MOUNTS is None, NO_REAL_MOUNTS or "")


@pytest.fixture(scope="session")
def lab_profiles():
    return load_profiles()


class BackingFsFactory:
    """Makes backing filesystems inside one work directory and closes them all at the end."""

    def __init__(self, workdir: str, profiles):
        self.workdir = workdir
        self.profiles = profiles
        self._stack = contextlib.ExitStack()
        self.made = []

    def __call__(self, profile: Union[str, FsProfile], device: Optional[str] = None) -> BackingFs:
        if isinstance(profile, str):
            profile = self.profiles[profile]
        bfs = self._stack.enter_context(make_backing_fs(profile, self.workdir, device))
        self.made.append(bfs)
        return bfs

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            left = mountutil.mounts_under(self.workdir)
            if left:  # belt and braces: never leave a mount behind a test run
                unmount_tree(self.workdir)
                pytest.fail("mounts left under %s: %s" % (self.workdir, [m.mountpoint for m in left]))


@pytest.fixture
def lab_workdir(tmp_path) -> str:
    return os.path.realpath(str(tmp_path))


@pytest.fixture
def fs_factory(lab_workdir, lab_profiles) -> Iterator[BackingFsFactory]:
    """Factory fixture: ``fs_factory("xfs")`` -> a mounted :class:`BackingFs` for this test."""
    need(NO_REAL_MOUNTS is None, NO_REAL_MOUNTS or "")
    factory = BackingFsFactory(lab_workdir, lab_profiles)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_fs_factory(tmp_path_factory, lab_profiles) -> Iterator[BackingFsFactory]:
    """The same factory, shared by a module (filesystems live until the module ends)."""
    need(NO_REAL_MOUNTS is None, NO_REAL_MOUNTS or "")
    factory = BackingFsFactory(os.path.realpath(str(tmp_path_factory.mktemp("lab"))), lab_profiles)
    try:
        yield factory
    finally:
        factory.close()
