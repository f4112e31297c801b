"""``overlaylab bisect``: find the first kernel on which one cell behaves differently.

Like ``git bisect`` run over kernels instead of commits (git's ``bisect`` documentation,
https://git-scm.com/docs/git-bisect, "old"/"new" terms): the kernels of the catalogue
(``vms/kernels.toml``, or a directory of builds with ``--kernels-dir``) are ordered by version
(:func:`version_key`), those from ``--good`` to ``--bad`` are kept, and only the midpoints a
binary search needs are booted. *Good* means "behaves like K1" (the outcome K1 showed, or
``--good-outcome``); anything else is *bad*, so a fix (FAIL -> PASS) bisects like a regression.

Each step is an ordinary lab run (:func:`~overlaylab.lab.run.run_lab`: one kernel under qemu,
one profile, one scenario, one engine, ``--repeat N``), so ``show``, ``report`` and ``bundle``
work on it. The log, ``<reports>/bisect/<id>/bisect.json``, is rewritten after every step.

A step whose repeats disagree (a flaky cell) or whose cell the lab could not run (ERROR) stops
the bisection with both outcomes and the evidence paths: one wrong verdict sends a binary
search into the wrong half, so it never guesses.

Every step runs under the qemu provider, so a bisection changes the kernel alone; a kernel
that cannot boot there (the host kernel when ``/boot`` lacks its vmlinuz) is left out, and said so.
"""
from __future__ import annotations

import glob
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import exitcodes
from ..agent.records import OUTCOMES, PORT_ENGINE, cell_key
from ..hints import did_you_mean
from .matrix import SelectionError

#: the verdicts of a step
GOOD, BAD, FLAKY, ERROR = "good", "bad", "flaky", "error"
#: what a step records for a repeat that left no cell record (the VM never came up, ...)
NO_RESULT = "ERROR"


# --- ordering ---------------------------------------------------------------------------------

def version_key(version: str) -> Optional[Tuple]:
    """A sort key for a kernel version or release string, or None when it has no version.

    ``5.10 < 6.1 < 6.12 < 7.2`` (numbers, not text; ``6.1`` equals ``6.1.0``); a release
    candidate sorts before its release (``6.19.0-rc1``, Debian's ``6.19~rc1-1``); what follows
    the version orders builds of one version by its numbers (Debian's ABI in ``6.1.0-50-amd64``,
    ``+deb13``, a package revision)."""
    m = re.match(r"\s*(\d+(?:\.\d+)*)(.*)$", version or "")
    if not m:
        return None
    nums = tuple(int(x) for x in m.group(1).split("."))
    nums = nums + (0,) * max(0, 3 - len(nums))
    rest = m.group(2)
    rc = re.match(r"[-~.+]?rc(\d+)", rest)
    pre = (0, int(rc.group(1))) if rc else (1, 0)
    tail = tuple(int(x) for x in re.findall(r"\d+", rest[rc.end():] if rc else rest))
    return nums, pre, tail


@dataclass(frozen=True)
class BisectKernel:
    """A kernel of the bisection: its catalogue name, its release (``uname -r``) and the
    version it is ordered by (the Debian package's, which names the real upstream version where
    the release does not, as in ``6.1.0-50-amd64`` = 6.1.176; else the release)."""

    name: str
    release: str
    version: str

    def label(self) -> str:
        return "%s (%s)" % (self.name, self.release)


def order_kernels(entries: Sequence[Any], resolve: Callable[[Any], Any]
                  ) -> Tuple[List[BisectKernel], List[Dict[str, str]]]:
    """``(kernels ordered by version, left out)`` of catalogue ``entries``. ``resolve`` is
    :func:`~overlaylab.kernels.fetch.fetch_kernel` (cache first: nothing boots) and gives the
    release and package version; an entry it cannot resolve, or whose version has no number,
    is left out with the reason (``{"kernel", "why"}``)."""
    from ..kernels.fetch import KernelUnavailable
    found, left_out = [], []
    for entry in entries:
        try:
            image = resolve(entry)
        except KernelUnavailable as err:
            left_out.append({"kernel": entry.name, "why": err.reason})
            continue
        kernel = BisectKernel(entry.name, image.release, image.version or image.release)
        if version_key(kernel.version) is None:
            left_out.append({"kernel": entry.name, "why": "no version number in %r" % kernel.version})
            continue
        found.append(kernel)
    found.sort(key=lambda k: (version_key(k.version), k.name))
    return found, left_out


