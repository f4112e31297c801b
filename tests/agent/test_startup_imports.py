"""The agent's start-up imports only what its run uses (issue #15).

Under qemu TCG every import costs the guest ~20x its native time, before the first result. These
modules were on the start-up path without the run needing them; each test fails if an eager
import brings one back. The agent runs as qemu guests run it: the project on ``PYTHONPATH``,
the profiles as ``--profiles-b64`` (overlaylab/lab/runner.py ``_agent_args``); ``-S`` keeps out
what this interpreter's ``site`` imports of its own.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from typing import List, Set, Tuple

import pytest

import overlaylab
from overlaylab.agent.profiles import default_profiles_path
from tests.agent.conftest import requires_root

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(overlaylab.__file__)))

NOT_AT_START_UP = {
    "secrets", "hmac", "_hashlib",  # cleanup's lease ids: os.urandom(6).hex()
    "pathlib", "urllib.parse", "ipaddress",  # profiles: only the default file's lookup needs pathlib
    "socket",  # the socket-copy-quirk cell only
    "http.client", "email",  # the Docker engine's API client
    "overlaylab.agent.engines.docker", "overlaylab.agent.engines.containers_storage",  # engines load when used
}


def _imported(args: List[str]) -> Tuple[Set[str], str]:
    """Every module the interpreter imported running ``args`` (as ``-X importtime`` lists them),
    and what it printed."""
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    proc = subprocess.run([sys.executable, "-S", "-X", "importtime"] + args, cwd=PROJECT_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", proc.stderr, re.M))
    assert "overlaylab.agent.main" in names, proc.stderr[-2000:]  # the listing was read
    return names, proc.stdout


def test_agent_modules_do_not_import_what_the_run_does_not_use():
    names, _ = _imported(["-c", "import overlaylab.agent.bytecode, overlaylab.agent.main, overlaylab.agent.scenarios"])
    assert sorted(NOT_AT_START_UP & names) == []


@requires_root
def test_agent_run_to_its_first_cell_does_not_import_what_it_does_not_use():
    with open(default_profiles_path(), "rb") as f:
        profiles_b64 = base64.b64encode(f.read()).decode()
    names, out = _imported(["-m", "overlaylab.agent", "run", "--probe-target", "--run-id", "test-startup-imports",
                       "--profile", "tmpfs", "--profiles-b64", profiles_b64, "--scenario", "driver-init"])
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["record"], r.get("scenario")) for r in records if r["record"] in ("target", "cell", "done")] == [
        ("target", None), ("cell", "driver-init"), ("done", None)]
    assert sorted(NOT_AT_START_UP & names) == []


@pytest.mark.parametrize("module", sorted(NOT_AT_START_UP))
def test_the_list_names_real_modules(module):
    """A misspelt name would make the assertions above pass vacuously."""
    names, _ = _imported(["-c", "import overlaylab.agent.main, %s" % module])
    assert module in names
