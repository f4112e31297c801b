"""A run with engine cells beside the classic ones, for the report tests.

The classic port cells are the real host run's (``lab.plain``), also relabelled as a second
kernel ``debian-6.1``; to them come engine-group cells (``engine-verdict``,
``engine-whiteouts``) over both kernels, tmpfs and btrfs, and three engines: the port,
``containers-storage`` and ``docker-overlay2`` (``run.json`` lists the engines in another
order than the report's columns, port first). ``OUTCOMES`` is the engine section as the
tables must show it; ``DISAGREE`` the rows where the port and another engine differ.

``with_engine_cells`` is the other shape: a copy of a real run with every cell again under one
engine (``ENGINE``), for the baseline and bundle tests of the host side.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from .conftest import copy_run

KERNELS = ("host", "debian-6.1")
PROFILES = ("tmpfs", "btrfs")
ENGINE_SCENARIOS = ("engine-verdict", "engine-whiteouts")
ENGINES = ("port", "containers-storage", "docker-overlay2")
LISTED_ENGINES = ["docker-overlay2", "port", "containers-storage"]   # run.json's order
VERSIONS = {"port": "overlaylab 0.1", "containers-storage": "1.43.0", "docker-overlay2": "20.10.24+dfsg1"}

# (kernel, profile, scenario) -> per engine: outcome (a list: one per --repeat attempt; "!" = not
# as expected; None = not run)
CELLS: Dict[Tuple[str, str, str], Dict[str, Optional[List[str]]]] = {
    ("host", "tmpfs", "engine-verdict"): {"port": ["PASS"], "containers-storage": ["PASS"], "docker-overlay2": ["PASS"]},
    ("host", "tmpfs", "engine-whiteouts"): {"port": ["PASS"], "containers-storage": ["PASS"],
                                            "docker-overlay2": ["PASS", "FAIL!"]},
    ("host", "btrfs", "engine-verdict"): {"port": ["REFUSED"], "containers-storage": ["PASS"],
                                          "docker-overlay2": ["REFUSED"]},
    ("host", "btrfs", "engine-whiteouts"): {"port": ["REFUSED"], "containers-storage": ["PASS"],
                                            "docker-overlay2": ["REFUSED"]},
    ("debian-6.1", "tmpfs", "engine-verdict"): {"port": ["FAIL!"], "containers-storage": ["FAIL"],
                                                "docker-overlay2": ["FAIL"]},
    ("debian-6.1", "tmpfs", "engine-whiteouts"): {"port": ["PASS"], "containers-storage": None,
                                                  "docker-overlay2": ["PASS"]},
    ("debian-6.1", "btrfs", "engine-verdict"): {"port": ["REFUSED"], "containers-storage": ["REFUSED"],
                                                "docker-overlay2": ["REFUSED"]},
    ("debian-6.1", "btrfs", "engine-whiteouts"): {"port": ["REFUSED"], "containers-storage": ["UNSUPPORTED"],
                                                  "docker-overlay2": ["ERROR!"]},
}
DISAGREE = [("host", "tmpfs", "engine-whiteouts"), ("host", "btrfs", "engine-verdict"),
            ("host", "btrfs", "engine-whiteouts"), ("debian-6.1", "btrfs", "engine-whiteouts")]


def verdict_message(engine: str, profile: str, accepted: bool) -> str:
    return "%s: the backing %s filesystem is %s" % (engine, profile, "fine" if accepted else "not supported")


def _error(engine: str, outcome: str, profile: str) -> str:
    if outcome in ("PASS", "REFUSED"):
        return ""    # the reason of a refusal is the engine's verdict
    return "%s: synthetic %s on %s\nsecond line" % (engine, outcome.lower(), profile)


def engine_records(kernel: str, profile: str, scenario: str, engine: str, outcomes: List[str]) -> List[Dict[str, Any]]:
    out = []
    for i, spec in enumerate(outcomes):
        outcome = spec.rstrip("!")
        met = not spec.endswith("!")
        rec = {"record": "cell", "target": kernel, "profile": profile, "scenario": scenario, "group": "engine",
               "provider": "local", "outcome": outcome, "met": met, "duration": 0.25,
               "expected": outcome if met else "PASS", "expected_why": "probed: the engine's verdict",
               "error": _error(engine, outcome, profile), "log": [],
               "evidence": {"engine": {"engine": engine, "version": VERSIONS[engine],
                                       "verdict": {"accepted": outcome != "REFUSED",
                                                   "message": verdict_message(engine, profile, outcome != "REFUSED"),
                                                   "evidence": {"status": "Backing Filesystem: %s" % profile}},
                                       "commands": [{"argv": [engine, "status"], "rc": 0, "seconds": 0.1,
                                                     "stderr": ""}]}}}
        if engine != "port" or scenario == "engine-whiteouts":
            rec["engine"] = engine     # port cells of engine-verdict name none, like old records
        if len(outcomes) > 1:
            rec["attempt"] = i + 1
        out.append(rec)
    return out


def make_engine_run(lab_plain: str, reports: str, run_id: str = "20990101-000000-engn",
                    cells: Optional[Dict[Tuple[str, str, str], Dict[str, Optional[List[str]]]]] = None) -> str:
    """A copy of the real run with a second kernel and the engine cells of ``cells`` (by
    default ``CELLS``; ``{}`` gives the classic cells alone)."""
    cells = CELLS if cells is None else cells
    run_dir = copy_run(lab_plain, reports, run_id)
    with open(os.path.join(run_dir, "run.json")) as f:
        meta = json.load(f)
    meta.setdefault("matrix", {})["engines"] = LISTED_ENGINES
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(run_dir, "results.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(run_dir, "results.jsonl"), "a") as f:
        for rec in records:
            if rec.get("target") == "host":
                f.write(json.dumps(dict(rec, target="debian-6.1", kernel_release="6.1.0-99-amd64")) + "\n")
        for (kernel, profile, scenario), per_engine in cells.items():
            for engine in ENGINES:
                for rec in engine_records(kernel, profile, scenario, engine, per_engine[engine] or []):
                    f.write(json.dumps(dict(rec, run_id=run_id)) + "\n")
    return run_dir


def expected_outcome(kernel: str, profile: str, scenario: str, engine: str) -> Optional[str]:
    """The folded outcome of a cell of ``CELLS`` (FLAKY when attempts differ), None if not run."""
    specs = CELLS[(kernel, profile, scenario)][engine]
    if not specs:
        return None
    outcomes = {s.rstrip("!") for s in specs}
    return "FLAKY" if len(outcomes) > 1 else outcomes.pop()


# --- a whole run again under one engine (baselines, bundles) ---------------------------------

ENGINE = "docker-overlay2"


def engine_evidence(rec: Dict[str, Any]) -> Dict[str, Any]:
    """``evidence["engine"]`` as an engine session records it (EngineSession.evidence)."""
    return {"engine": ENGINE, "version": "20.10.24+dfsg1", "verdict": {"accepted": True, "message": "", "evidence": {}},
            "commands": [{"argv": ["docker", "-H", "unix:///x/docker.sock", "create", "img"], "rc": 0, "seconds": 0.2,
                          "stderr": "a warning of dockerd\n"}]}


def with_engine_cells(src: str, reports: str, run_id: str,
                      mutate: Optional[Callable[[Dict[str, Any]], None]] = None) -> str:
    dst = copy_run(src, reports, run_id)
    with open(os.path.join(dst, "run.json")) as f:
        meta = json.load(f)
    meta["matrix"]["engines"] = ["port", ENGINE]
    with open(os.path.join(dst, "run.json"), "w") as f:
        json.dump(meta, f)
    path = os.path.join(dst, "results.jsonl")
    with open(path) as f:
        cells = [rec for rec in map(json.loads, f) if rec.get("record") == "cell"]
    with open(path, "a") as out:
        for rec in cells:
            rec = dict(rec, engine=ENGINE, evidence=dict(rec.get("evidence") or {}, engine=engine_evidence(rec)))
            if mutate is not None:
                mutate(rec)
            out.write(json.dumps(rec) + "\n")
    return dst
