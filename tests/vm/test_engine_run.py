"""Engines beside the port in a real qemu guest: one boot of debian-6.1, the engine group on
ext4 through the port, containers-storage and Docker's overlay2 (a private dockerd in the guest)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.needs import need_tool

from .conftest import qemu_pids

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
ENGINES = ("port", "containers-storage", "docker-overlay2")
SCENARIOS = ("engine-verdict", "image-whiteouts", "container-changes")


@pytest.mark.vm
@pytest.mark.slow
def test_a_qemu_run_puts_two_living_engines_beside_the_port(kernel_61, tmp_path):
    need_tool("containers-storage")
    need_tool("dockerd", "docker.io")
    reports = str(tmp_path / "reports")
    argv = OVERLAYLAB + ["run", "-K", "debian-6.1", "-p", "=ext4", "-k", " or ".join("=" + s for s in SCENARIOS),
                         "--reports-dir", reports]
    for engine in ENGINES:
        argv += ["--engine", engine]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    finally:
        left = qemu_pids(reports)
    assert not left, "qemu outlived the run: %s" % left
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run_id,) = os.listdir(os.path.join(reports, "runs"))
    with open(os.path.join(reports, "runs", run_id, "results.jsonl")) as f:
        cells = [rec for rec in map(json.loads, f) if rec.get("record") == "cell"]
    got = {(c["scenario"], c.get("engine") or "port"): c for c in cells}
    assert set(got) == {(s, e) for s in SCENARIOS for e in ENGINES}
    for (scenario, engine), cell in got.items():
        assert cell["met"] and cell["outcome"] == "PASS", (scenario, engine, cell.get("error"))
        assert cell["kernel_release"] == kernel_61.release and cell["provider"] == "qemu"
        evidence = cell["evidence"]["engine"]
        assert evidence["engine"] == engine and evidence["verdict"]["accepted"]
    docker = got[("engine-verdict", "docker-overlay2")]["evidence"]["engine"]
    assert docker["version"].startswith("Docker version 20.10")
    assert "Storage Driver: overlay2" in json.dumps(docker["verdict"])
    # the terminal table puts the three engines side by side
    assert "engine scenarios, one column per engine" in r.stdout
    assert "port    containers-storage    docker-overlay2" in r.stdout
