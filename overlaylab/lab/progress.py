"""What a long step is doing, reported from where it happens, and shown and logged in one place.

Code deep in a step (the kernel fetch, the initramfs build, a VM boot, the probes) calls
:func:`phase` / :func:`phase_progress`; they go to the listener of the *current target scope*,
which the runner (or ``vm up``) opens per target with :func:`target_scope` in the thread that
brings the target up. Outside any scope they do nothing, so library callers pay nothing.

Events (``listener(event, info)``; ``info["kernel"]`` is the scope's target):

* ``phase-start``   ``{"phase": "boot", "detail": "..."}``
* ``phase-progress`` ``{"phase": ..., "done": n, "total": n|None, "unit": "bytes"}``
* ``phase-end``     ``{"phase": ..., "detail": ..., "seconds": s, "ok": bool}``

:class:`ProgressDisplay` turns these and the runner's own events (``target-start``,
``target-up``, ``profile-start``, ``cell``, ``profile-end``, ``target-end``) into a live bar
per target on a terminal, plain lines elsewhere, lasting lines for every finished target and
profile in both cases, and the same lines, timestamped, in ``run.log`` of the run directory.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, TextIO

Listener = Callable[[str, Dict[str, Any]], None]
RUN_LOG = "run.log"


@dataclass
class _Scope:
    target: str
    listener: Listener
    run_dir: Optional[str] = None


_SCOPE: "contextvars.ContextVar[Optional[_Scope]]" = contextvars.ContextVar("overlaylab_progress_scope",
                                                                               default=None)


@contextlib.contextmanager
def target_scope(target: str, listener: Listener, run_dir: Optional[str] = None) -> Iterator[None]:
    """Phases reported in this thread (and code it calls) while inside go to ``listener``."""
    token = _SCOPE.set(_Scope(target, listener, run_dir))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _emit(event: str, info: Dict[str, Any]) -> None:
    scope = _SCOPE.get()
    if scope is None:
        return
    try:
        scope.listener(event, dict(info, kernel=scope.target))
    except Exception:  # a display problem must never break the step it describes
        pass


@contextlib.contextmanager
def phase(name: str, detail: str = "") -> Iterator[Dict[str, Any]]:
    """Report ``name`` as started, then ended (with its duration, and whether it raised).

    The yielded dict's ``"detail"`` may be changed to say how it went (e.g. ``"cached"``)."""
    state: Dict[str, Any] = {"detail": detail}
    _emit("phase-start", {"phase": name, "detail": detail})
    t0 = time.monotonic()
    ok = False
    try:
        yield state
        ok = True
    finally:
        _emit("phase-end", {"phase": name, "detail": state.get("detail", ""), "ok": ok,
                            "seconds": time.monotonic() - t0})


def phase_progress(name: str, done: float, total: Optional[float] = None, unit: str = "bytes") -> None:
    _emit("phase-progress", {"phase": name, "done": done, "total": total, "unit": unit})


def keep_path(filename: str) -> Optional[str]:
    """Where a file about the current target is kept in the run directory (``None`` outside a
    scope with one): ``keep_path("console-%s.log")`` -> ``<run dir>/console-<target>.log``."""
    scope = _SCOPE.get()
    if scope is None or not scope.run_dir:
        return None
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", scope.target)
    return os.path.join(scope.run_dir, filename % safe if "%s" in filename else filename)


# --- showing it ------------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return "%.1f GiB" % n  # pragma: no cover


def _phase_text(name: str, detail: str) -> str:
    return "%s (%s)" % (name, detail) if detail else name


def _counts_text(counts: Counter) -> str:
    order = ("PASS", "FAIL", "REFUSED", "UNSUPPORTED", "ERROR")
    parts = ["%d %s" % (counts[o], o) for o in order if counts.get(o)]
    parts += ["%d %s" % (n, o) for o, n in sorted(counts.items()) if o not in order and o != "unmet"]
    if counts.get("unmet"):
        parts.append("%d not as expected" % counts["unmet"])
    return ", ".join(parts) or "no cells"


