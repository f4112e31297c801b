"""What the runner adds to the agent's records for the reports that need it: the kernel image a
target booted (its Debian package, version and suite) in the target record, and when each
cell record arrived; the KCIDB output names both. The target here is a stub session (the
runner's side alone: no kernel is booted)."""
from __future__ import annotations

import contextlib
import datetime
import json

from overlaylab.agent.profiles import load_profiles
from overlaylab.agent.scenario import all_scenarios
from overlaylab.kernels.cache import KernelImage
from overlaylab.lab.matrix import Matrix
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.runner import Runner
from tests.lab.fakes import AgentResult, FakeSession
from overlaylab.reports import RunReport
from overlaylab.reports.kcidb import build

IMAGE = KernelImage(name="debian-6.1", release="6.1.0-99-amd64", vmlinuz="/cache/vmlinuz", modules_dir=None,
                    package="linux-image-6.1.0-99-amd64", sha256="ab" * 32, version="6.1.999-1", suite="bookworm",
                    config="/cache/root/boot/config-6.1.0-99-amd64")
CELL = {"record": "cell", "profile": "tmpfs", "scenario": "create-empty", "group": "lifecycle", "outcome": "PASS",
        "expected": "PASS", "met": True, "duration": 0.25, "error": "", "log": [], "evidence": {}}
TARGET = {"record": "target", "facts": {}, "uname": ["Linux", "guest", IMAGE.release,
                                                     "#1 SMP PREEMPT_DYNAMIC Debian 6.1.999-1", "x86_64"]}


class _Session(FakeSession):
    kernel_release = IMAGE.release
    kernel_image = IMAGE

    def run(self, command, timeout):
        # the first agent of a target prints the kernel's facts first (run --probe-target)
        return AgentResult(0, "".join(json.dumps(r) + "\n" for r in ([TARGET] if "--probe-target" in command else []) + [CELL]))


class _Provider:
    name = "stub"

    @contextlib.contextmanager
    def up(self, kernel, disks=(), keep=False):
        yield _Session()


def test_the_booted_image_and_cell_arrival_times_reach_the_records_and_kcidb(tmp_path):
    store = RunStore(str(tmp_path), run_id="r-image")
    store.start()
    before = datetime.datetime.now(datetime.timezone.utc)
    matrix = Matrix(["debian-6.1"], {"tmpfs": load_profiles()["tmpfs"]}, {"create-empty": all_scenarios()["create-empty"]})
    Runner(_Provider(), store, matrix).run()
    store.finish()
    run = load_run(store.path)
    assert run.target_record("debian-6.1")["kernel_image"] == IMAGE.to_json()
    ended = datetime.datetime.fromisoformat(run.cells[0]["ended"])
    assert before <= ended <= datetime.datetime.now(datetime.timezone.utc)
    assert len(run.cells[0]["ended"].split(".")[1]) == len("123+00:00")        # milliseconds

    data = build(RunReport.from_run(run))
    checkout, kbuild, test = data["checkouts"][0], data["builds"][0], data["tests"][0]
    assert checkout["comment"] == "Linux 6.1.0-99-amd64 (debian package linux-image-6.1.0-99-amd64 6.1.999-1, bookworm)"
    assert checkout["misc"]["package_version"] == "6.1.999-1" and checkout["misc"]["package_suite"] == "bookworm"
    assert checkout["misc"]["uname_version"] == "#1 SMP PREEMPT_DYNAMIC Debian 6.1.999-1"
    assert kbuild["config_name"] == IMAGE.package and kbuild["misc"]["config_path"] == IMAGE.config
    assert kbuild["architecture"] == "x86_64" and kbuild["status"] == "PASS"
    start = datetime.datetime.fromisoformat(test["start_time"])
    assert start == ended - datetime.timedelta(seconds=0.25)
