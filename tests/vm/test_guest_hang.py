"""A guest that hangs during a cell costs that cell only (issue #14, "Kernel health per cell"):
one boot of debian-6.1 under qemu, a test-only scenario (``health-hang``, tests/health_scenarios.py)
that logs a line to the console and sleeps on the tmpfs profile, and the test freezes the whole VM
(SIGSTOP on qemu) as soon as that line shows: to the host that is a hung guest — no console, no
ssh, qemu still there. The runner's ssh notices (ServerAliveInterval x ServerAliveCountMax of the
session's ssh_config), finds the guest does not answer, makes that cell ERROR with the console
tail, kills the frozen qemu, boots the guest again, and the next cell of the same profile and the
cells of the next profile PASS; no qemu is left, stopped or not."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time

import pytest

from overlaylab.agent.profiles import load_profiles
from overlaylab.agent.scenario import REGISTRY, all_scenarios
from overlaylab.lab.matrix import Matrix
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.runner import Runner
from overlaylab.providers.qemu import PROJECT_ROOT, QemuProvider
from tests import health_scenarios

from .conftest import qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.slow]

#: seconds from the freeze to the ERROR cell: the ssh keepalive (5 s x 6), the exit wait (5 s),
#: one ssh attempt (ConnectTimeout 10 s), with room for a loaded machine
DETECT_LIMIT = 120.0


def _freeze_when_in_flight(console_log: str, vm_dir: str, frozen: dict, stop: threading.Event) -> None:
    """SIGSTOP every qemu under ``vm_dir`` once the console shows the hang scenario's line."""
    while not stop.wait(0.2):
        try:
            with open(console_log, errors="replace") as f:
                if health_scenarios.HANG_LINE not in f.read():
                    continue
        except OSError:
            continue
        pids = qemu_pids(vm_dir)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        frozen.update(pids=pids, at=time.monotonic())
        return


def test_a_hung_guest_is_one_error_cell_and_the_rebooted_guest_runs_the_rest(kernel_61, tmp_path):
    catalogue = all_scenarios()
    health_scenarios.register()
    # the site dir must be visible in the guest: the host's /tmp is covered by a tmpfs there
    site_parent = tempfile.mkdtemp(prefix=".health-site.", dir=PROJECT_ROOT)
    vm_tmp = tempfile.mkdtemp(prefix="olhang.")  # short: ssh's ControlPath lives there
    events = []
    frozen: dict = {}
    stop = threading.Event()
    try:
        scenarios = {"health-hang": REGISTRY["health-hang"], "driver-init": catalogue["driver-init"]}
        profiles = load_profiles()
        matrix = Matrix(["debian-6.1"], {"tmpfs": profiles["tmpfs"], "ext4": profiles["ext4"]}, scenarios)
        provider = QemuProvider(project_root=health_scenarios.site_dir(site_parent) + os.pathsep + PROJECT_ROOT,
                                workdir_base=vm_tmp)
        store = RunStore(str(tmp_path / "reports"), run_id="hang")
        store.start()
        watcher = threading.Thread(target=_freeze_when_in_flight, daemon=True, args=(
            os.path.join(store.path, "console-debian-6.1.log"), vm_tmp, frozen, stop))
        watcher.start()
        started = time.monotonic()
        try:
            Runner(provider, store, matrix,
                   progress=lambda e, info: events.append((time.monotonic(), e, info))).run()
        finally:
            total = time.monotonic() - started
            store.finish()
            left = qemu_pids(vm_tmp)
        assert frozen.get("pids"), "the hang scenario's line never reached the console"
        assert not left, "qemu outlived the run: %s" % left
        assert not any(os.path.exists("/proc/%d" % pid) for pid in frozen["pids"]), "the frozen qemu is still there"
        cells = {(p, s): c for (_, p, s, _), c in load_run(store.path).cell_map().items()}
        assert sorted(cells) == sorted((p, s) for p in ("tmpfs", "ext4") for s in scenarios)
        hung = cells[("tmpfs", "health-hang")]
        assert hung["outcome"] == "ERROR", hung
        assert re.fullmatch(r"the guest does not answer \(ssh to 127\.0\.0\.1 failed: [^\n]+\) during this cell",
                            hung["error"]), hung["error"]
        assert any(health_scenarios.HANG_LINE in line for line in hung["evidence"]["console_tail"]), hung["evidence"]
        for key in (("tmpfs", "driver-init"), ("ext4", "health-hang"), ("ext4", "driver-init")):
            assert cells[key]["outcome"] == "PASS" and cells[key]["met"], (key, cells[key].get("error"))
        # the frozen boot's console is kept beside the new one
        with open(os.path.join(store.path, "console-debian-6.1.boot1.log"), errors="replace") as f:
            assert health_scenarios.HANG_LINE in f.read()
        phases = {info["phase"]: round(info["seconds"], 1) for _, e, info in events
                  if e == "phase-end" and info.get("phase") in ("boot", "reboot")}
        assert set(phases) == {"boot", "reboot"}, events
        erred = next(t for t, e, info in events if e == "cell" and info.get("scenario") == "health-hang"
                     and info.get("profile") == "tmpfs")
        detected = erred - frozen["at"]
        print(hung["error"])
        print("freeze to ERROR cell: %.1f s; boot and reboot: %s; whole run: %.1f s" % (detected, phases, total))
        assert detected < DETECT_LIMIT, "the hang took %.0f s to notice" % detected
    finally:
        stop.set()
        for pid in qemu_pids(vm_tmp):  # SIGKILL ends a stopped qemu too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for sid in health_scenarios.SCENARIO_IDS:
            REGISTRY.pop(sid, None)
        shutil.rmtree(site_parent, ignore_errors=True)
        shutil.rmtree(vm_tmp, ignore_errors=True)
