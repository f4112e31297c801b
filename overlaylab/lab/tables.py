"""Terminal tables of a run, per kernel: the classic matrix (scenarios x profiles) with counts
per outcome, and the engine section (profile x engine scenario rows, one column per engine,
the port first) with counts per engine; the overlayfs features (kernel x feature); then the
new failures and the known issues that matched (:mod:`overlaylab.reports.known`), the cells not
as expected, the rows where the port and the other engines disagree, and the flaky cells of a
repeated run."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from tabulate import tabulate

from ..agent.features import FEATURES, matrix_cell
from ..agent.records import OUTCOMES, PORT_ENGINE, UNMET_MARK, short_label

if TYPE_CHECKING:  # the reports import the lab's results: no import cycle at run time
    from ..reports.model import CellView, RunReport


def cell_text(cv: "Optional[CellView]") -> str:
    return short_label(cv.outcome, cv.met) if cv is not None else "-"


def _ordered(items) -> List[str]:
    return list(dict.fromkeys(items))


def matrix_rows(rep: "RunReport", target: str, profiles: Sequence[str], scenarios: Sequence[str]) -> List[List[str]]:
    return [[sid] + [cell_text(rep.get(target, p, sid)) for p in profiles] for sid in scenarios]


def engine_rows(rep: "RunReport", target: str) -> List[List[str]]:
    rows = []
    for profile, sid in rep.engine_rows(target):
        rows.append([profile, sid] + [cell_text(rep.get(target, profile, sid, e)) for e in rep.engine_columns()])
    return rows


def count_rows(cells: Sequence["CellView"], columns: Sequence[str], column_of: Callable[[Any], str]) -> List[List[Any]]:
    """Per outcome (FLAKY only when a cell is), how many ``cells`` of each column ended so,
    and how many were not as expected."""
    outcomes = list(OUTCOMES) + [o for o in _ordered(c.outcome for c in cells) if o not in OUTCOMES]
    rows: List[List[Any]] = []
    for outcome in outcomes:
        rows.append([outcome] + [sum(1 for c in cells if column_of(c) == col and c.outcome == outcome)
                                 for col in columns])
    rows.append(["unexpected"] + [sum(1 for c in cells if column_of(c) == col and not c.met) for col in columns])
    return rows


def target_title(rep: "RunReport", target: str) -> str:
    rec = rep.target_record(target)
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


def render_run(rep: "RunReport", tablefmt: str = "simple") -> str:
    """Per kernel the classic matrix and the engine section, then the summary line."""
    classic = rep.classic_cells()
    # the classic matrix's axes in the order the cells were recorded
    profiles = _ordered(c.profile for c in classic)
    scenarios = _ordered(c.scenario for c in classic)
    engines = rep.engine_columns()
    out = []
    for target in _ordered(c.target for c in rep.cells.values()):
        out.append("== %s" % target_title(rep, target))
        mine = [c for c in classic if c.target == target]
        if mine:
            out.append(tabulate(matrix_rows(rep, target, profiles, scenarios), headers=["scenario"] + profiles,
                                tablefmt=tablefmt))
            out.append("")
            out.append(tabulate(count_rows(mine, profiles, lambda c: c.profile), headers=["outcome"] + profiles,
                                tablefmt=tablefmt))
            out.append("")
        on_engines = rep.engine_cells(target)
        if on_engines:
            out.append("-- %s: engine scenarios, one column per engine" % target)
            out.append(tabulate(engine_rows(rep, target), headers=["profile", "scenario"] + engines,
                                tablefmt=tablefmt))
            out.append("")
            out.append(tabulate(count_rows(on_engines, engines, lambda c: c.engine), headers=["outcome"] + engines,
                                tablefmt=tablefmt))
            out.append("")
        warned = rep.warned(target)
        if warned:
            out.append("%s: %d cells with kernel warnings: %s" % (target, len(warned), ", ".join(c.id for c in warned[:10])
                                                                 + (" …" if len(warned) > 10 else "")))
            out.append("")
    total = rep.counts()
    out.append("%d cells: %s; %d not as expected (marked %s)" % (
        len(rep.cells), ", ".join("%s %d" % (k, v) for k, v in total.items() if v), len(_unmet(rep)), UNMET_MARK))
    return "\n".join(out)


def feature_states(rep: "RunReport", target: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{feature: {profile: {"supported", "reason", ...}}}`` of one kernel, from its profile
    records' ``facts.overlay_features`` (profiles whose fs was not made have none)."""
    states: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for profile in rep.profiles():
        facts = rep.profile_record(target, profile).get("facts") or {}
        for name, state in ((facts.get("overlay_features") or {}).get("features") or {}).items():
            states.setdefault(name, {})[profile] = state
    return states


def feature_matrix(rep: "RunReport") -> Tuple[List[str], List[Tuple[str, Dict[str, str]]]]:
    """The features table of a run: the feature columns, and per kernel that probed any, each
    feature's cell over its backing filesystems (``yes``, ``no``, ``ext4,xfs only``)."""
    rows = []
    columns: List[str] = list(FEATURES)
    for target in rep.targets():
        states = feature_states(rep, target)
        if states:
            columns += [f for f in states if f not in columns]
            rows.append((target, {f: matrix_cell({p: s.get("supported") for p, s in states.get(f, {}).items()})
                                  for f in columns}))
    return columns, rows


