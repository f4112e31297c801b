"""Running the matrix: for each kernel, bring a target up, run the agent per profile, store cells.

The runner never touches the kernel itself: it only talks to the agent through the target's
testinfra host (with a timeout on every call), so the same code drives the host, a qemu guest
or a Vagrant box. Whatever goes wrong with a target (no kernel, a VM that does not boot, an
agent that hangs) becomes ERROR cells with the evidence, and the other targets carry on.
"""
from __future__ import annotations

import base64
import json
import shlex
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..providers.transport import stream_lines
from .profiles import FsProfile
from .results import RunStore
from .scenario import Scenario

AGENT_GRACE = 60.0  # seconds on top of the scenarios' own limits for mkfs, probes and set-up


@dataclass
class Matrix:
    """What to run: kernels x profiles x scenarios (already filtered)."""

    kernels: List[str]
    profiles: Dict[str, FsProfile]
    scenarios: Dict[str, Scenario]
    all_profiles: Dict[str, FsProfile] = field(default_factory=dict)  # for overlay bases
    # What VM kernels run when no scenario was asked for: TCG makes scale scenarios cost minutes.
    vm_scenarios: Optional[Dict[str, Scenario]] = None

    def scenarios_for(self, kernel: str) -> Dict[str, Scenario]:
        if self.vm_scenarios is None or kernel in ("host", "local"):
            return self.scenarios
        return self.vm_scenarios

    @property
    def cell_count(self) -> int:
        return sum(len(self.profiles) * len(self.scenarios_for(k)) for k in self.kernels)

    def disks(self) -> List[Tuple[str, int]]:
        """One disk per profile that needs a block device (tmpfs needs none)."""
        return [(p.name, p.size_mib) for p in self.profiles.values() if p.kind != "tmpfs"]

    def to_dict(self) -> Dict[str, Any]:
        out = {"kernels": self.kernels, "profiles": list(self.profiles), "scenarios": list(self.scenarios)}
        if self.vm_scenarios is not None:
            out["vm_scenarios"] = list(self.vm_scenarios)
        return out


ProgressFn = Callable[[str, Dict[str, Any]], None]


def _noop(event: str, info: Dict[str, Any]) -> None:
    pass


