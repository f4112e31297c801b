"""Run directories: ``reports/runs/<run-id>/run.json`` plus ``results.jsonl``.

``results.jsonl`` is appended one record at a time and synced, so a crash or Ctrl-C never
loses a finished cell. Records carry ``"record"``: ``target`` (facts about a kernel), ``profile``
(what backing filesystem was really made, and its probes) or ``cell`` (one target x profile x
scenario outcome with evidence). ``schema`` lets later versions read old runs.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from ..agent.records import OUTCOMES, SCHEMA_VERSION, cell_key

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"


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


CellKey = Tuple[str, str, str, str]  # (target, profile, scenario, engine)


@dataclass
class Run:
    """A loaded run directory."""

    path: str
    meta: Dict[str, Any]
    targets: List[Dict[str, Any]] = field(default_factory=list)
    profiles: List[Dict[str, Any]] = field(default_factory=list)
    cells: List[Dict[str, Any]] = field(default_factory=list)
    damaged: List[Tuple[int, str]] = field(default_factory=list)  # (line number, why) of skipped lines

    @property
    def skipped_lines(self) -> int:
        return len(self.damaged)

    def add(self, record: Dict[str, Any]) -> None:
        """File one record under its kind (``cell``, ``profile``, ``target``; others are ignored)."""
        bucket = {"cell": self.cells, "profile": self.profiles, "target": self.targets}.get(record.get("record"))
        if bucket is not None:
            bucket.append(record)

    def damage_note(self) -> str:
        """"skipped N damaged lines of FILE: line 3 (why), ..." ("" when none were)."""
        if not self.skipped_lines:
            return ""
        shown = ", ".join("line %d (%s)" % d for d in self.damaged[:5])
        more = ", ..." if len(self.damaged) > 5 else ""
        return "skipped %d damaged line%s of %s: %s%s" % (
            self.skipped_lines, "" if self.skipped_lines == 1 else "s", os.path.join(self.path, RESULTS_FILE),
            shown, more)

    @property
    def run_id(self) -> str:
        return self.meta.get("run_id") or os.path.basename(self.path.rstrip("/"))

    def cell_map(self) -> Dict[CellKey, Dict[str, Any]]:
        return {cell_key(c): c for c in self.cells}

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


class ReportsDiskFull(OSError):
    """The reports filesystem ran out of space (or quota) while the run was writing."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 256 << 10  # freed when the disk fills, so the final run.json still fits


