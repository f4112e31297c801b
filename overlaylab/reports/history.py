"""An index of runs (SQLite, standard library): ``<reports>/index.sqlite``.

Updated at the end of every ``overlaylab run`` and rebuilt from ``<reports>/runs/*`` by
``overlaylab history --reindex`` (the run directories stay the truth; the index can always be
thrown away). ``overlaylab history --cell KERNEL/PROFILE/SCENARIO[/ENGINE]`` shows how a
cell's outcome moved across runs. A pattern is matched against cell ids, which name the
engine only when it is not the port (:func:`overlaylab.reports.model.cell_id`): ``*`` and
``?`` glob in any part and ``*`` spans parts, so ``host/tmpfs/*`` is every cell of host and
tmpfs on every engine, ``host/tmpfs/engine-verdict`` that scenario's port cell and
``*/*/*/docker-overlay2`` every cell of that engine.

Tables: ``runs`` (one row per run: when, status, provider, host kernel, counts) and
``cells`` (one row per run x cell: engine, outcome over repeats, expected, met, pass rate,
error). An index of schema 1 (cells without an engine) is migrated in place when opened:
its cells become the port's.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Dict, List, Optional, Tuple

from ..lab.results import RESULTS_FILE, load_run, now_iso
from .model import PORT_ENGINE, RunReport

INDEX_FILE = "index.sqlite"
INDEX_SCHEMA = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, path TEXT, started TEXT, ended TEXT, status TEXT, provider TEXT,
    host_kernel TEXT, kernels TEXT, argv TEXT, repeat INTEGER, cells INTEGER,
    pass INTEGER, fail INTEGER, refused INTEGER, unsupported INTEGER, error INTEGER, flaky INTEGER,
    unmet INTEGER, indexed TEXT);
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT, kernel TEXT, profile TEXT, scenario TEXT, engine TEXT NOT NULL DEFAULT 'port',
    grp TEXT, kernel_release TEXT,
    outcome TEXT, outcomes TEXT, expected TEXT, met INTEGER, attempts INTEGER, pass_rate REAL,
    duration REAL, error TEXT,
    PRIMARY KEY (run_id, kernel, profile, scenario, engine));
CREATE INDEX IF NOT EXISTS cells_by_cell ON cells (kernel, profile, scenario, engine);
"""
CELL_COLUMNS = ("run_id", "kernel", "profile", "scenario", "engine", "grp", "kernel_release", "outcome",
                "outcomes", "expected", "met", "attempts", "pass_rate", "duration", "error")
# a row's cell id, as model.cell_id spells it
CELL_ID = ("(kernel || '/' || profile || '/' || scenario || "
           "CASE WHEN engine = '%s' THEN '' ELSE '/' || engine END)" % PORT_ENGINE)


def index_path(reports_dir: str) -> str:
    return os.path.join(reports_dir, INDEX_FILE)


def _migrate(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2, in one transaction: ``cells`` gains ``engine`` (in its primary key) and
    the old rows become the port's."""
    conn.execute("BEGIN IMMEDIATE")   # checked under the write lock: two openers migrate once
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(cells)")]
        if columns and "engine" not in columns:
            old = ", ".join(c for c in CELL_COLUMNS if c != "engine")
            conn.execute("DROP INDEX IF EXISTS cells_by_cell")
            conn.execute("ALTER TABLE cells RENAME TO cells_schema1")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO cells (%s, engine) SELECT %s, ? FROM cells_schema1" % (old, old), (PORT_ENGINE,))
            conn.execute("DROP TABLE cells_schema1")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def connect(reports_dir: str) -> sqlite3.Connection:
    os.makedirs(reports_dir, exist_ok=True)
    conn = sqlite3.connect(index_path(reports_dir), timeout=30)
    _migrate(conn)
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(INDEX_SCHEMA),))
    return conn


