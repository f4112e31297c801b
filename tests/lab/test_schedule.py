"""How the runner schedules targets with --jobs > 1: the host's target beside the VM workers from
the start, the VM targets longest expected first, never more than --jobs of them at once; and
`--jobs auto`."""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time

from click.testing import CliRunner

from overlaylab.agent.profiles import load_profiles
from overlaylab.agent.scenario import all_scenarios
from overlaylab.cli.lab import JobsParam
from overlaylab.lab.matrix import Matrix
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.runner import Runner
from tests.lab.fakes import AgentResult, FakeSession


class _Session(FakeSession):

    def __init__(self, provider, kernel):
        self.provider_obj, self.kernel = provider, kernel

    def run(self, command, timeout):
        time.sleep(0.3)  # the cells: long enough for the targets to overlap
        # the first agent of a target prints the kernel's facts first (run --probe-target)
        return AgentResult(0, json.dumps({"record": "target", "facts": {}}) if "--probe-target" in command else "")


class _Provider:
    """Records when each target is up and down; 'host' is the local provider's, as with auto."""

    name = "stub"

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []
        self.live = set()
        self.most_live_vms = 0

    @staticmethod
    def provider_for(kernel):
        return "local" if kernel == "host" else "qemu"

    @contextlib.contextmanager
    def up(self, kernel, disks=(), keep=False):
        with self.lock:
            self.events.append(("up", kernel))
            self.live.add(kernel)
            self.most_live_vms = max(self.most_live_vms, len(self.live - {"host"}))
        try:
            yield _Session(self, kernel)
        finally:
            with self.lock:
                self.live.discard(kernel)
                self.events.append(("down", kernel))


def _matrix(kernels, profiles_per_kernel):
    """Kernels with more or fewer profiles (so more or less expected cost)."""
    catalogue = all_scenarios()
    profiles = load_profiles()
    names = [p for p in profiles if profiles[p].kind != "tmpfs"]
    matrix = Matrix(list(kernels), {n: profiles[n] for n in names}, {"create-empty": catalogue["create-empty"]})
    keep = {(k, p, "create-empty", "port") for k in kernels for p in names[:profiles_per_kernel[k]]}
    matrix.only = keep
    return matrix


def test_the_vm_targets_go_longest_first_and_the_host_runs_beside_them(tmp_path):
    sizes = {"host": 2, "small": 1, "big": 4, "mid": 2}
    matrix = _matrix(["host", "small", "big", "mid"], sizes)
    store = RunStore(str(tmp_path), run_id="s1")
    store.start()
    runner = Runner(_Provider(), store, matrix, jobs=2)
    pooled, beside = runner.schedule(runner.kernels())
    assert beside == ["host"]
    assert pooled == ["big", "mid", "small"]
    assert runner.expected_cost("big") > runner.expected_cost("mid") > runner.expected_cost("small")


def test_with_two_jobs_the_host_starts_with_the_first_two_vms_and_no_third_vm_overlaps(tmp_path):
    sizes = {"host": 1, "a": 1, "b": 1, "c": 1}
    matrix = _matrix(["host", "a", "b", "c"], sizes)
    store = RunStore(str(tmp_path), run_id="s2")
    store.start()
    provider = _Provider()
    Runner(provider, store, matrix, jobs=2).run()
    store.finish()
    first_three = {k for _, k in provider.events[:3]}
    assert first_three == {"host", "a", "b"}  # the host did not wait for a worker
    assert provider.most_live_vms == 2
    run = load_run(store.path)
    assert {c["target"] for c in run.cells} == {"host", "a", "b", "c"}  # every target's cells stored


def test_jobs_auto_is_the_cpu_count_and_a_bad_count_is_one_line():
    assert JobsParam().convert("auto", None, None) == (os.cpu_count() or 1)
    assert JobsParam().convert("3", None, None) == 3
    from overlaylab.cli.lab import run_cmd
    res = CliRunner().invoke(run_cmd, ["-j", "0"])
    assert res.exit_code == 2 and "0 is not in the range x>=1, nor 'auto'" in res.output
