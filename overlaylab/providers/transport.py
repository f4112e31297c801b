"""Commands through a testinfra host, with the time limits testinfra does not have.

:func:`run_with_timeout` returns a testinfra result as ``host.run`` would. :func:`stream_lines`
hands each line of stdout to a callback as soon as it arrives (for ``local://`` and ``ssh://``
hosts; other backends fall back to running to completion first), so the runner can store and
show each finished cell while a long agent call is still going.
"""
from __future__ import annotations

import math
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..agent.procutil import KILL_NOW, communicate_in_group, popen_group, read_pipes, stop_agents, stop_group


class CommandTimeout(TimeoutError):
    """A command through a testinfra host did not finish in time (host-side guard)."""


def _wrap(command: str, timeout: float) -> str:
    # Target side: a stuck command ends with rc 124 (or 137 after the KILL).
    n = max(1, int(math.ceil(timeout)))
    return "timeout -k 5 %d sh -c %s" % (n, shlex.quote(command))


def local_command(host, wrapped: str) -> Optional[str]:
    """The host-side shell command that runs ``wrapped`` on the target (for the ``ssh`` and
    ``local`` backends; None for others): what a caller runs itself to feed stdin or keep a
    process going."""
    backend = host.backend
    name = getattr(backend, "NAME", "")
    if name == "ssh" and getattr(backend, "_build_ssh_command", None) is not None:
        cmd, args = backend._build_ssh_command(backend.get_command(wrapped))
        return backend.quote(" ".join(cmd), *args)
    if name == "local":
        return backend.get_command(wrapped)
    return None


def run_with_timeout(host, command: str, timeout: float, grace: float = 15.0):
    """Run ``command`` through a testinfra ``host`` with a time limit; testinfra has none.

    The command runs under ``timeout -k 5 N`` on the target. The transport gets ``timeout +
    grace`` seconds more; past that (the guest hangs, ssh is stuck) the local ssh is killed and
    :class:`CommandTimeout` is raised.
    """
    wrapped = _wrap(command, timeout)
    limit = math.ceil(timeout) + 5 + grace
    backend = host.backend
    local = local_command(host, wrapped) if getattr(backend, "NAME", "") == "ssh" else None
    if local is not None:
        p = popen_group(local, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
        try:
            out, err = communicate_in_group(p, limit)
        except subprocess.TimeoutExpired:
            p.communicate()  # what is left in the pipes; closes them
            raise CommandTimeout("no answer from %s after %.0fs: %s" % (backend.host.name, limit, command))
        if p.returncode == 255:
            raise RuntimeError("ssh to %s failed: %s" % (backend.host.name, err.decode(errors="replace").strip()))
        return backend.result(p.returncode, backend.encode(wrapped), out, err)

    box: Dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = host.run(wrapped)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        raise CommandTimeout("no answer after %.0fs: %s" % (limit, command))
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]


@dataclass
class StreamResult:
    rc: int
    stdout: str
    stderr: str


def stream_lines(host, command: str, timeout: float, on_line: Callable[[str], None],
                 grace: float = 15.0) -> StreamResult:
    """Run ``command`` like :func:`run_with_timeout`, calling ``on_line`` for each stdout line
    as it arrives. Returns everything that was read; raises :class:`CommandTimeout` when the
    host-side limit passes (after handing over the lines that did arrive)."""
    wrapped = _wrap(command, timeout)
    local = local_command(host, wrapped)
    if local is None:
        res = run_with_timeout(host, command, timeout, grace)
        for line in res.stdout.splitlines():
            on_line(line)
        return StreamResult(res.rc, res.stdout, res.stderr)
    limit = math.ceil(timeout) + 5 + grace
    p = popen_group(local, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    out: List[bytes] = []
    err: List[bytes] = []
    pending = b""
    deadline = time.monotonic() + limit

    def take(stream: str, chunk: bytes) -> None:
        nonlocal pending
        if stream == "err":
            err.append(chunk)
            return
        out.append(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            on_line(line.decode("utf-8", "replace"))

    try:
        try:
            read_pipes(p, deadline, take)
        except subprocess.TimeoutExpired:
            raise CommandTimeout("no answer after %.0fs: %s" % (limit, command)) from None
        if pending:
            on_line(pending.decode("utf-8", "replace"))
        rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        # A local agent below gets SIGTERM itself and the time to tear down (unmount, detach)
        # before the group is killed; its `timeout` wrapper would SIGKILL it 5 s after a signal.
        stop_agents(p.pid, timeout=120)
        stop_group(p, KILL_NOW)
        raise
    finally:
        p.stdout.close()
        p.stderr.close()
    stderr = b"".join(err).decode("utf-8", "replace")
    if rc == 255 and getattr(host.backend, "NAME", "") == "ssh":
        raise RuntimeError("ssh to %s failed: %s" % (host.backend.host.name, stderr.strip()))
    return StreamResult(rc, b"".join(out).decode("utf-8", "replace"), stderr)
