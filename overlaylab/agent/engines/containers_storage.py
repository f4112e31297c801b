"""containers/storage's ``overlay`` driver through Debian's ``containers-storage`` CLI (1.43),
natively and with ``fuse-overlayfs`` as its mount program (the rootless path).

The CLI has no daemon: every command is one process that loads the store — running the
driver's ``Init`` (containers/storage ``drivers/overlay/overlay.go``, ``Init``) — does one
thing and exits. A session gives it a graph root in a fresh short directory on the backing
filesystem, a run root and a ``storage.conf`` of its own in the session's workdir
(``CONTAINERS_STORAGE_CONF``, ``--graph``, ``--run``), so no command ever reads
``/etc/containers/storage.conf`` or touches ``/var/lib/containers`` or ``/run/containers``.

What Init decides it caches: feature checks as empty-or-message files ``overlay-true``,
``overlay-false``, ``metacopy(...)-false``, ``native-diff(...)-true`` in ``RUNROOT/overlay``
(``drivers/overlay/check.go``, ``cachedFeatureRecord``), and whether a mount program is in use
in ``GRAPHROOT/overlay/.has-mount-program``. The verdict records both beside the ``status``
rows (and the flag as ``mount_program``: true/false, what the ``engine`` scenarios' expectations
read), because they can disagree: when the native check fails (ext4 without ``filetype``: "the
backing extfs filesystem is formatted without d_type support"; overlayfs as backing fs) and
``fuse-overlayfs`` is on ``PATH``, 1.43's ``Init`` caches ``overlay-false`` and then silently
continues with ``fuse-overlayfs`` as mount program (``exec.LookPath("fuse-overlayfs")`` in
``Init``), after which ``status`` reports "Supports d_type: true" with empty driver options.
Without ``fuse-overlayfs`` on ``PATH`` the same backing fs is refused with the d_type message.

The CLI's ``version`` command prints nothing in Debian's build (``cmd/containers-storage/
version.go`` prints the store's version pairs, left empty there) and would initialise a store
at the default graph root first, so :meth:`ContainersStorageEngine.version` is the package's.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ... import mountutil
from .. import procutil, shell
from .base import (Change, Engine, EngineError, EngineRefused, EngineSession, Verdict, first_line,
                   fresh_dir, wait_for, which)

#: where the driver's ``Init`` may fall back to (and what the rootless path configures)
FUSE_OVERLAYFS = "/usr/bin/fuse-overlayfs"
#: the Debian package of each program the engines run
PACKAGES = {"containers-storage": "containers-storage", "fuse-overlayfs": "fuse-overlayfs"}
#: ``changes --json`` kinds (containers/storage ``pkg/archive/changes.go``, ``ChangeType``)
CHANGE_KINDS = {0: "C", 1: "A", 2: "D"}


class ContainersStorageSession(EngineSession):
    """One store: graph root on the backing fs, run root and config in the workdir."""

    engine: "ContainersStorageEngine"

    def __init__(self, engine: "ContainersStorageEngine", backing_dir: str, workdir: str,
                 graph_root: str, state_dir: str):
        super().__init__(engine, backing_dir, workdir)
        self.graph_root = graph_root
        self.state_dir = state_dir                      # storage.conf and the run root
        self.run_root = os.path.join(state_dir, "run")
        self.conf = os.path.join(state_dir, "storage.conf")
        self.images: Dict[str, List[str]] = {}         # top layer id -> its layers, base first
        self.containers: List[str] = []

    # commands ------------------------------------------------------------------------------
    def command(self, *args: str) -> List[str]:
        """The full argv of one CLI command on this store (a reproducible line on its own)."""
        argv = ["env", "CONTAINERS_STORAGE_CONF=" + self.conf, "containers-storage",
                "--graph", self.graph_root, "--run", self.run_root, "--storage-driver", "overlay"]
        for opt in self.engine.storage_opts:
            argv.append("--storage-opt=" + opt)
        return argv + list(args)

    def cs(self, *args: str, timeout: float = 120.0) -> shell.CmdResult:
        """Run a CLI command; :class:`EngineRefused` on a store whose Init refused the fs."""
        if not self.verdict.accepted:
            raise EngineRefused(self.verdict.message, {"verdict": self.verdict.to_dict()})
        return self.run(self.command(*args), timeout=timeout)

    # start and stop ------------------------------------------------------------------------
    def start(self) -> None:
        with open(self.conf, "w") as f:
            f.write('[storage]\ndriver = "overlay"\nrunroot = %s\ngraphroot = %s\n'
                    % (json.dumps(self.run_root), json.dumps(self.graph_root)))  # a JSON string is a TOML one
        res = self.run(self.command("status"), check=False)
        rows = status_rows(res.stderr + res.stdout) if res.ok else {}  # the CLI prints them on stderr
        checks = self.cached_checks()
        flag = read_text(os.path.join(self.graph_root, "overlay", ".has-mount-program"))
        evidence = {"status": rows, "cached_checks": checks, "mount_program_flag": flag,
                    "mount_program": flag == "true", "returncode": res.returncode}
        if not res.ok:
            self.verdict = Verdict(False, first_line(res.stderr or res.stdout)
                                   or "status exited %d" % res.returncode, evidence)
            return
        words = ["%s: %s" % (k, rows[k]) for k in ("Backing Filesystem", "Supports d_type", "Native Overlay Diff")
                 if k in rows]
        if checks.get("overlay-false") is not None:
            words.append("overlay-false: " + (checks["overlay-false"] or "(empty)"))
        if flag == "true":
            words.append("mounts through fuse-overlayfs")
        self.verdict = Verdict(True, "; ".join(words), evidence)

    def cached_checks(self) -> Dict[str, str]:
        """``RUNROOT/overlay/*-true|*-false``: the driver's cached feature checks, name -> text."""
        runhome = os.path.join(self.run_root, "overlay")
        try:
            names = sorted(os.listdir(runhome))
        except OSError:
            return {}
        return {n: read_text(os.path.join(runhome, n)) or "" for n in names
                if n.endswith("-true") or n.endswith("-false")}

    def stop(self) -> None:
        """Unmount everything under the graph root (layers left mounted, the private bind
        mount of ``GRAPHROOT/overlay`` that Init makes), end its fuse-overlayfs processes,
        remove the graph root and the state directory. Idempotent; never raises for what is gone.

        Not through ``shutdown --force``: with a layer mounted, 1.43's ``store.Shutdown`` loops
        for ever, unmounting a copy of the layer whose ``MountCount`` never drops (``store.go``;
        fixed in 1.45 by containers/storage commit 845c2f4a3 "Eliminate racy uses of
        Layer.MountCount"). A mount's removal is logged as a command."""
        fuse = fuse_processes_under(self.graph_root)
        for path in mountutil.unmount_all_under(self.graph_root):
            self.commands.append({"argv": ["umount", path], "rc": 0, "seconds": 0.0, "stderr": ""})
        end_processes(fuse + fuse_processes_under(self.graph_root))
        for path in (self.graph_root, self.state_dir):
            if not mountutil.mounts_under(path):  # never rmtree across a mount
                shutil.rmtree(path, ignore_errors=True)

    # the adapter ---------------------------------------------------------------------------
    def pull(self, layer_tars: Sequence[str]) -> str:
        """Each tar through ``import-layer``, which is ``store.PutLayer`` (containers/storage
        ``store.go``; ``layerStore.Put`` in ``layers.go``): the layer is recorded ``incomplete``
        before its diff is applied and deleted when the diff fails, so a full fs gets its space
        and inodes back. (``create-layer`` + ``applydiff`` leaves the half-applied layer, whose
        ``delete-layer`` must first save ``layers.json`` and fails while no inode is free.)
        A failed pull also deletes the layers it already made below the one that failed (one
        ``delete-layer`` process for them all, as :meth:`remove` does)."""
        if not layer_tars:
            raise EngineError("an image needs at least one layer")
        layers: List[str] = []
        try:
            for tar in layer_tars:
                layers.append(self.cs("import-layer", "--file", tar, *layers[-1:], timeout=600.0).stdout.strip())
        except EngineError:
            if layers:  # top-down: a layer with children is refused
                self.run(self.command("delete-layer", *reversed(layers)), check=False)
            raise
        self.images[layers[-1]] = layers
        return layers[-1]

    def create(self, image: str) -> str:
        container = self.cs("create-layer", image).stdout.strip()
        self.containers.append(container)
        return container

    @contextlib.contextmanager
    def rootfs(self, container: str) -> Iterator[str]:
        path = self.cs("mount", container).stdout.strip()
        self.verdict.evidence.setdefault("rootfs_fstype", mount_fstype(path))
        try:
            yield path
        except BaseException:
            if container in self.containers:
                self.run(self.command("unmount", container), check=False)
            raise
        if container in self.containers:  # removed inside the block: ``delete-layer`` unmounted it
            self.cs("unmount", container)

    def changes(self, container: str) -> List[Change]:
        out = self.cs("changes", "--json", container).stdout
        try:
            entries = json.loads(out or "[]") or []
            return sorted(((CHANGE_KINDS[e["Kind"]], e["Path"]) for e in entries), key=lambda c: c[1])
        except (ValueError, KeyError, TypeError) as err:
            raise EngineError("changes --json gave unreadable output (%s): %s" % (err, first_line(out)))

    def export_diff(self, container: str, dest: str) -> None:
        self.cs("diff", "--uncompressed", "--file", dest, container, timeout=600.0)

    def remove(self, ref: str) -> None:
        if ref in self.containers:
            self.cs("delete-layer", ref)
            self.containers.remove(ref)
            return
        # One process for the whole image: ``delete-layer`` takes many ids and deletes them in
        # order, going on past a failure and exiting 1 after it (cmd/containers-storage/delete.go
        # ``deleteLayer``); top-down, since a layer with children is refused.
        self.cs("delete-layer", *reversed(self.images.pop(ref, [ref])))


class ContainersStorageEngine(Engine):
    name = "containers-storage"
    keywords = ("containers",)
    description = "containers/storage 1.43's overlay driver via Debian's containers-storage CLI"
    programs = ("containers-storage",)
    package = "containers-storage"
    reference = "https://github.com/containers/storage/blob/v1.43.0/drivers/overlay/overlay.go"
    storage_opts: Tuple[str, ...] = ()

    def unavailable(self) -> Optional[str]:
        for program in self.programs:
            if which(program) is None:
                return "%s is not installed (Debian package %s)" % (program, PACKAGES[program])
        return None

    def version(self) -> str:
        if not hasattr(self, "_version"):
            self._version = self._probe_version()
        return self._version

    def _probe_version(self) -> str:
        res = shell.run(["dpkg-query", "-W", "-f", "${Version}", "containers-storage"], timeout=30.0)
        return "containers-storage " + res.stdout.strip() if res.ok and res.stdout.strip() else ""

    @contextlib.contextmanager
    def open(self, backing_dir: str, workdir: str) -> Iterator[ContainersStorageSession]:
        graph_root = fresh_dir(backing_dir, "cs.")
        try:
            state_dir = fresh_dir(workdir, "cs-state.")
        except BaseException:
            shutil.rmtree(graph_root, ignore_errors=True)
            raise
        session = ContainersStorageSession(self, backing_dir, workdir, graph_root, state_dir)
        try:
            session.start()
            yield session
        finally:
            with procutil.signals_deferred():  # a Ctrl-C does not cut the teardown short
                session.stop()


class FuseOverlayfsEngine(ContainersStorageEngine):
    name = "fuse-overlayfs"
    keywords = ("containers", "fuse")
    description = "the same driver with fuse-overlayfs as mount program (the rootless path)"
    programs = ("containers-storage", "fuse-overlayfs")
    package = "fuse-overlayfs"
    reference = "https://github.com/containers/fuse-overlayfs"
    storage_opts = ("overlay.mount_program=" + FUSE_OVERLAYFS,)

    def unavailable(self) -> Optional[str]:
        why = super().unavailable()
        if why is None and not os.path.exists("/dev/fuse"):
            why = "/dev/fuse is missing (no FUSE here: modprobe fuse, or give the container the device)"
        return why

    def _probe_version(self) -> str:
        res = shell.run([FUSE_OVERLAYFS, "--version"], timeout=30.0)  # fusermount3's line comes first
        own = next((line.strip() for line in res.stdout.splitlines() if line.startswith("fuse-overlayfs")), "")
        return ", ".join(v for v in (super()._probe_version(), own) if v)


# helpers ------------------------------------------------------------------------------------

def status_rows(text: str) -> Dict[str, str]:
    """``status`` output ("Key: Value" lines) as a dict."""
    rows = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            rows[key.strip()] = value.strip()
    return rows


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, "r", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def mount_fstype(path: str) -> str:
    """The filesystem type mounted at ``path`` ("overlay", "fuse.fuse-overlayfs"), or ""."""
    for m in reversed(mountutil.mountinfo()):
        if m.mountpoint == path:
            return m.fstype
    return ""


def fuse_processes_under(root: str) -> List[Tuple[int, str]]:
    """Live fuse-overlayfs processes whose mountpoint (last argument) is under ``root``, as
    (pid, start time) so a reused pid is never signalled."""
    prefix = root.rstrip("/") + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = procutil.cmdline(int(entry))
        start = procutil.start_time(int(entry))
        if start and argv and os.path.basename(argv[0]) == "fuse-overlayfs" and argv[-1].startswith(prefix):
            found.append((int(entry), start))
    return found


def end_processes(procs: List[Tuple[int, str]], grace: float = 5.0) -> None:
    """Wait up to ``grace`` for ``procs`` (FUSE daemons exit once unmounted), SIGKILL the rest,
    and reap those that were re-parented to us (an agent is a subreaper)."""
    def alive() -> List[int]:
        return [pid for pid, start in procs if procutil.owner_alive({"pid": pid, "start": start})]

    if not wait_for(lambda: not alive(), grace):
        for pid in alive():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(), grace)
    for pid, _ in procs:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
