"""Running the matrix: for each kernel, bring a target up, run the agent per profile, store cells.

The runner never touches the kernel itself: it only talks to the agent through the target's
:class:`~overlaylab.providers.session.Session` (with a timeout on every call), so the same code
drives the host, a qemu guest or a Vagrant box. Whatever goes wrong with a target (no kernel, a VM that does not boot, an
agent that hangs) becomes ERROR cells with the evidence, and the other targets carry on. A guest
that panics or hangs during a cell (a session that can ``restart()``) costs that one cell: it is
ERROR with the console tail, the guest is booted again and the run goes on with the next cell.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import json
import signal as signal_mod
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Collection, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..providers.session import Session
from ..providers.transport import stream_lines
from ..agent import cellmark
from ..agent.health import classify_line, kernel_warnings
from ..agent.records import PORT_ENGINE, CellRecord, TargetRecord, parse_records
from ..agent.scenario import ENGINE_GROUP
from . import progress as progress_mod
from . import shard as shard_mod
from ..agent.profiles import FsProfile
from .matrix import Matrix
from .shard import CellKey
from .results import RunStore

Run = Tuple[str, str]  # (scenario, engine): one cell of a profile
AGENT_GRACE = 60.0  # seconds on top of the scenarios' own limits for mkfs, probes and set-up
#: seconds more per profile for each engine other than the port: starting it (a private dockerd
#: takes seconds on the host) and stopping it; times TCG_SLOWDOWN in a guest without KVM
ENGINE_GRACE = 30.0
TCG_SLOWDOWN = 5.0


def signal_name(num: int) -> str:
    try:
        return signal_mod.Signals(num).name
    except ValueError:
        return "signal %d" % num


def agent_batches(runs: Sequence[Run], neutral: Collection[str]) -> List[List[Run]]:
    """``runs`` as agent calls: one where an agent given their scenarios and engines runs
    exactly these cells (it runs the port's own scenarios on the port, the ``neutral`` ones on
    every engine it is given), else one per engine."""
    sids = list(dict.fromkeys(sid for sid, _ in runs))
    engines = list(dict.fromkeys(e for _, e in runs))
    product = {(sid, e) for sid in sids for e in engines if sid in neutral or e == PORT_ENGINE}
    if product == set(runs):
        return [list(runs)] if runs else []
    return [[r for r in runs if r[1] == e] for e in engines]


class RunStopped(Exception):
    """The run is stopping (interrupted, or the reports disk is full): no more work."""


ProgressFn = Callable[[str, Dict[str, Any]], None]


def _noop(event: str, info: Dict[str, Any]) -> None:
    pass


def _tail(text: str, lines: int = 40) -> List[str]:
    return (text or "").splitlines()[-lines:]


class Runner:
    def __init__(self, provider: Any, store: RunStore, matrix: Matrix, jobs: int = 1,
                 progress: ProgressFn = _noop, keep: bool = False, profiles_text: Optional[str] = None,
                 repeat: int = 1, done: Iterable[Tuple[CellKey, int]] = ()):
        self.provider = provider
        self.store = store
        self.matrix = matrix
        self.jobs = max(1, jobs)
        self.progress = progress
        self.keep = keep
        self.profiles_text = profiles_text
        self.repeat = max(1, repeat)  # --repeat: the agent runs each profile's scenarios this often
        #: set when the run must end early (a stop signal, a full reports disk): no new target,
        #: profile or agent starts, and work under way is wound down, torn down on the way out
        self.stopping = threading.Event()
        self._target_facts: Dict[str, Dict[str, Any]] = {}  # kernel -> its probe-target facts
        #: kernel -> its target record, until the first agent's ``--probe-target`` answers
        self._pending_targets: Dict[str, Dict[str, Any]] = {}
        #: ``(cell key, attempt)`` already in the run (``--resume``): not run again
        self.done: Set[Tuple[CellKey, int]] = set(done)

    # public --------------------------------------------------------------------------------
    def todo(self, kernel: str, attempt: int) -> List[Tuple[FsProfile, List[Tuple[str, str]]]]:
        """``(profile, [(scenario, engine)...])`` still to run on ``kernel`` in ``attempt``:
        the matrix's cells (of its ``only``) less those ``done``."""
        out = []
        for profile in self.matrix.profiles.values():
            runs = [(sid, engine) for sid, engine in self.matrix.runs_for(kernel)
                    if (self.matrix.only is None or (kernel, profile.name, sid, engine) in self.matrix.only)
                    and ((kernel, profile.name, sid, engine), attempt) not in self.done]
            if runs:
                out.append((profile, runs))
        return out

    def kernels(self) -> List[str]:
        """The kernels with anything to run (no boot for a kernel with nothing left)."""
        return [k for k in self.matrix.kernels if any(self.todo(k, a) for a in range(1, self.repeat + 1))]

    def cells_for(self, kernel: str) -> int:
        return sum(len(runs) for a in range(1, self.repeat + 1) for _, runs in self.todo(kernel, a))

    def expected_cost(self, kernel: str) -> int:
        """Tenths of a second ``kernel``'s cells still to run are expected to take, by the cost
        model of :mod:`overlaylab.lab.shard`: each profile's cells and set-up, a VM's boot."""
        cost = shard_mod.BOOT if shard_mod.is_vm(kernel) else 0
        for attempt in range(1, self.repeat + 1):
            cost += sum(shard_mod.unit_cost(kernel, runs) for _profile, runs in self.todo(kernel, attempt))
        return cost

    def schedule(self, kernels: Sequence[str]) -> Tuple[List[str], List[str]]:
        """``(pooled, beside)``: the targets ``jobs`` workers take in turn, longest expected
        first (the last to start is then a short one, and no worker idles long at the end while
        another finishes a long target; ties keep the matrix order), and the local ones (the
        host's: nothing to boot), run beside the workers from the start, so their cells fill
        the cores while the first VMs boot. Deterministic: the records do not depend on it."""
        beside = [k for k in kernels if self._provider_name(k) == "local"]
        pooled = [k for k in kernels if k not in beside]
        pooled.sort(key=lambda k: -self.expected_cost(k))  # stable: ties in matrix order
        return pooled, beside

    def run(self) -> None:
        kernels = self.kernels()
        if self.jobs == 1 or len(kernels) == 1:
            for kernel in kernels:
                if self._should_stop():
                    break
                self.run_target(kernel)
            return
        pooled, beside = self.schedule(kernels)
        pool = ThreadPoolExecutor(max_workers=self.jobs + len(beside))
        futures = [pool.submit(self.run_target, k) for k in beside]
        # a semaphore keeps the pooled targets to `jobs` at a time while the beside ones run
        slots = threading.Semaphore(self.jobs)

        def pooled_target(kernel: str) -> None:
            with slots:
                self.run_target(kernel)

        futures += [pool.submit(pooled_target, k) for k in pooled]
        try:
            for future in futures:
                future.result()
        except BaseException:
            # Only the main thread sees a signal; the workers must stop too, or the pool's
            # shutdown would wait while they boot the next kernels.
            self.stop(futures)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def stop(self, futures: Sequence[Any] = ()) -> None:
        """Wind the run down: no new target or agent starts; agents get SIGTERM (and tear
        down); then what the workers wait on (ssh sessions, VMs, also one a worker was just
        starting) is stopped until every worker has returned, having torn its target down.
        Further stop signals are ignored meanwhile: the teardown must finish."""
        from concurrent.futures import wait as wait_futures

        from ..agent.procutil import signal_descendants, stop_agents, wait_descendants_gone
        self.stopping.set()
        for future in futures:
            future.cancel()
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal_mod.SIGINT, signal_mod.SIGTERM):
                old[sig] = signal_mod.signal(sig, signal_mod.SIG_IGN)
        try:
            stop_agents(timeout=120)
            deadline = time.monotonic() + 120
            while True:
                signal_descendants(signal_mod.SIGTERM)
                pending = [f for f in futures if not f.done()]
                if not pending or time.monotonic() > deadline:
                    break
                wait_futures(pending, timeout=0.5)
            wait_descendants_gone(30)
        finally:
            for sig, handler in old.items():
                signal_mod.signal(sig, handler)

    def _should_stop(self) -> bool:
        if getattr(self.store, "disk_full", False):
            self.stopping.set()
        return self.stopping.is_set()

    def run_target(self, kernel: str) -> None:
        if self._should_stop():
            return
        # phases reported from deep inside (fetch, initramfs, boot) reach self.progress, and a
        # VM's console log is kept in the run directory (lab/progress.py)
        with progress_mod.target_scope(kernel, self.progress, getattr(self.store, "path", None)):
            self._run_target(kernel)

    def _run_target(self, kernel: str) -> None:
        self.progress("target-start", {"kernel": kernel})
        started = time.monotonic()
        try:
            needed = {p.name for a in range(1, self.repeat + 1) for p, _ in self.todo(kernel, a)}
            with self.provider.up(kernel, disks=self.matrix.disks(needed), keep=self.keep) as session:
                if self._should_stop():
                    return
                self._pending_targets[kernel] = self._target_info(kernel, session, started)
                try:
                    for attempt in range(1, self.repeat + 1):
                        # one agent per set of profiles that lack the same cells (all of them, unless resumed)
                        batches: Dict[Tuple[Tuple[str, str], ...], List[FsProfile]] = {}
                        for profile, runs in self.todo(kernel, attempt):
                            batches.setdefault(tuple(runs), []).append(profile)
                        for runs, profiles in batches.items():
                            if self._should_stop():
                                break
                            self._run_profiles(kernel, session, profiles, list(runs), attempt)
                finally:  # no agent ran (the run is stopping): the record all the same
                    self._record_target(kernel, {}, "the run stopped before the kernel was probed")
        except KeyboardInterrupt:
            raise
        except Exception as err:  # the target never came up, or went away: ERROR cells, carry on
            if self._should_stop():
                return  # it went away because the run is stopping: not the target's fault
            self._target_failed(kernel, err)
        self.progress("target-end", {"kernel": kernel, "seconds": time.monotonic() - started})

    # internals ------------------------------------------------------------------------------
    def _append(self, record: Dict[str, Any]) -> None:
        self.store.append(record)  # thread-safe: parallel targets share the store

    def _provider_name(self, kernel: str, session: Optional[Session] = None) -> str:
        """The provider that ran (or was to run) ``kernel``: the session's own name first (a
        provider shared by parallel targets, like ``auto``, must not be asked per call)."""
        if session is not None and session.provider:
            return session.provider
        from ..providers import provider_name
        return provider_name(self.provider, kernel)

    def _target_info(self, kernel: str, session: Session, started: float) -> Dict[str, Any]:
        """The target record as far as the runner knows it (up, before the kernel's facts)."""
        info = TargetRecord(kernel, self._provider_name(kernel, session), session.kernel_release, extra={
            "accel": session.accel, "boot_seconds": round(session.boot_seconds or 0.0, 3),
            "up_seconds": round(time.monotonic() - started, 3), "disks": dict(session.disks or {}),
            # when the target started (ms): benchmarks/bench_matrix.py's boot-to-first-result
            "started": (datetime.datetime.now(datetime.timezone.utc)
                        - datetime.timedelta(seconds=time.monotonic() - started)).isoformat(timespec="milliseconds"),
            "boot_retries": list(session.boot_retries or [])}).to_json()
        if session.kernel_image is not None:  # a booted image (qemu): its Debian package, version, suite, config
            info["kernel_image"] = session.kernel_image.to_json()
        return info

    def _record_target(self, kernel: str, probed: Dict[str, Any], problem: Any = None) -> None:
        """Store ``kernel``'s target record (once): the runner's part with ``probed``, the
        ``target`` record of the first agent's ``--probe-target`` (one interpreter start and
        ssh round trip less per target than a ``probe-target`` agent of its own), or the
        ``problem`` (``probe_error``) when that agent printed none."""
        info = self._pending_targets.pop(kernel, None)
        if info is None:
            return
        info.update({k: v for k, v in probed.items() if k != "record"})
        if "facts" not in probed:
            info["probe_error"] = problem
        # The later agent runs get these facts instead of probing the kernel again.
        elif isinstance(info.get("facts"), dict):
            self._target_facts[kernel] = info["facts"]
        self._append(info)
        self.progress("target-up", info)

    def _agent_args(self, session: Session, profiles: Sequence[FsProfile], runs: Sequence[Tuple[str, str]],
                    kernel: str) -> List[str]:
        args = ["run", "--run-id", self.store.run_id]
        if session.console_log:  # read after a crash: the marks name the cell a panic cut short
            args.append("--console-marks")
        facts = self._target_facts.get(kernel)
        if kernel in self._pending_targets:
            args.append("--probe-target")  # the target record first, then the profiles
        elif facts is not None:
            args += ["--target-facts-b64", base64.b64encode(json.dumps(facts).encode()).decode()]
        disks = session.disks or {}
        for profile in profiles:
            args += ["--profile", profile.name]
            if profile.name in disks:
                args += ["--device", "%s=%s" % (profile.name, disks[profile.name])]
        if self.profiles_text is not None:
            args += ["--profiles-b64", base64.b64encode(self.profiles_text.encode()).decode()]
        for sid in dict.fromkeys(sid for sid, _ in runs):
            args += ["--scenario", sid]
        wanted = {engine for _, engine in runs}
        for engine in self.matrix.engines:  # the port among them when any classic cell is wanted
            if engine in wanted:
                args += ["--engine", engine]
        return args

    def _agent_timeout(self, session: Session, kernel: str, profiles: int, runs: Sequence[Tuple[str, str]]) -> float:
        """How long one agent may take for ``profiles`` profiles of ``runs`` each: the set-up
        grace, each cell's own limit (capped) and each engine's start-up grace."""
        scenarios = self.matrix.scenarios_for(kernel)
        engines = len({e for _, e in runs if e != PORT_ENGINE})
        engine_grace = ENGINE_GRACE * (TCG_SLOWDOWN if session.accel == "tcg" else 1.0)
        per_profile = AGENT_GRACE + sum(min(scenarios[sid].timeout, 120.0) for sid, _ in runs) + engines * engine_grace
        return per_profile * profiles

    def _run_profiles(self, kernel: str, session: Session, profiles: Sequence[FsProfile],
                      runs: Sequence[Tuple[str, str]], attempt: int = 1) -> None:
        """One agent process for ``runs`` on each of ``profiles`` of a target (interpreter
        start-up in a TCG guest over 9p costs seconds), its records stored and shown line by
        line as they arrive. A cell the agent runs beyond ``runs`` (an engine scenario on an
        engine a resumed profile still lacks only for another scenario) is not stored."""
        timeout = self._agent_timeout(session, kernel, len(profiles), runs)
        wanted = set(runs)
        done: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
        junk: List[str] = []
        state: Dict[str, Any] = {"problem": None, "started": time.monotonic(), "in_flight": None}
        extra = {"target": kernel, "kernel_release": session.kernel_release,
                 "provider": self._provider_name(kernel, session)}
        if self.repeat > 1:
            extra["attempt"] = attempt

        finished_profiles: List[str] = []
        probing = contextlib.ExitStack()  # the kernel facts phase, while the agent probes them
        if kernel in self._pending_targets:
            probing.enter_context(progress_mod.phase("probes", "kernel facts"))

        def on_line(line: str) -> None:
            records, bad = parse_records(line)
            junk.extend(bad)
            for rec in records:
                kind = rec.pop("record")
                if kind == "target":
                    probing.close()
                    self._record_target(kernel, rec)
                    continue
                rec.update(extra)
                if kind == "start":  # the cell the agent is about to run
                    state["in_flight"] = (rec.get("profile"), rec.get("scenario"), rec.get("engine") or PORT_ENGINE)
                elif kind == "profile":
                    self._append(dict(rec, record="profile"))
                    self.progress("profile-start", {"kernel": kernel, "profile": rec.get("profile")})
                elif kind == "cell" and (rec["scenario"], rec.get("engine") or PORT_ENGINE) in wanted:
                    # when it arrived (ms): a report's start time is this less its duration
                    rec["ended"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
                    done[(rec["profile"], rec["scenario"], rec.get("engine") or PORT_ENGINE)] = rec
                    self._append(dict(rec, record="cell"))
                    self.progress("cell", rec)
                elif kind == "done" and rec.get("profile"):
                    finished_profiles.append(rec["profile"])
                    self.progress("profile-end", {"kernel": kernel, "profile": rec["profile"],
                                                  "seconds": rec.get("seconds", 0.0)})
                elif kind == "error":
                    state["problem"] = rec.get("error")
            if self._should_stop():
                raise RunStopped("the run is stopping")

        stderr = ""
        died = False
        try:
            try:
                res = self._stream(session, session.agent_command(self._agent_args(session, profiles, runs, kernel)),
                                   timeout, on_line)
            finally:
                probing.close()
            stderr = res.stderr
            # a target record still pending: the agent printed none
            self._record_target(kernel, {}, _tail(stderr) if res.rc != 0 else "the agent printed no target record")
            elapsed = time.monotonic() - state["started"]
            if res.rc == 124 or (res.rc == 137 and elapsed >= timeout):
                state["problem"] = "the agent ran past %.0f s and was killed" % timeout
            elif res.rc > 128 and not state["problem"]:
                # Killed from outside (OOM killer, kill -9) long before its time limit.
                died = True
                state["problem"] = "the agent died: %s (signal %d) after %.0f s" % (
                    signal_name(res.rc - 128), res.rc - 128, elapsed)
            elif res.rc != 0 and not state["problem"]:
                state["problem"] = "the agent exited with status %d" % res.rc
        except RunStopped:
            return  # stopping: cells that finished are stored, the rest never ran
        except Exception as err:  # transport gone, host-side timeout
            state["problem"] = "%s: %s" % (type(err).__name__, err)
            self._record_target(kernel, {}, str(err))
        if self._should_stop():
            return
        problem = state["problem"]
        if len(finished_profiles) < len(profiles) and session.restartable:
            down = self._target_down(session)
            if down:
                unfinished = [p for p in profiles if p.name not in finished_profiles]
                self._after_crash(kernel, session, unfinished, runs, done, state["in_flight"], down,
                                  dict(extra, agent_problem=problem, stderr_tail=_tail(stderr)), attempt)
                return
        cleaned: List[Any] = []
        rerun: List[FsProfile] = []
        if died:
            # A killed agent tore nothing down: remove what it left (its owner is gone), then
            # go on with the profiles it never reached, in a new agent.
            cleaned = self._cleanup_after_agent(session)
            # The agent works through the profiles in order: it died in the first unfinished one.
            unfinished = [p for p in profiles if p.name not in finished_profiles]
            rerun = unfinished[1:]
        missing = [(p.name, sid, engine) for p in profiles for sid, engine in runs
                   if (p.name, sid, engine) not in done and p not in rerun]
        if missing:
            evidence = {"agent_problem": problem or "the agent stopped before these scenarios",
                        "stderr_tail": _tail(stderr), "stdout_junk": junk[-20:],
                        "console_tail": self._console_tail(session)}
            if died:
                evidence["cleanup"] = cleaned
            for profile_name, sid, engine in missing:
                cell = self._error_cell(kernel, profile_name, sid, engine, problem or "no result from the agent",
                                        evidence)
                cell.update(extra)  # with the session's provider
                self._append(cell)
                self.progress("cell", cell)
        if rerun:
            self._run_profiles(kernel, session, rerun, runs, attempt)

    def _target_down(self, session: Session) -> Optional[str]:
        """Why the target is gone after its agent stopped early — a panic on the console, a VM
        that exited, no answer over ssh — or None when it still answers."""
        exited = session.exited(5.0)  # a panicked guest's qemu exits (-no-reboot)
        if any("Kernel panic - not syncing" in line for line in self._console_tail(session, 500)):
            return "the guest kernel panicked"
        if exited:
            return "the VM exited"
        try:
            res = session.run("true", 20)
        except Exception as err:  # noqa: BLE001 - that is the answer
            # one line, in brackets: the cell's error reads "<this> during this cell"
            return "the guest does not answer (%s)" % " ".join(str(err).split())
        return None if res.rc == 0 else "the guest does not answer (exit status %d)" % res.rc

    def _after_crash(self, kernel: str, session: Session, unfinished: Sequence[FsProfile], runs: Sequence[Run],
                     done: Dict[Tuple[str, str, str], Any], in_flight: Optional[Tuple[str, str, str]], down: str,
                     info: Dict[str, Any], attempt: int) -> None:
        """The target died under its agent: the cell in flight is ERROR (with the console tail;
        every unfinished cell of the profile when it died while setting the profile up), the
        guest is booted again, and a new agent runs the rest of that profile, then the other
        profiles. A guest that does not come back makes the rest ERROR."""
        current, rest = unfinished[0], list(unfinished[1:])
        todo = [(sid, e) for sid, e in runs if (current.name, sid, e) not in done]
        whole_console = self._console_lines(session)
        # A cell the agent started and did not finish: the console's last mark (it outlives a
        # panic) or the stream's last start record (a target whose console does not show the
        # marks). Else it died setting the profile up or between cells (an engine starting):
        # the rest of the profile, so that a rerun progresses.
        started = [c for c in (cellmark.last_mark(whole_console), in_flight)
                   if c and c[0] == current.name and c[1:] in todo]
        in_cell = bool(started)
        crashed = [started[0][1:]] if in_cell else todo
        extra = {k: info[k] for k in ("target", "kernel_release", "provider", "attempt") if k in info}
        # from just before the first panic/Oops/BUG headline (its trace is long), else the tail
        console = whole_console[-200:]
        heads = [i for i, line in enumerate(console) if classify_line(line)]
        console = console[max(0, heads[0] - 5):] if heads else console[-60:]
        evidence = {"agent_problem": info.get("agent_problem") or down, "console_tail": console,
                    "stderr_tail": info.get("stderr_tail") or []}
        health = {"kernel_warnings": kernel_warnings(console)}

        def error_cells(profile: str, cells: Sequence[Run], error: str, ev: Dict[str, Any]) -> None:
            for sid, engine in cells:
                cell = self._error_cell(kernel, profile, sid, engine, error, ev)
                cell.update(extra)
                if health["kernel_warnings"]:
                    cell["health"] = health
                self._append(cell)
                self.progress("cell", cell)

        error_cells(current.name, crashed, "%s during this cell" % down if in_cell
                    else "%s while the profile was set up or between its cells" % down, evidence)
        try:
            session.restart()
        except Exception as err:  # noqa: BLE001 - the rest cannot run: say why, per cell
            failed = dict(evidence, restart_error=str(err))
            error_cells(current.name, [r for r in todo if r not in crashed],
                        "%s; the guest did not come back: %s" % (down, str(err).splitlines()[0]), failed)
            for profile in rest:
                error_cells(profile.name, runs, "%s; the guest did not come back" % down, failed)
            return
        neutral = [sid for sid, sc in self.matrix.scenarios_for(kernel).items() if sc.group == ENGINE_GROUP]
        for batch in agent_batches([r for r in todo if r not in crashed], neutral):
            if self._should_stop():
                return
            self._run_profiles(kernel, session, [current], batch, attempt)
        if rest and not self._should_stop():
            self._run_profiles(kernel, session, rest, runs, attempt)

    def _cleanup_after_agent(self, session: Session) -> List[Any]:
        """``agent cleanup --run RUN`` on the target: what the dead agent left, removed."""
        try:
            res = session.run(session.agent_command(["cleanup", "--run", self.store.run_id]), 300)
            records, _ = parse_records(res.stdout)
            return [item for r in records if r.get("record") == "cleanup" for item in r.get("items", [])] + \
                ["problem: " + p for r in records if r.get("record") == "cleanup" for p in r.get("problems", [])]
        except Exception as err:  # noqa: BLE001 - evidence, not fatal
            return ["cleanup failed: %s: %s" % (type(err).__name__, err)]

    @staticmethod
    def _stream(session: Session, command: str, timeout: float, on_line: Callable[[str], None]):
        if session.host is not None:
            return stream_lines(session.host, command, timeout, on_line)
        res = session.run(command, timeout)  # a session without a testinfra host: no streaming
        for line in res.stdout.splitlines():
            on_line(line)
        return res

    def _console_tail(self, session: Session, lines: int = 40) -> List[str]:
        return self._console_lines(session)[-lines:]

    def _console_lines(self, session: Session) -> List[str]:
        path = session.console_log
        if not path:
            return []
        try:
            with open(path, "r", errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def _error_cell(self, kernel: str, profile: str, sid: str, engine: str, error: str,
                    evidence: Dict[str, Any]) -> Dict[str, Any]:
        sc = self.matrix.scenarios[sid]
        return CellRecord(profile, sid, "ERROR", group=sc.group, error=error, evidence=evidence,
                          engine=None if engine == PORT_ENGINE else engine,
                          target=kernel, provider=self._provider_name(kernel)).to_json()

    def _target_failed(self, kernel: str, err: BaseException) -> None:
        evidence: Dict[str, Any] = {"error_type": type(err).__name__,
                                    "traceback": traceback.format_exc(limit=6)}
        for attr in ("console_tail", "evidence", "output"):
            value = getattr(err, attr, None)
            if value:
                evidence[attr] = value
        self._append(TargetRecord(kernel, self._provider_name(kernel), error=str(err), evidence=evidence).to_json())
        for attempt in range(1, self.repeat + 1):
            for profile, runs in self.todo(kernel, attempt):
                for sid, engine in runs:
                    cell = self._error_cell(kernel, profile.name, sid, engine,
                                            "target %s did not come up: %s" % (kernel, err), evidence)
                    if self.repeat > 1:
                        cell["attempt"] = attempt
                    self._append(cell)
                    self.progress("cell", cell)
