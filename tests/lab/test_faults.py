"""Faults leave nothing behind: signals during teardown, a killed agent, dead runs' leftovers,
runs whose runner died, and a full reports disk."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from overlaylab.agent import cleanup as cleanup_mod
from overlaylab.agent.backingfs import unmount_tree
from overlaylab.mountutil import mounts_under
from overlaylab.providers.session import SessionBase

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
REAL_LOSETUP = shutil.which("losetup", path="/usr/sbin:/sbin:/usr/bin:/bin")


def _loops_under(path, settle=0.0):
    """Loop devices whose backing file is under ``path`` (waiting up to ``settle`` s for the
    kernel's asynchronous release)."""
    deadline = time.monotonic() + settle
    while True:
        loops = [d for d, b in cleanup_mod.loop_backing_files().items() if b.startswith(path.rstrip("/") + "/")]
        if not loops or time.monotonic() >= deadline:
            return loops
        time.sleep(0.2)


def _wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


@pytest.fixture
def lab_tmp(tmp_path):
    """TMPDIR for agents (so anything they leave is found, and cleaned, here) and a private
    lease directory; both are emptied whatever the test did."""
    d = tmp_path / "agent-tmp"
    d.mkdir()
    state = tmp_path / "state"
    env = {"TMPDIR": str(d), cleanup_mod.STATE_ENV: str(state)}
    yield str(d), env
    unmount_tree(str(d))
    for dev in _loops_under(str(d)):
        subprocess.run([REAL_LOSETUP, "-d", dev])


@pytest.fixture
def slow_losetup(tmp_path):
    """A PATH shim: ``losetup -d`` touches a flag file, sleeps 3 s, then runs the real one."""
    shim = tmp_path / "shim"
    shim.mkdir()
    flag = tmp_path / "detaching"
    (shim / "losetup").write_text("#!/bin/sh\ncase \" $* \" in *\" -d \"*) touch %s; sleep 3;; esac\nexec %s \"$@\"\n"
                                  % (flag, REAL_LOSETUP))
    (shim / "losetup").chmod(0o755)
    return str(shim), flag


def _agent(env, *args):
    return subprocess.Popen([sys.executable, "-m", "overlaylab.agent"] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, **env))


def test_a_signal_during_losetup_d_does_not_leak_the_loop_device(lab_tmp, slow_losetup):
    tmp, env = lab_tmp
    shim, flag = slow_losetup
    proc = _agent(dict(env, PATH=shim + ":" + os.environ["PATH"]), "run", "--profile", "ext4", "--scenario", "driver-init")
    try:
        _wait_for(flag.exists, 120, "the agent's losetup -d")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the agent *and* the detaching losetup get it
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert _loops_under(tmp, settle=10) == [], err
    assert mounts_under(tmp) == []
    assert os.listdir(tmp) == []  # the agent directory went too
    assert os.listdir(env[cleanup_mod.STATE_ENV]) == []  # its lease was released
    assert proc.returncode == 130 and '"interrupted"' in out  # the signal was delivered, after teardown
    assert '"cell"' in out


def _start_run(reports, env, *args):
    return subprocess.Popen(OVERLAYLAB + ["run", "--provider", "local", "--reports-dir", str(reports)] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **env), start_new_session=True)


def _agents_of(pid):
    from overlaylab.agent.procutil import descendants, is_agent
    return [p for p in descendants(pid) if is_agent(p)]


def _only_run(reports):
    from overlaylab.lab.results import load_run
    (name,) = os.listdir(os.path.join(str(reports), "runs"))
    return load_run(os.path.join(str(reports), "runs", name))


