from __future__ import annotations

import contextlib
import os
import tempfile

import pytest

from overlaylab import graphdriver
from overlaylab.graphdriver import naivediff
from overlaylab.mountutil import unmount_all_under

# The backing filesystems this machine can make for the driver suite (issue: ext4, xfs, tmpfs).
SUITE_PROFILES = ["tmpfs", "ext4", "xfs"]


def release(driver) -> None:
    """Put every outstanding Get and unmount anything left, so teardown never leaks a mount."""
    proto = getattr(driver, "proto", driver)
    for layer_id in list(getattr(proto, "active", {})):
        with contextlib.suppress(Exception):
            while layer_id in proto.active:
                proto.put(layer_id)
    unmount_all_under(proto.home)
    driver.cleanup()


@pytest.fixture
def make_driver(backing_fs, umask022):
    """Factory: a driver the way graphtest makes one: ``GetDriver("overlay", mkdtemp(on fs))``."""
    drivers = []

    def make(profile: str, uid_maps=None, gid_maps=None):
        fs = backing_fs(profile)
        root = tempfile.mkdtemp(prefix="docker-graphtest-", dir=fs.mountpoint)
        os.chmod(root, 0o755)
        driver = graphdriver.get_driver("overlay", root, (), uid_maps, gid_maps)
        drivers.append(driver)
        return driver

    try:
        yield make
    finally:
        for d in drivers:
            release(d)


@pytest.fixture(params=SUITE_PROFILES)
def driver(request, make_driver):
    return make_driver(request.param)


@pytest.fixture
def in_process_apply(monkeypatch):
    """What 1.12's overlay tests do: apply in-process so errors surface directly."""
    from overlaylab import archive
    monkeypatch.setattr(naivediff, "apply_uncompressed_layer", archive.apply_layer_in_process)