def between(kernels: Sequence[BisectKernel], good: str, bad: str) -> List[BisectKernel]:
    """The ordered kernels from ``good`` to ``bad``, both included; :class:`SelectionError`
    when ``good`` is not older than ``bad``."""
    names = [k.name for k in kernels]
    lo, hi = names.index(good), names.index(bad)
    if version_key(kernels[lo].version) >= version_key(kernels[hi].version):
        raise SelectionError("--good %s (%s) is not older than --bad %s (%s): the good kernel comes first"
                             % (good, kernels[lo].version, bad, kernels[hi].version))
    return list(kernels[lo:hi + 1])


# --- the cell -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellSpec:
    profile: str
    scenario: str
    engine: str = PORT_ENGINE
    engine_group: bool = False

    def __str__(self) -> str:
        return "%s/%s" % (self.profile, self.scenario) + ("" if self.engine == PORT_ENGINE else "/" + self.engine)


def parse_cell(text: str, profiles: Sequence[str], scenarios: Mapping[str, Any],
               engines: Sequence[str], engine_group: str) -> CellSpec:
    """``PROFILE/SCENARIO[/ENGINE]`` checked against the profiles, scenarios (id -> scenario,
    with ``group``) and engines; :class:`SelectionError` naming the closest names."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise SelectionError("cell %r: expected PROFILE/SCENARIO or PROFILE/SCENARIO/ENGINE "
                             "(e.g. xfs-v4-noftype/create-empty)" % text)
    profile, scenario = parts[0], parts[1]
    if profile not in profiles:
        raise SelectionError("cell %r: no profile %r%s (`overlaylab list profiles`)"
                             % (text, profile, did_you_mean(profile, profiles)))
    if scenario not in scenarios:
        raise SelectionError("cell %r: no scenario %r%s (`overlaylab list scenarios`)"
                             % (text, scenario, did_you_mean(scenario, scenarios)))
    grouped = scenarios[scenario].group == engine_group
    engine = parts[2] if len(parts) == 3 else PORT_ENGINE
    if engine not in engines:
        raise SelectionError("cell %r: no engine %r%s (have: %s)"
                             % (text, engine, did_you_mean(engine, engines), ", ".join(engines)))
    if engine != PORT_ENGINE and not grouped:
        raise SelectionError("cell %r: %s runs on the port alone (only scenarios of group %r run per engine)"
                             % (text, scenario, engine_group))
    return CellSpec(profile, scenario, engine, grouped)


# --- steps and the search -----------------------------------------------------------------------

@dataclass
class Step:
    """One booted kernel: the outcome of each repeat, the run that recorded it, and evidence."""

    kernel: BisectKernel
    outcomes: List[str]
    run_id: str = ""
    run_dir: str = ""
    evidence: List[str] = field(default_factory=list)  # one excerpt per repeat
    paths: List[str] = field(default_factory=list)     # results.jsonl, console log
    verdict: str = ""

    @property
    def outcome(self) -> Optional[str]:
        """The outcome all repeats agree on (None when they do not)."""
        return self.outcomes[0] if self.outcomes and len(set(self.outcomes)) == 1 else None

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["kernel"], out["release"], out["version"] = self.kernel.name, self.kernel.release, self.kernel.version
        return out

    def seen(self) -> str:
        """``PASS`` or ``PASS in repeat 1, UNSUPPORTED in repeat 2``."""
        if self.outcome is not None:
            return self.outcome + (" (x%d)" % len(self.outcomes) if len(self.outcomes) > 1 else "")
        return ", ".join("%s in repeat %d" % (o, i) for i, o in enumerate(self.outcomes, 1))


@dataclass
class Bisection:
    """What a bisection came to: ``status`` is ``found``, ``ends`` (K1 not good or K2 not bad),
    ``flaky``, ``error`` (the lab could not run the cell) or ``interrupted``."""

    status: str
    message: str
    good_outcome: Optional[str] = None
    steps: List[Step] = field(default_factory=list)
    first_bad: Optional[BisectKernel] = None
    last_good: Optional[BisectKernel] = None

    def step_of(self, kernel: Optional[BisectKernel]) -> Optional[Step]:
        return next((s for s in self.steps if kernel is not None and s.kernel == kernel), None)

    @property
    def exit_code(self) -> int:
        return {"found": exitcodes.OK, "error": exitcodes.INFRASTRUCTURE,
                "interrupted": exitcodes.INTERRUPTED}.get(self.status, exitcodes.NOT_AS_EXPECTED)


class Interrupted(Exception):
    """A step's run was interrupted (Ctrl-C, SIGTERM): the bisection stops where it is."""