def test_sigkill_of_the_agent_is_named_cleaned_up_and_the_next_profile_runs(tmp_path, lab_tmp):
    tmp, env = lab_tmp
    reports = tmp_path / "reports"
    proc = _start_run(reports, env, "-p", "=ext4 or =tmpfs", "-k", "deep-layer-chain or driver-init")
    try:
        _wait_for(lambda: mounts_under(tmp) and _agents_of(proc.pid), 120, "the ext4 profile's mount")
        (agent,) = _agents_of(proc.pid)
        os.kill(agent, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, out + err  # ERROR cells only: the lab's own failure (exit 3), a finished run
    cells = _only_run(reports).cell_map()
    assert len(cells) == 4
    killed = [c for (t, p, s, e), c in cells.items() if p == "ext4" and c["outcome"] == "ERROR"]
    assert killed, cells
    for cell in killed:
        assert "the agent died: SIGKILL (signal 9)" in cell["error"] and "ran past" not in cell["error"]
        assert any("mount " in i for i in cell["evidence"]["cleanup"]), cell["evidence"]["cleanup"]
        assert any("loop device /dev/loop" in i for i in cell["evidence"]["cleanup"])
    # the next profile ran, in a new agent
    assert cells[("host", "tmpfs", "driver-init", "port")]["outcome"] == "PASS"
    assert cells[("host", "tmpfs", "deep-layer-chain", "port")]["outcome"] == "PASS"
    # the dead agent's mount, loop device and directory are gone
    assert mounts_under(tmp) == [] and _loops_under(tmp, settle=10) == []
    assert os.listdir(tmp) == []
    assert os.listdir(env[cleanup_mod.STATE_ENV]) == []


def _dead_owner():
    """A pid that was a process a moment ago (and is gone now)."""
    p = subprocess.Popen(["sleep", "60"])
    return p


def test_cleanup_lists_then_removes_what_dead_runs_left_and_spares_live_ones(tmp_path, lab_tmp):
    tmp, env = lab_tmp
    os.environ[cleanup_mod.STATE_ENV] = env[cleanup_mod.STATE_ENV]
    qemu = None
    try:
        owner = _dead_owner()
        # an agent directory with a mounted loop filesystem, as a SIGKILLed agent leaves it
        agent_dir = os.path.join(tmp, "overlaylab-agent.dead")
        os.makedirs(os.path.join(agent_dir, "ext4.x", "mnt"))
        cleanup_mod.mark(agent_dir, "agent-dir", run="r-dead", owner_pid=owner.pid)
        image = os.path.join(agent_dir, "ext4.x", "fs.img")
        with open(image, "wb") as f:
            f.truncate(32 << 20)
        dev = subprocess.run([REAL_LOSETUP, "--find", "--show", image], capture_output=True, text=True,
                             check=True).stdout.strip()
        subprocess.run(["mkfs.ext4", "-q", dev], check=True)
        subprocess.run(["mount", dev, os.path.join(agent_dir, "ext4.x", "mnt")], check=True)
        # a qemu VM's run directory with its (real) qemu still running
        vm_dir = os.path.join(tmp, "overlaylab-qemu-dead")
        os.makedirs(vm_dir)
        lease = cleanup_mod.mark(vm_dir, "qemu", run="r-dead", owner_pid=owner.pid)
        with open(os.path.join(vm_dir, "disk.img"), "wb") as f:
            f.truncate(1 << 20)
        qemu = subprocess.Popen(["qemu-system-x86_64", "-name", cleanup_mod.qemu_name(lease), "-machine", "none",
                                 "-S", "-nodefaults", "-display", "none",
                                 "-pidfile", os.path.join(vm_dir, "qemu.pid")],
                                stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_for(lambda: os.path.exists(os.path.join(vm_dir, "qemu.pid")), 30, "qemu's pidfile")
        # a live run's directory: its owner (this test) is alive, so it is not a leftover
        live_dir = os.path.join(tmp, "overlaylab-agent.live")
        os.makedirs(live_dir)
        cleanup_mod.mark(live_dir, "agent-dir", run="r-live")
        owner.kill()
        owner.wait()

        listed = subprocess.run(OVERLAYLAB + ["cleanup", "--dry-run"], capture_output=True, text=True,
                                env=dict(os.environ, **env))
        assert listed.returncode == 0, listed.stderr
        out = listed.stdout
        assert "would remove mount %s" % os.path.join(agent_dir, "ext4.x", "mnt") in out
        assert "would remove loop device %s" % dev in out
        assert "would remove qemu process %d" % qemu.pid in out
        assert "directory %s" % agent_dir in out and "directory %s" % vm_dir in out
        assert "owner pid %d gone" % owner.pid in out and "run r-dead" in out
        assert "live" not in out
        assert mounts_under(agent_dir) and qemu.poll() is None  # --dry-run touched nothing

        done = subprocess.run(OVERLAYLAB + ["cleanup"], capture_output=True, text=True, env=dict(os.environ, **env))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "removed mount" in done.stdout and "removed qemu process %d" % qemu.pid in done.stdout
        qemu.wait(timeout=30)
        assert mounts_under(tmp) == [] and _loops_under(tmp, settle=10) == []
        assert not os.path.exists(agent_dir) and not os.path.exists(vm_dir)
        assert os.path.isdir(live_dir)
        assert [le["run"] for le in cleanup_mod.leases()] == ["r-live"]
        again = subprocess.run(OVERLAYLAB + ["cleanup"], capture_output=True, text=True, env=dict(os.environ, **env))
        assert again.stdout.strip() == "nothing left behind by dead runs"
    finally:
        os.environ.pop(cleanup_mod.STATE_ENV, None)
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait()


def test_a_marker_that_does_not_match_its_lease_protects_the_directory(tmp_path, lab_tmp):
    """A lease pointing at a directory whose marker is another's (or missing) removes only
    the stale lease: nothing is deleted on a path's say-so alone."""
    tmp, env = lab_tmp
    os.environ[cleanup_mod.STATE_ENV] = env[cleanup_mod.STATE_ENV]
    try:
        owner = _dead_owner()
        d = os.path.join(tmp, "someone-elses")
        os.makedirs(d)
        cleanup_mod.mark(d, "agent-dir", run="r1", owner_pid=owner.pid)
        os.unlink(os.path.join(d, cleanup_mod.MARKER))
        with open(os.path.join(d, "precious"), "w") as f:
            f.write("x")
        owner.kill()
        owner.wait()
        found = cleanup_mod.cleanup()
        assert [e["items"][0].split(" (")[0] for e in found] == ["stale lease %s" % found[0]["lease"]["id"]]
        assert os.path.exists(os.path.join(d, "precious")) and cleanup_mod.leases() == []
    finally:
        os.environ.pop(cleanup_mod.STATE_ENV, None)


def _cell(scenario):
    return {"record": "cell", "target": "host", "profile": "tmpfs", "scenario": scenario, "group": "g",
            "outcome": "PASS", "expected": "PASS", "met": True, "duration": 0.1, "error": "", "log": [],
            "evidence": {}}


def test_a_run_whose_runner_was_killed_reads_as_interrupted_and_incomplete(tmp_path):
    from overlaylab.lab.results import load_run
    script = ("import os, sys; from overlaylab.lab.results import RunStore\n"
              "s = RunStore(sys.argv[1], run_id='dead-run'); s.start(cells_expected=6)\n"
              "for sc in ('driver-init', 'create-empty'):\n"
              "    s.append(%r | {'scenario': sc})\n"
              "os.kill(os.getpid(), 9)\n" % _cell("x"))
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == -9, res.stderr
    path = os.path.join(str(tmp_path), "runs", "dead-run")
    with open(os.path.join(path, "run.json")) as f:
        meta = json.load(f)
    assert meta["status"] == "running" and meta["runner"]["pid"] > 0 and meta["runner"]["boot_id"]
    shown = subprocess.run(OVERLAYLAB + ["show", "dead-run", "--reports-dir", str(tmp_path)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "interrupted: incomplete: 2 of 6 cells" in shown.stdout
    with open(os.path.join(path, "run.json")) as f:
        meta = json.load(f)
    assert meta["status"] == "interrupted" and "is gone" in meta["interrupted_reason"]
    assert load_run(path).meta["status"] == "interrupted"


def test_a_run_from_an_earlier_boot_is_interrupted_even_if_its_pid_lives(tmp_path):
    from overlaylab.lab.results import RunStore, load_run
    store = RunStore(str(tmp_path), run_id="r-old-boot")
    store.start(cells_expected=3)
    store.append(_cell("driver-init"))
    store.meta["runner"]["boot_id"] = "00000000-0000-0000-0000-000000000000"  # power loss, reboot
    store._write_meta()
    assert load_run(store.path).meta["status"] == "interrupted"
    live = RunStore(str(tmp_path), run_id="r-live")
    live.start(cells_expected=3)
    assert load_run(live.path).meta["status"] == "running"  # its runner (this process) is alive
    live.finish()
    store.finish()


@pytest.fixture
def tiny_fs(tmp_path):
    """A real tiny filesystem (tmpfs of a given size) for --reports-dir; unmounted at the end."""
    made = []

    def make(size_kib):
        d = tmp_path / ("tiny%d" % len(made))
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dk" % size_kib, "tiny", str(d)], check=True)
        made.append(str(d))
        return str(d)
    yield make
    for d in made:
        subprocess.run(["umount", "-l", d])


# create-empty is stored within a second; the five after it take seconds (time to fill the disk)
SIX = "-k", ("create-empty or deep-layer-chain or concurrent-get-put or diff-apply-roundtrip or full-tree-export"
             " or deep-layer-limit")


def test_a_reports_dir_without_room_is_refused_before_starting(lab_tmp, tiny_fs):
    tmp, env = lab_tmp
    reports = tiny_fs(256)
    res = subprocess.run(OVERLAYLAB + ["run", "--provider", "local", "--reports-dir", reports, "-p", "=tmpfs", *SIX],
                         capture_output=True, text=True, env=dict(os.environ, **env), timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "KiB free" in res.stderr and "a run of 6 cells needs" in res.stderr and "Traceback" not in res.stderr
    assert os.listdir(reports) == []


def test_a_full_reports_disk_stops_the_run_cleanly_and_keeps_every_cell(tmp_path, lab_tmp, tiny_fs):
    tmp, env = lab_tmp
    reports = tiny_fs(1400)
    proc = _start_run(reports, env, "-p", "=tmpfs", *SIX)
    try:
        results = []
        _wait_for(lambda: results or [results.extend([os.path.join(r, f) for r, _, fs in os.walk(reports)
                                                       for f in fs if f == "results.jsonl"])] and results,
                  60, "results.jsonl")
        _wait_for(lambda: '"cell"' in open(results[0]).read(), 120, "the first stored cell")
        fd = os.open(os.path.join(reports, "filler"), os.O_WRONLY | os.O_CREAT)  # the disk fills up mid-run
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, out + err
    assert "Traceback" not in err and "reports disk full" in err
    run_dir = os.path.dirname(results[0])
    with open(os.path.join(run_dir, "run.json")) as f:
        meta = json.load(f)
    assert meta["status"] == "failed" and meta["reason"] == "reports disk full"
    assert not os.path.exists(os.path.join(run_dir, "run.json.tmp"))
    with open(results[0]) as f:
        text = f.read()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())  # no torn line
    stored = [json.loads(line) for line in text.splitlines() if '"cell"' in line]
    ran = int(err.split(" cells ran")[0].rsplit(";", 1)[-1].strip().split()[-1])
    assert 6 > ran >= len(stored) >= 1  # stopped: not every cell ran
    # every cell that ran is in the table printed to the terminal
    for cell in stored:
        assert cell["scenario"] in out
    assert mounts_under(tmp) == [] and _loops_under(tmp, settle=10) == []


def test_the_next_append_after_a_torn_line_starts_on_a_fresh_line(tmp_path):
    from overlaylab.lab.results import RunStore
    store = RunStore(str(tmp_path), run_id="r-torn")
    store.start(cells_expected=2)
    store.append(_cell("driver-init"))
    store.finish()
    results = os.path.join(store.path, "results.jsonl")
    with open(results, "a") as f:
        f.write('{"record": "cell", "target": "host", "prof')  # a crash mid-write
    again = RunStore(str(tmp_path), run_id="r-torn")
    again.append(_cell("create-empty"))
    again.finish()
    with open(results) as f:
        lines = f.read().splitlines()
    assert len(lines) == 3 and lines[1].endswith('"prof')
    assert json.loads(lines[2])["scenario"] == "create-empty"
    assert not os.path.exists(os.path.join(store.path, "run.json.tmp"))


def test_a_run_first_removes_what_dead_runs_left(tmp_path, lab_tmp):
    tmp, env = lab_tmp
    os.environ[cleanup_mod.STATE_ENV] = env[cleanup_mod.STATE_ENV]
    try:
        owner = _dead_owner()
        stale = os.path.join(tmp, "overlaylab-agent.stale")
        os.makedirs(os.path.join(stale, "tmpfs.x", "mnt"))
        cleanup_mod.mark(stale, "agent-dir", run="r-earlier", owner_pid=owner.pid)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stale", os.path.join(stale, "tmpfs.x", "mnt")],
                       check=True)
        owner.kill()
        owner.wait()
        res = subprocess.run(OVERLAYLAB + ["run", "--provider", "local", "--reports-dir", str(tmp_path / "reports"),
                                           "-p", "=tmpfs", "-k", "driver-init"], capture_output=True, text=True,
                             env=dict(os.environ, **env), timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "cleanup: removed mount %s" % os.path.join(stale, "tmpfs.x", "mnt") in res.stderr
        assert not os.path.exists(stale) and mounts_under(tmp) == []
        assert cleanup_mod.leases() == []
    finally:
        os.environ.pop(cleanup_mod.STATE_ENV, None)


def test_an_agent_killed_by_a_signal_is_not_called_a_timeout(tmp_path):
    """rc 137 one second in is a kill from outside (signal 9), not the agent's time limit."""
    from overlaylab.agent.profiles import load_profiles
    from overlaylab.lab.results import RunStore, load_run
    from overlaylab.lab.matrix import Matrix
    from overlaylab.lab.runner import Runner
    from overlaylab.agent.scenario import all_scenarios

    class Res:
        def __init__(self, rc, stdout="", stderr=""):
            self.rc, self.stdout, self.stderr = rc, stdout, stderr

    calls = []

    class Session(SessionBase):
        kernel_release, disks = "9.9-test", {}

        def run(self, command, timeout):
            calls.append(command)
            target = json.dumps({"record": "target", "facts": {}}) + "\n" if "--probe-target" in command else ""
            if " cleanup " in command:
                return Res(0, json.dumps({"record": "cleanup", "items": ["mount /x (run r, owner pid 1 gone)"],
                                          "problems": []}))
            if "--profile tmpfs" in command:
                return Res(137, target, "Killed")  # kill -9 of the agent, one second in
            return Res(0, target + json.dumps(dict(_cell("driver-init"), profile="ext4")))

    class Provider:
        name = "stub"

        @contextlib.contextmanager
        def up(self, kernel, disks=(), keep=False):
            yield Session()

    profiles = load_profiles()
    matrix = Matrix(["k1"], {"tmpfs": profiles["tmpfs"], "ext4": profiles["ext4"]},
                    {"driver-init": all_scenarios()["driver-init"]})
    store = RunStore(str(tmp_path), run_id="r-died")
    store.start()
    Runner(Provider(), store, matrix).run()
    store.finish()
    cells = load_run(store.path).cell_map()
    died = cells[("k1", "tmpfs", "driver-init", "port")]
    assert died["outcome"] == "ERROR" and died["error"].startswith("the agent died: SIGKILL (signal 9)")
    assert "ran past" not in died["error"]
    assert died["evidence"]["cleanup"] == ["mount /x (run r, owner pid 1 gone)"]
    assert cells[("k1", "ext4", "driver-init", "port")]["outcome"] == "PASS"  # carried on in a new agent
    assert any("cleanup --run r-died" in c for c in calls)


def test_cleanup_removes_only_the_dead_runs_libvirt_domains(tmp_path, lab_tmp, monkeypatch):
    """Domains are matched by the prefix the dead run's lease recorded, never by 'overlaylab-'.
    libvirt is not on this machine: a stand-in virsh lists domains and logs what it is told."""
    tmp, env = lab_tmp
    monkeypatch.setenv(cleanup_mod.STATE_ENV, env[cleanup_mod.STATE_ENV])
    shim = tmp_path / "bin"
    shim.mkdir()
    log = tmp_path / "virsh.log"
    (shim / "virsh").write_text("#!/bin/sh\necho \"$*\" >> %s\n"
                                "case \"$*\" in *\"list --all --name\"*) printf 'overlaylab-dead01-bookworm\\n"
                                "overlaylab-live02-bookworm\\nsomeones-vm\\n';; esac\n" % log)
    (shim / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (shim, os.environ["PATH"]))
    owner = _dead_owner()
    dead_dir = os.path.join(tmp, "overlaylab-vagrant-dead")
    os.makedirs(dead_dir)
    cleanup_mod.mark(dead_dir, "vagrant", run="r-dead", owner_pid=owner.pid, domain_prefix="overlaylab-dead01-")
    live_dir = os.path.join(tmp, "overlaylab-vagrant-live")
    os.makedirs(live_dir)
    cleanup_mod.mark(live_dir, "vagrant", run="r-live", domain_prefix="overlaylab-live02-")
    owner.kill()
    owner.wait()
    (entry,) = cleanup_mod.cleanup()
    assert entry["problems"] == []
    assert any(i.startswith("libvirt domain overlaylab-dead01-bookworm ") for i in entry["items"])
    calls = log.read_text().splitlines()
    assert [c for c in calls if "destroy" in c or "undefine" in c] == [
        "-c qemu:///system destroy overlaylab-dead01-bookworm",
        "-c qemu:///system undefine overlaylab-dead01-bookworm --remove-all-storage --nvram"]
    assert not os.path.exists(dead_dir) and os.path.isdir(live_dir)


def test_ctrl_c_to_the_runner_during_a_slow_detach_leaks_nothing(tmp_path, lab_tmp, slow_losetup):
    """Ctrl-C reaches the runner's group; the agent is stopped by the runner while it detaches
    (and `timeout`'s SIGKILL-after-5-s must not cut that teardown short)."""
    tmp, env = lab_tmp
    shim, flag = slow_losetup
    env = dict(env, PATH=shim + ":" + os.environ["PATH"])
    proc = _start_run(tmp_path / "reports", env, "-p", "=ext4 or =xfs", "-k", "driver-init")
    try:
        _wait_for(flag.exists, 120, "the agent's losetup -d")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    assert _loops_under(tmp, settle=10) == [] and mounts_under(tmp) == []
    assert os.listdir(tmp) == []
    assert _only_run(tmp_path / "reports").meta["status"] == "interrupted"
    assert "interrupted: incomplete: 1 of 2 cells" in err
