"""A copy of a real run with engine cells added: every cell again under ``engine``, passed
through ``mutate`` (the host side of the engine axis, tested without starting an engine)."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Optional

from .conftest import copy_run

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