class RunStore:
    """Writes one run directory.

    Every record is also kept in memory (``records``) until it is durably on disk; a write that
    fails with ENOSPC/EDQUOT is cut back to the last whole line (never a torn line), the store
    turns ``disk_full``, frees its small reserve so that ``run.json`` can still be written, and
    keeps the records it could not write in ``unwritten``.
    """

    def __init__(self, reports_dir: Optional[str] = None, run_id: Optional[str] = None, path: Optional[str] = None):
        """A new run under ``reports_dir``, or (``path``) the existing run directory a
        ``--resume`` appends to."""
        self.run_id = run_id or (os.path.basename(os.path.abspath(path)) if path else new_run_id())
        self.path = path or os.path.join(reports_dir or default_reports_dir(), "runs", self.run_id)
        os.makedirs(self.path, exist_ok=True)
        self.meta: Dict[str, Any] = {}
        self._lock = threading.Lock()  # parallel targets append from several threads
        self.records: List[Dict[str, Any]] = []
        self.unwritten: List[str] = []
        self.disk_full = False
        self._fd = os.open(os.path.join(self.path, RESULTS_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._end_torn_line()
        try:  # room for the last word: run.json saying the disk filled up
            with open(os.path.join(self.path, RESERVE_FILE), "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
        except OSError:
            pass

    def _end_torn_line(self) -> None:
        """A crash may have left a partial last line: the next append starts on a fresh one."""
        size = os.fstat(self._fd).st_size
        if size:
            with open(os.path.join(self.path, RESULTS_FILE), "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self._write_line(b"\n")

    def _write_line(self, data: bytes) -> None:
        """Append ``data`` whole and fsync it, or leave the file as it was and raise."""
        before = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, before)  # no torn line for readers
            except OSError:
                pass
            raise

    def start(self, **meta: Any) -> None:
        from ..agent.procutil import owner
        self.meta = {"schema": SCHEMA_VERSION, "run_id": self.run_id, "status": "running",
                     "started": now_iso(), "host": host_info(),
                     # who writes this run: a reader that finds it gone marks the run interrupted
                     "runner": owner()}
        self.meta.update(meta)
        self._write_meta()

    def reopen(self, meta: Dict[str, Any], **resume: Any) -> None:
        """Take up a run again (``--resume``): its ``meta`` running under this process, with
        ``resume`` (what this resumption does) added to its ``resumed`` list."""
        from ..agent.procutil import owner
        self.meta = dict(meta, status="running", runner=owner(), host=host_info())
        self.meta.pop("ended", None)
        self.meta.pop("interrupted_reason", None)
        self.meta["resumed"] = list(meta.get("resumed") or []) + [dict(resume, started=now_iso())]
        self._write_meta()

    def append(self, record: Any) -> None:
        """Store one record (a :mod:`overlaylab.agent.records` record, or its JSON dict)."""
        record = dict(record) if isinstance(record, dict) else record.to_json()
        record.setdefault("schema", SCHEMA_VERSION)
        record.setdefault("run_id", self.run_id)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock:
            self.records.append(record)
            self.unwritten.append(line)
            self._flush_unwritten()

    def _flush_unwritten(self, retry: bool = False) -> None:
        if self.disk_full and not retry:
            return  # kept in memory; finish() tries once more after run.json is safe
        while self.unwritten:
            try:
                self._write_line(self.unwritten[0].encode("utf-8"))
            except OSError as err:
                if err.errno not in DISK_FULL_ERRNOS:
                    raise
                if not self.disk_full:
                    self.disk_full = True
                    self._free_reserve()
                return
            self.unwritten.pop(0)

    def _free_reserve(self) -> None:
        try:
            os.unlink(os.path.join(self.path, RESERVE_FILE))
        except OSError:
            pass

    def finish(self, status: str = "finished", **extra: Any) -> None:
        with self._lock:
            self._flush_unwritten()
        if self.disk_full:
            status = "failed"
            extra.setdefault("reason", "reports disk full")
        self._free_reserve()
        self.meta.update(extra)
        self.meta["status"] = status
        self.meta["ended"] = now_iso()
        if self.disk_full:
            self.meta["unwritten_records"] = len(self.unwritten)
        try:
            try:
                self._write_meta()
            except OSError as err:
                if err.errno not in DISK_FULL_ERRNOS:
                    raise
                self.disk_full = True
                self.meta["status"] = "failed"
                self.meta.setdefault("reason", "reports disk full")
                self.meta["unwritten_records"] = len(self.unwritten)
                self._write_meta_in_place()
            if self.disk_full and self.unwritten:
                # run.json says what happened; now whatever room is left goes to the records.
                with self._lock:
                    self._flush_unwritten(retry=True)
                self.meta["unwritten_records"] = len(self.unwritten)
                self._write_meta_in_place()
        finally:
            os.close(self._fd)

    def _write_meta(self) -> None:
        tmp = os.path.join(self.path, RUN_FILE + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.meta, f, indent=2, sort_keys=True, default=str)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.replace(tmp, os.path.join(self.path, RUN_FILE))

    def _write_meta_in_place(self) -> None:
        """Last resort on a full disk: overwrite run.json's own blocks (compact JSON)."""
        data = json.dumps(self.meta, sort_keys=True, default=str).encode()
        with contextlib.suppress(OSError):
            with open(os.path.join(self.path, RUN_FILE), "r+b") as f:
                f.write(data)
                f.truncate()
                f.flush()
                os.fsync(f.fileno())

    def memory_run(self) -> "Run":
        """Everything this store was handed, as a :class:`Run` (for when the disk could not
        take it all)."""
        run = Run(path=self.path, meta=dict(self.meta))
        for record in self.records:
            run.add(record)
        return run


def _upgrade(record: Dict[str, Any]) -> Dict[str, Any]:
    """Bring an older record up to the current schema (nothing to do yet at version 1)."""
    record.setdefault("schema", 1)
    return record


class RunFileError(ValueError):
    """A file of a run directory that cannot be read; the message names the file."""


# Fields the readers rely on, and their types (None counts as absent): a record whose fields
# do not fit is damaged and skipped, not a crash in a report.
_REQUIRED = {"cell": ("target", "profile", "scenario", "outcome"), "profile": ("target", "profile"),
             "target": ("target",)}
_TYPES: Dict[str, Any] = {
    "record": str, "target": str, "profile": str, "scenario": str, "outcome": str, "error": str, "expected": str,
    "expected_why": str, "group": str, "kernel_release": str, "provider": str, "met": bool,
    "attempt": int, "duration": (int, float), "evidence": dict, "log": (list, str), "probes": dict,
    "facts": dict, "fs": dict, "unavailable": dict, "dmesg": list, "uname": list, "disks": dict}
_META_TYPES: Dict[str, Any] = {"run_id": str, "status": str, "started": str, "ended": str, "provider": str,
                               "argv": list, "host": dict, "matrix": dict}


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number"}.get(type(value), "null" if value is None else type(value).__name__)


def _damage(record: Any) -> Optional[str]:
    """Why a parsed line is not a usable record (None when it is one)."""
    if not isinstance(record, dict):
        return "a JSON %s, not a record" % _type_name(record)
    for key, typ in _TYPES.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, typ) or (typ is int and isinstance(value, bool))):
            return "%r is a %s" % (key, _type_name(value))
    for key in _REQUIRED.get(record.get("record"), ()):
        if record.get(key) is None:
            return "%s record without %r" % (record.get("record"), key)
    return None


def scan_records(path: str) -> Iterator[Tuple[int, Optional[Dict[str, Any]], str, str]]:
    """``(line number, record, why, line)`` for every non-empty line: ``record`` is None and
    ``why`` says what is wrong when the line is damaged (``cut short`` for a torn last line)."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                yield lineno, None, "cut short" if not raw.endswith("\n") else "not JSON", line
                continue
            why = _damage(record)
            yield lineno, (None if why else _upgrade(record)), why or "", line


def iter_records(path: str) -> Iterator[Tuple[Optional[Dict[str, Any]], str]]:
    """``(record, line)``; ``record`` is None for a damaged line (see :func:`scan_records`)."""
    for _lineno, record, _why, line in scan_records(path):
        yield record, line


def read_meta(path: str) -> Dict[str, Any]:
    """``run.json`` of the run at ``path`` ({} when there is none); :class:`RunFileError` naming
    the file when it is broken."""
    meta_path = os.path.join(path, RUN_FILE)
    if not os.path.exists(meta_path):
        return {}
    try:
        with open(meta_path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except OSError as err:
        raise RunFileError("cannot read %s: %s" % (meta_path, err.strerror or err)) from None
    except ValueError as err:
        raise RunFileError("%s is broken (not JSON: %s)" % (meta_path, err)) from None
    if not isinstance(meta, dict):
        raise RunFileError("%s is broken (a JSON %s, not an object)" % (meta_path, _type_name(meta)))
    for key, typ in _META_TYPES.items():
        if meta.get(key) is not None and not isinstance(meta[key], typ):
            raise RunFileError("%s is broken (%r is a %s)" % (meta_path, key, _type_name(meta[key])))
    return meta


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


def record_attempt(rec: Dict[str, Any]) -> int:
    """A cell record's attempt (1 for a run without ``--repeat``)."""
    return int(rec.get("attempt") or 1)


def drop_cells(path: str, keys: Iterable[Tuple[CellKey, int]], aside: str) -> int:
    """Take the cell records of ``(key, attempt)`` out of the run's ``results.jsonl`` (a
    rewrite, then an atomic rename: a crash leaves the old file or the new) and append them to
    ``aside`` (a file in the run directory, the evidence they held); returns how many."""
    drop = set(keys)
    results = os.path.join(path, RESULTS_FILE)
    kept: List[str] = []
    moved: List[str] = []
    for _lineno, record, _why, line in scan_records(results):
        hit = record is not None and record.get("record") == "cell" and (cell_key(record), record_attempt(record)) in drop
        (moved if hit else kept).append(line + "\n")
    if not moved:
        return 0
    with open(os.path.join(path, aside), "a", encoding="utf-8") as f:
        f.writelines(moved)
        f.flush()
        os.fsync(f.fileno())
    tmp = results + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, results)
    return len(moved)