def judge(step: Step, good_outcome: str) -> str:
    """A step's verdict: ``flaky`` when its repeats disagree, ``error`` when the lab could not
    run the cell, else ``good`` (K1's outcome) or ``bad`` (any other)."""
    if step.outcome is None:
        return FLAKY
    if step.outcome == "ERROR":
        return ERROR
    return GOOD if step.outcome == good_outcome else BAD


def _evidence_note(step: Step) -> str:
    where = ", ".join(step.paths) or step.run_dir or "no run recorded"
    return "(evidence: %s)" % where


def bisect(kernels: Sequence[BisectKernel], step: Callable[[BisectKernel], Step],
           good_outcome: Optional[str] = None, assume_ends: bool = False,
           on_step: Callable[[Step], None] = lambda s: None) -> Bisection:
    """Binary search over ``kernels`` (ordered; the first is K1, the last K2) with ``step``
    booting one kernel. Unless ``assume_ends``, K1 and K2 run first: K1 must give one outcome
    (``good_outcome`` if given), K2 another. ``on_step`` sees each finished step."""
    result = Bisection("running", "", good_outcome)
    good_k, bad_k = kernels[0], kernels[-1]

    def run(kernel: BisectKernel) -> Step:
        s = step(kernel)
        s.verdict = judge(s, result.good_outcome) if result.good_outcome else (
            FLAKY if s.outcome is None else ERROR if s.outcome == "ERROR" else GOOD)
        result.steps.append(s)
        on_step(s)
        return s

    def stop(status: str, message: str) -> Bisection:
        result.status, result.message = status, message
        return result

    try:
        if assume_ends:
            result.good_outcome = good_outcome or "PASS"
        else:
            first = run(good_k)
            if first.verdict in (FLAKY, ERROR) or first.verdict == BAD:
                want = " (not %s)" % result.good_outcome if first.verdict == BAD else ""
                return stop(ERROR if first.verdict == ERROR else "ends",
                            "--good %s is not good: it gave %s%s %s"
                            % (good_k.name, first.seen(), want, _evidence_note(first)))
            result.good_outcome = first.outcome
            last = run(bad_k)
            if last.verdict != BAD:
                why = "it gave %s like --good %s" % (last.seen(), good_k.name) if last.verdict == GOOD \
                    else "it gave %s" % last.seen()
                return stop(ERROR if last.verdict == ERROR else "ends",
                            "--bad %s is not bad: %s %s" % (bad_k.name, why, _evidence_note(last)))
        lo, hi = 0, len(kernels) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            s = run(kernels[mid])
            if s.verdict == FLAKY:
                return stop(FLAKY, "%s is flaky: %s; a bisection cannot go on without guessing (use "
                                   "a kernel range around it, or fix the cell) %s"
                            % (s.kernel.name, s.seen(), _evidence_note(s)))
            if s.verdict == ERROR:
                return stop(ERROR, "the lab could not run the cell on %s: %s %s"
                            % (s.kernel.name, s.seen(), _evidence_note(s)))
            if s.verdict == GOOD:
                lo = mid
            else:
                hi = mid
    except (Interrupted, KeyboardInterrupt):
        return stop("interrupted", "interrupted after %d steps" % len(result.steps))
    result.first_bad, result.last_good = kernels[hi], kernels[lo]
    bad_step = result.step_of(result.first_bad)
    return stop("found", "first bad: %s, last good: %s" % (result.first_bad.name, result.last_good.name)
                + ("" if bad_step else " (the ends assumed, not run)"))


# --- a directory of kernel builds --------------------------------------------------------------

_IMAGES = ("bzImage", "vmlinuz", "vmlinuz-*", "boot/vmlinuz-*", "arch/x86/boot/bzImage")
_MODULE_ROOTS = ("lib/modules", "usr/lib/modules", "modules")