def render_features(rep: "RunReport", tablefmt: str = "simple") -> str:
    """The features table for the terminal ("" when no profile probed them)."""
    columns, rows = feature_matrix(rep)
    if not rows:
        return ""
    return tabulate([[t] + [cells.get(f, "-") for f in columns] for t, cells in rows],
                    headers=["kernel"] + columns, tablefmt=tablefmt)


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


def _unmet(rep: "RunReport") -> List["CellView"]:
    """Cells any of whose attempts missed its expectation (flaky ones included)."""
    return [c for c in rep.cells.values() if not c.met]


def render_unmet(rep: "RunReport", limit: int = 30) -> str:
    unmet = _unmet(rep)
    with_engine = any(c.engine != PORT_ENGINE for c in unmet)
    rows = []
    for c in unmet[:limit]:
        rows.append([c.target, c.profile, c.scenario] + ([c.engine] if with_engine else []) + [
            c.outcome, c.expected, clip(c.rate_text() if c.flaky else c.error)])
    if not rows:
        return ""
    more = len(unmet) - limit
    headers = ["kernel", "profile", "scenario"] + (["engine"] if with_engine else []) + ["got", "expected", "error"]
    text = tabulate(rows, headers=headers)
    return text + ("\n(+%d more)" % more if more > 0 else "")


def render_disagreements(rep: "RunReport", width: int = 100) -> str:
    """The engine rows where the port's outcome differs from another engine's: each engine's
    outcome and the line that explains it."""
    rows = []
    for t, p, s in rep.disagreements():
        for e in rep.engine_columns():
            cv = rep.get(t, p, s, e)
            if cv is not None:
                rows.append(["%s/%s/%s" % (t, p, s), e, cell_text(cv), clip(cv.reason_line, width)])
    if not rows:
        return "none: on every engine scenario the other engines agree with the port"
    return tabulate(rows, headers=["row", "engine", "outcome", "error or verdict"])


def render_new(rep: "RunReport", limit: int = 30) -> str:
    """The new failures: failing or not as expected, and no known issue accounts for them
    (not as expected first); "" when there are none."""
    new = rep.new_failures()
    rows = [[c.id, short_label(c.outcome, c.met), c.expected,
             clip(c.error or c.reason_line, 100) + ("  (resembles %s)" % c.known[0].id if c.known else "")]
            for c in new[:limit]]
    if not rows:
        return ""
    text = tabulate(rows, headers=["cell", "got", "expected", "error"])
    return text + ("\n(+%d more)" % (len(new) - limit) if len(new) > limit else "")


def render_known(rep: "RunReport", width: int = 6) -> str:
    """Per known issue that matched: how many cells, its status, title and upstream report,
    and which cells (the first ``width``)."""
    lines = []
    for issue, cells in rep.known_groups():
        ids = ", ".join(c.id for c in cells[:width]) + (", +%d more" % (len(cells) - width) if len(cells) > width else "")
        lines.append("%s (%d cell%s, %s): %s\n    %s\n    %s" % (
            issue.id, len(cells), "" if len(cells) == 1 else "s", issue.status, issue.title, issue.url, ids))
    return "\n".join(lines)


def render_report(rep: "RunReport") -> str:
    """What ``run`` prints at its end and ``show`` prints again: the tables of a folded run
    (a :class:`overlaylab.reports.model.RunReport`: one row per cell, FLAKY where ``--repeat``
    attempts disagree), the cells not as expected, where the port and the other engines
    disagree (when engine scenarios ran) and, for a repeated run, the flaky cells."""
    out = [render_run(rep)]
    features = render_features(rep)
    if features:
        out.append("\nOverlay features (a real mount per kernel x backing fs):\n" + features)
    new = render_new(rep)
    out.append("\nNew failures (%d): failing or not as expected, matching no known issue%s" % (
        len(rep.new_failures()), ":\n" + new if new else ""))
    known = render_known(rep)
    if known:
        out.append("\nKnown issues (%d cells, %s):\n%s" % (
            sum(len(c) for _, c in rep.known_groups()), rep.known_issues.source, known))
    unmet = render_unmet(rep)
    if unmet:
        out.append("\nNot as expected:\n" + unmet)
    if rep.engine_cells():
        out.append("\nWhere the port and the living drivers disagree:\n" + render_disagreements(rep))
    if rep.repeat > 1:
        flaky = rep.flaky()
        out.append("\nRepeated %d times: %d of %d cells flaky" % (rep.repeat, len(flaky), len(rep.cells)))
        if flaky:
            out.append(tabulate([(c.id, "%.0f%%" % (100 * c.pass_rate), ", ".join(c.outcomes), c.expected)
                                 for c in flaky], headers=["flaky cell", "pass rate", "outcomes", "expected"]))
    return "\n".join(out)
