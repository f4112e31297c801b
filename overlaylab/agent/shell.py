"""The one thin layer that runs commands and reads the kernel log for the lab.

Everything the lab does to a target that is not a syscall goes through :func:`run`, which
never raises for a failing or missing command: it returns a :class:`CmdResult` that is also
the evidence recorded in results (argv, exit status, output, duration).

:class:`KernelLogCursor` answers "what did the kernel log since just before this mount?" —
the dmesg lines a bug bundle needs when a mount fails with a bare ``invalid argument``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from . import cellmark

DEFAULT_TIMEOUT = 120.0

# Commands live in sbin on Debian; a non-login root shell (or a VM's chroot) may lack it in PATH.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    parts = [p for p in env.get("PATH", "").split(":") if p]
    for extra in _EXTRA_PATH:
        if extra not in parts:
            parts.append(extra)
    env["PATH"] = ":".join(parts)
    env.setdefault("LC_ALL", "C")
    env["LANG"] = "C"
    return env


@dataclass
class CmdResult:
    """What one command did: the evidence record of a step."""

    argv: List[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def command(self) -> str:
        """The argv as one shell-quoted line (for reproduction commands)."""
        return " ".join(shlex.quote(a) for a in self.argv)

    def to_dict(self) -> dict:
        return asdict(self)


def run(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT, input: Optional[str] = None) -> CmdResult:
    """Run ``argv`` (no shell), capture text output; never raises.

    A missing executable gives returncode 127 and the error text in stderr, a timeout
    returncode 124 (the coreutils ``timeout`` convention), so callers only branch on ``ok``.
    """
    argv = [str(a) for a in argv]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, env=_env(),
            universal_newlines=True, errors="replace",
        )
        return CmdResult(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    except FileNotFoundError as err:
        return CmdResult(argv, 127, "", "%s: %s" % (argv[0], err.strerror), time.monotonic() - start)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        errtext = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        return CmdResult(argv, 124, out, errtext + "\ntimed out after %ss" % timeout, time.monotonic() - start)
    except OSError as err:
        return CmdResult(argv, 126, "", "%s: %s" % (argv[0], err.strerror), time.monotonic() - start)


def which(name: str) -> Optional[str]:
    """``shutil.which`` with the sbin directories added to PATH."""
    import shutil

    return shutil.which(name, path=_env()["PATH"])


def _format_kmsg_record(record: bytes) -> Optional[str]:
    # /dev/kmsg record: "<prio>,<seq>,<usec>,<flags>[,...];<message>\n[ KEY=value\n...]"
    text = record.decode("utf-8", errors="replace")
    head, sep, rest = text.partition(";")
    if not sep:
        return None
    message = rest.split("\n", 1)[0]
    fields = head.split(",")
    try:
        usec = int(fields[2])
        return "[%5d.%06d] %s" % (usec // 1000000, usec % 1000000, message)
    except (IndexError, ValueError):
        return message


class KernelLogCursor:
    """A position in the kernel log; :meth:`read_new` returns the lines logged since.

    Uses ``/dev/kmsg`` (opened non-blocking and seeked to the end, so only new records are
    read); where that cannot be opened, falls back to diffing ``dmesg`` output. Use as a
    context manager or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._fd: Optional[int] = None
        self._baseline: Optional[List[str]] = None
        self.source = "none"
        try:
            fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            try:
                os.lseek(fd, 0, os.SEEK_END)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
            self.source = "/dev/kmsg"
        except OSError:
            res = run(["dmesg"], timeout=20)
            if res.ok:
                self._baseline = res.stdout.splitlines()
                self.source = "dmesg"

    def read_new(self) -> List[str]:
        """Kernel log lines since the cursor was made (or last read)."""
        if self._fd is not None:
            lines = []
            for _ in range(10000):
                try:
                    record = os.read(self._fd, 8192)
                except BlockingIOError:
                    break
                except BrokenPipeError:
                    # The ring buffer overwrote records we had not read yet: keep going.
                    lines.append("[kmsg: some records were overwritten before they were read]")
                    continue
                except OSError:
                    break
                if not record:
                    break
                line = _format_kmsg_record(record)
                if line is not None and not cellmark.is_mark(line):  # the agent's own, not the kernel's
                    lines.append(line)
            return lines
        if self._baseline is not None:
            res = run(["dmesg"], timeout=20)
            if not res.ok:
                return []
            now = res.stdout.splitlines()
            base = self._baseline
            self._baseline = now
            # The ring buffer may have wrapped: find where the old tail ends in the new text.
            if base and len(now) >= len(base) and now[:len(base)] == base:
                new = now[len(base):]
            elif base and base[-1] in now:
                idx = len(now) - 1 - now[::-1].index(base[-1])
                new = now[idx + 1:]
            else:
                new = now[-20:]
            return [line for line in new if not cellmark.is_mark(line)]
        return []

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def __enter__(self) -> "KernelLogCursor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
