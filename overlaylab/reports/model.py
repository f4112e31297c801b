"""What every report reads: a run's cells aggregated over repeats, and evidence as text.

A run made with ``--repeat N`` holds N records per cell (``attempt`` 1..N); a plain run holds
one (no ``attempt`` key, read as attempt 1). :class:`CellView` folds them: the cell's outcome is
the attempts' common outcome, or ``FLAKY`` when they differ; ``pass_rate`` is the share of
attempts that passed and ``met`` says whether every attempt met its expectation.

Two kinds of cells share a run: the *classic* matrix (the port's own scenarios, per kernel
scenarios x profiles) and the *engine* section (scenarios of group ``engine``, run once per
storage engine: per kernel, profile x scenario rows and one column per engine, the port
first). :meth:`RunReport.disagreements` names the engine rows where the port's outcome differs
from another engine's.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..lab.results import Run
from .known import KnownIssue, KnownIssues, load_default
from ..agent.records import (ALL_OUTCOMES, BAD_OUTCOMES, FLAKY, MEANING, NOT_RUN, OUTCOMES,  # noqa: F401
                             PORT_ENGINE, SHORT, SYMBOLS, UNMET_MARK, cell_key)

GROUP_ORDER = ("lifecycle", "diff", "quirks", "failure-class")
#: the group of the engine-neutral scenarios (run once per engine)
ENGINE_GROUP = "engine"

CellKey = Tuple[str, str, str, str]  # (target, profile, scenario, engine)


def cell_id(key: Sequence[str]) -> str:
    """``kernel/profile/scenario``, and ``/engine`` for an engine other than the port: how a
    cell is named on the command line and in reports (ids of runs before engines stay valid)."""
    parts = list(key)
    if len(parts) == 4 and parts[3] in ("", PORT_ENGINE):
        parts = parts[:3]
    return "/".join(parts)


def parse_cell_id(text: str) -> CellKey:
    parts = text.strip().strip("/").split("/")
    if len(parts) not in (3, 4) or not all(parts):
        raise ValueError("a cell is KERNEL/PROFILE/SCENARIO[/ENGINE], got %r" % text)
    return parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else PORT_ENGINE


@dataclass
class CellView:
    """One cell of the matrix, over all its attempts."""

    key: CellKey
    attempts: List[Dict[str, Any]]
    #: the known-issue entries whose globs, kernel range and outcomes match this cell (:mod:`.known`)
    known: List[KnownIssue] = field(default_factory=list)

    @property
    def target(self) -> str:
        return self.key[0]

    @property
    def profile(self) -> str:
        return self.key[1]

    @property
    def scenario(self) -> str:
        return self.key[2]

    @property
    def engine(self) -> str:
        return self.key[3]

    @property
    def id(self) -> str:
        return cell_id(self.key)

    @property
    def outcomes(self) -> List[str]:
        return [a.get("outcome", "ERROR") for a in self.attempts]

    @property
    def flaky(self) -> bool:
        return len(set(self.outcomes)) > 1

    @property
    def outcome(self) -> str:
        return FLAKY if self.flaky else self.outcomes[0]

    @property
    def met(self) -> bool:
        """Every attempt met its expectation."""
        return all(a.get("met") for a in self.attempts)

    @property
    def met_count(self) -> int:
        return sum(1 for a in self.attempts if a.get("met"))

    @property
    def pass_rate(self) -> float:
        return sum(1 for o in self.outcomes if o == "PASS") / float(len(self.attempts))

    @property
    def gate_failed(self) -> bool:
        """Not as expected in a way that fails the run: unmet and not merely flaky."""
        return not self.met and not (self.flaky and self.met_count > 0)

    @property
    def record(self) -> Dict[str, Any]:
        """The attempt to show: the first that missed its expectation, else the last."""
        for a in self.attempts:
            if not a.get("met"):
                return a
        return self.attempts[-1]

    @property
    def health(self) -> Dict[str, Any]:
        """The kernel-health mark (overlaylab/agent/health.py: warnings the kernel logged, taint
        that changed while the cell ran) of the first attempt that has one, or ``{}``."""
        for a in self.attempts:
            if a.get("health"):
                return a["health"]
        return {}

    @property
    def group(self) -> str:
        return self.record.get("group") or "other"

    @property
    def expected(self) -> str:
        return self.record.get("expected", "?")

    @property
    def expected_why(self) -> str:
        return self.record.get("expected_why", "") or ""

    @property
    def error(self) -> str:
        return self.record.get("error", "") or ""

    @property
    def duration(self) -> float:
        return sum(float(a.get("duration") or 0.0) for a in self.attempts) / len(self.attempts)

    @property
    def kernel_release(self) -> str:
        return self.record.get("kernel_release", "") or ""

    @property
    def label(self) -> str:
        """The scenario, with ``[engine]`` for an engine other than the port."""
        return self.scenario if self.engine == PORT_ENGINE else "%s[%s]" % (self.scenario, self.engine)

    @property
    def in_engine_section(self) -> bool:
        """Shown in the engine section (an engine scenario, or any engine but the port)
        rather than in the classic matrix."""
        return self.group == ENGINE_GROUP or self.engine != PORT_ENGINE

    @property
    def engine_evidence(self) -> Dict[str, Any]:
        """What the agent recorded about the engine: ``{"engine", "version", "verdict":
        {"accepted", "message", "evidence"}, "commands"}`` ({} when it recorded nothing)."""
        found = (self.record.get("evidence") or {}).get("engine")
        return found if isinstance(found, dict) else {}

    @property
    def engine_version(self) -> str:
        return str(self.engine_evidence.get("version") or "")

    @property
    def verdict_line(self) -> str:
        """The engine's verdict on the backing filesystem, as one line ("" if none was recorded)."""
        verdict = self.engine_evidence.get("verdict")
        if not isinstance(verdict, dict):
            return ""
        said = "accepted" if verdict.get("accepted") else "refused"
        message = " ".join(str(verdict.get("message") or "").split())
        return "%s: %s" % (said, message) if message else said

    @property
    def reason_line(self) -> str:
        """Why the cell came out as it did, in one line: the error's first line, else the
        engine's verdict."""
        for line in self.error.splitlines():
            if line.strip():
                return line.strip()
        return self.verdict_line

    @property
    def bad(self) -> bool:
        """Failing in a release engineer's sense: FAIL/ERROR, or not what was expected."""
        return self.outcome in BAD_OUTCOMES or not self.met

    @property
    def is_known(self) -> bool:
        """KNOWN: not passing, as expected, and an entry of the known issues names it."""
        return bool(self.known) and self.outcome != "PASS" and self.met and not self.flaky

    @property
    def is_new(self) -> bool:
        """A new failure: failing or not as expected, and no known issue accounts for it."""
        return self.bad and not self.is_known

    def symbol(self, mark_unmet: bool = True) -> str:
        sym = SYMBOLS.get(self.outcome, "?")
        return sym + UNMET_MARK if mark_unmet and not self.met else sym

    def rate_text(self) -> str:
        n = len(self.attempts)
        return "%d/%d PASS (%s)" % (self.outcomes.count("PASS"), n, ", ".join(self.outcomes))