def build_entry(build: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """A catalogue table (as ``vms/kernels.toml`` would hold it) describing the kernel build in
    directory ``build``: its ``.deb`` files (``kind = "deb"``), else a bzImage/vmlinuz plus the
    modules directory (``lib/modules/<release>``, ``usr/lib/modules/<release>`` or
    ``modules/<release>``; ``kind = "custom"``, whose release is that directory's name or the
    image's header). ``(None, why)`` when it holds neither."""
    debs = sorted(glob.glob(os.path.join(build, "*.deb")))
    if debs:
        return {"kind": "deb", "deb": debs}, ""
    images = [p for pattern in _IMAGES for p in sorted(glob.glob(os.path.join(build, pattern)))
              if os.path.isfile(p)]
    if not images:
        return None, "holds no .deb, bzImage or vmlinuz"
    image = images[0]
    moddirs = [d for base in _MODULE_ROOTS for d in sorted(glob.glob(os.path.join(build, base, "*")))
               if os.path.isdir(d)]
    named = os.path.basename(image)[len("vmlinuz-"):] if os.path.basename(image).startswith("vmlinuz-") else None
    moddirs = [d for d in moddirs if os.path.basename(d) == named] or moddirs
    entry: Dict[str, Any] = {"kind": "custom", "vmlinuz": image}
    if len(moddirs) > 1:
        return None, "has %d modules directories (%s): keep one" % (
            len(moddirs), ", ".join(os.path.basename(d) for d in moddirs))
    if moddirs:
        entry["modules"] = moddirs[0]
    return entry, ""


def builds_catalogue(directory: str) -> Tuple[Dict[str, Dict[str, Any]], List[Dict[str, str]]]:
    """``(name -> catalogue table, left out)`` for each subdirectory of ``directory``."""
    tables, left_out = {}, []
    for sub in sorted(os.listdir(directory)):
        path = os.path.join(directory, sub)
        if not os.path.isdir(path):
            continue
        table, why = build_entry(os.path.abspath(path))
        if table is None:
            left_out.append({"kernel": sub, "why": "%s %s" % (path, why)})
        else:
            tables[sub] = dict(table, description="kernel build %s" % os.path.abspath(path))
    return tables, left_out


def catalogue_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``[kernels."<name>"]`` TOML for ``tables`` (strings quoted as JSON, which TOML reads)."""
    out = ["# made by overlaylab bisect --kernels-dir\n"]
    for name, table in tables.items():
        out.append("\n[kernels.%s]\n" % json.dumps(name))
        for key, value in table.items():
            out.append("%s = %s\n" % (key, json.dumps(value)))
    return "".join(out)


# --- the real step: one lab run ------------------------------------------------------------------

def _dmesg_lines(value: Any) -> List[str]:
    """Every ``dmesg`` line anywhere in a cell's evidence."""
    if isinstance(value, dict):
        return [line for k, v in value.items()
                for line in (v if k == "dmesg" and isinstance(v, list) else _dmesg_lines(v))]
    if isinstance(value, list):
        return [line for v in value for line in _dmesg_lines(v)]
    return []


def excerpt(cell: Mapping[str, Any], width: int = 400) -> str:
    """A cell's evidence in one line: its outcome, error (or last log line) and new dmesg lines."""
    log = cell.get("log") if isinstance(cell.get("log"), list) else []
    text = str(cell.get("error") or (log[-1] if log else ""))
    dmesg = [d for d in _dmesg_lines(cell.get("evidence") or {}) if str(d) not in text]
    line = " ".join([str(cell.get("outcome", "?")) + ":", text] + ["[dmesg: %s]" % d for d in dmesg[:2]])
    line = " ".join(line.split())
    return line if len(line) <= width else line[:width - 3] + "..."


def lab_step(spec: CellSpec, repeat: int, reports_dir: Optional[str],
             echo: Callable[..., None]) -> Callable[[BisectKernel], Step]:
    """The step of a real bisection: :func:`~overlaylab.lab.run.run_lab` on ``kernel`` under
    qemu for the one cell, ``repeat`` times, read back from the run it recorded."""
    from .results import default_reports_dir, load_run, new_run_id
    from .run import RunRequest, run_lab

    def quiet(text: str = "", err: bool = False) -> None:
        if err:  # the run's own tables stay in its run directory; its warnings come through
            echo(text, err=True)

    def step(kernel: BisectKernel) -> Step:
        run_id = new_run_id()
        argv = ["run", "--provider", "qemu", "-K", kernel.name, "-p", "=" + spec.profile,
                "-k", "=" + spec.scenario, "--repeat", str(repeat)]
        engines = [spec.engine] if spec.engine_group else []
        argv += ["--engine", spec.engine] if engines else []
        code = run_lab(RunRequest(provider="qemu", kernels=[kernel.name], profile_exprs=["=" + spec.profile],
                                  scenario_exprs=["=" + spec.scenario], engine_exprs=engines, jobs=1,
                                  reports_dir=reports_dir, repeat=repeat, argv=argv, run_id=run_id), echo=quiet)
        if code == exitcodes.INTERRUPTED:
            raise Interrupted()
        run_dir = os.path.join(reports_dir or default_reports_dir(), "runs", run_id)
        run = load_run(run_dir)
        want = (kernel.name, spec.profile, spec.scenario, spec.engine)
        cells = sorted((c for c in run.cells if cell_key(c) == want), key=lambda c: c.get("attempt") or 0)
        outcomes = [c["outcome"] for c in cells] + [NO_RESULT] * (repeat - len(cells))
        evidence = [excerpt(c) for c in cells] + ["no result recorded (see the console log)"] * (repeat - len(cells))
        paths = [os.path.join(run_dir, "results.jsonl")]
        console = os.path.join(run_dir, "console-%s.log" % kernel.name)
        paths += [console] if os.path.exists(console) else []
        return Step(kernel, outcomes, run_id, run_dir, evidence, paths)

    return step


# --- the command --------------------------------------------------------------------------------

@dataclass
class BisectRequest:
    """``overlaylab bisect``'s options, parsed."""

    cell: str
    good: str
    bad: str
    repeat: int = 1
    kernels_dir: Optional[str] = None
    reports_dir: Optional[str] = None
    assume_ends: bool = False
    good_outcome: Optional[str] = None


def _plan(req: BisectRequest) -> Tuple[CellSpec, List[BisectKernel], List[Dict[str, str]], Dict[str, Any]]:
    """The cell, the kernels from K1 to K2, those left out, and the ``--kernels-dir`` catalogue
    tables; :class:`SelectionError` for any usage error (before anything boots)."""
    from ..agent.engines import engine_names
    from ..agent.profiles import load_profiles
    from ..agent.scenario import ENGINE_GROUP, all_scenarios
    from ..hints import root_problem
    from ..kernels.catalogue import CatalogueError, load_catalogue, parse_entry
    from ..kernels.fetch import fetch_kernel
    if req.good_outcome is not None:
        req.good_outcome = req.good_outcome.upper()
    if req.good_outcome is not None and req.good_outcome not in OUTCOMES:
        raise SelectionError("--good-outcome %s: not an outcome%s (have: %s)" % (
            req.good_outcome, did_you_mean(req.good_outcome, OUTCOMES), ", ".join(OUTCOMES)))
    spec = parse_cell(req.cell, list(load_profiles()), all_scenarios(), engine_names(), ENGINE_GROUP)
    tables: Dict[str, Any] = {}
    left_out: List[Dict[str, str]] = []
    if req.kernels_dir is not None:
        if not os.path.isdir(req.kernels_dir):
            raise SelectionError("--kernels-dir %s: not a directory" % req.kernels_dir)
        tables, left_out = builds_catalogue(req.kernels_dir)
        try:
            entries = {name: parse_entry(name, table) for name, table in tables.items()}
        except CatalogueError as err:
            raise SelectionError("--kernels-dir %s: %s" % (req.kernels_dir, err)) from None
        where = "in --kernels-dir %s" % req.kernels_dir
    else:
        try:
            entries = load_catalogue()
        except (CatalogueError, OSError, ValueError) as err:
            raise SelectionError("the kernel catalogue: %s" % err) from None
        where = "in vms/kernels.toml"
    for option, name in (("--good", req.good), ("--bad", req.bad)):
        if name not in entries:
            raise SelectionError("%s %s: no such kernel %s%s; have: %s" % (
                option, name, where, did_you_mean(name, entries), ", ".join(entries) or "none"))
    if req.good == req.bad:
        raise SelectionError("--good and --bad are both %s: name two kernels" % req.good)
    problem = root_problem("overlaylab bisect")
    if problem:
        raise SelectionError(problem)
    ordered, unresolved = order_kernels(list(entries.values()), fetch_kernel)
    left_out += unresolved
    for option, name in (("--good", req.good), ("--bad", req.bad)):
        why = next((item["why"] for item in left_out if item["kernel"] == name), None)
        if why is not None:
            raise SelectionError("%s %s cannot be booted under qemu: %s" % (option, name, why))
    return spec, between(ordered, req.good, req.bad), left_out, tables


class BisectLog:
    """``<reports>/bisect/<id>/bisect.json``, rewritten whole (atomically) after every step."""

    def __init__(self, reports_dir: Optional[str], data: Dict[str, Any]) -> None:
        from .results import default_reports_dir, new_run_id
        self.id = new_run_id()
        self.dir = os.path.join(reports_dir or default_reports_dir(), "bisect", self.id)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "bisect.json")
        self.data = dict(data, id=self.id, status="running", steps=[])

    def write(self, **update: Any) -> None:
        from ..kernels.cache import write_json_atomic
        from pathlib import Path
        self.data.update(update)
        write_json_atomic(Path(self.path), self.data)