def _insert(conn: sqlite3.Connection, rep: RunReport) -> None:
    meta = rep.run.meta
    counts = rep.counts()
    conn.execute("DELETE FROM cells WHERE run_id = ?", (rep.run_id,))
    conn.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
        rep.run_id, os.path.abspath(rep.run.path), meta.get("started"), meta.get("ended"), meta.get("status"),
        meta.get("provider"), (meta.get("host") or {}).get("kernel"),
        ",".join("%s=%s" % (t, rep.kernel_release(t)) for t in rep.targets()),
        json.dumps(meta.get("argv") or []), rep.repeat, len(rep.cells), counts["PASS"], counts["FAIL"],
        counts["REFUSED"], counts["UNSUPPORTED"], counts["ERROR"], counts["FLAKY"], len(rep.unmet()), now_iso()))
    conn.executemany("INSERT OR REPLACE INTO cells (%s) VALUES (%s)" % (
        ", ".join(CELL_COLUMNS), ",".join("?" * len(CELL_COLUMNS))), [
        (rep.run_id, cv.target, cv.profile, cv.scenario, cv.engine, cv.group,
         cv.kernel_release or rep.kernel_release(cv.target),
         cv.outcome, ",".join(cv.outcomes), cv.expected, int(cv.met), len(cv.attempts), cv.pass_rate,
         round(cv.duration, 3), cv.error[:500]) for cv in rep.cells.values()])


def index_run(reports_dir: str, run_path: str, rep: Optional[RunReport] = None) -> None:
    """Add (or refresh) one run in the index (from ``rep`` when the caller has folded it)."""
    if rep is None:
        rep = RunReport.from_run(load_run(run_path))
    conn = connect(reports_dir)
    try:
        with conn:
            _insert(conn, rep)
    finally:
        conn.close()


def run_dirs(reports_dir: str) -> List[str]:
    runs = os.path.join(reports_dir, "runs")
    if not os.path.isdir(runs):
        return []
    return [os.path.join(runs, n) for n in sorted(os.listdir(runs))
            if os.path.exists(os.path.join(runs, n, RESULTS_FILE))]


def reindex(reports_dir: str, warn=None) -> int:
    """Rebuild the index from every run directory; returns how many runs it holds.
    ``warn(text)`` hears of each run directory left out as damaged, and why."""
    path = index_path(reports_dir)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    conn = sqlite3.connect(tmp)
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(INDEX_SCHEMA),))
    n = 0
    with conn:
        for d in run_dirs(reports_dir):
            try:
                _insert(conn, RunReport.from_run(load_run(d)))
                n += 1
            except (OSError, ValueError, KeyError) as err:
                if warn is not None:  # a damaged run directory is left out, not fatal
                    warn("left out %s: %s" % (d, err))
                continue
    conn.close()
    os.replace(tmp, path)
    return n


def ensure_index(reports_dir: str) -> None:
    if not os.path.exists(index_path(reports_dir)):
        reindex(reports_dir)


def _glob(pattern: str) -> str:
    """A pattern of cell ids: missing parts glob, a 4th part naming the port is dropped (the
    port's ids have 3)."""
    parts = pattern.strip("/").split("/")
    while len(parts) < 3:
        parts.append("*")
    if len(parts) == 4 and parts[3] == PORT_ENGINE:
        parts = parts[:3]
    return "/".join(parts)


def cell_history(reports_dir: str, pattern: str) -> List[Dict[str, Any]]:
    """Rows (oldest run first) for every cell whose id matches ``pattern``
    (KERNEL/PROFILE/SCENARIO[/ENGINE], globs), each with its ``cell`` id."""
    ensure_index(reports_dir)
    conn = connect(reports_dir)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT %s AS cell, c.*, r.started, r.status FROM cells c JOIN runs r USING (run_id) "
            "WHERE %s GLOB ? ORDER BY c.kernel, c.profile, c.scenario, c.engine != ?, c.engine, r.started, c.run_id"
            % (CELL_ID, CELL_ID), (_glob(pattern), PORT_ENGINE)).fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]


def list_runs(reports_dir: str) -> List[Dict[str, Any]]:
    ensure_index(reports_dir)
    conn = connect(reports_dir)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM runs ORDER BY started, run_id")]
    finally:
        conn.close()


def moving_cells(reports_dir: str, limit: int = 50) -> List[Tuple[str, int, str]]:
    """Cells whose outcome was not always the same across indexed runs: (cell, runs, outcomes)."""
    ensure_index(reports_dir)
    conn = connect(reports_dir)
    try:
        rows = conn.execute(
            "SELECT %s, COUNT(*), GROUP_CONCAT(DISTINCT outcome) FROM cells GROUP BY kernel, profile, scenario, "
            "engine HAVING COUNT(DISTINCT outcome) > 1 ORDER BY 1 LIMIT ?" % CELL_ID, (limit,)).fetchall()
    finally:
        conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