def load_run(path: str) -> Run:
    run = Run(path=path, meta=read_meta(path))
    _mark_if_runner_gone(run)
    results = os.path.join(path, RESULTS_FILE)
    if not os.path.exists(results):
        return run
    try:
        for lineno, record, why, _line in scan_records(results):
            if record is None:
                run.damaged.append((lineno, why))
            else:
                run.add(record)
    except OSError as err:
        raise RunFileError("cannot read %s: %s" % (results, err.strerror or err)) from None
    return run


def _mark_if_runner_gone(run: Run) -> None:
    """A run still ``running`` whose runner process is gone (SIGKILL, power loss) will never
    finish: mark it ``interrupted`` (in run.json too, when it can be written)."""
    meta = run.meta
    runner = meta.get("runner")
    if meta.get("status") != "running" or not isinstance(runner, dict):
        return
    if (meta.get("host") or {}).get("hostname") not in (None, socket.gethostname()):
        return  # written on another machine: we cannot know
    from ..agent.procutil import owner_alive
    if owner_alive(runner):
        return
    meta["status"] = "interrupted"
    meta["interrupted_reason"] = "the runner (pid %s) is gone" % runner.get("pid")
    tmp = os.path.join(run.path, RUN_FILE + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, os.path.join(run.path, RUN_FILE))
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def incomplete_note(run: Run) -> Optional[str]:
    """``incomplete: N of M cells`` for a run that did not finish (None when it did)."""
    status = run.meta.get("status")
    if status in (None, "finished"):
        return None
    expected = run.meta.get("cells_expected")
    done = len(run.cells)
    if isinstance(expected, int) and expected > 0:
        if done >= expected:
            return "%s: all %d cells ran" % (status, done)
        return "%s: incomplete: %d of %d cells" % (status, done, expected)
    return "%s: incomplete: %d cells" % (status, done)


def counts(cells: Iterable[Dict[str, Any]]) -> Dict[str, int]:
    out = {o: 0 for o in OUTCOMES}
    for c in cells:
        out[c["outcome"]] = out.get(c["outcome"], 0) + 1
    return out
