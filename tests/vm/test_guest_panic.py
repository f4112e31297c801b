"""A guest kernel panic during a cell costs that cell only (issue #14): one boot of debian-6.1
under qemu, a test-only scenario that crashes the guest (sysrq ``c``, tests/health_scenarios.py)
on the tmpfs profile. That cell is ERROR with "Kernel panic" in its console tail, the VM is
booted again, and the next cell of the same profile and the cells of the next profile PASS;
no qemu is left running. The cell is named from its mark on the console, which outlives the
panic, even when the agent's start record went down with the guest (CI saw that once)."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from overlaylab.agent import cellmark
from overlaylab.agent.profiles import load_profiles
from overlaylab.agent.scenario import REGISTRY, all_scenarios
from overlaylab.lab.matrix import Matrix
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.runner import Runner
from overlaylab.providers.qemu import PROJECT_ROOT, QemuProvider
from tests import health_scenarios

from .conftest import qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_a_guest_panic_is_one_error_cell_and_the_rebooted_guest_runs_the_rest(kernel_61, tmp_path):
    catalogue = all_scenarios()
    health_scenarios.register()
    # the site dir must be visible in the guest: the host's /tmp is covered by a tmpfs there
    site_parent = tempfile.mkdtemp(prefix=".health-site.", dir=PROJECT_ROOT)
    vm_tmp = tempfile.mkdtemp(prefix="olpanic.")  # short: ssh's ControlPath lives there
    events = []
    try:
        scenarios = {"health-panic": REGISTRY["health-panic"], "driver-init": catalogue["driver-init"]}
        profiles = load_profiles()
        matrix = Matrix(["debian-6.1"], {"tmpfs": profiles["tmpfs"], "ext4": profiles["ext4"]}, scenarios)
        provider = QemuProvider(project_root=health_scenarios.site_dir(site_parent) + os.pathsep + PROJECT_ROOT,
                                workdir_base=vm_tmp)
        store = RunStore(str(tmp_path / "reports"), run_id="panic")
        store.start()
        try:
            Runner(provider, store, matrix, progress=lambda e, info: events.append((e, info))).run()
        finally:
            store.finish()
            left = qemu_pids(vm_tmp)
        assert not left, "qemu outlived the run: %s" % left
        cells = {(p, s): c for (_, p, s, _), c in load_run(store.path).cell_map().items()}
        assert sorted(cells) == sorted((p, s) for p in ("tmpfs", "ext4") for s in scenarios)
        crashed = cells[("tmpfs", "health-panic")]
        assert crashed["outcome"] == "ERROR", crashed
        assert crashed["error"] == "the guest kernel panicked during this cell", \
            "\n".join(crashed["evidence"]["console_tail"] + crashed["evidence"]["stderr_tail"])
        assert any("Kernel panic - not syncing" in line for line in crashed["evidence"]["console_tail"])
        # the cell's mark is on the console before the panic, whatever the ssh stream delivered
        tail = crashed["evidence"]["console_tail"]
        assert cellmark.last_mark(tail) == ("tmpfs", "health-panic", "port"), "\n".join(tail)
        assert [i for i, l in enumerate(tail) if cellmark.is_mark(l)][-1] < \
            [i for i, l in enumerate(tail) if "Kernel panic - not syncing" in l][0]
        assert "panic" in [w["kind"] for w in crashed["health"]["kernel_warnings"]]
        for key in (("tmpfs", "driver-init"), ("ext4", "health-panic"), ("ext4", "driver-init")):
            assert cells[key]["outcome"] == "PASS" and cells[key]["met"], (key, cells[key].get("error"))
        # the dead boot's console is kept beside the new one
        with open(os.path.join(store.path, "console-debian-6.1.boot1.log"), errors="replace") as f:
            assert "sysrq triggered crash" in f.read()
        boots = {info["phase"]: round(info["seconds"], 1) for e, info in events
                 if e == "phase-end" and info.get("phase") in ("boot", "reboot")}
        assert set(boots) == {"boot", "reboot"}, events
        print("boot and reboot seconds:", boots)
    finally:
        for sid in health_scenarios.SCENARIO_IDS:
            REGISTRY.pop(sid, None)
        shutil.rmtree(site_parent, ignore_errors=True)
        shutil.rmtree(vm_tmp, ignore_errors=True)