def render_cell_history(rows: List[Dict[str, Any]]) -> str:
    from tabulate import tabulate
    if not rows:
        return "no indexed run has such a cell"
    out = []
    by_cell: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by_cell.setdefault(r["cell"], []).append(r)
    for cell, hist in by_cell.items():
        table = []
        prev: Optional[str] = None
        moves = 0
        for r in hist:
            note = ""
            if prev is not None and r["outcome"] != prev:
                note = "<- was %s" % prev
                moves += 1
            prev = r["outcome"]
            table.append((r["run_id"], r["started"] or "", r["kernel_release"] or "",
                          r["outcome"] + ("" if r["met"] else "!"), r["expected"],
                          ("%d/%d PASS" % (round(r["pass_rate"] * r["attempts"]), r["attempts"])) if r["attempts"] > 1 else "",
                          "%.2f" % (r["duration"] or 0.0), note))
        out.append("== %s: %d runs, outcome changed %d times; now %s" % (cell, len(hist), moves, hist[-1]["outcome"]))
        out.append(tabulate(table, headers=["run", "started", "kernel release", "outcome", "expected", "repeats",
                                            "seconds", "change"]))
        out.append("")
    return "\n".join(out).rstrip()


def render_runs(reports_dir: str) -> str:
    from tabulate import tabulate
    runs = list_runs(reports_dir)
    if not runs:
        return "no runs indexed under %s" % reports_dir
    table = [(r["run_id"], r["started"] or "", r["status"], r["provider"], r["kernels"], r["cells"], r["pass"],
              r["fail"], r["refused"], r["unsupported"], r["error"], r["flaky"], r["unmet"]) for r in runs]
    text = tabulate(table, headers=["run", "started", "status", "provider", "kernels", "cells", "PASS", "FAIL",
                                    "REFUSED", "UNSUP", "ERROR", "FLAKY", "unexpected"])
    moving = moving_cells(reports_dir)
    if moving:
        text += "\n\nCells whose outcome moved across runs (see `overlaylab history --cell CELL`):\n"
        text += tabulate(moving, headers=["cell", "runs", "outcomes seen"])
    return text


# --- a run's cells across the runs before it (the HTML report's history view) ----------------

CellOutcomes = Dict[Tuple[str, str, str, str], Dict[str, Tuple[str, bool]]]


def history_until(reports_dir: str, rep: RunReport) -> Optional[Tuple[List[Tuple[str, str]], CellOutcomes]]:
    """``(runs, outcomes)`` for the cells of ``rep``: ``runs`` the (run id, started) of the
    indexed runs that started no later than ``rep``'s, oldest first, then ``rep``'s own run
    (indexed or not yet: ``overlaylab run`` writes its reports before it indexes the run);
    ``outcomes[cell key][run id] = (outcome, met)``. None when there is no index: the index is
    read, never made, here."""
    if not os.path.exists(index_path(reports_dir)):
        return None
    started = rep.run.meta.get("started") or ""
    conn = connect(reports_dir)
    try:
        runs = [(r[0], r[1] or "") for r in conn.execute(
            "SELECT run_id, started FROM runs WHERE run_id != ? AND (? = '' OR started <= ?) ORDER BY started, run_id",
            (rep.run_id, started, started))]
        keys = set(rep.cells)
        outcomes: CellOutcomes = {key: {} for key in keys}
        for run_id, kernel, profile, scenario, engine, outcome, met in conn.execute(
                "SELECT c.run_id, c.kernel, c.profile, c.scenario, c.engine, c.outcome, c.met FROM cells c "
                "JOIN runs r USING (run_id) WHERE c.run_id != ? AND (? = '' OR r.started <= ?)",
                (rep.run_id, started, started)):
            key = (kernel, profile, scenario, engine)
            if key in keys:
                outcomes[key][run_id] = (outcome, bool(met))
    finally:
        conn.close()
    for key, cv in rep.cells.items():
        outcomes[key][rep.run_id] = (cv.outcome, cv.met)
    return runs + [(rep.run_id, started)], outcomes


def regression(timeline: List[Tuple[str, str]]) -> Tuple[Optional[str], Optional[str]]:
    """``(last worked in, first failed in)`` for a cell's ``(run id, outcome)`` oldest first,
    as KernelCI names a regression: when its latest outcome is not PASS, the last run where it
    passed and the first run after that one (where it stopped passing); ``(None, None)`` when
    it passes now or never passed."""
    if not timeline or timeline[-1][1] == "PASS":
        return None, None
    passed = [i for i, (_, outcome) in enumerate(timeline) if outcome == "PASS"]
    if not passed:
        return None, None
    return timeline[passed[-1]][0], timeline[passed[-1] + 1][0]
