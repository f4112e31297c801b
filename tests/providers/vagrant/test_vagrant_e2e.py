"""A real Vagrant cycle: build (or reuse) the bookworm box, `vagrant up` it with python-vagrant,
run probes and scenarios through testinfra on several profiles, `vagrant destroy`, and check that
no libvirt domain, volume or forwarded port is left.

Marked ``vagrant``; CI runs it after `overlaylab host-setup`. Warm (box cached): about 2-3 min.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from overlaylab.providers.vagrant import boxes as B
from overlaylab.agent.profiles import default_profiles_path, load_profiles
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.matrix import Matrix
from overlaylab.lab.runner import Runner
from overlaylab.agent.scenario import all_scenarios
from overlaylab.providers import vagrant as V

pytestmark = [pytest.mark.vagrant, pytest.mark.timeout(1500)]

BOX = "bookworm"
PROFILES = ["ext4", "ext4-nofiletype", "btrfs", "tmpfs"]
SCENARIOS = ["driver-init", "dtype-whiteouts", "create-snap", "whiteouts-through-diff"]
RUN_PREFIX = re.compile(r"^overlaylab-[0-9a-f]{8}-")


def _virsh(*args):
    return subprocess.run(["virsh", "-c", "qemu:///system"] + list(args), capture_output=True, text=True,
                          timeout=60).stdout


def _run_domains_and_volumes():
    """Domains and volumes of provider runs (``overlaylab-<8 hex>-``; not the box base volumes)."""
    doms = {d for d in _virsh("list", "--all", "--name").split() if RUN_PREFIX.match(d)}
    vols = {line.split()[0] for line in _virsh("vol-list", "--pool", "default").splitlines()[2:]
            if line.split() and RUN_PREFIX.match(line.split()[0])}
    return doms, vols


def _new_since(before):
    """What this test's runs left (other runs on the same host may come and go meanwhile)."""
    doms, vols = _run_domains_and_volumes()
    return doms - before[0], vols - before[1]


@pytest.fixture(scope="module")
def host_ready():
    if not shutil.which("vagrant"):
        from overlaylab.providers.vagrant.hostsetup import host_setup
        host_setup()
    from overlaylab.providers.vagrant.hostsetup import host_setup
    host_setup(echo=lambda s: None)  # idempotent: starts libvirtd/virtlogd if needed
    t0 = time.monotonic()
    res = B.build_box(BOX)  # reused when cached and current
    print("\nbox %s: built=%s added=%s in %.1fs" % (BOX, res.built, res.added, time.monotonic() - t0))
    return res


