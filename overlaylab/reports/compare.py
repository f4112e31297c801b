"""Baselines and regressions: ``overlaylab compare BASE NEW`` and ``run --baseline BASE``.

A baseline is either a run (a run directory, a run id or ``latest``) or a small checked-in
file of known outcomes (TOML, or the same structure as JSON)::

    schema = 1
    name = "host"
    description = "what this baseline stands for"
    made_from = "run 20261127-233133-bddb"
    [kernels]                    # informational: the release each kernel had
    host = "6.18.44-fc-v657"

    [[cell]]                     # entries are tried in order; the first whose glob matches
    match = "host/btrfs/*"       # KERNEL/PROFILE/SCENARIO (fnmatch: * ? [..]) decides
                                 # (port cells; KERNEL/PROFILE/SCENARIO/ENGINE for any engine's)
    outcome = "REFUSED"          # or a list of allowed outcomes: ["PASS", "FAIL"] (known flaky)
    why = "Docker 1.10.3 refuses overlay over btrfs"   # optional
    # met = false                # optional: the outcome is known but not the expected one

Each cell of NEW is classified against BASE:

``same``
    NEW's outcome is one BASE allows.
``newly-failing`` (a regression)
    BASE was fine and NEW fails: its outcome is FAIL or ERROR, or not what was expected.
``fixed``
    BASE failed that way and NEW does not.
``changed``
    another outcome of the same kind (PASS -> UNSUPPORTED, FAIL -> ERROR, ...); a regression
    only when NEW missed its expectation where BASE met it.
``flaky``
    NEW's repeats (``--repeat``) disagree with each other: named, never a regression.
``new`` / ``missing``
    in NEW but not in BASE / in BASE (as an exact cell within NEW's matrix) but not in NEW.

The exit status of ``compare`` and ``run --baseline`` is 1 when there is a regression.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ..lab.matrix import is_engine_scenario
from ..lab.results import load_run, resolve_run_dir
from ..agent.records import cell_glob_matches
from .model import (BAD_OUTCOMES, ALL_OUTCOMES, FLAKY, PORT_ENGINE, CellKey, CellView, RunReport, cell_id,
                    parse_cell_id)

try:
    import tomllib  # type: ignore[import-not-found]
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

BASELINE_SCHEMA = 1
KINDS = ("newly-failing", "fixed", "changed", "flaky", "new", "missing", "same")


class BaselineError(ValueError):
    pass


@dataclass
class BaseCell:
    """What a baseline says about one cell."""

    outcomes: Tuple[str, ...]
    met: bool = True
    why: str = ""
    source: str = ""

    @property
    def bad(self) -> bool:
        return not self.met or all(o in BAD_OUTCOMES for o in self.outcomes)

    @property
    def text(self) -> str:
        return "/".join(self.outcomes) + ("" if self.met else "!")


@dataclass
class Entry:
    match: str
    cell: BaseCell

    @property
    def exact(self) -> bool:
        return not any(ch in self.match for ch in "*?[")

    def matches(self, key: Sequence[str]) -> bool:
        return cell_glob_matches(self.match, key)


@dataclass
class Baseline:
    name: str
    source: str
    entries: List[Entry] = field(default_factory=list)
    exact: Dict[CellKey, BaseCell] = field(default_factory=dict)
    kernels: Dict[str, str] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    def lookup(self, key: CellKey) -> Optional[BaseCell]:
        if key in self.exact:
            return self.exact[key]
        for entry in self.entries:
            if entry.matches(key):
                return entry.cell
        return None

    def known_keys(self) -> Set[CellKey]:
        """Cells the baseline names one by one (the only ones that can be 'missing')."""
        keys = set(self.exact)
        for entry in self.entries:
            if entry.exact:
                try:
                    keys.add(parse_cell_id(entry.match))
                except ValueError:
                    pass
        return keys


# --- loading ------------------------------------------------------------------------------

def _outcomes(value: Any, where: str) -> Tuple[str, ...]:
    values = [value] if isinstance(value, str) else list(value or [])
    if not values:
        raise BaselineError("%s: no outcome" % where)
    for v in values:
        if v not in ALL_OUTCOMES or v == FLAKY:
            raise BaselineError("%s: unknown outcome %r (one of %s)" % (where, v, ", ".join(ALL_OUTCOMES[:-1])))
    return tuple(values)


def parse_baseline(data: Dict[str, Any], source: str) -> Baseline:
    if not isinstance(data, dict):
        raise BaselineError("%s: not a table" % source)
    if int(data.get("schema", 1)) > BASELINE_SCHEMA:
        raise BaselineError("%s: schema %s is newer than this overlaylab reads (%d)" % (source, data["schema"], BASELINE_SCHEMA))
    base = Baseline(name=str(data.get("name") or os.path.basename(source)), source=source,
                    kernels={str(k): str(v) for k, v in (data.get("kernels") or {}).items()},
                    meta={k: v for k, v in data.items() if k not in ("cell", "kernels")})
    for i, raw in enumerate(data.get("cell") or []):
        where = "%s: cell #%d" % (source, i + 1)
        if not isinstance(raw, dict) or "match" not in raw or "outcome" not in raw:
            raise BaselineError("%s: needs match and outcome" % where)
        match = str(raw["match"])
        if match.count("/") not in (2, 3):
            raise BaselineError("%s: match %r is not KERNEL/PROFILE/SCENARIO[/ENGINE]" % (where, match))
        base.entries.append(Entry(match, BaseCell(_outcomes(raw["outcome"], where), bool(raw.get("met", True)),
                                                  str(raw.get("why", "")), "%s [%s]" % (os.path.basename(source), match))))
    return base


def load_baseline_file(path: str) -> Baseline:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except ValueError as err:
        raise BaselineError("%s: %s" % (path, err)) from None
    return parse_baseline(data, path)


def baseline_from_report(rep: RunReport) -> Baseline:
    base = Baseline(name="run %s" % rep.run_id, source=rep.run.path,
                    kernels={t: rep.kernel_release(t) for t in rep.targets()}, meta={"matrix": rep.run.meta.get("matrix")})
    for key, cv in rep.cells.items():
        base.exact[key] = BaseCell(tuple(sorted(set(cv.outcomes), key=ALL_OUTCOMES.index)), cv.met,
                                   cv.expected_why, "run %s" % rep.run_id)
    return base


def load_baseline(ref: str, reports_dir: Optional[str] = None) -> Baseline:
    """BASE as given on the command line: a baseline file, a run directory, a run id or 'latest'."""
    if os.path.isfile(ref):
        return load_baseline_file(ref)
    try:
        path = resolve_run_dir(ref, reports_dir)
    except FileNotFoundError as err:
        raise BaselineError("%s is neither a baseline file nor a run: %s" % (ref, err)) from None
    return baseline_from_report(RunReport.from_run(load_run(path)))


# --- comparing ----------------------------------------------------------------------------

@dataclass
class Change:
    key: CellKey
    kind: str
    base: Optional[BaseCell]
    new: Optional[CellView]
    regression: bool = False

    @property
    def id(self) -> str:
        return cell_id(self.key)

    def base_text(self) -> str:
        return self.base.text if self.base else "-"

    def new_text(self) -> str:
        if self.new is None:
            return "-"
        text = self.new.outcome + ("" if self.new.met else "!")
        if len(self.new.attempts) > 1:
            text += " (%s)" % ",".join(self.new.outcomes)
        return text


@dataclass
class Comparison:
    base: Baseline
    new: RunReport
    changes: List[Change]
    out_of_scope: int = 0   # baseline cells outside NEW's matrix (a filtered run)

    def of_kind(self, kind: str) -> List[Change]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def regressions(self) -> List[Change]:
        return [c for c in self.changes if c.regression]

    def counts(self) -> Dict[str, int]:
        return {k: len(self.of_kind(k)) for k in KINDS}

    def summary_line(self) -> str:
        counts = self.counts()
        compared = sum(v for k, v in counts.items() if k != "missing")
        text = "%s -> run %s: %d cells: %s" % (
            self.base.name, self.new.run_id, compared,
            ", ".join("%d %s" % (counts[k], k) for k in KINDS))
        regs = len(self.regressions)
        return text + ("; REGRESSIONS: %d" % regs if regs else "; no regressions")

    def to_dict(self) -> Dict[str, Any]:
        return {"base": self.base.name, "base_source": self.base.source, "new": self.new.run_id,
                "counts": self.counts(), "regressions": len(self.regressions), "out_of_scope": self.out_of_scope,
                "changes": [{"cell": c.id, "kind": c.kind, "base": c.base_text(), "new": c.new_text(),
                             "regression": c.regression,
                             "base_source": c.base.source if c.base else None} for c in self.changes if c.kind != "same"]}


def classify(base: Optional[BaseCell], new: CellView) -> Tuple[str, bool]:
    if base is None:
        return "new", False
    if new.flaky:
        if set(new.outcomes) <= set(base.outcomes):
            return "same", False
        return "flaky", False
    if new.outcome in base.outcomes:
        return "same", False
    if not base.bad and new.bad:
        return "newly-failing", True
    if base.bad and not new.bad:
        return "fixed", False
    return "changed", (not new.met and base.met)


def compare(base: Baseline, new: RunReport) -> Comparison:
    changes: List[Change] = []
    for key, cv in new.cells.items():
        b = base.lookup(key)
        kind, regression = classify(b, cv)
        changes.append(Change(key, kind, b, cv, regression))
    matrix = new.run.meta.get("matrix") or {}
    kernels = set(matrix.get("kernels") or new.targets())
    profiles = set(matrix.get("profiles") or new.profiles())
    scenarios = set(matrix.get("scenarios") or new.scenarios())
    vm_scenarios = set(matrix["vm_scenarios"]) if matrix.get("vm_scenarios") is not None else scenarios
    engines = set(matrix.get("engines") or ())  # what the engine scenarios ran on
    out_of_scope = 0
    for key in sorted(base.known_keys()):
        if key in new.cells:
            continue
        in_scope = scenarios if key[0] in ("host", "local") else vm_scenarios  # VM kernels skip the scale tier
        if (key[0] in kernels and key[1] in profiles and key[2] in in_scope
                and key[3] in (engines if is_engine_scenario(key[2]) else {PORT_ENGINE})):
            changes.append(Change(key, "missing", base.lookup(key), None, False))
        else:
            out_of_scope += 1
    order = {k: i for i, k in enumerate(KINDS)}
    changes.sort(key=lambda c: (not c.regression, order[c.kind]))
    return Comparison(base, new, changes, out_of_scope)


def render_text(cmp: Comparison, show_same: bool = False) -> str:
    from tabulate import tabulate
    rows = [(c.id, c.kind + (" (REGRESSION)" if c.regression else ""), c.base_text(), c.new_text(),
             (c.new.error if c.new is not None else "")[:90].replace("\n", " "))
            for c in cmp.changes if show_same or c.kind != "same"]
    out = []
    notes = []
    for kernel, release in sorted(cmp.base.kernels.items()):
        now = cmp.new.kernel_release(kernel)
        if release and now and release != now:
            notes.append("note: the baseline's %s was kernel %s, this run's is %s" % (kernel, release, now))
    if rows:
        out.append(tabulate(rows, headers=["cell", "change", "base", "new", "new error"]))
    if cmp.out_of_scope:
        notes.append("(%d baseline cells lie outside this run's matrix and were not compared)" % cmp.out_of_scope)
    out.extend(notes)
    out.append(cmp.summary_line())
    return "\n".join(out)


def render_markdown(cmp: Comparison) -> str:
    from tabulate import tabulate
    rows = [(c.id, c.kind + (" **REGRESSION**" if c.regression else ""), c.base_text(), c.new_text())
            for c in cmp.changes if c.kind != "same"]
    text = "## Compared with %s\n\n**%s**\n" % (cmp.base.name, cmp.summary_line())
    if rows:
        text += "\n" + tabulate(rows, headers=["cell", "change", "base", "new"], tablefmt="github") + "\n"
    return text


# --- writing a baseline file --------------------------------------------------------------

def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # JSON strings are valid TOML basic strings


def _majority(values: Sequence[str]) -> str:
    best = max(set(values), key=lambda v: (values.count(v), -ALL_OUTCOMES.index(v)))
    return best


def baseline_entries(rep: RunReport) -> List[Tuple[str, Tuple[str, ...], bool, str]]:
    """Compact (match, outcomes, met, why) entries that reproduce every cell of ``rep``.

    Order (first match wins): single cells that are exceptions (flaky, not as expected, or
    unlike their profile), then whole profiles with one outcome, then scenarios with one
    outcome on every remaining profile, then each remaining profile's usual outcome. Each
    kernel and engine is summarised on its own: port cells by 3-part matches, the others' by
    4-part ones (``host/ext4/*/docker-overlay2``).
    """
    exact: List[Tuple[str, Tuple[str, ...], bool, str]] = []
    uniform: List[Tuple[str, Tuple[str, ...], bool, str]] = []
    by_scenario: List[Tuple[str, Tuple[str, ...], bool, str]] = []
    defaults: List[Tuple[str, Tuple[str, ...], bool, str]] = []

    def why_of(cells: List[CellView]) -> str:
        whys = {c.expected_why for c in cells}
        return whys.pop() if len(whys) == 1 else ""

    for t, e in [(t, e) for t in rep.targets() for e in rep.engines()]:
        suffix = "" if e == PORT_ENGINE else "/" + e
        mixed: Dict[str, List[CellView]] = {}
        for p in rep.profiles():
            cells = [c for c in rep.cells_of(t, p) if c.engine == e]
            if not cells:
                continue
            special = [c for c in cells if c.flaky or not c.met]
            for c in special:
                exact.append((c.id, tuple(sorted(set(c.outcomes), key=ALL_OUTCOMES.index)), c.met or c.flaky,
                              c.expected_why))
            rest = [c for c in cells if c not in special]
            if not rest:
                continue
            if len({c.outcome for c in rest}) == 1:
                uniform.append(("%s/%s/*%s" % (t, p, suffix), (rest[0].outcome,), True, why_of(rest)))
            else:
                mixed[p] = rest
        covered: Set[CellKey] = set()
        if len(mixed) >= 2:
            for sid in rep.scenarios():
                cells = [c for p in mixed for c in mixed[p] if c.scenario == sid]
                if len(cells) != len(mixed) or len({c.outcome for c in cells}) != 1:
                    continue
                outcome = cells[0].outcome
                if all(_majority([x.outcome for x in mixed[c.profile]]) == outcome for c in cells):
                    continue  # every profile's default says so already
                by_scenario.append(("%s/*/%s%s" % (t, sid, suffix), (outcome,), True, why_of(cells)))
                covered.update(c.key for c in cells)
        for p, cells in mixed.items():
            rest = [c for c in cells if c.key not in covered]
            if not rest:
                continue
            default = _majority([c.outcome for c in rest])
            for c in rest:
                if c.outcome != default:
                    exact.append((c.id, (c.outcome,), True, c.expected_why))
            defaults.append(("%s/%s/*%s" % (t, p, suffix), (default,), True,
                             why_of([c for c in rest if c.outcome == default])))
    return exact + uniform + by_scenario + defaults


def render_baseline(rep: RunReport, name: Optional[str] = None, description: str = "") -> str:
    lines = ["# overlaylab baseline: the known outcome of each kernel/profile/scenario[/engine] cell.",
             "# Entries are tried in order; the first whose `match` glob (KERNEL/PROFILE/SCENARIO for",
             "# the port, KERNEL/PROFILE/SCENARIO/ENGINE for another engine) matches a cell gives its",
             "# known outcome(s). Made by `overlaylab report RUN --format baseline`;",
             "# edit freely (a list of outcomes marks a cell known to be flaky).",
             "schema = %d" % BASELINE_SCHEMA,
             "name = %s" % _toml_str(name or "baseline of run %s" % rep.run_id)]
    if description:
        lines.append("description = %s" % _toml_str(description))
    lines.append("made_from = %s" % _toml_str("run %s" % rep.run_id))
    lines.append("made = %s" % _toml_str(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")))
    lines.append("cells = %d" % len(rep.cells))
    lines.append("")
    lines.append("[kernels]")
    for t in rep.targets():
        lines.append("%s = %s" % (_toml_str(t), _toml_str(rep.kernel_release(t))))
    for match, outcomes, met, why in baseline_entries(rep):
        lines.append("")
        lines.append("[[cell]]")
        lines.append("match = %s" % _toml_str(match))
        if len(outcomes) == 1:
            lines.append("outcome = %s" % _toml_str(outcomes[0]))
        else:
            lines.append("outcome = [%s]" % ", ".join(_toml_str(o) for o in outcomes))
        if not met:
            lines.append("met = false")
        if why:
            lines.append("why = %s" % _toml_str(why))
    return "\n".join(lines) + "\n"