@dataclass
class RunReport:
    """A run, folded for reporting."""

    run: Run
    cells: Dict[CellKey, CellView] = field(default_factory=dict)
    known_issues: KnownIssues = field(default_factory=lambda: KnownIssues(""))
    #: the axes and the engine section's cells, computed once per set of cells: the renderers ask
    #: for them per row, and scanning every cell each time made a 13,000-cell report take minutes
    _memo: Dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def _once(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, kept while the report holds the same cells (shared: do not modify it)."""
        if self._memo.get("cells") is not self.cells or self._memo.get("size") != len(self.cells):
            self._memo.clear()
            self._memo.update(cells=self.cells, size=len(self.cells))
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @classmethod
    def from_run(cls, run: Run, known: Optional[KnownIssues] = None) -> "RunReport":
        """The fold; each cell gets the entries of ``known`` (default: the project's
        ``reports/known-issues.toml``, :func:`.known.load_default`) that match it."""
        grouped: Dict[CellKey, List[Dict[str, Any]]] = {}
        for rec in run.cells:
            grouped.setdefault(cell_key(rec), []).append(rec)
        cells = {}
        for key, recs in grouped.items():
            recs.sort(key=lambda r: int(r.get("attempt") or 1))
            cells[key] = CellView(key, recs)
        rep = cls(run, cells, known if known is not None else load_default())
        for cv in cells.values():
            cv.known = rep.known_issues.matching(cv.key, rep.cell_release(cv), cv.outcome)
        return rep

    # the matrix's axes --------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.run.run_id

    def targets(self) -> List[str]:
        return self._once("targets", lambda: _ordered(
            [k[0] for k in self.cells] + [t.get("target") for t in self.run.targets if t.get("target")]))

    def profiles(self) -> List[str]:
        listed = list((self.run.meta.get("matrix") or {}).get("profiles") or [])
        return self._once("profiles", lambda: _ordered(listed + [k[1] for k in self.cells]))

    def scenarios(self) -> List[str]:
        listed = list((self.run.meta.get("matrix") or {}).get("scenarios") or [])
        return self._once("scenarios", lambda: _ordered(listed + [k[2] for k in self.cells]))

    def groups(self) -> List[Tuple[str, List[str]]]:
        """The classic matrix's scenario groups in the catalogue's order, each with its
        scenarios (the engine group has its own section: :meth:`engine_rows`)."""
        return self._once("groups", self._groups)

    def _groups(self) -> List[Tuple[str, List[str]]]:
        by_group: Dict[str, List[str]] = {}
        group_of = {}
        for cv in self.cells.values():
            group_of.setdefault(cv.scenario, cv.group)
        for sid in self.scenarios():
            if group_of.get(sid) == ENGINE_GROUP:
                continue
            by_group.setdefault(group_of.get(sid, "other"), []).append(sid)
        order = [g for g in GROUP_ORDER if g in by_group] + [g for g in by_group if g not in GROUP_ORDER]
        return [(g, by_group[g]) for g in order]

    def engines(self) -> List[str]:
        listed = list((self.run.meta.get("matrix") or {}).get("engines") or [])
        return self._once("engines", lambda: _ordered(listed + [k[3] for k in self.cells]))

    def get(self, target: str, profile: str, scenario: str, engine: str = PORT_ENGINE) -> Optional[CellView]:
        return self.cells.get((target, profile, scenario, engine))

    def cells_of(self, target: str, profile: Optional[str] = None) -> List[CellView]:
        """The cells of a kernel (on one ``profile``), every engine's, in the run's order."""
        def index() -> Dict[Tuple[str, Optional[str]], List[CellView]]:
            by: Dict[Tuple[str, Optional[str]], List[CellView]] = {}
            for c in self.cells.values():
                by.setdefault((c.target, None), []).append(c)
                by.setdefault((c.target, c.profile), []).append(c)
            return by
        return self._once("cells_of", index).get((target, profile), [])

    # the engine section --------------------------------------------------------------------
    def classic_cells(self) -> List[CellView]:
        return [c for c in self.cells.values() if not c.in_engine_section]

    def engine_cells(self, target: Optional[str] = None) -> List[CellView]:
        every = self._once("engine_cells", lambda: [c for c in self.cells.values() if c.in_engine_section])
        if target is None:
            return every
        return self._once(("engine_cells", target), lambda: [c for c in every if c.target == target])

    def engine_columns(self) -> List[str]:
        """The engines of the engine section: the port first, then :meth:`engines` order."""
        def compute() -> List[str]:
            present = {c.engine for c in self.engine_cells()}
            return _ordered(e for e in [PORT_ENGINE] + self.engines() if e in present)
        return self._once("engine_columns", compute)

    def engine_rows(self, target: Optional[str] = None) -> List[Tuple[str, str]]:
        """(profile, scenario) rows of a kernel's engine section (of every kernel's without
        ``target``), grouped by profile."""
        def compute() -> List[Tuple[str, str]]:
            present = {(c.profile, c.scenario) for c in self.engine_cells(target)}
            return [(p, s) for p in self.profiles() for s in self.scenarios() if (p, s) in present]
        return self._once(("engine_rows", target), compute)

    def disagreements(self) -> List[Tuple[str, str, str]]:
        """(kernel, profile, scenario) engine rows where the port's outcome differs from at
        least one other engine's."""
        out = []
        for t in self.targets():
            for p, s in self.engine_rows(t):
                port = self.get(t, p, s)
                if port is not None and any(
                        c.outcome != port.outcome for c in (self.get(t, p, s, e) for e in self.engine_columns())
                        if c is not None):
                    out.append((t, p, s))
        return out

    # summaries -----------------------------------------------------------------------------
    @property
    def repeat(self) -> int:
        return max([len(c.attempts) for c in self.cells.values()] or [1])

    def counts(self, cells: Optional[Iterable[CellView]] = None) -> Dict[str, int]:
        out = {o: 0 for o in ALL_OUTCOMES}
        for cv in (self.cells.values() if cells is None else cells):
            out[cv.outcome] = out.get(cv.outcome, 0) + 1
        return out

    def warned(self, target: Optional[str] = None) -> List[CellView]:
        """Cells with kernel warnings (of ``target``): the kernel logged a WARN/BUG/Oops, lockdep
        splat, hung task ... or changed its taint while they ran, whatever their outcome."""
        return [c for c in self.cells.values() if c.health and (target is None or c.target == target)]

    def unmet(self) -> List[CellView]:
        """Cells not as expected (flaky ones are listed by :meth:`flaky`)."""
        return [c for c in self.cells.values() if not c.met and not c.flaky]

    def flaky(self) -> List[CellView]:
        return [c for c in self.cells.values() if c.flaky]

    def gate_failures(self) -> List[CellView]:
        return [c for c in self.cells.values() if c.gate_failed]

    def not_passing(self) -> List[CellView]:
        return [c for c in self.cells.values() if c.outcome != "PASS"]

    def target_record(self, target: str) -> Dict[str, Any]:
        return self.run.target_record(target) or {}

    def profile_record(self, target: str, profile: str) -> Dict[str, Any]:
        return self.run.profile_record(target, profile) or {}

    def kernel_release(self, target: str) -> str:
        rec = self.target_record(target)
        if rec.get("kernel_release"):
            return rec["kernel_release"]
        for cv in self.cells.values():
            if cv.target == target and cv.kernel_release:
                return cv.kernel_release
        return ""

    def cell_release(self, cv: CellView) -> str:
        return cv.kernel_release or self.kernel_release(cv.target)

    # known issues ----------------------------------------------------------------------------
    def new_failures(self) -> List[CellView]:
        """Failing or unexpected cells no known issue accounts for: not as expected first."""
        return sorted((c for c in self.cells.values() if c.is_new), key=lambda c: (c.met, c.id))

    def known_groups(self) -> List[Tuple[KnownIssue, List[CellView]]]:
        """Each known issue that made cells KNOWN, with those cells, in the file's order."""
        out = []
        for issue in self.known_issues.issues:
            cells = [c for c in self.cells.values() if c.is_known and c.known[0] == issue]
            if cells:
                out.append((issue, cells))
        return out

    def summary_line(self) -> str:
        counts = self.counts()
        parts = ", ".join("%s %d" % (k, v) for k, v in counts.items() if v)
        line = "%d cells: %s; %d not as expected" % (len(self.cells), parts or "none", len(self.unmet()))
        if self.repeat > 1:
            line += "; %d flaky over %d repeats" % (len(self.flaky()), self.repeat)
        return line