def test_vagrant_box_runs_the_lab_and_leaves_nothing_behind(host_ready, tmp_path):
    before = _run_domains_and_volumes()
    all_profiles = load_profiles()
    profiles = {name: all_profiles[name] for name in PROFILES}
    catalogue = all_scenarios()
    scenarios = {sid: catalogue[sid] for sid in SCENARIOS}
    matrix = Matrix([BOX], profiles, scenarios, all_profiles)
    store = RunStore(str(tmp_path / "reports"))
    store.start(matrix=matrix.to_dict(), provider="vagrant")
    provider = V.VagrantProvider()
    events = []
    runner = Runner(provider, store, matrix, progress=lambda e, i: events.append((e, dict(i))),
                    profiles_text=default_profiles_path().read_text())
    t0 = time.monotonic()
    runner.run()
    store.finish("finished")
    seconds = time.monotonic() - t0
    run = load_run(store.path)

    target = run.target_record(BOX)
    assert target is not None and not target.get("error"), target
    assert target["provider"] == "vagrant"
    assert re.match(r"6\.1\.\d+-\d+-cloud-amd64$", target["kernel_release"]), target["kernel_release"]
    assert target["accel"] in ("tcg", "kvm")
    assert set(target["disks"]) == {"ext4", "ext4-nofiletype", "btrfs"}  # tmpfs needs no disk
    assert all(dev.startswith("/dev/vd") for dev in target["disks"].values())
    print("vagrant up -> agent ready in %.1fs; whole per-box matrix %.1fs" % (target["up_seconds"], seconds))

    cells = run.cell_map()
    assert len(cells) == len(PROFILES) * len(SCENARIOS)
    assert not [c for c in run.cells if c["outcome"] == "ERROR"], [
        (c["profile"], c["scenario"], c.get("error")) for c in run.cells if c["outcome"] == "ERROR"]
    # the driver's Init refuses btrfs, as Docker 1.10.3 does
    assert cells[(BOX, "btrfs", "driver-init", "port")]["outcome"] == "REFUSED"
    # ext4 with d_type: the driver works
    for sid in SCENARIOS:
        assert cells[(BOX, "ext4", sid, "port")]["outcome"] == "PASS", cells[(BOX, "ext4", sid, "port")]
    # ext4 without filetype: the d_type probe says false in the guest; the outcome is the expected one
    nodtype = run.profile_record(BOX, "ext4-nofiletype")
    assert nodtype is not None
    facts = nodtype.get("facts") or {k: v.get("value") for k, v in (nodtype.get("probes") or {}).items()}
    assert facts.get("d_type") is False, nodtype
    nodtype_cell = cells[(BOX, "ext4-nofiletype", "dtype-whiteouts", "port")]
    assert nodtype_cell["outcome"] == "FAIL" and nodtype_cell["expected"] == "FAIL", nodtype_cell  # moby#22937
    assert cells[(BOX, "ext4-nofiletype", "driver-init", "port")]["outcome"] == "PASS"  # 1.10.3's Init does not check d_type
    assert cells[(BOX, "tmpfs", "driver-init", "port")]["outcome"] == "PASS"
    assert not run.unmet(), [(c["profile"], c["scenario"], c["outcome"], c.get("expected")) for c in run.unmet()]

    # destroyed: no run domain, volume or forwarded port left
    assert provider.history, "the provider records each machine it brought up"
    last = provider.history[-1]
    assert last["cleanup"].get("still_left") == {}, last["cleanup"]
    assert not V.port_in_use(last["ssh_port"])
    assert _new_since(before) == (set(), set())
    assert not [d for d in _virsh("list", "--all", "--name").split() if d.startswith(last["domain_prefix"])]


def test_a_box_that_does_not_come_up_is_error_with_vagrants_output(host_ready, tmp_path):
    """`vagrant up` cut off by its time limit: ERROR cells whose evidence is Vagrant's output, and
    the half-made domain and its volumes are gone."""
    before = _run_domains_and_volumes()
    all_profiles = load_profiles()
    profiles = {"ext4": all_profiles["ext4"]}
    scenarios = {"driver-init": all_scenarios()["driver-init"]}
    matrix = Matrix([BOX], profiles, scenarios, all_profiles)
    store = RunStore(str(tmp_path / "reports"))
    store.start(matrix=matrix.to_dict(), provider="vagrant")
    provider = V.VagrantProvider(up_timeout=12)
    Runner(provider, store, matrix, profiles_text=default_profiles_path().read_text()).run()
    store.finish("finished")
    run = load_run(store.path)
    target = run.target_record(BOX)
    assert "did not come up" in target["error"]
    assert "ran past 12 s" in target["error"]
    assert "vagrant up" in target["evidence"]["output"] or "Bringing machine" in target["evidence"]["output"]
    [cell] = run.cells
    assert cell["outcome"] == "ERROR" and "did not come up" in cell["error"]
    last = provider.history[-1]
    assert last["cleanup"]["still_left"] == {}, last["cleanup"]
    assert _new_since(before) == (set(), set())


def test_ctrl_c_during_vagrant_up_leaves_nothing_behind(host_ready, tmp_path):
    """SIGINT to `overlaylab run` while the domain is being created: the run ends as interrupted,
    and no domain, volume or port of the run is left."""
    import os
    import signal
    import sys
    before = _run_domains_and_volumes()
    env = dict(os.environ, PYTHONPATH=str(B.PROJECT_ROOT))
    p = subprocess.Popen([sys.executable, "-m", "overlaylab", "run", "--provider", "vagrant", "-B", BOX,
                          "-p", "=ext4", "-k", "driver-init", "--reports-dir", str(tmp_path / "reports")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         cwd=str(B.PROJECT_ROOT))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not _new_since(before)[0]:
            assert p.poll() is None, p.stdout.read()
            time.sleep(0.5)
        assert _new_since(before)[0], "the run's domain never appeared"
        time.sleep(3)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, out
    assert "interrupted" in out
    assert _new_since(before) == (set(), set()), out
