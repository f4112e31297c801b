"""Terminal tables of a run: scenarios x profiles for each kernel, with counts per outcome."""
from __future__ import annotations

from typing import Any, Dict, List

from tabulate import tabulate

from ..agent.records import OUTCOMES, UNMET_MARK, short_label
from .results import Run, counts


def cell_text(cell: Dict[str, Any]) -> str:
    return short_label(cell["outcome"], bool(cell.get("met")))


def matrix_rows(run: Run, target: str) -> List[List[str]]:
    cells = run.cell_map()
    rows = []
    for sid in run.scenario_ids():
        row = [sid]
        for profile in run.profile_names():
            cell = cells.get((target, profile, sid))
            row.append(cell_text(cell) if cell else "-")
        rows.append(row)
    return rows


def count_rows(run: Run, target: str) -> List[List[Any]]:
    rows = []
    for outcome in OUTCOMES:
        row: List[Any] = [outcome]
        for profile in run.profile_names():
            row.append(sum(1 for c in run.cells if c["target"] == target and c["profile"] == profile
                           and c["outcome"] == outcome))
        rows.append(row)
    unmet = ["unexpected"] + [sum(1 for c in run.cells if c["target"] == target and c["profile"] == p
                                  and not c.get("met")) for p in run.profile_names()]
    rows.append(unmet)
    return rows


def target_title(run: Run, target: str) -> str:
    rec = run.target_record(target) or {}
    parts = [target]
    if rec.get("kernel_release"):
        parts.append("kernel %s" % rec["kernel_release"])
    if rec.get("provider"):
        parts.append("provider %s" % rec["provider"])
    if rec.get("accel") and rec.get("accel") != "none":
        parts.append(str(rec["accel"]))
    if rec.get("error"):
        parts.append("DID NOT COME UP: %s" % rec["error"])
    return " | ".join(parts)


def render_run(run: Run, tablefmt: str = "simple") -> str:
    out = []
    headers = ["scenario"] + run.profile_names()
    for target in run.target_names():
        out.append("== %s" % target_title(run, target))
        out.append(tabulate(matrix_rows(run, target), headers=headers, tablefmt=tablefmt))
        out.append("")
        out.append(tabulate(count_rows(run, target), headers=["outcome"] + run.profile_names(), tablefmt=tablefmt))
        out.append("")
    total = counts(run.cells)
    unmet = len(run.unmet())
    out.append("%d cells: %s; %d not as expected (marked %s)" % (
        len(run.cells), ", ".join("%s %d" % (k, v) for k, v in total.items() if v), unmet, UNMET_MARK))
    return "\n".join(out)


def clip(text: str, width: int = 160) -> str:
    """One line of at most about ``width`` characters that keeps what explains an error: the
    first line, and if that is too long its head and its *tail* (where tools put the reason:
    ``losetup: /tmp/.../ext4.img: failed to set up loop device: Permission denied``)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[0] + (" (+%d lines)" % (len(lines) - 1) if len(lines) > 1 else "")
    if len(line) <= width:
        return line
    head = width // 3
    tail = width - head - 3
    return line[:head].rstrip() + " … " + line[-tail:].lstrip()


def render_unmet(run: Run, limit: int = 30) -> str:
    rows = []
    for c in run.unmet()[:limit]:
        rows.append([c["target"], c["profile"], c["scenario"], c["outcome"], c.get("expected", "?"),
                     clip(c.get("error") or "")])
    if not rows:
        return ""
    more = len(run.unmet()) - limit
    text = tabulate(rows, headers=["kernel", "profile", "scenario", "got", "expected", "error"])
    return text + ("\n(+%d more)" % more if more > 0 else "")


def render_report(rep: Any) -> str:
    """What ``run`` prints at its end and ``show`` prints again: the tables of a folded run
    (a :class:`overlaylab.reports.model.RunReport`: one row per cell, FLAKY where ``--repeat``
    attempts disagree), the cells not as expected and, for a repeated run, the flaky cells."""
    view = rep.view_run()
    out = [render_run(view)]
    unmet = render_unmet(view)
    if unmet:
        out.append("\nNot as expected:\n" + unmet)
    if rep.repeat > 1:
        flaky = rep.flaky()
        out.append("\nRepeated %d times: %d of %d cells flaky" % (rep.repeat, len(flaky), len(rep.cells)))
        if flaky:
            out.append(tabulate([(c.id, "%.0f%%" % (100 * c.pass_rate), ", ".join(c.outcomes), c.expected)
                                 for c in flaky], headers=["flaky cell", "pass rate", "outcomes", "expected"]))
    return "\n".join(out)
