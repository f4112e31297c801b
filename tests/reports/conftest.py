"""Real runs for the report tests, made once per session with the CLI on the host kernel.

``lab`` runs ``overlaylab run --provider local`` on tmpfs and btrfs with three scenarios
chosen to give PASS, FAIL-as-expected (mount-label: no SELinux) and REFUSED (btrfs) cells:
once plainly, gated by the project's checked-in baseline, and once with ``--repeat 2``.
Both go into one reports directory, so the run index holds two runs. The agent's TMPDIR is
a directory of this session that is checked and cleaned afterwards (no mount or loop device
may survive).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKED_IN_BASELINE = os.path.join(REPO, "reports", "baseline-host.toml")
PROFILES = "=tmpfs or =btrfs"
SCENARIOS = "=driver-init or =create-empty or =mount-label"

# The reports commands, whether or not overlaylab/cli.py registers them yet.
_BOOT = ("import sys\nfrom overlaylab.cli import main\nfrom overlaylab.cli.reports import COMMANDS\n"
         "for c in COMMANDS:\n    main.commands.setdefault(c.name, c)\nsys.argv[0] = 'overlaylab'\nmain()\n")

_RUN_LINE = re.compile(r"^run (\S+) \((\w+)\): (.+)$", re.M)


def cli(args: List[str], env: Optional[Dict[str, str]] = None, timeout: float = 300,
        cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BOOT] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})), cwd=cwd or REPO)


def run_dir_of(stdout: str) -> str:
    found = _RUN_LINE.findall(stdout)
    assert found, stdout
    return found[-1][2].strip()


@dataclass
class Lab:
    reports: str
    agent_tmp: str
    plain: str          # run dir: one attempt per cell, gated by the checked-in baseline
    plain_out: subprocess.CompletedProcess
    repeat: str         # run dir: --repeat 2
    repeat_out: subprocess.CompletedProcess

    @property
    def env(self) -> Dict[str, str]:
        return {"TMPDIR": self.agent_tmp}


def _loops_under(path: str) -> List[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if path in line]


@pytest.fixture(scope="session")
def lab():
    top = tempfile.mkdtemp(prefix="overlaylab-reports-tests.")
    reports = os.path.join(top, "reports")
    agent_tmp = os.path.join(top, "agent-tmp")
    os.makedirs(agent_tmp)
    env = {"TMPDIR": agent_tmp}
    try:
        base = ["run", "--provider", "local", "--reports-dir", reports, "-p", PROFILES, "-k", SCENARIOS, "-j", "1"]
        plain_out = cli(base + ["--baseline", CHECKED_IN_BASELINE], env=env)
        repeat_out = cli(base + ["--repeat", "2"], env=env)
        yield Lab(reports, agent_tmp, run_dir_of(plain_out.stdout), plain_out, run_dir_of(repeat_out.stdout), repeat_out)
    finally:
        tear_down_run_dirs(top, agent_tmp)


def tear_down_run_dirs(top: str, agent_tmp: str) -> None:
    """After a fixture's real runs: remove ``top``, and fail if the runs left a mount or a loop
    device under the agents' temp dir (they are removed first, so nothing outlives the test)."""
    from overlaylab.agent.backingfs import unmount_tree
    from overlaylab.mountutil import mounts_under
    leaked_mounts = [m.mountpoint for m in mounts_under(agent_tmp)]
    unmount_tree(agent_tmp)
    leaked_loops = _loops_under(agent_tmp)
    for line in leaked_loops:
        subprocess.run(["losetup", "-d", line.split(":")[0]])
    shutil.rmtree(top, ignore_errors=True)
    assert not leaked_mounts and not leaked_loops, (leaked_mounts, leaked_loops)


def copy_run(src: str, reports: str, run_id: str, mutate=None, **meta_update) -> str:
    """A copy of a real run under another id, its cell records passed through ``mutate``."""
    dst = os.path.join(reports, "runs", run_id)
    os.makedirs(dst)
    with open(os.path.join(src, "run.json")) as f:
        meta = json.load(f)
    meta["run_id"] = run_id
    meta.update(meta_update)
    with open(os.path.join(dst, "run.json"), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(src, "results.jsonl")) as f, open(os.path.join(dst, "results.jsonl"), "w") as out:
        for line in f:
            rec = json.loads(line)
            rec["run_id"] = run_id
            if rec.get("record") == "cell" and mutate is not None:
                rec = mutate(rec) or rec
            out.write(json.dumps(rec) + "\n")
    return dst
