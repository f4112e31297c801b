"""Init's ``modprobe overlay`` (moby v1.10.3 ``daemon/graphdriver/overlay/overlay.go``,
``supportsOverlay``): the PATH's ``modprobe`` with exactly ``overlay``, its result ignored, its
wait bounded and free of sleep polling."""
from __future__ import annotations

import os
import shutil
import stat
import time

import pytest

from overlaylab.graphdriver import overlay
from overlaylab.providers.qemu import guest_environment
from tests.needs import kernel_cannot, need



@pytest.fixture(autouse=True)
def _overlay_filesystem():
    if not any("\toverlay" in line for line in open("/proc/filesystems")):
        kernel_cannot("mount overlay (no overlay in /proc/filesystems)")


def _fake_modprobe(tmp_path, monkeypatch, body: str) -> str:
    """A ``modprobe`` first on PATH that logs its argv to ``calls`` and then runs ``body``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    script = bindir / "modprobe"
    script.write_text('#!/bin/sh\necho "$0 $*" >> %s\n%s\n' % (log, body))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", "%s:%s" % (bindir, os.environ.get("PATH", "")))
    return str(log)


def test_init_runs_modprobe_overlay_from_path_and_ignores_its_failure(tmp_path, monkeypatch):
    log = _fake_modprobe(tmp_path, monkeypatch, "echo refused >&2; exit 1")
    assert overlay.supports_overlay() is True
    with open(log) as f:
        assert f.read().split() == [str(tmp_path / "bin" / "modprobe"), "overlay"]


def test_a_missing_modprobe_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no modprobe anywhere on it
    assert overlay.supports_overlay() is True


def test_a_hung_modprobe_is_killed_after_the_bound(tmp_path, monkeypatch):
    _fake_modprobe(tmp_path, monkeypatch, "exec sleep 60")
    began = time.monotonic()
    overlay.modprobe_overlay(timeout=0.3)
    assert time.monotonic() - began < 10


def test_the_modprobe_wait_does_not_sleep_poll(tmp_path, monkeypatch):
    """subprocess's timeout wait sleeps in steps up to 50 ms; the pidfd wait never sleeps."""
    _fake_modprobe(tmp_path, monkeypatch, "exit 0")

    def no_sleep(seconds):
        raise AssertionError("the modprobe wait polled with time.sleep(%r)" % seconds)

    monkeypatch.setattr(time, "sleep", no_sleep)
    overlay.modprobe_overlay()


def test_the_guest_resolves_modprobe_to_the_hosts_kmod_not_busybox():
    """The guest's PATH (providers/qemu.py) finds the host's modprobe, which honours the
    ``MODPROBE_OPTIONS=-d`` that points it at the guest kernel's modules; busybox's modprobe
    ignores that variable and could load nothing there (see overlaylab/vm/guest_init.sh)."""
    env = guest_environment()
    found = shutil.which("modprobe", path=env["PATH"])
    need(found is not None, "modprobe is not on the guest's PATH (Debian package kmod)")
    assert os.path.basename(os.path.realpath(found)) != "busybox"
    assert env["MODPROBE_OPTIONS"].startswith("-d ")