def parse_records(stdout: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    records, junk = [], []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            junk.append(line)
            continue
        if isinstance(rec, dict) and "record" in rec:
            records.append(rec)
        else:
            junk.append(line)
    return records, junk


def _tail(text: str, lines: int = 40) -> List[str]:
    return (text or "").splitlines()[-lines:]


class Runner:
    def __init__(self, provider: Any, store: RunStore, matrix: Matrix, jobs: int = 1,
                 progress: ProgressFn = _noop, keep: bool = False, profiles_text: Optional[str] = None,
                 repeat: int = 1):
        self.provider = provider
        self.store = store
        self.matrix = matrix
        self.jobs = max(1, jobs)
        self.progress = progress
        self.keep = keep
        self.profiles_text = profiles_text
        self.repeat = max(1, repeat)  # --repeat: the agent runs each profile's scenarios this often

    # public --------------------------------------------------------------------------------
    def run(self) -> None:
        if self.jobs == 1 or len(self.matrix.kernels) == 1:
            for kernel in self.matrix.kernels:
                self.run_target(kernel)
            return
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for future in [pool.submit(self.run_target, k) for k in self.matrix.kernels]:
                future.result()

    def run_target(self, kernel: str) -> None:
        self.progress("target-start", {"kernel": kernel})
        started = time.monotonic()
        try:
            with self.provider.up(kernel, disks=self.matrix.disks(), keep=self.keep) as session:
                self._record_target(kernel, session, started)
                for attempt in range(1, self.repeat + 1):
                    self._run_profiles(kernel, session, list(self.matrix.profiles.values()), attempt)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # the target never came up, or went away: ERROR cells, carry on
            self._target_failed(kernel, err)
        self.progress("target-end", {"kernel": kernel, "seconds": time.monotonic() - started})

    # internals ------------------------------------------------------------------------------
    def _append(self, record: Dict[str, Any]) -> None:
        self.store.append(record)  # thread-safe: parallel targets share the store

    def _provider_name(self, kernel: str, session: Any = None) -> str:
        """The provider that ran (or was to run) ``kernel``: the session's own name first (a
        provider shared by parallel targets, like ``auto``, must not be asked per call)."""
        name = getattr(session, "provider", None)
        if name:
            return name
        provider_for = getattr(self.provider, "provider_for", None)
        if provider_for is not None:
            return provider_for(kernel)
        return getattr(self.provider, "name", "?")

    def _agent_command(self, session: Any, args: Sequence[str]) -> str:
        if hasattr(session, "agent_command"):
            return session.agent_command(args)
        return "python3 -m overlaylab.agent " + " ".join(shlex.quote(a) for a in args)

    def _record_target(self, kernel: str, session: Any, started: float) -> None:
        info = {"record": "target", "target": kernel, "provider": self._provider_name(kernel, session),
                "kernel_release": getattr(session, "kernel_release", ""),
                "accel": getattr(session, "accel", None),
                "boot_seconds": round(getattr(session, "boot_seconds", 0.0) or 0.0, 3),
                "up_seconds": round(time.monotonic() - started, 3),
                "disks": dict(getattr(session, "disks", {}) or {}),
                "boot_retries": list(getattr(session, "boot_retries", []) or [])}
        try:
            res = session.run(self._agent_command(session, ["probe-target"]), 120)
            records, _ = parse_records(res.stdout)
            for rec in records:
                if rec.get("record") == "target":
                    info.update({k: v for k, v in rec.items() if k != "record"})
            if res.rc != 0:
                info["probe_error"] = _tail(res.stderr)
        except Exception as err:
            info["probe_error"] = str(err)
        self._append(info)
        self.progress("target-up", info)

    def _agent_args(self, session: Any, profiles: Sequence[FsProfile], scenarios: Sequence[str]) -> List[str]:
        args = ["run"]
        disks = getattr(session, "disks", {}) or {}
        for profile in profiles:
            args += ["--profile", profile.name]
            if profile.name in disks:
                args += ["--device", "%s=%s" % (profile.name, disks[profile.name])]
        if self.profiles_text is not None:
            args += ["--profiles-b64", base64.b64encode(self.profiles_text.encode()).decode()]
        for sid in scenarios:
            args += ["--scenario", sid]
        return args

    def _run_profiles(self, kernel: str, session: Any, profiles: Sequence[FsProfile], attempt: int = 1) -> None:
        """One agent process for all profiles of a target (interpreter start-up in a TCG guest
        over 9p costs seconds), its records stored and shown line by line as they arrive."""
        scenarios = self.matrix.scenarios_for(kernel)
        per_profile = AGENT_GRACE + sum(min(sc.timeout, 120.0) for sc in scenarios.values())
        timeout = per_profile * len(profiles)
        done: Dict[Tuple[str, str], Dict[str, Any]] = {}
        junk: List[str] = []
        state = {"problem": None, "started": time.monotonic()}
        extra = {"target": kernel, "kernel_release": getattr(session, "kernel_release", ""),
                 "provider": self._provider_name(kernel, session)}
        if self.repeat > 1:
            extra["attempt"] = attempt

        def on_line(line: str) -> None:
            records, bad = parse_records(line)
            junk.extend(bad)
            for rec in records:
                kind = rec.pop("record")
                rec.update(extra)
                if kind == "profile":
                    self._append(dict(rec, record="profile"))
                    self.progress("profile-start", {"kernel": kernel, "profile": rec.get("profile")})
                elif kind == "cell":
                    done[(rec["profile"], rec["scenario"])] = rec
                    self._append(dict(rec, record="cell"))
                    self.progress("cell", rec)
                elif kind == "done" and rec.get("profile"):
                    self.progress("profile-end", {"kernel": kernel, "profile": rec["profile"],
                                                  "seconds": rec.get("seconds", 0.0)})
                elif kind == "error":
                    state["problem"] = rec.get("error")

        stderr = ""
        try:
            res = self._stream(session, self._agent_command(session, self._agent_args(session, profiles, list(scenarios))),
                               timeout, on_line)
            stderr = res.stderr
            if res.rc in (124, 137):
                state["problem"] = "the agent ran past %.0f s and was killed" % timeout
            elif res.rc != 0 and not state["problem"]:
                state["problem"] = "the agent exited with status %d" % res.rc
        except Exception as err:  # transport gone, host-side timeout
            state["problem"] = "%s: %s" % (type(err).__name__, err)
        problem = state["problem"]
        missing = [(p.name, sid) for p in profiles for sid in scenarios if (p.name, sid) not in done]
        if missing:
            evidence = {"agent_problem": problem or "the agent stopped before these scenarios",
                        "stderr_tail": _tail(stderr), "stdout_junk": junk[-20:],
                        "console_tail": self._console_tail(session)}
            for profile_name, sid in missing:
                cell = self._error_cell(kernel, profile_name, sid, problem or "no result from the agent", evidence)
                cell.update(extra)  # with the session's provider
                self._append(cell)
                self.progress("cell", cell)

    @staticmethod
    def _stream(session: Any, command: str, timeout: float, on_line: Callable[[str], None]):
        if getattr(session, "host", None) is not None:
            return stream_lines(session.host, command, timeout, on_line)
        res = session.run(command, timeout)  # a session without a testinfra host: no streaming
        for line in res.stdout.splitlines():
            on_line(line)
        return res

    def _console_tail(self, session: Any) -> List[str]:
        path = getattr(session, "console_log", None)
        if not path:
            return []
        try:
            with open(path, "r", errors="replace") as f:
                return f.read().splitlines()[-40:]
        except OSError:
            return []

    def _error_cell(self, kernel: str, profile: str, sid: str, error: str, evidence: Dict[str, Any]) -> Dict[str, Any]:
        sc = self.matrix.scenarios[sid]
        return {"record": "cell", "target": kernel, "profile": profile, "scenario": sid, "group": sc.group,
                "provider": self._provider_name(kernel), "outcome": "ERROR", "expected": "PASS",
                "expected_why": "", "met": False, "duration": 0.0, "error": error, "log": [],
                "evidence": evidence}

    def _target_failed(self, kernel: str, err: BaseException) -> None:
        evidence: Dict[str, Any] = {"error_type": type(err).__name__,
                                    "traceback": traceback.format_exc(limit=6)}
        for attr in ("console_tail", "evidence", "output"):
            value = getattr(err, attr, None)
            if value:
                evidence[attr] = value
        self._append({"record": "target", "target": kernel, "provider": self._provider_name(kernel),
                      "error": str(err), "evidence": evidence})
        for profile in self.matrix.profiles:
            for sid in self.matrix.scenarios_for(kernel):
                cell = self._error_cell(kernel, profile, sid, "target %s did not come up: %s" % (kernel, err), evidence)
                self._append(cell)
                self.progress("cell", cell)