def _ordered(items: Iterable[Any]) -> List[Any]:
    seen: Dict[Any, None] = {}
    for item in items:
        if item is not None:
            seen.setdefault(item, None)
    return list(seen)


# --- evidence as text ---------------------------------------------------------------------

_AGENT_DIR = re.compile(r"/(?:[\w.-]+/)*overlaylab-agent\.[\w-]+")
_LAYER_ID = re.compile(r"\b[0-9a-f]{64}\b")


def normalize(text: str) -> str:
    """Error text without the per-run temp paths and layer ids (to group equal failures)."""
    return _LAYER_ID.sub("<id>", _AGENT_DIR.sub("<agent-tmp>", text or ""))


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return "\n".join(value)
        if all(isinstance(v, (list, tuple)) for v in value):
            return "\n".join(" | ".join(str(x) for x in row) for row in value)
    if isinstance(value, (int, float, bool)):
        return json.dumps(value)
    return json.dumps(value, indent=2, sort_keys=True, default=str)


# Evidence keys shown first, in this order; the rest follow alphabetically.
_FIRST = ("kernel_answer", "errno", "dmesg", "driver_status", "driver_log", "traceback", "mount_data",
          "agent_problem", "stderr_tail", "console_tail", "stdout_junk", "backing_fs")


def evidence_sections(rec: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(title, text) pairs for one cell record: error, log, then each evidence item."""
    out: List[Tuple[str, str]] = []
    if rec.get("error"):
        out.append(("error", rec["error"]))
    if rec.get("health"):
        out.append(("kernel health", as_text(rec["health"])))
    ev = rec.get("evidence") or {}
    keys = [k for k in _FIRST if k in ev] + sorted(k for k in ev if k not in _FIRST)
    for key in keys:
        if key == "engine" and isinstance(ev[key], dict):
            out.extend(engine_sections(ev[key]))
            continue
        if key == "backing_fs" and isinstance(ev[key], dict):
            bf = ev[key]
            short = {k: v for k, v in bf.items() if k in ("step", "error", "stderr", "errno", "dmesg")}
            out.append(("backing_fs", as_text(short)))
            continue
        text = as_text(ev[key])
        if text != "":
            out.append((key, text))
    if rec.get("log"):
        out.append(("log", as_text(rec["log"])))
    return out


def engine_sections(info: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(title, text) pairs for a cell's ``evidence["engine"]``: the engine and its version,
    its verdict with the verdict's evidence, and the commands it ran (``$ argv  # exit rc``,
    then their stderr)."""
    out = [("engine", " ".join(str(x) for x in (info.get("engine"), info.get("version")) if x))]
    verdict = info.get("verdict")
    if isinstance(verdict, dict):
        text = "%s: %s" % ("accepted" if verdict.get("accepted") else "refused", verdict.get("message") or "")
        extra = as_text(verdict.get("evidence"))
        out.append(("engine verdict", text + ("\n" + extra if extra and extra != "{}" else "")))
    lines = []
    for cmd in info.get("commands") or []:
        if not isinstance(cmd, dict):
            lines.append(as_text(cmd))
            continue
        lines.append("$ %s    # exit %s, %s s" % (shell_join(cmd.get("argv") or []), cmd.get("rc"), cmd.get("seconds")))
        lines.extend("  " + line for line in str(cmd.get("stderr") or "").splitlines())
    if lines:
        out.append(("engine commands", "\n".join(lines)))
    return out


def shell_join(argv: Sequence[Any]) -> str:
    import shlex
    return " ".join(shlex.quote(str(a)) for a in argv)


def recipe_lines(fs: Dict[str, Any]) -> List[str]:
    """The filesystem's recipe as the commands that were really run."""
    lines = []
    for step in (fs or {}).get("recipe") or []:
        op = step.get("op")
        if op == "base" and isinstance(step.get("recipe"), list):
            lines.append("# base profile %s:" % step.get("profile", "?"))
            lines.extend(recipe_lines({"recipe": step["recipe"]}))
            continue
        if step.get("argv"):
            line = shell_join(step["argv"])
        elif step.get("command"):
            line = step["command"]
        elif op == "mkdir":
            line = "mkdir -p " + shell_join(step.get("paths") or [])
        else:
            line = "# %s" % json.dumps(step, sort_keys=True, default=str)
        if step.get("error"):
            line += "    # failed: %s" % step["error"]
        elif step.get("returncode") not in (None, 0):
            line += "    # exit %s" % step["returncode"]
        lines.append(line)
    return lines


def fs_sections(prec: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(title, text) pairs describing the backing filesystem a profile record says was made."""
    out: List[Tuple[str, str]] = []
    if not prec:
        return out
    fs = prec.get("fs") or {}
    unavailable = prec.get("unavailable") or {}
    if unavailable:
        out.append(("unavailable", "%s failed: %s" % (unavailable.get("step", "?"),
                                                       unavailable.get("stderr") or unavailable.get("error") or "")))
        fs = dict(unavailable, recipe=unavailable.get("recipe") or [])
    info = (fs.get("info") or {}) if isinstance(fs, dict) else {}
    profile = info.get("profile") or {}
    if profile:
        out.append(("profile", "%s — %s" % (profile.get("name", prec.get("profile")), profile.get("description", ""))))
        if profile.get("mkfs"):
            out.append(("mkfs argv", shell_join(list(profile.get("mkfs") or []) + list(profile.get("mkfs_options") or []) + ["DEVICE"])))
        out.append(("profile mount options", profile.get("mount_options") or "(defaults)"))
    lines = recipe_lines(fs)
    if lines:
        out.append(("recipe (as run)", "\n".join(lines)))
    mount = info.get("mount") or {}
    if mount:
        out.append(("mount options", "%s (superblock: %s)" % (mount.get("options", ""), mount.get("super_options", ""))))
    if info.get("mountinfo"):
        out.append(("mountinfo", info["mountinfo"]))
    for key in ("fs_name", "statfs_magic"):
        if info.get(key):
            out.append((key, str(info[key])))
    if info.get("ext4_features"):
        out.append(("ext4_features", " ".join(str(f) for f in info["ext4_features"])))
    for key in ("xfs", "inode_count", "block_count", "df"):
        if info.get(key) not in (None, "", [], {}):
            out.append((key, as_text(info[key])))
    for key in ("xfs_info", "dumpe2fs", "btrfs_show", "mkfs_output", "df_k", "df_i"):
        if info.get(key):
            out.append((key, _clean_tty(info[key])))
    if info.get("base"):
        base = info["base"]
        if base.get("mountinfo"):
            out.append(("base mountinfo", base["mountinfo"]))
    if info.get("layers"):
        out.append(("overlay layers", as_text(info["layers"])))
    if prec.get("dmesg"):
        out.append(("dmesg during set-up", as_text(prec["dmesg"])))
    return out


def _clean_tty(text: str) -> str:
    """Terminal output (mkfs progress counters) as the terminal would show it: backspaces
    move the cursor back and later characters overwrite."""
    lines = []
    for line in (text or "").split("\n"):
        if "\b" not in line and "\r" not in line:
            lines.append(line)
            continue
        buf: List[str] = []
        pos = 0
        for ch in line:
            if ch == "\b":
                pos = max(0, pos - 1)
            elif ch == "\r":
                pos = 0
            else:
                if pos < len(buf):
                    buf[pos] = ch
                else:
                    buf.append(ch)
                pos += 1
        lines.append("".join(buf).rstrip())
    return "\n".join(lines)


def probe_rows(*records: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """(name, value, evidence) for every probe in the given target/profile records."""
    rows = []
    for rec in records:
        for name, probe in sorted(((rec or {}).get("probes") or {}).items()):
            if not isinstance(probe, dict):
                continue
            value = probe.get("value")
            shown = as_text(value) if not isinstance(value, (dict, list)) else json.dumps(value, sort_keys=True)
            if probe.get("error"):
                shown += " (error: %s)" % probe["error"]
            rows.append((name, shown, probe.get("evidence") or ""))
    return rows


def reports_dir_of(run_path: str) -> str:
    """``<reports>`` for ``<reports>/runs/<run-id>``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(run_path.rstrip("/"))))
