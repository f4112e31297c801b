"""``chrootarchive.ApplyUncompressedLayer``: apply a layer in a chrooted child process
(moby v1.10.3 ``pkg/chrootarchive/diff_unix.go``; docs/reference-behaviour.md#the-tar-layer).

By default the child is a ``fork()`` of this process that chroots and runs the same code as
the re-exec'd helper: in a TCG guest reading Python over 9p an
interpreter start-up costs seconds per layer, a fork milliseconds. The protocol and every
error text are the same. ``OVERLAYLAB_APPLY_REEXEC=1`` selects the re-exec instead.

The reference re-execs itself as ``docker-applyLayer``; the re-exec'd child is
``python -S -c "...; from overlaylab.archive.applylayer import main; main()" <dest>`` (see
:mod:`.applylayer`; ``python -m overlaylab.archive.applylayer <dest>`` is the same), with only
``OPT`` (and ``PYTHONPATH`` so the child finds this package) in its environment.

The child's stdin is ``stream``'s own descriptor when ``stream`` is an open file with nothing
buffered in this process (:func:`_direct_fd`), as Go's ``exec.Cmd`` connects an ``*os.File``
``Stdin`` directly (``os/exec/exec.go``, ``Cmd.stdin``): the child reads the layer itself
(and copies large members in the kernel, see :mod:`.tarreader`), the file offset is shared
as in the reference. Any other stream is fed to a pipe by a thread, since ``stream`` may
itself be a pipe filled by a thread of this process.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from typing import List, Optional

from . import gopath
from .errors import ArchiveError
from .unpack import TarOptions

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CHUNK = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# The child needs the standard library and this package only: ``-S`` skips ``site`` (and
# the .pth files it would process), ``-c`` skips runpy, and the package is looked up where
# this one was loaded from, not in the working directory (``sys.path[0]``, which ``-m``
# would also have set to it): the child runs the parent's code, as the reference's re-exec of
# its own binary does.
_CHILD_ARGS = ["-S", "-c", "import sys; sys.path[0] = %r; "
               "from overlaylab.archive.applylayer import main; main()" % _PKG_PARENT]


def _exit_text(returncode: int) -> str:
    """Go's ``*exec.ExitError`` text: ``exit status N`` or ``signal: <name>``."""
    if returncode >= 0:
        return "exit status %d" % returncode
    try:
        name = signal.strsignal(-returncode) or ("signal %d" % -returncode)
    except (ValueError, AttributeError):
        name = "signal %d" % -returncode
    return "signal: " + name[:1].lower() + name[1:]


def _go_json_error(out: bytes) -> Optional[str]:
    """Decode the first JSON value like Go's ``json.Decoder``; the error text, or None."""
    text = out.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        return "EOF"
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError as err:
        return str(err)
    if not isinstance(value, dict):
        return ("json: cannot unmarshal %s into Go value of type chrootarchive.applyLayerResponse"
                % {list: "array", str: "string", bool: "bool"}.get(type(value), "number"))
    return None


class _ForkedChild:
    """A forked, chrooting child with the pipes and ``wait()`` of a ``subprocess.Popen``."""

    def __init__(self, dest: str, raw_options: str, stdin_fd: Optional[int]):
        from .applylayer import prewarm, run_child  # imported before the fork: the child cannot import
        prewarm()  # loaded once here, not again in every child (over 9p in a guest, that is slow)
        if stdin_fd is None:
            r_in, w_in = os.pipe()
        else:
            r_in, w_in = stdin_fd, -1
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _close_other_fds({r_in, w_out, w_err})
            finally:
                run_child(dest, raw_options, r_in, w_out, w_err)
        for fd in (w_out, w_err) if stdin_fd is not None else (r_in, w_out, w_err):
            os.close(fd)
        self.stdin = os.fdopen(w_in, "wb", buffering=0) if w_in >= 0 else None
        self.stdout = os.fdopen(r_out, "rb")
        self.stderr = os.fdopen(r_err, "rb")

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else (
            os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status))


