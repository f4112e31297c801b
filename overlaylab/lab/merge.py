"""``overlaylab merge RUN…``: one run from several (the shards of a CI matrix, or runs of one
selection made on different machines), written and reported as if it had been one run.

The inputs must be of one matrix: the same lab version and the same matrix fingerprint
(:func:`overlaylab.lab.shard.fingerprint`: the full cell list, the repeat count, the version).
A cell (with its ``--repeat`` attempt) found in two inputs is a duplicate; a cell of the matrix
that no input has is a gap; both are refused unless ``allow_partial`` (gaps only: the merged run
is then ``partial``, and ``overlaylab run --resume`` on it runs what is missing). Every refusal
is a :class:`MergeError` of one line.

The merged directory holds what a run holds: ``run.json`` (the common matrix, ``sources``:
each input's id, path, host, status and shard) and ``results.jsonl``: one target record per
target (the first that came up), one profile record per target, profile and attempt, every
cell (tagged ``source_run``) in matrix order. Reports are then written by the same
:func:`overlaylab.lab.run.publish` a run ends with.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..agent.records import SCHEMA_VERSION, cell_key
from .results import (RESULTS_FILE, RUN_FILE, Run, RunFileError, default_reports_dir, host_info, load_run,
                      new_run_id, now_iso, record_attempt)
from .shard import CellKey, fingerprint, matrix_cells

#: how many example cells a refusal names
EXAMPLES = 3


class MergeError(ValueError):
    """Runs that cannot be merged (one line: what and which runs)."""


def _version(run: Run) -> str:
    return str((run.meta.get("host") or {}).get("overlaylab") or "unknown")


def _cell_id(key: CellKey, attempt: int, repeat: int) -> str:
    text = "/".join(key[:3]) + ("" if key[3] == "port" else "/" + key[3])
    return text + (" attempt %d" % attempt if repeat > 1 else "")


def load_sources(paths: Sequence[str]) -> List[Run]:
    """The input runs, each checked to be readable and not running."""
    runs = []
    for path in paths:
        try:
            run = load_run(path)
        except RunFileError as err:
            raise MergeError(str(err)) from None
        if not run.meta:
            raise MergeError("%s: no %s (not a run directory)" % (path, RUN_FILE))
        if run.meta.get("status") == "running":
            raise MergeError("%s: run %s is still running" % (path, run.run_id))
        runs.append(run)
    return runs


def check_same_matrix(runs: Sequence[Run]) -> Tuple[Dict[str, Any], int]:
    """The common matrix (``run.json``'s form) and repeat count of ``runs``, or
    :class:`MergeError` for a different lab version or matrix fingerprint."""
    first = runs[0]
    for run in runs:
        if _version(run) != _version(first):
            raise MergeError("run %s was made by overlaylab %s, run %s by %s: merge runs of one version"
                             % (run.run_id, _version(run), first.run_id, _version(first)))
        if not run.meta.get("fingerprint"):
            raise MergeError("run %s records no matrix fingerprint (made before shards): cannot tell its matrix"
                             % run.run_id)
        if run.meta["fingerprint"] != first.meta["fingerprint"]:
            raise MergeError("run %s is of another matrix than run %s (fingerprints %s, %s): merge runs of one "
                             "selection (-K/-p/-k/--engine/--repeat)" % (
                                 run.run_id, first.run_id, run.meta["fingerprint"][:19], first.meta["fingerprint"][:19]))
    matrix = first.meta.get("matrix") or {}
    repeat = int(first.meta.get("repeat") or 1)
    if fingerprint(matrix, repeat) != first.meta["fingerprint"]:
        raise MergeError("run %s: its matrix gives another fingerprint with this overlaylab's catalogue"
                         % first.run_id)
    return matrix, repeat


def plan_cells(runs: Sequence[Run], matrix: Dict[str, Any], repeat: int,
               allow_partial: bool) -> Tuple[Dict[Tuple[CellKey, int], Tuple[Run, Dict[str, Any]]], int]:
    """Each cell (with its attempt) of the merge and the run it comes from, in matrix order,
    and how many the matrix lacks; :class:`MergeError` for a duplicate, a cell outside the
    matrix, or a gap (unless ``allow_partial``)."""
    order = [(c, a) for c in matrix_cells(matrix) for a in range(1, repeat + 1)]
    expected = set(order)
    found: Dict[Tuple[CellKey, int], Tuple[Run, Dict[str, Any]]] = {}
    duplicates: List[str] = []
    for run in runs:
        for rec in run.cells:
            key = (cell_key(rec), record_attempt(rec))
            if key not in expected:
                raise MergeError("run %s holds %s, which is not in the matrix" % (
                    run.run_id, _cell_id(key[0], key[1], repeat)))
            if key in found and found[key][0] is not run:
                duplicates.append("%s (runs %s and %s)" % (_cell_id(key[0], key[1], repeat), found[key][0].run_id,
                                                          run.run_id))
            else:
                found[key] = (run, rec)
    if duplicates:
        raise MergeError("%d duplicate cell%s: %s%s" % (
            len(duplicates), "" if len(duplicates) == 1 else "s", ", ".join(duplicates[:EXAMPLES]),
            ", ..." if len(duplicates) > EXAMPLES else ""))
    gaps = [k for k in order if k not in found]
    if gaps and not allow_partial:
        raise MergeError("%d of %d cells are in no run (e.g. %s)%s; --allow-partial merges anyway" % (
            len(gaps), len(order), ", ".join(_cell_id(c, a, repeat) for c, a in gaps[:EXAMPLES]),
            _missing_shards(runs)))
    return {k: found[k] for k in order if k in found}, len(gaps)


def _missing_shards(runs: Sequence[Run]) -> str:
    """``"; shards 2/3 missing"`` when the inputs are shards of one split and some are not given."""
    shards = [r.meta.get("shard") for r in runs]
    if not shards or not all(isinstance(s, dict) for s in shards) or len({s["n"] for s in shards}) != 1:
        return ""
    n = shards[0]["n"]
    absent = [k for k in range(1, n + 1) if k not in {s["k"] for s in shards}]
    return "; shard%s %s missing" % ("" if len(absent) == 1 else "s", ", ".join("%d/%d" % (k, n) for k in absent)) \
        if absent else ""


def _records(runs: Sequence[Run], cells: Dict[Tuple[CellKey, int], Tuple[Run, Dict[str, Any]]],
             run_id: str) -> List[Dict[str, Any]]:
    targets: Dict[str, Dict[str, Any]] = {}
    profiles: Dict[Tuple[str, str, int], Dict[str, Any]] = {}
    for run in runs:
        for rec in run.targets:
            if rec["target"] not in targets or (targets[rec["target"]].get("error") and not rec.get("error")):
                targets[rec["target"]] = dict(rec, source_run=run.run_id)
        for rec in run.profiles:
            profiles.setdefault((rec["target"], rec["profile"], record_attempt(rec)), dict(rec, source_run=run.run_id))
    out = list(targets.values()) + list(profiles.values())
    out += [dict(rec, source_run=run.run_id) for run, rec in cells.values()]
    for rec in out:
        rec["run_id"] = run_id
    return out


def merge_runs(paths: Sequence[str], reports_dir: Optional[str] = None, allow_partial: bool = False,
               argv: Sequence[str] = ()) -> str:
    """Merge the runs at ``paths`` into a new run directory under ``reports_dir``; returns its
    path (reports not yet written: :func:`overlaylab.lab.run.publish`). :class:`MergeError`
    (nothing written) when they cannot be merged."""
    if not paths:
        raise MergeError("no runs to merge")
    runs = load_sources(paths)
    matrix, repeat = check_same_matrix(runs)
    cells, gaps = plan_cells(runs, matrix, repeat, allow_partial)
    run_id = new_run_id()
    runs_dir = os.path.join(reports_dir or default_reports_dir(), "runs")
    final = os.path.join(runs_dir, run_id)
    tmp = os.path.join(runs_dir, "." + run_id + ".tmp")
    first = runs[0].meta
    starts = [r.meta["started"] for r in runs if r.meta.get("started")]
    ends = [r.meta["ended"] for r in runs if r.meta.get("ended")]
    meta = {"schema": SCHEMA_VERSION, "run_id": run_id, "status": "partial" if gaps else "finished",
            "started": min(starts) if starts else now_iso(), "ended": max(ends) if ends else now_iso(),
            "merged": now_iso(), "host": host_info(), "provider": first.get("provider"), "argv": list(argv),
            "repeat": repeat, "matrix": matrix, "fingerprint": first["fingerprint"],
            "profiles_file": first.get("profiles_file"), "cells_expected": len(matrix_cells(matrix)) * repeat,
            "missing_cells": gaps,
            "sources": [{"run_id": r.run_id, "path": os.path.abspath(r.path), "status": r.meta.get("status"),
                         "host": (r.meta.get("host") or {}).get("hostname"), "shard": r.meta.get("shard"),
                         "cells": len(r.cells)} for r in runs]}
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, RESULTS_FILE), "w", encoding="utf-8") as f:
            for rec in _records(runs, cells, run_id):
                f.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, RUN_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
