"""Fixtures shared by every test directory: real backing filesystems and a leak check.

The tests run as root against the real kernel. ``backing_fs(name)`` makes a profile from
``vms/filesystems.toml`` on a loop device (or tmpfs/overlay) and always tears it down, also
when the test fails. At the end of the session, any mount or loop device that a test left
behind under the session's temp dir fails the run.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile

import pytest

from tests.needs import backing_fs_unavailable, missing, need_tool

from overlaylab.agent.backingfs import BackingFsUnavailable, make_backing_fs
from overlaylab.agent.profiles import load_profiles
from overlaylab.mountutil import mounts_under

SESSION_TMP = tempfile.mkdtemp(prefix="overlaylab-tests.")


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError("overlaylab's tests need root (real mounts, loop devices, mknod)")


@pytest.fixture(scope="session")
def kernel_61():
    """debian-6.1 from the user's cache (fetched once; skipped when no network and no cache)."""
    from overlaylab.kernels import KernelUnavailable, fetch_kernel

    need_tool("apt-get", "apt")
    need_tool("dpkg-deb", "dpkg")
    try:
        return fetch_kernel("debian-6.1")
    except KernelUnavailable as e:
        missing(str(e))


@pytest.fixture(scope="session")
def profiles():
    return load_profiles()


@pytest.fixture
def backing_fs(profiles, request):
    """Factory: ``backing_fs("ext4")`` -> a mounted :class:`BackingFs`, torn down after the test.

    A profile this kernel cannot mount is skipped with the reason (e.g. xfs V4 on a new kernel);
    one whose mkfs/losetup failed is a missing tool (:mod:`tests.needs`: fails under CI).
    """
    stack = contextlib.ExitStack()
    workdir = tempfile.mkdtemp(prefix=request.node.name[:40].replace("/", "_") + ".", dir=SESSION_TMP)

    def make(name: str, device=None):
        try:
            return stack.enter_context(make_backing_fs(profiles[name], workdir, device=device))
        except BackingFsUnavailable as err:
            backing_fs_unavailable(err)

    try:
        yield make
    finally:
        stack.close()
        with contextlib.suppress(OSError):
            os.rmdir(workdir)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _leaks(settle: float = 10.0):
    """Mounts and loop devices under the session's temp dir (loop release is asynchronous)."""
    import time
    deadline = time.monotonic() + settle
    while True:
        mounts = [m.mountpoint for m in mounts_under(SESSION_TMP)]
        out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        loops = [line for line in out.splitlines() if SESSION_TMP in line]
        if not (mounts or loops) or time.monotonic() >= deadline:
            return mounts, loops
        time.sleep(0.2)


def pytest_sessionfinish(session, exitstatus):
    mounts, loops = _leaks()
    if mounts or loops:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "LEAK: tests left mounts %s and loop devices %s" % (mounts, loops)
        if tr:
            tr.write_line(msg, red=True)
        session.exitstatus = 1
        return
    with contextlib.suppress(OSError):
        os.rmdir(SESSION_TMP)
