"""The skip rule (tests/needs.py): a missing tool skips locally and fails under CI; only the
kernel's own limits skip everywhere; and nothing in tests/ skips any other way."""
from __future__ import annotations

import os
import re

import pytest

from tests import needs

HERE = os.path.dirname(os.path.abspath(__file__))


def test_missing_tool_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-xyz is not installed"):
        needs.need_tool("no-such-tool-xyz")


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_missing_tool_fails_under_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI is set and no-such-tool-xyz is not installed"):
        needs.need_tool("no-such-tool-xyz")
    with pytest.raises(pytest.fail.Exception):
        needs.need_module("no_such_module_xyz")


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_ci_unset_values(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert not needs.in_ci()


def test_present_tool_passes(monkeypatch):
    monkeypatch.setenv("CI", "1")
    assert needs.need_tool("sh").endswith("/sh")
    assert needs.need_tool("losetup", "util-linux").endswith("/losetup")   # found in sbin too


def test_kernel_limits_skip_even_under_ci(monkeypatch):
    from overlaylab.agent.backingfs import BackingFsUnavailable
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.skip.Exception, match="this kernel cannot"):
        needs.backing_fs_unavailable(BackingFsUnavailable("xfs-v4-noftype", "mount", "wrong fs type"))
    with pytest.raises(pytest.fail.Exception, match="mkfs failed"):
        needs.backing_fs_unavailable(BackingFsUnavailable("xfs", "mkfs", "mkfs.xfs: not found"))


def test_no_test_skips_outside_the_rule():
    bad = []
    pattern = re.compile(r"pytest\.skip\(|\.skipif\(|importorskip\(|mark\.skip\b")
    for root, _dirs, files in os.walk(HERE):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".py") or path in (os.path.join(HERE, "needs.py"), __file__):
                continue
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if pattern.search(line):
                        bad.append("%s:%d: %s" % (os.path.relpath(path, HERE), n, line.strip()))
    assert bad == [], "skip through tests/needs.py (need_tool/need/missing/kernel_cannot):\n" + "\n".join(bad)


def test_setup_installs_chromium_and_the_tools_tests_need():
    with open(os.path.join(HERE, "..", "scripts", "setup"), encoding="utf-8") as f:
        text = f.read()
    block = text[text.index("SYSTEM_PACKAGES=(") + len("SYSTEM_PACKAGES=("):text.index("\n)\n")]
    packages = {word for line in block.splitlines() for word in line.split("#")[0].split()}
    for p in ("chromium", "python3-toml", "zstd", "cpio", "qemu-system-x86", "busybox-static", "vagrant",
              "xfsprogs", "btrfs-progs", "e2fsprogs", "util-linux", "tar",
              "docker.io", "containers-storage", "fuse-overlayfs"):
        assert p in packages, p
