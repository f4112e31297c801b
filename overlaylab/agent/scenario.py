"""Scenarios: plain functions that exercise the driver on one backing filesystem.

A scenario gets a :class:`ScenarioContext` (where the backing fs is mounted, the probe facts,
a scratch dir, a way to make drivers, and for the ``engine`` group the storage engine's session
``ctx.engine``) and either returns (PASS), raises :class:`ScenarioFailure`, a driver error or an
:class:`~overlaylab.agent.engines.base.EngineError` (FAIL), raises :class:`Unsupported` (UNSUPPORTED),
or has its driver refused at Init (REFUSED). Anything else is the lab's own problem (ERROR).

Each scenario also says what outcome to *expect* given the facts (e.g. FAIL on a filesystem the
kernel refuses as upperdir), so a run can tell "broken as known" from "newly broken".
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..graphdriver.graphtest import Checks
from .engines.base import EngineError, EngineRefused, EngineSession, EngineUnavailable
from .health import cell_health, read_taint
from .logcapture import capture_log
from .records import PORT_ENGINE, CellRecord, Outcome
from .timings import Timings

log = logging.getLogger("overlaylab.agent.scenario")


#: the group of the engine-neutral scenarios: they work through ``ctx.engine``, not a driver
ENGINE_GROUP = "engine"


class ScenarioFailure(AssertionError):
    """The checked behaviour does not hold; the message says what was seen instead."""


class Unsupported(Exception):
    """The target cannot provide what the scenario needs (a module, a tool, a feature)."""


class ScenarioTimeout(Exception):
    """The scenario ran past its time limit."""


@dataclass(frozen=True)
class Expectation:
    outcome: Outcome
    why: str = ""


class Facts(dict):
    """Probe values by name (``d_type``, ``upperdir``, ``driver_init``, ``overlay_params`` …)."""

    def kernel_version(self) -> Tuple[int, ...]:
        release = str(self.get("kernel_release") or "0")
        parts = []
        for piece in release.split("-")[0].split("."):
            digits = "".join(ch for ch in piece if ch.isdigit())
            parts.append(int(digits) if digits else 0)
        return tuple(parts)

    def param(self, name: str) -> Optional[str]:
        params = self.get("overlay_params") or {}
        return params.get(name) if isinstance(params, dict) else None

    @property
    def fs_name(self) -> str:
        magic = self.get("fs_magic")
        return magic.get("name", "?") if isinstance(magic, dict) else str(magic or "?")


ExpectFunc = Callable[["Scenario", Facts], Expectation]


def default_expect(scenario: "Scenario", facts: Facts) -> Expectation:
    """REFUSED where Init refuses the fs; FAIL where a needed mount or d_type is missing; else PASS."""
    if facts.get("driver_init") == "REFUSED":
        if facts.get("driver_verdict") == "ErrNotSupported":
            return Expectation(Outcome.REFUSED, "the kernel has no overlay filesystem")
        return Expectation(Outcome.REFUSED, "Docker 1.10.3 refuses overlay over %s" % facts.fs_name)
    if scenario.needs_mount and facts.get("upperdir") is False:
        return Expectation(Outcome.FAIL, "the kernel refuses %s as overlay upperdir" % facts.fs_name)
    if "child-layer" in scenario.tags and facts.get("overlay_xattr_read") in ("EOPNOTSUPP", "ENOTSUP"):
        return Expectation(Outcome.FAIL, "copyDir cannot read trusted.overlay.* xattrs on this overlayfs "
                           "(EOPNOTSUPP; readable since kernel 6.7's xattr escaping), so child layers fail")
    if scenario.needs_dtype and facts.get("d_type") is False:
        return Expectation(Outcome.FAIL, "no d_type: overlay cannot tell whiteouts in readdir")
    return Expectation(Outcome.PASS)


@dataclass(frozen=True)
class Scenario:
    id: str
    description: str            # one line, what it does
    reference: str              # the reference behaviour it checks (upstream file/function, issue, docs/ anchor)
    group: str                  # lifecycle | diff | quirks | failure-class | engine
    func: Callable[["ScenarioContext"], Any]
    expect_func: Optional[ExpectFunc] = None
    needs_mount: bool = True    # mounts a Shape-O layer (fails where upperdir is refused)
    needs_dtype: bool = False   # relies on overlay hiding whiteouts (fails without d_type)
    timeout: float = 120.0
    tags: Tuple[str, ...] = ()

    def expect(self, facts: Mapping[str, Any]) -> Expectation:
        facts = facts if isinstance(facts, Facts) else Facts(facts)
        if self.expect_func is not None:
            return self.expect_func(self, facts)
        return default_expect(self, facts)

    @property
    def name(self) -> str:
        return self.id

    def keywords(self) -> List[str]:
        return [self.id, self.group] + list(self.tags)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "description": self.description, "reference": self.reference,
                "group": self.group, "needs_mount": self.needs_mount, "needs_dtype": self.needs_dtype,
                "timeout": self.timeout, "tags": list(self.tags)}


REGISTRY: Dict[str, Scenario] = {}


def scenario(id: str, description: str, reference: str, group: str, *, expect: Optional[ExpectFunc] = None,
             needs_mount: bool = True, needs_dtype: bool = False, timeout: float = 120.0,
             tags: Sequence[str] = ()) -> Callable[[Callable], Callable]:
    """Register a scenario function under ``id``."""
    def wrap(func: Callable) -> Callable:
        if id in REGISTRY:
            raise ValueError("scenario %s registered twice" % id)
        REGISTRY[id] = Scenario(id, description, reference, group, func, expect, needs_mount,
                                needs_dtype, timeout, tuple(tags))
        return func
    return wrap


def all_scenarios() -> Dict[str, Scenario]:
    """The catalogue, in registration order."""
    from . import scenarios  # noqa: F401  (importing registers them)
    return dict(REGISTRY)


class ScenarioContext(Checks):
    """What a scenario function works with. Everything it makes is released in :meth:`close`.

    It is the ``t`` of the graph driver suite's cases (:class:`Checks`): ``note`` keeps a line
    of the log and evidence, ``check`` fails the scenario with a :class:`ScenarioFailure`.
    ``engine`` is the storage engine's session an ``engine``-group scenario works through."""

    def __init__(self, backing_dir: str, facts: Mapping[str, Any], scratch: str,
                 engine: Optional[EngineSession] = None):
        super().__init__()
        self.backing_dir = backing_dir
        self.facts = facts if isinstance(facts, Facts) else Facts(facts)
        self.scratch = scratch
        self.engine = engine
        self._drivers: List[Any] = []
        self._roots: List[str] = []

    # making drivers -------------------------------------------------------------------------
    def driver(self, uid_maps=None, gid_maps=None, root: Optional[str] = None, options: Sequence[str] = ()):
        """``GetDriver("overlay", root, options)`` on a fresh root on the backing fs (home = root/overlay)."""
        from ..graphdriver import get_driver
        if root is None:
            root = tempfile.mkdtemp(prefix="docker-root-", dir=self.backing_dir)
            os.chmod(root, 0o755)
            self._roots.append(root)
        driver = get_driver("overlay", root, tuple(options), uid_maps, gid_maps)
        self._drivers.append(driver)
        return driver

    # reporting (note and check: Checks) ------------------------------------------------------
    def failure(self, message: str, evidence: Dict[str, Any]) -> AssertionError:
        return ScenarioFailure(message)  # the evidence goes to the record, not into the message

    def require(self, condition: Any, message: str) -> None:
        if not condition:
            raise Unsupported(message)

    def path(self, *parts: str) -> str:
        return os.path.join(self.scratch, *parts)

    # clean-up -------------------------------------------------------------------------------
    def close(self) -> None:
        from ..mountutil import unmount_all_under
        for driver in self._drivers:
            proto = getattr(driver, "proto", driver)
            try:
                self.evidence.setdefault("driver_status", [list(r) for r in driver.status()])
            except Exception:  # pragma: no cover - status never fails in practice
                pass
            for layer_id in list(getattr(proto, "active", {})):
                with contextlib.suppress(Exception):
                    while layer_id in proto.active:
                        proto.put(layer_id)
            leftover = unmount_all_under(proto.home)
            if leftover:
                self.log.append("unmounted what the scenario left mounted: %s" % ", ".join(leftover))
        for root in self._roots:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class CellOutcome:
    outcome: Outcome
    expected: Expectation
    duration: float
    error: str = ""
    log: List[str] = field(default_factory=list)
    evidence: Dict[str, Any] = field(default_factory=dict)
    #: the kernel-health mark (:func:`overlaylab.agent.health.cell_health`), None when healthy
    health: Optional[Dict[str, Any]] = None
    #: seconds per phase (:mod:`overlaylab.agent.timings`)
    timings: Optional[Dict[str, float]] = None

    @property
    def met(self) -> bool:
        return self.outcome == self.expected.outcome

    def to_record(self, profile: str, scenario: str, group: str) -> CellRecord:
        return CellRecord(profile, scenario, self.outcome.value, group=group, expected=self.expected.outcome.value,
                          expected_why=self.expected.why, met=self.met, duration=round(self.duration, 3),
                          error=self.error, log=self.log, evidence=self.evidence,
                          timings=dict(self.timings) if self.timings else None,
                          extra={"health": self.health} if self.health else {})


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    # SIGALRM only works in the main thread; elsewhere the caller's outer timeout applies.
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def on_alarm(signum, frame):
        raise ScenarioTimeout("scenario ran past %.0f s" % seconds)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def classify(err: BaseException) -> Outcome:
    """Which outcome an exception out of a scenario means."""
    from ..goerrors import GoError
    from ..graphdriver.errors import GraphDriverError, is_sentinel
    if isinstance(err, ScenarioTimeout):
        return Outcome.ERROR
    if isinstance(err, (Unsupported, EngineUnavailable)):
        return Outcome.UNSUPPORTED
    if is_sentinel(err) or isinstance(err, EngineRefused):
        return Outcome.REFUSED
    if isinstance(err, (ScenarioFailure, AssertionError, OSError, GraphDriverError, ValueError, GoError, EngineError)):
        return Outcome.FAIL  # the driver or engine (or the kernel under it) did not do what it should
    try:
        from ..archive import ArchiveError
        if isinstance(err, ArchiveError):
            return Outcome.FAIL
    except ImportError:  # pragma: no cover
        pass
    return Outcome.ERROR


