"""The machine-readable summary of a run (``summary.json``).

Keys: ``schema``, ``run_id``, ``status``, ``started``/``ended``, ``provider``, ``host``,
``repeat``, ``ok`` (every cell met its expectation, flaky cells aside), ``cells`` (count),
``counts`` (per outcome, FLAKY included), ``unmet`` and ``flaky`` (one object per cell),
``kernel_warnings`` (one object per cell the kernel logged a warning or changed its taint
during, with its ``health``), ``targets`` (per kernel: release, provider, accel, boot time,
counts, cells with kernel warnings, error), ``profiles``
(per kernel x profile: what was made, mkfs argv, mount options, unavailable), ``matrix``
(the port's cells: ``{kernel: {profile: {scenario: outcome}}}``), ``engines`` (per engine:
cells, counts per outcome, how many not as expected), ``engine_matrix`` (the engine
scenarios: ``{kernel: {profile: {scenario: {engine: outcome}}}}``) and ``disagreements``
(the engine rows where the port and another engine differ, with every engine's outcome);
``overlay_features`` (the features table: per kernel and feature its cell and each backing fs's
answer); ``new_failures`` (failing or not as expected, no known issue accounts for them: one
object per cell, not as expected first), ``known_issues_file`` and ``known`` (each known issue
that matched: its entry with ``cells``, the ids it made KNOWN; :mod:`.known`). Each cell object
names the entries that match it (``known``) and whether it is KNOWN (``is_known``).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List

from ..lab.tables import feature_matrix, feature_states
from .model import PORT_ENGINE, CellView, RunReport, recipe_lines

SUMMARY_SCHEMA = 1


def _cell(cv: CellView) -> Dict[str, Any]:
    out = {"cell": cv.id, "kernel": cv.target, "profile": cv.profile, "scenario": cv.scenario,
           "engine": cv.engine, "group": cv.group, "outcome": cv.outcome, "expected": cv.expected, "expected_why": cv.expected_why,
           "met": cv.met, "duration": round(cv.duration, 3), "error": cv.error[:1000],
           "kernel_release": cv.kernel_release, "known": [k.id for k in cv.known], "is_known": cv.is_known}
    if len(cv.attempts) > 1:
        out.update(attempts=len(cv.attempts), outcomes=cv.outcomes, pass_rate=round(cv.pass_rate, 3))
    return out


def overlay_features(rep: RunReport) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{kernel: {feature: {"cell": "yes"|"no"|"ext4,xfs only"|..., "profiles": {profile:
    {"supported", "reason"}}}}}``: the features table with each backing fs's answer."""
    columns, rows = feature_matrix(rep)
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for target, cells in rows:
        states = feature_states(rep, target)
        out[target] = {f: {"cell": cells.get(f), "profiles": {p: {"supported": s.get("supported"),
                                                                    "reason": s.get("reason")}
                                                                for p, s in states.get(f, {}).items()}}
                       for f in columns}
    return out


def summary(rep: RunReport) -> Dict[str, Any]:
    meta = rep.run.meta
    targets: List[Dict[str, Any]] = []
    for t in rep.targets():
        rec = rep.target_record(t)
        cells = rep.cells_of(t)
        facts = rec.get("facts") or {}
        targets.append({"kernel": t, "kernel_release": rep.kernel_release(t), "provider": rec.get("provider"),
                        "accel": rec.get("accel"), "boot_seconds": rec.get("boot_seconds"),
                        "up_seconds": rec.get("up_seconds"), "python": rec.get("python"),
                        "error": rec.get("error"), "cells": len(cells), "counts": rep.counts(cells),
                        "unmet": sum(1 for c in cells if not c.met and not c.flaky),
                        "kernel_warnings": len(rep.warned(t)),
                        "kernel_config_overlay": facts.get("kernel_config_overlay"),
                        "overlay_params": facts.get("overlay_params")})
    profiles: List[Dict[str, Any]] = []
    for t in rep.targets():
        for p in rep.profiles():
            prec = rep.profile_record(t, p)
            if not prec:
                continue
            fs = prec.get("fs") or {}
            info = fs.get("info") or {}
            mount = info.get("mount") or {}
            profiles.append({"kernel": t, "profile": p, "fs_name": info.get("fs_name"),
                             "recipe": recipe_lines(fs or (prec.get("unavailable") or {})),
                             "mount_options": mount.get("options"), "super_options": mount.get("super_options"),
                             "mountinfo": info.get("mountinfo"), "unavailable": bool(prec.get("unavailable")),
                             "unavailable_step": (prec.get("unavailable") or {}).get("step"),
                             "d_type": (prec.get("facts") or {}).get("d_type"),
                             "driver_init": (prec.get("facts") or {}).get("driver_init")})
    matrix: Dict[str, Dict[str, Dict[str, str]]] = {}
    for cv in rep.cells.values():
        if cv.engine == PORT_ENGINE:
            matrix.setdefault(cv.target, {}).setdefault(cv.profile, {})[cv.scenario] = cv.outcome
    engine_matrix: Dict[str, Dict[str, Dict[str, Dict[str, str]]]] = {}
    for cv in rep.engine_cells():
        engine_matrix.setdefault(cv.target, {}).setdefault(cv.profile, {}).setdefault(cv.scenario, {})[cv.engine] = \
            cv.outcome
    engines = {}
    for e in rep.engines():
        cells = [c for c in rep.cells.values() if c.engine == e]
        engines[e] = {"cells": len(cells), "counts": rep.counts(cells),
                      "unmet": sum(1 for c in cells if not c.met and not c.flaky)}
    disagreements = [{"kernel": t, "profile": p, "scenario": s,
                      "outcomes": {e: c.outcome for e, c in ((e, rep.get(t, p, s, e)) for e in rep.engine_columns())
                                   if c is not None}}
                     for t, p, s in rep.disagreements()]
    return {"schema": SUMMARY_SCHEMA, "run_id": rep.run_id, "status": meta.get("status"),
            "started": meta.get("started"), "ended": meta.get("ended"), "provider": meta.get("provider"),
            "argv": meta.get("argv"), "host": meta.get("host"), "repeat": rep.repeat,
            "ok": not rep.gate_failures(), "summary": rep.summary_line(), "cells": len(rep.cells),
            "counts": rep.counts(), "unmet": [_cell(c) for c in rep.unmet()],
            "flaky": [_cell(c) for c in rep.flaky()],
            "kernel_warnings": [dict(_cell(c), health=c.health) for c in rep.warned()], "targets": targets, "profiles": profiles,
            "matrix": matrix, "engines": engines, "engine_matrix": engine_matrix,
            "disagreements": disagreements, "overlay_features": overlay_features(rep),
            "skipped_lines": rep.run.skipped_lines,
            "new_failures": [_cell(c) for c in rep.new_failures()],
            "known_issues_file": rep.known_issues.source,
            "known": [dict(issue.to_dict(), cells=[c.id for c in cells]) for issue, cells in rep.known_groups()]}


def render(rep: RunReport) -> str:
    return json.dumps(summary(rep), indent=2, sort_keys=True, default=str) + "\n"
