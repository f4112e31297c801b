"""The chrooted apply helper: ``python -m overlaylab.archive.applylayer <dest>`` is this
project's ``docker-applyLayer`` re-exec (moby v1.10.3 ``pkg/chrootarchive/diff_unix.go``).

Protocol: options as JSON in ``$OPT``, the layer tar on stdin; on success
``{"layerSize":N}`` and a newline on stdout, stdin drained, exit 0; on failure the error text
(no newline) on stderr, exit 1. Port additions: the success answer carries
``"warnings":[...]`` when the apply has any, and error texts name the layer's real path
(``open /var/lib/…/tmproot…/etc/x: …``), not the chroot's ``/``. Everything that runs after ``chroot`` must already be
imported, since the destination has no Python library in it.
"""
from __future__ import annotations

import codecs
import json
import os
import signal
import sys
from typing import List, NoReturn, Optional

from ..goerrors import LinkError, PathError, errno_text
from . import gofs
from .unpack import TarOptions, unpack_layer

try:  # die with the parent, like the reference's Pdeathsig (best effort)
    import ctypes

    _libc: Optional[ctypes.CDLL] = ctypes.CDLL(None, use_errno=True)
except (ImportError, OSError):  # pragma: no cover
    _libc = None

_PR_SET_PDEATHSIG = 1


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _fatal(err: object, stderr_fd: int = 2) -> NoReturn:
    try:
        _write_all(stderr_fd, str(err).encode("utf-8", "replace"))
    finally:
        os._exit(1)


def prewarm() -> None:
    """Import lazily-loaded codecs now: after chroot no module can be loaded any more. Cheap
    once done: a forked child inherits what its parent loaded."""
    for name in ("utf-8", "ascii", "latin-1"):
        codecs.lookup(name)
    os.fsencode("x")
    os.fsdecode(b"x")
    json.dumps({"layerSize": 0}, separators=(",", ":"))
    json.loads('{"a": null}')
    str(OSError(2, "x"))


def main(argv: Optional[List[str]] = None) -> NoReturn:
    """The re-exec'd child: ``$OPT``, tar on stdin, answer on stdout/stderr."""
    args = sys.argv[1:] if argv is None else argv
    run_child(args[0] if args else "", os.environ.get("OPT", ""), 0, 1, 2)


def run_child(dest: str, raw_options: str, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> NoReturn:
    """Chroot into ``dest``, unpack the tar read from ``stdin_fd``, answer, ``_exit``. Never returns:
    in a forked child nothing may unwind back into the parent's code."""
    try:
        _run_child(dest, raw_options, stdin_fd, stdout_fd, stderr_fd)
    except BaseException as err:  # noqa: BLE001 - even KeyboardInterrupt ends here
        _fatal(err or type(err).__name__, stderr_fd)
    os._exit(0)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _interrupted(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def _run_child(dest: str, raw: str, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> None:
    prewarm()
    # SIGTERM (the parent stopping us, or its death via PDEATHSIG) and SIGINT unwind through
    # the clean-up below instead of killing the child with its temp dir left in the layer.
    # Held back until the unpack starts, so one arriving earlier unwinds there too.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    if _libc is not None:
        try:
            _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (AttributeError, OSError):  # pragma: no cover
            pass
    # Unbuffered: the tar reader buffers itself, and can splice bodies straight from the pipe.
    stdin = os.fdopen(stdin_fd, "rb", buffering=0, closefd=False)

    shown = os.path.abspath(dest) if dest else dest  # the layer's path for texts, before chroot
    try:
        os.chroot(dest)
        os.chdir("/")
    except OSError as err:
        _fatal(errno_text(err.errno or 5), stderr_fd)
    os.umask(0)

    if not raw:
        _fatal("unexpected end of JSON input", stderr_fd)
    try:
        options = TarOptions.from_json(raw)
    except (ValueError, TypeError, KeyError) as err:
        _fatal(err, stderr_fd)

    try:
        tmp = gofs.temp_dir("/", "temp-docker-extract")
    except OSError as err:
        _fatal(err, stderr_fd)
    os.environ["TMPDIR"] = tmp

    failure: Optional[BaseException] = None
    size = 0
    warnings: List[str] = []
    options.warnings = warnings
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        size = unpack_layer("/", stdin, options, display_root=shown)
    except Exception as err:  # noqa: BLE001 - every failure goes to stderr as text
        failure = _outside_paths(err, shown)
    except KeyboardInterrupt as err:
        failure = err
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            gofs.remove_all(tmp)
        except OSError:
            pass
    if failure is not None:
        _fatal(failure, stderr_fd)

    answer = {"layerSize": size}
    if warnings:
        answer["warnings"] = warnings  # type: ignore[assignment]
    _write_all(stdout_fd, (json.dumps(answer, separators=(",", ":")) + "\n").encode())
    while stdin.read(1 << 16):
        pass


def _outside_paths(err: BaseException, dest: str) -> BaseException:
    """An OS error's chroot paths (``/etc/x``) as the layer's real paths (``<dest>/etc/x``)."""
    def real(path):
        if not isinstance(path, str) or not path.startswith("/") or dest in ("", "/"):
            return path
        return dest.rstrip("/") + path if path != "/" else dest
    if isinstance(err, LinkError):
        old = err.filename if err.op == "symlink" else real(err.filename)  # symlink: the target text
        return LinkError(err.op, old, real(err.filename2), err.errno)
    if isinstance(err, PathError):
        return PathError(err.op, real(err.filename), err.errno)
    if isinstance(err, OSError) and isinstance(getattr(err, "filename", None), str):
        err.filename = real(err.filename)  # XattrError
    return err


if __name__ == "__main__":
    main()
