"""The keeper of one background lab VM: ``python -m overlaylab.vm.keeper STATE_DIR``.

Started detached by :func:`overlaylab.vm.state.start_vm`. Reads ``request.json``, writes its
pid, boots the kernel with the qemu provider (phases go to stdout, i.e. ``keeper.log``), writes
``state.json`` once the guest answers ssh, and holds the session until SIGTERM/SIGINT/SIGHUP,
until qemu exits or until the hard timeout; then the provider tears the VM down and the state
directory is removed. A boot failure is written to ``state.json`` as ``failed`` with the reason.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional


def _log(text: str) -> None:
    sys.stdout.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S%z"), text))
    sys.stdout.flush()


def _listener(event: str, info: Dict[str, Any]) -> None:
    if event == "phase-start":
        _log("%s: %s%s ..." % (info["kernel"], info["phase"], " (%s)" % info["detail"] if info.get("detail") else ""))
    elif event == "phase-end":
        _log("%s: %s %s in %.1fs%s" % (info["kernel"], info["phase"], "done" if info.get("ok") else "FAILED",
                                       info.get("seconds", 0.0), " (%s)" % info["detail"] if info.get("detail") else ""))


def _stop(signum, frame):  # turn the signal into an exception so every context manager tears down
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> int:
    from ..lab.progress import target_scope
    from .state import _read_json, host_spec, ssh_command, write_json

    args = sys.argv[1:] if argv is None else argv
    d = Path(args[0])
    request = _read_json(d / "request.json") or {}
    kernel = request.get("kernel")
    if not kernel:
        _log("no request.json in %s" % d)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    (d / "keeper.pid").write_text("%d\n" % os.getpid())
    state_file = d / "state.json"
    write_json(state_file, {"status": "booting", "kernel": kernel, "pid": os.getpid()})
    hard_timeout = float(request.get("hard_timeout") or 4 * 3600.0)
    try:
        from ..providers.qemu import QemuProvider

        provider = QemuProvider(hard_timeout=hard_timeout, boot_timeout=float(request.get("boot_timeout") or 180.0))
        disks = [(str(n), int(s)) for n, s in request.get("disks") or []]
        with target_scope(kernel, _listener, str(d)):
            with provider.up(kernel, disks) as session:
                state = {
                    "status": "up", "kernel": kernel, "kernel_release": session.kernel_release,
                    "accel": session.accel, "boot_seconds": round(session.boot_seconds, 3),
                    "port": session.ssh_port, "ssh_config": session.ssh_config,
                    "identity": os.path.join(session.workdir, "id_ed25519"), "workdir": session.workdir,
                    "disks": session.disks, "console_log": session.console_log,
                    "qemu_pid": session.vm.proc.pid if session.vm and session.vm.proc else None,
                    "pid": os.getpid(), "started_at": time.time(), "hard_timeout": hard_timeout,
                    "spec": host_spec(session.ssh_port, session.ssh_config),
                    "ssh": ssh_command(session.ssh_port, session.ssh_config),
                }
                write_json(state_file, state)
                _log("%s up: kernel %s (%s, booted in %.1fs), ssh port %d" % (
                    kernel, session.kernel_release, session.accel, session.boot_seconds, session.ssh_port))
                while session.vm is not None and session.vm.alive():
                    time.sleep(1)
                _log("%s: qemu exited%s" % (kernel, " (hard timeout)" if session.vm and session.vm.timed_out else ""))
    except SystemExit as stop:
        _log("%s: stopping (signal %s)" % (kernel, stop.code - 128 if isinstance(stop.code, int) else stop.code))
    except BaseException as err:  # the VM did not come up: say why where `vm up` looks
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        _log("%s: %s: %s" % (kernel, type(err).__name__, err))
        console = d / ("console-%s.log" % kernel)
        if console.is_file():  # the state directory goes away: keep the evidence in the cache
            import shutil

            from ..kernels.cache import cache_root
            kept = cache_root() / "console" / ("%s-%s.log" % (kernel, time.strftime("%Y%m%d-%H%M%S")))
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(str(console), str(kept))
            first += " (console log: %s)" % kept
        write_json(state_file, {"status": "failed", "kernel": kernel, "error": first, "pid": os.getpid()})
        return 1
    import shutil

    shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