def _close_other_fds(keep) -> None:
    """Like ``close_fds``: an inherited write end of some other pipe (a Diff stream being fed
    to us, say) would keep that pipe open and its reader waiting for EOF forever."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _direct_fd(stream) -> Optional[int]:
    """``stream``'s descriptor if the child can read the layer from it directly: an unbuffered
    file (``io.FileIO``, any kind, as Go hands any ``*os.File`` over), or a buffered reader of
    a regular file with no bytes read ahead into its buffer (else those would be lost)."""
    try:
        if type(stream) is io.FileIO:
            return stream.fileno() if stream.readable() else None
        if type(stream) in (io.BufferedReader, io.BufferedRandom) and type(stream.raw) is io.FileIO:
            fd = stream.fileno()
            if (stat.S_ISREG(os.fstat(fd).st_mode)
                    and stream.tell() == os.lseek(fd, 0, os.SEEK_CUR)):
                return fd
    except (OSError, ValueError):  # closed, unseekable, ...: the pipe and thread then
        pass
    return None


def _start_child(dest: str, options: TarOptions, stdin_fd: Optional[int]):
    if os.environ.get("OVERLAYLAB_APPLY_REEXEC") == "1":
        env = {"OPT": options.to_json(), "PYTHONPATH": _PKG_PARENT}
        return subprocess.Popen([sys.executable] + _CHILD_ARGS + [dest],
                                stdin=subprocess.PIPE if stdin_fd is None else stdin_fd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    return _ForkedChild(dest, options.to_json(), stdin_fd)


def _stop_child(proc) -> None:
    """SIGTERM the apply child and reap it (signals deferred meanwhile, so a second Ctrl-C
    cannot leave it running)."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    except (AttributeError, OSError, ValueError):  # pragma: no cover
        old = None
    try:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            proc.wait()
        except (OSError, ChildProcessError):
            pass
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def apply_uncompressed_layer(dest: str, stream, options: Optional[TarOptions] = None) -> int:
    """Apply the uncompressed layer tar read from ``stream`` to ``dest`` inside a chroot;
    the layer size. Failures raise :class:`ArchiveError` with the reference's texts:
    ``ApplyLayer exit status 1 stdout: <out> stderr: <err>`` or
    ``unable to decode ApplyLayer JSON response: <err>``."""
    dest = gopath.clean(dest)
    options = options or TarOptions()
    stdin_fd = _direct_fd(stream)
    proc = _start_child(dest, options, stdin_fd)
    if proc.stdin is not None:
        try:  # fewer wake-ups of the child while the layer streams in
            fcntl.fcntl(proc.stdin.fileno(), _F_SETPIPE_SZ, _CHUNK)
        except OSError:
            pass
    copy_error: List[BaseException] = []
    errbuf: List[bytes] = []

    def pump() -> None:
        try:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                proc.stdin.write(chunk)  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # the child stopped reading (it failed); its exit status tells why
        except Exception as err:  # noqa: BLE001 - reported like Go's stdin copy error
            copy_error.append(err)
        finally:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass

    def drain_stderr() -> None:
        errbuf.append(proc.stderr.read())  # type: ignore[union-attr]

    threads = [threading.Thread(target=drain_stderr, name="applylayer-stderr", daemon=True)]
    if proc.stdin is not None:
        threads.append(threading.Thread(target=pump, name="applylayer-stdin", daemon=True))
    for t in threads:
        t.start()
    interrupted = False
    try:
        try:
            out = proc.stdout.read()  # type: ignore[union-attr]
            returncode = proc.wait()
        except BaseException:
            # Interrupted (SIGINT/SIGTERM): stop the child; it removes its temp-docker-extract*
            # on SIGTERM (the reference's would stay in the layer) before it exits.
            interrupted = True
            _stop_child(proc)
            raise
    finally:
        for t in threads:
            # After an interruption the feeder may wait on a stalled producer: do not wait for it.
            t.join(timeout=2 if interrupted else None)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        if stdin_fd is not None and isinstance(stream, io.BufferedIOBase):
            try:  # the child moved the shared offset: let the reader's cached position follow
                stream.seek(0, os.SEEK_CUR)
            except (OSError, ValueError):
                pass
    err_text = b"".join(errbuf).decode("utf-8", "replace")
    out_text = out.decode("utf-8", "replace")
    if returncode != 0:
        raise ArchiveError("ApplyLayer %s stdout: %s stderr: %s"
                           % (_exit_text(returncode), out_text, err_text))
    if copy_error:
        raise ArchiveError("ApplyLayer %s stdout: %s stderr: %s"
                           % (copy_error[0], out_text, err_text))
    problem = _go_json_error(out)
    if problem is not None:
        raise ArchiveError("unable to decode ApplyLayer JSON response: %s" % problem)
    value, _ = json.JSONDecoder().raw_decode(out.decode("utf-8", "replace").lstrip(" \t\r\n"))
    size = value.get("layerSize", 0)
    warnings = value.get("warnings")
    if options.warnings is not None and isinstance(warnings, list):
        options.warnings.extend(str(w) for w in warnings)
    return int(size) if isinstance(size, (int, float)) else 0