def _side(result: Bisection, kernel: Optional[BisectKernel]) -> Optional[Dict[str, Any]]:
    if kernel is None:
        return None
    step = result.step_of(kernel)
    if step is None:
        return {"kernel": kernel.name, "release": kernel.release, "version": kernel.version,
                "assumed": True, "outcome": result.good_outcome if kernel == result.last_good else
                "not " + str(result.good_outcome)}
    return step.to_json()


def render_result(result: Bisection) -> List[str]:
    """The result's lines: each side with its outcome, evidence and run."""
    if result.status != "found":
        return [result.message]
    lines = []
    for label, kernel in (("first bad", result.first_bad), ("last good", result.last_good)):
        step = result.step_of(kernel)
        assert kernel is not None
        if step is None:
            lines.append("%s: %s: assumed (--assume-ends), not run" % (label, kernel.label()))
            continue
        lines.append("%s: %s: %s  (run %s)" % (label, kernel.label(), step.seen(), step.run_id))
        lines += ["    %s" % e for e in sorted(set(step.evidence))]
    return lines


def run_bisect(req: BisectRequest, echo: Callable[..., None]) -> int:
    """``overlaylab bisect``: plan (usage errors as :class:`SelectionError` before anything
    boots), search, print and log; returns the exit code."""
    from ..kernels.catalogue import ENV_KERNELS
    from .results import now_iso
    spec, kernels, left_out, tables = _plan(req)
    log = BisectLog(req.reports_dir, {
        "cell": str(spec), "profile": spec.profile, "scenario": spec.scenario, "engine": spec.engine,
        "good": req.good, "bad": req.bad, "repeat": req.repeat, "assume_ends": req.assume_ends,
        "kernels_dir": os.path.abspath(req.kernels_dir) if req.kernels_dir else None,
        "kernels": [asdict(k) for k in kernels], "left_out": left_out, "started": now_iso()})
    echo("bisecting %s over %d kernels: %s" % (spec, len(kernels), " < ".join(k.label() for k in kernels)))
    for item in left_out:
        echo("left out: %s: %s" % (item["kernel"], item["why"]), err=True)
    old_env = os.environ.get(ENV_KERNELS)
    if tables:  # the run machinery finds these builds by name, like catalogue kernels
        catalogue = os.path.join(log.dir, "kernels.toml")
        with open(catalogue, "w", encoding="utf-8") as f:
            f.write(catalogue_toml(tables))
        os.environ[ENV_KERNELS] = catalogue
    started = time.monotonic()

    def on_step(step: Step) -> None:
        echo("step %d: %s: %s -> %s  (run %s)" % (len(log.data["steps"]) + 1, step.kernel.label(), step.seen(),
                                                  step.verdict, step.run_id))
        log.data["steps"].append(step.to_json())
        log.write()

    log.write()
    try:
        result = bisect(kernels, lab_step(spec, req.repeat, req.reports_dir, echo), req.good_outcome,
                        req.assume_ends, on_step)
    finally:
        if tables:
            if old_env is None:
                os.environ.pop(ENV_KERNELS, None)
            else:
                os.environ[ENV_KERNELS] = old_env
    log.write(status=result.status, message=result.message, good_outcome=result.good_outcome,
              first_bad=_side(result, result.first_bad), last_good=_side(result, result.last_good),
              seconds=round(time.monotonic() - started, 1), ended=now_iso())
    for line in render_result(result):
        echo(line, err=result.status != "found")
    echo("bisect log: %s (%d boots, %.0fs)" % (log.path, len(result.steps), time.monotonic() - started))
    return result.exit_code