class ProgressDisplay:
    """The listener ``overlaylab run`` gives the runner; see the module docstring.

    ``per_target`` maps each target to its number of cells (for ``cells N/M`` per target).
    ``tty`` defaults to whether ``stream`` is a terminal.
    """

    def __init__(self, total: int, run_dir: Optional[str] = None, per_target: Optional[Dict[str, int]] = None,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None) -> None:
        self.total = total
        self.per_target = dict(per_target or {})
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.lock = threading.RLock()
        self.done = 0
        self.target_done: Counter = Counter()
        self.profile_counts: Dict[tuple, Counter] = {}
        self.target_counts: Dict[str, Counter] = {}
        self.target_errors: Dict[str, str] = {}
        self.log: Optional[TextIO] = None
        if run_dir:
            self.log = open(os.path.join(run_dir, RUN_LOG), "a", encoding="utf-8", buffering=1)
        self.progress = None
        self.tasks: Dict[str, Any] = {}
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from rich.progress import ProgressColumn
            from rich.text import Text

            class PhaseColumn(ProgressColumn):  # the current phase, with its own elapsed time
                def render(self, task):
                    t0 = task.fields.get("phase_t0")
                    text = task.fields.get("phase", "")
                    if t0 is not None and text:
                        text = "%s %ds" % (text, time.monotonic() - t0)
                    return Text(text)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=30),
                                     MofNCompleteColumn(), TimeElapsedColumn(), PhaseColumn(),
                                     console=Console(file=self.stream), transient=False)
            self.overall = self.progress.add_task("cells", total=total, phase="")
            self.progress.start()

    # output -----------------------------------------------------------------------------
    def line(self, text: str, lasting: bool = True) -> None:
        """Log ``text`` to run.log; show it as a lasting line (or, on a terminal with
        ``lasting=False``, only in run.log: the live rows show it)."""
        with self.lock:
            if self.log is not None:
                try:
                    self.log.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S%z"), text))
                except OSError:  # a full reports disk: the run stops on the store's word, not here
                    self.log = None
            if self.progress is not None:
                if lasting:
                    self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def echo(self, text: str, err: bool = True) -> None:  # click.echo's signature, for prefetch
        self.line(text)

    def _task(self, kernel: str):
        if self.progress is None:
            return None
        if kernel not in self.tasks:
            self.tasks[kernel] = self.progress.add_task(kernel, total=self.per_target.get(kernel) or None,
                                                        phase="starting")
        return self.tasks[kernel]

    def _set_phase(self, kernel: str, text: str, restart: bool = True) -> None:
        task = self._task(kernel)
        if task is not None:
            fields: Dict[str, Any] = {"phase": text}
            if restart:
                fields["phase_t0"] = time.monotonic()
            self.progress.update(task, **fields)

    # events -----------------------------------------------------------------------------
    def __call__(self, event: str, info: Dict[str, Any]) -> None:
        with self.lock:
            self._on(event, info)

    def _on(self, event: str, info: Dict[str, Any]) -> None:
        kernel = str(info.get("kernel") or info.get("target") or "?")
        if event == "phase-start":
            text = _phase_text(info["phase"], info.get("detail", ""))
            self._set_phase(kernel, text + " ...")
            self.line("%s: %s ..." % (kernel, text), lasting=False)
        elif event == "phase-progress":
            done, total = info.get("done", 0), info.get("total")
            if info.get("unit") == "bytes":
                text = human_bytes(done) + (" of %s" % human_bytes(total) if total else "")
            else:
                text = "%s%s" % (done, "/%s" % total if total else "")
            self._set_phase(kernel, "%s: %s" % (info["phase"], text), restart=False)
        elif event == "phase-end":
            text = "%s: %s %s in %.1fs" % (kernel, info["phase"], "done" if info.get("ok") else "FAILED",
                                            info.get("seconds", 0.0))
            if info.get("detail"):
                text += " (%s)" % info["detail"]
            self._set_phase(kernel, "")
            self.line(text, lasting=False)
        elif event == "target-start":
            self._task(kernel)
            self.line("target %s: starting" % kernel, lasting=False)
        elif event == "target-up":
            bits = [str(info.get("provider") or "?")]
            if info.get("accel") not in (None, "", "none"):  # a VM
                bits.append(str(info["accel"]))
                bits.append("booted in %.1fs" % (info.get("boot_seconds") or 0.0))
            self.line("target %s up: kernel %s (%s)" % (kernel, info.get("kernel_release") or "?", ", ".join(bits)))
            self._set_phase(kernel, "mkfs + probes ...")
        elif event == "profile-start":
            self._set_phase(kernel, "%s: scenarios ..." % info.get("profile"))
            self.line("%s %s: filesystem made and probed" % (kernel, info.get("profile")), lasting=False)
        elif event == "cell":
            self.done += 1
            self.target_done[kernel] += 1
            key = (kernel, str(info.get("profile")))
            for counts in (self.profile_counts.setdefault(key, Counter()),
                           self.target_counts.setdefault(kernel, Counter())):
                counts[str(info.get("outcome"))] += 1
                if info.get("met") is False:
                    counts["unmet"] += 1
            error = str(info.get("error") or "")
            if info.get("outcome") == "ERROR" and "did not come up" in error:
                self.target_errors.setdefault(kernel, error.splitlines()[0])
            if self.progress is not None:
                self.progress.advance(self.overall)
                self.progress.advance(self._task(kernel))
        elif event == "profile-end":
            counts = self.profile_counts.get((kernel, str(info.get("profile"))), Counter())
            self.line("[%d/%d] %s %s done in %.1fs: %s" % (self.done, self.total, kernel, info.get("profile"),
                                                           info.get("seconds", 0.0), _counts_text(counts)))
            self._set_phase(kernel, "mkfs + probes ...")
        elif event == "target-end":
            n = self.target_done[kernel]
            want = self.per_target.get(kernel)
            self.line("target %s done in %.1fs: %d%s cells, %s" % (
                kernel, info.get("seconds", 0.0), n, "/%d" % want if want else "",
                _counts_text(self.target_counts.get(kernel, Counter()))) + (
                "; %s" % self.target_errors[kernel] if kernel in self.target_errors else ""))
            task = self.tasks.pop(kernel, None)
            if task is not None:
                self.progress.remove_task(task)

    def stop(self) -> None:
        with self.lock:
            if self.progress is not None:
                for task in self.tasks.values():
                    self.progress.remove_task(task)
                self.tasks.clear()
                self.progress.stop()
                self.progress = None
            if self.log is not None:
                self.log.close()
                self.log = None
