"""One interface for every storage engine the lab drives: the port and the living drivers.

The lab asks each engine the questions a user of any engine asks — does your driver accept this
backing filesystem, can I pull these layers, what does a container see, what did it change —
through the same small adapter, so one suite of scenarios (group ``engine``) runs unchanged on
the port, containers/storage, fuse-overlayfs and Docker's ``overlay``/``overlay2``. It follows
containerd's snapshotter suite (``snapshots/testsuite``: one conformance suite, every
implementation) and pytest-testinfra's ``backend/`` (a name -> class table, one small module per
engine on one base class).

An :class:`Engine` says whether it can run here and what version it is; :meth:`Engine.open`
starts it on a backing filesystem (a private daemon where it has one) and yields an
:class:`EngineSession`, whose operations are the adapter. Everything a session made — daemons,
mounts, FUSE processes, files — is gone when the ``with`` block ends, also after an error.

Errors: :class:`EngineRefused` when the engine's own Init refuses the backing filesystem (the
cell is REFUSED, the message is the engine's verdict line); :class:`EngineError` when an
operation failed (the cell is FAIL: the engine or the kernel under it misbehaved), carrying the
command log. Both are standard-library only: this package runs inside targets.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

from .. import shell


class EngineError(Exception):
    """An engine operation failed; ``str()`` is the engine's own message (one line)."""

    def __init__(self, message: str, evidence: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.evidence = evidence or {}


class EngineRefused(EngineError):
    """The engine's driver refused the backing filesystem at Init (its verdict line)."""


class EngineUnavailable(Exception):
    """The engine cannot run on this target (not installed, no FUSE, no cgroups): the reason."""


@dataclass
class Verdict:
    """What an engine's driver said about a backing filesystem when it started on it."""

    accepted: bool
    message: str = ""                                 # the engine's own words (Init error, status line)
    evidence: Dict[str, Any] = field(default_factory=dict)  # status rows, cached checks, log lines

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


#: (kind, path) as ``docker diff`` prints it: kind is "A" (added), "C" (changed) or "D" (deleted)
Change = Tuple[str, str]


class EngineSession:
    """An engine running on one backing filesystem: the adapter the ``engine`` scenarios use.

    Images are made from layer tars (uncompressed, in the order they stack: first is the base);
    a container is a writable layer on an image. References returned are opaque strings of the
    engine (layer, image or container ids)."""

    def __init__(self, engine: "Engine", backing_dir: str, workdir: str):
        self.engine = engine
        self.backing_dir = backing_dir    # the mounted backing fs: the engine's storage lives here
        self.workdir = workdir            # scratch space off the backing fs (sockets, run roots, tars)
        self.commands: List[Dict[str, Any]] = []  # every command run, as evidence
        self.verdict = Verdict(True)

    # the adapter -------------------------------------------------------------------------
    def pull(self, layer_tars: Sequence[str]) -> str:
        """An image whose layers are ``layer_tars`` applied in order (whiteouts and all)."""
        raise NotImplementedError

    def create(self, image: str) -> str:
        """A container: a new writable layer on ``image``."""
        raise NotImplementedError

    @contextlib.contextmanager
    def rootfs(self, container: str) -> Iterator[str]:
        """The container's merged view as a path, mounted by the engine, for the block's duration;
        writes through it land in the container's layer. If the container was removed inside the
        block, leaving the block does nothing more (a mount the removal left behind is still there
        for the scenario to catch)."""
        raise NotImplementedError
        yield ""  # pragma: no cover

    def changes(self, container: str) -> List[Change]:
        """What the container changed against its image, sorted by path."""
        raise NotImplementedError

    def export_diff(self, container: str, dest: str) -> None:
        """The container layer's diff against its image, as an uncompressed tar written to ``dest``
        (whiteouts in the AUFS ``.wh.`` form, as every engine exports them)."""
        raise NotImplementedError

    def remove(self, ref: str) -> None:
        """Remove a container or an image (its layers)."""
        raise NotImplementedError

    # helpers for adapters --------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: float = 120.0, input: Optional[str] = None,
            check: bool = True) -> shell.CmdResult:
        """Run one of the engine's commands, log it as evidence, raise :class:`EngineError` on failure."""
        res = shell.run(list(argv), timeout=timeout, input=input)
        self.commands.append({"argv": res.argv, "rc": res.returncode, "seconds": round(res.duration, 3),
                              "stderr": res.stderr[-400:]})
        if check and not res.ok:
            raise EngineError(first_line(res.stderr or res.stdout) or "%s exited %d" % (argv[0], res.returncode),
                              {"command": res.to_dict()})
        return res

    def evidence(self) -> Dict[str, Any]:
        """What a cell records about the engine: name, version, verdict and the last commands."""
        return {"engine": self.engine.name, "version": self.engine.version(), "verdict": self.verdict.to_dict(),
                "commands": self.commands[-30:]}


class Engine:
    """One storage engine: its name, whether it can run here, its version, how to start it."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    programs: ClassVar[Tuple[str, ...]] = ()     # what must be on PATH
    package: ClassVar[str] = ""                  # the Debian package that brings them
    reference: ClassVar[str] = ""                # upstream source of the driver it runs
    #: what an ``--engine`` word matches besides the name: its family and how it runs
    keywords: ClassVar[Tuple[str, ...]] = ()

    def unavailable(self) -> Optional[str]:
        """Why this engine cannot run on this target, or None when it can."""
        for program in self.programs:
            if which(program) is None:
                return "%s is not installed (Debian package %s)" % (program, self.package or program)
        return None

    def version(self) -> str:
        return ""

    @contextlib.contextmanager
    def open(self, backing_dir: str, workdir: str) -> Iterator[EngineSession]:
        """Start on ``backing_dir``; the session's ``verdict`` says whether the driver accepted it
        (a refusal is a session with ``verdict.accepted`` false, whose operations raise
        :class:`EngineRefused`). Stops everything it started on the way out."""
        raise NotImplementedError
        yield  # pragma: no cover


def which(program: str) -> Optional[str]:
    return shutil.which(program, path=shell._env()["PATH"])


def first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def fresh_dir(parent: str, prefix: str) -> str:
    import tempfile
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(path, 0o711)
    return path