def run_scenario(sc: Scenario, backing_dir: str, facts: Mapping[str, Any],
                 scratch_root: Optional[str] = None, kernel_log: Any = None,
                 engine: Optional[EngineSession] = None) -> CellOutcome:
    """Run one scenario on a mounted backing fs and classify what happened, with evidence.

    An ``engine``-group scenario works through ``engine`` (a session whose facts, see
    :func:`overlaylab.agent.engine_cells.engine_facts`, are in ``facts``); given none, it runs
    on the port, opened for this one scenario. Where the engine refused the backing fs, the
    cell is REFUSED with its verdict and the scenario does not run."""
    if sc.group == ENGINE_GROUP and engine is None:
        from .engine_cells import engine_facts
        from .engines import get_engine
        with get_engine(PORT_ENGINE).open(backing_dir, scratch_root or tempfile.gettempdir()) as session:
            return run_scenario(sc, backing_dir, engine_facts(facts, session), scratch_root, kernel_log, session)
    timings = Timings()
    began = time.monotonic()
    facts = facts if isinstance(facts, Facts) else Facts(facts)
    expected = sc.expect(facts)
    scratch = tempfile.mkdtemp(prefix="scenario-%s." % sc.id, dir=scratch_root)
    ctx = ScenarioContext(backing_dir, facts, scratch, engine)
    first_command = len(engine.commands) if engine is not None else 0
    error = ""
    taint_before = read_taint()
    try:
        with capture_log("overlaylab") as capture:  # until the context is closed
            old_umask = os.umask(0o022)  # the daemon's umask
            start = time.monotonic()
            timings.add("setup", start - began)
            try:
                if engine is not None and not engine.verdict.accepted:
                    raise EngineRefused(engine.verdict.message)
                with _time_limit(sc.timeout):
                    sc.func(ctx)
                outcome = Outcome.PASS
            except BaseException as err:  # classified, never propagated (but Ctrl-C is re-raised below)
                if isinstance(err, KeyboardInterrupt):
                    raise
                outcome = classify(err)
                error = str(err).rstrip("\n") or type(err).__name__
                if outcome is Outcome.ERROR:
                    ctx.evidence["traceback"] = traceback.format_exc(limit=8)
                code = err.errno if isinstance(err, OSError) else getattr(err, "wrapped_errno", None)
                if isinstance(err, EngineError) and err.evidence:
                    ctx.evidence["engine_error"] = err.evidence
                    code = code or err.evidence.get("errno")
                if code:  # a Go error string keeps the errno it formatted in, as evidence
                    ctx.evidence["errno"] = code
            finally:
                duration = time.monotonic() - start
                timings.add("scenario", duration)
                os.umask(old_umask)
                with timings.phase("teardown"):
                    ctx.close()
    finally:
        with timings.phase("teardown"):
            shutil.rmtree(scratch, ignore_errors=True)
    if capture.lines:
        ctx.evidence["driver_log"] = capture.lines[-50:]
    if engine is not None:
        ctx.evidence["engine"] = engine_evidence(engine, first_command)
    lines: List[str] = []
    with timings.phase("health"):
        if kernel_log is not None:
            try:
                lines = kernel_log.read_new()
                if lines:
                    ctx.evidence["dmesg"] = lines[-50:]
            except Exception:  # pragma: no cover - dmesg is evidence, never a reason to fail
                pass
        # Like kirk: a warning or taint change during the cell marks it, whatever its outcome.
        health = cell_health(lines, taint_before, read_taint())
    return CellOutcome(outcome, expected, duration, error, ctx.log, ctx.evidence, health, timings)


def engine_evidence(session: EngineSession, first_command: int = 0) -> Dict[str, Any]:
    """The session's evidence for one cell: name, version, verdict, and the commands run since
    ``first_command`` (the cell's own)."""
    evidence = session.evidence()
    evidence["commands"] = session.commands[first_command:][-30:]
    return evidence
