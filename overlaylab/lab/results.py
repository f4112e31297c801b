"""Run directories: ``reports/runs/<run-id>/run.json`` plus ``results.jsonl``.

``results.jsonl`` is appended one record at a time and synced, so a crash or Ctrl-C never
loses a finished cell. Records carry ``"record"``: ``target`` (facts about a kernel), ``profile``
(what backing filesystem was really made, and its probes) or ``cell`` (one target x profile x
scenario outcome with evidence). ``schema`` lets later versions read old runs.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

SCHEMA_VERSION = 1
RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
OUTCOMES = ("PASS", "FAIL", "REFUSED", "UNSUPPORTED", "ERROR")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def default_reports_dir() -> str:
    return os.environ.get("OVERLAYLAB_REPORTS", os.path.join(os.getcwd(), "reports"))


def host_info() -> Dict[str, Any]:
    from .. import __version__
    return {"hostname": socket.gethostname(), "kernel": platform.release(), "machine": platform.machine(),
            "python": platform.python_version(), "overlaylab": __version__}


CellKey = Tuple[str, str, str]  # (target, profile, scenario)


@dataclass
class Run:
    """A loaded run directory."""

    path: str
    meta: Dict[str, Any]
    targets: List[Dict[str, Any]] = field(default_factory=list)
    profiles: List[Dict[str, Any]] = field(default_factory=list)
    cells: List[Dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0

    @property
    def run_id(self) -> str:
        return self.meta.get("run_id") or os.path.basename(self.path.rstrip("/"))

    def cell_map(self) -> Dict[CellKey, Dict[str, Any]]:
        return {(c["target"], c["profile"], c["scenario"]): c for c in self.cells}

    def target_names(self) -> List[str]:
        return _ordered(c["target"] for c in self.cells)

    def profile_names(self) -> List[str]:
        return _ordered(c["profile"] for c in self.cells)

    def scenario_ids(self) -> List[str]:
        return _ordered(c["scenario"] for c in self.cells)

    def profile_record(self, target: str, profile: str) -> Optional[Dict[str, Any]]:
        for p in self.profiles:
            if p.get("target") == target and p.get("profile") == profile:
                return p
        return None

    def target_record(self, target: str) -> Optional[Dict[str, Any]]:
        for t in self.targets:
            if t.get("target") == target:
                return t
        return None

    def unmet(self) -> List[Dict[str, Any]]:
        return [c for c in self.cells if not c.get("met")]


def _ordered(items: Iterable[str]) -> List[str]:
    seen: Dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


class RunStore:
    """Writes one run directory."""

    def __init__(self, reports_dir: Optional[str] = None, run_id: Optional[str] = None):
        self.run_id = run_id or new_run_id()
        self.path = os.path.join(reports_dir or default_reports_dir(), "runs", self.run_id)
        os.makedirs(self.path, exist_ok=True)
        self.meta: Dict[str, Any] = {}
        self._lock = threading.Lock()  # parallel targets append from several threads
        self._results = open(os.path.join(self.path, RESULTS_FILE), "a", encoding="utf-8")

    def start(self, **meta: Any) -> None:
        self.meta = {"schema": SCHEMA_VERSION, "run_id": self.run_id, "status": "running",
                     "started": now_iso(), "host": host_info()}
        self.meta.update(meta)
        self._write_meta()

    def append(self, record: Dict[str, Any]) -> None:
        record = dict(record)
        record.setdefault("schema", SCHEMA_VERSION)
        record.setdefault("run_id", self.run_id)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock:
            self._results.write(line)
            self._results.flush()
            os.fsync(self._results.fileno())

    def finish(self, status: str = "finished", **extra: Any) -> None:
        self.meta.update(extra)
        self.meta["status"] = status
        self.meta["ended"] = now_iso()
        self._write_meta()
        self._results.close()

    def _write_meta(self) -> None:
        tmp = os.path.join(self.path, RUN_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.meta, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, os.path.join(self.path, RUN_FILE))


def _upgrade(record: Dict[str, Any]) -> Dict[str, Any]:
    """Bring an older record up to the current schema (nothing to do yet at version 1)."""
    record.setdefault("schema", 1)
    return record


def iter_records(path: str) -> Iterator[Tuple[Optional[Dict[str, Any]], str]]:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield _upgrade(json.loads(line)), line
            except ValueError:
                yield None, line  # a line cut short by a crash


def resolve_run_dir(ref: str, reports_dir: Optional[str] = None) -> str:
    """A run given as a path, a run id, or ``latest``."""
    if os.path.isdir(ref) and os.path.exists(os.path.join(ref, RESULTS_FILE)):
        return ref
    runs = os.path.join(reports_dir or default_reports_dir(), "runs")
    if ref == "latest":
        names = sorted(n for n in os.listdir(runs)) if os.path.isdir(runs) else []
        if not names:
            raise FileNotFoundError("no runs under %s" % runs)
        return os.path.join(runs, names[-1])
    candidate = os.path.join(runs, ref)
    if os.path.isdir(candidate):
        return candidate
    raise FileNotFoundError("no run %r (looked for a directory with %s, and under %s)" % (ref, RESULTS_FILE, runs))


def load_run(path: str) -> Run:
    meta: Dict[str, Any] = {}
    meta_path = os.path.join(path, RUN_FILE)
    if os.path.exists(meta_path):
        with open(meta_path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    run = Run(path=path, meta=meta)
    results = os.path.join(path, RESULTS_FILE)
    if not os.path.exists(results):
        return run
    for record, _ in iter_records(results):
        if record is None:
            run.skipped_lines += 1
            continue
        kind = record.get("record")
        if kind == "cell":
            run.cells.append(record)
        elif kind == "profile":
            run.profiles.append(record)
        elif kind == "target":
            run.targets.append(record)
    return run


def counts(cells: Iterable[Dict[str, Any]]) -> Dict[str, int]:
    out = {o: 0 for o in OUTCOMES}
    for c in cells:
        out[c["outcome"]] = out.get(c["outcome"], 0) + 1
    return out
