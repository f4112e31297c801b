"""Docker 20.10's ``overlay`` and ``overlay2`` drivers, through a private ``dockerd`` per session.

The session starts its own ``containerd`` and a ``dockerd`` pointed at it (``--containerd``),
both in process groups of their own, with every path they take from the command line or a
config file in the session: ``--data-root`` a fresh directory on the backing fs, ``--exec-root``,
``--pidfile``, the API socket, containerd's root/state/opt dirs and the daemon config (an
otherwise empty ``daemon.json`` whose ``deprecated-key-path`` keeps the trust key out of
``/etc/docker``, moby ``daemon/config/config.go`` ``CommonConfig.TrustKeyPath``) in a short run
directory (unix socket paths are limited to 107 bytes). No network: ``--bridge=none``,
``--iptables=false``, ``--ip6tables=false``, ``--ip-masq=false``, ``--ip-forward=false`` and
containers created with ``--network none``; containers' cgroups go below a cgroup parent of the
session's own (``--cgroup-parent``), removed at the end.

What dockerd 20.10 still puts outside those paths, and how the session cleans it up:

- ``/run/docker/plugins``: the plugin exec root is hard-wired on Linux (moby
  ``daemon/daemon_linux.go`` ``getPluginExecRoot``: socket paths must stay short);
- ``/run/containerd/s/<sha256>``: each ``containerd-shim-runc-v2``'s socket (containerd 1.6
  ``runtime/v2/shim/util_unix.go`` ``SocketAddress``: the hash of containerd's address, the
  namespace and the container id), so a session can tell its own sockets from others';
- the managed containerd (not used here) would create ``/opt/containerd`` (its ``opt`` plugin).

Directories the session finds missing at start are removed at the end when empty and no other
``dockerd``/``containerd`` runs; shim sockets only for the session's own containers.

The verdict is dockerd's own: when the graph driver's Init refuses the backing fs, dockerd exits
with ``failed to start daemon: error initializing graphdriver: ...`` (moby
``layer/layer_store.go`` ``NewStoreFromOptions`` wraps the driver's error; a fresh data root
without d_type gets ``overlayutils.ErrDTypeNotSupported`` from ``overlay``/``overlay2``'s
``Init``, existing ones only a warning, moby#27443); that line is the refusal. Otherwise
``docker info``'s Storage Driver and Driver Status rows are the evidence.

The adapter talks to the private daemon's Engine API over its unix socket with ``http.client``
(the requests the ``docker`` CLI would send, moby ``api/swagger.yaml`` v1.41; each logged as the
equivalent ``curl --unix-socket`` line), not through the CLI: a Go CLI process per call cost more
than the call itself. :meth:`DockerSession.pull` builds a ``docker save`` archive in the standard
library (``manifest.json``, an image config whose ``rootfs.diff_ids`` are the layers' sha256, the
layer tars; moby ``image/tarexport/load.go``) and posts it to ``/images/load``; a top layer holding a static
busybox (``/.overlaylab/busybox``) lets a container run, since Docker mounts a container's
rootfs only while it runs: :meth:`~DockerSession.rootfs` starts it (``busybox sleep``) and yields
its ``GraphDriver.Data.MergedDir``, Docker's own overlay mount. The view also holds Docker's init
layer (``/.dockerenv``, ``/dev``, ``/proc``, ``/sys``, ``/etc/hosts``, ``/etc/hostname``,
``/etc/resolv.conf``, ``/etc/mtab``), which ``docker diff`` does not list.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence

from .. import procutil, shell
from ..backingfs import unmount_tree
from ... import mountutil
from .base import (Change, Engine, EngineError, EngineRefused, EngineSession, Verdict, first_line, fresh_dir,
                   wait_for, which)

START_TIMEOUT = 60.0
STOP_GRACE = 20.0
#: where the helper layer puts the static busybox the containers run (``sleep``)
HELPER_DIR = ".overlaylab"
SLEEP_ARGV = ["/%s/busybox" % HELPER_DIR, "sleep", "2147483647"]
BUSYBOX = "/bin/busybox"                   # Debian's busybox-static
SHIM_SOCKETS = "/run/containerd/s"          # containerd 1.6: defaults.DefaultStateDir + "/s"
GLOBAL_DIRS = ("/run/docker/plugins", "/run/docker", SHIM_SOCKETS, "/run/containerd")
GRAPHDRIVER_ERROR = "error initializing graphdriver"
#: ``GET /containers/{id}/changes`` kinds (moby ``pkg/archive/changes.go`` ``ChangeType``)
CHANGE_KINDS = {0: "C", 1: "A", 2: "D"}
#: a run directory longer than this goes to the temp dir (the longest socket adds ~45 bytes)
MAX_RUN_PARENT = 56

CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
# dockerd 20.10 keeps images in its own graph driver: containerd's snapshotters and CRI stay off
# (aufs would modprobe, overlayfs would mount a test overlay, CRI would set up CNI).
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


class DockerEngine(Engine):
    keywords = ("docker", "daemon")
    """Docker 20.10 (Debian's docker.io) with one storage driver, as a private daemon."""

    storage_driver: ClassVar[str] = ""
    programs = ("dockerd", "docker", "containerd", "containerd-shim-runc-v2", "runc")
    package = "docker.io"

    def unavailable(self) -> Optional[str]:
        why = super().unavailable()
        if why:
            return why
        if not is_static_elf(BUSYBOX):
            return "%s is missing or not static (Debian package busybox-static)" % BUSYBOX
        if not any(m.fstype in ("cgroup", "cgroup2") for m in mountutil.mountinfo()):
            return "no cgroup filesystem is mounted (runc needs one to run a container)"
        return None

    def version(self) -> str:
        res = shell.run(["dockerd", "--version"], timeout=30)
        return res.stdout.strip() if res.ok else ""

    @contextlib.contextmanager
    def open(self, backing_dir: str, workdir: str) -> Iterator["DockerSession"]:
        session = DockerSession(self, backing_dir, workdir)
        try:
            session.start()
            yield session
        finally:
            with procutil.signals_deferred():
                session.stop()


class DockerOverlayEngine(DockerEngine):
    name = "docker-overlay"
    description = "Docker 20.10's overlay driver (the direct descendant of 1.10.3's), private dockerd"
    storage_driver = "overlay"
    reference = "moby/moby v20.10 daemon/graphdriver/overlay/overlay.go"


class DockerOverlay2Engine(DockerEngine):
    name = "docker-overlay2"
    description = "Docker 20.10's overlay2 driver, private dockerd"
    storage_driver = "overlay2"
    reference = "moby/moby v20.10 daemon/graphdriver/overlay2/overlay.go"


class DockerSession(EngineSession):
    """One private dockerd (and its containerd) on one backing filesystem."""

    engine: DockerEngine

    def __init__(self, engine: DockerEngine, backing_dir: str, workdir: str):
        super().__init__(engine, backing_dir, workdir)
        self.data_root = ""
        self.run_root = ""
        self.containerd: Optional[subprocess.Popen] = None
        self.dockerd: Optional[subprocess.Popen] = None
        self.containers: List[str] = []
        self.timings: Dict[str, float] = {}
        self.teardown: List[str] = []
        self._absent: List[str] = []   # global dirs that did not exist before this session
        self._layer_count: Dict[str, int] = {}
        self._helper_tar = ""

    # paths --------------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.run_root, name)

    @property
    def containerd_sock(self) -> str:
        return self._path("c.sock")

    @property
    def cgroup_parent(self) -> str:
        return "/overlaylab-" + os.path.basename(self.run_root).replace(".", "-")

    @property
    def socket_path(self) -> str:
        return self._path("d.sock")

    def docker(self, *args: str, timeout: float = 120.0, check: bool = True):
        """Run the docker CLI on this session's daemon (and nothing of the user's config): for a
        person or a test looking on; the adapter itself goes through :meth:`api`."""
        argv = [docker_cli(), "--config", self._path("cli"), "-H", "unix://" + self.socket_path]
        return self.run(argv + list(args), timeout=timeout, check=check)

    def api(self, method: str, path: str, body: Any = None, upload: str = "", download: str = "",
            timeout: float = 120.0, check: bool = True) -> Any:
        """One Engine API request on the private socket: ``body`` is sent as JSON, ``upload`` a
        file sent as the body, ``download`` a file the response body is written to. Returns the
        decoded JSON (None for an empty body), a list of them for a JSON stream (``/images/load``
        answers 200 and reports its error in the stream, as the CLI's ``jsonmessage`` reads it).
        An error status, a streamed error or a daemon that cannot be reached raises
        :class:`EngineError` with the daemon's message (with ``check`` false: logged only)."""
        argv = ["curl", "-sS", "--unix-socket", self.socket_path, "-X", method, "http://docker" + path]
        headers = {}
        data: Any = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            argv += ["-H", "Content-Type: application/json", "-d", data.decode()]
        start = time.monotonic()
        entry: Dict[str, Any] = {"argv": argv, "rc": 0, "seconds": 0.0, "stderr": ""}
        self.commands.append(entry)
        conn = _UnixHTTPConnection(self.socket_path, timeout)
        try:
            if upload:
                argv += ["-H", "Content-Type: application/x-tar", "--data-binary", "@" + upload]
                headers.update({"Content-Type": "application/x-tar", "Content-Length": str(os.path.getsize(upload))})
                with open(upload, "rb") as f:
                    try:
                        conn.request(method, path, body=f, headers=headers)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # it answered (an error, ENOSPC) before reading all of it: read the answer
                    resp = conn.getresponse()
            else:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
            if download and resp.status < 300:
                argv += ["-o", download]
                with open(download, "wb") as out:
                    shutil.copyfileobj(resp, out, 1 << 20)
                raw = b""
            else:
                raw = resp.read()
        except (OSError, http.client.HTTPException) as err:
            entry.update(rc=1, stderr=str(err), seconds=round(time.monotonic() - start, 3))
            if not check:
                return None
            raise EngineError("%s %s: %s" % (method, path, err), {"request": argv}) from err
        finally:
            conn.close()
        entry["seconds"] = round(time.monotonic() - start, 3)
        result = _decode(raw)
        error = _api_error(resp.status, result)
        if error:
            entry.update(rc=resp.status, stderr=error[-400:])
            if check:
                raise EngineError(first_line(error), {"request": argv, "status": resp.status})
        return result

    # start and stop -----------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        self._absent = [d for d in GLOBAL_DIRS if not os.path.exists(d)]
        # containerd breaks on '[' / ']' in paths, and socket paths have 107 bytes: short names
        self.data_root = fresh_dir(self.backing_dir, "dk.")
        parent = self.workdir if len(self.workdir) <= MAX_RUN_PARENT else tempfile.gettempdir()
        self.run_root = fresh_dir(parent, "dk.")
        os.makedirs(self._path("cli"))
        with open(self._path("containerd.toml"), "w") as f:
            f.write(CONTAINERD_CONFIG.format(root=self._path("containerd"), state=self._path("cstate"),
                                             sock=self.containerd_sock, opt=self._path("opt")))
        with open(self._path("daemon.json"), "w") as f:
            json.dump({"deprecated-key-path": self._path("key.json")}, f)
        self.containerd = self._spawn("containerd", ["containerd", "--config", self._path("containerd.toml")])
        if not _wait_ready(self.containerd, lambda: _connects(self.containerd_sock)):
            raise EngineError(self._died("containerd"), {"log": self.log_tail("containerd")})
        self.dockerd = self._spawn("dockerd", [
            "dockerd", "--containerd", self.containerd_sock, "--data-root", self.data_root,
            "--exec-root", self._path("x"), "--pidfile", self._path("dockerd.pid"),
            "-H", "unix://" + self.socket_path, "--config-file", self._path("daemon.json"),
            "--storage-driver", self.engine.storage_driver, "--cgroup-parent", self.cgroup_parent,
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
            "--ip-forward=false", "--shutdown-timeout", "2"])
        ready = _wait_ready(self.dockerd, lambda: _pings(self.socket_path))
        self.timings["start"] = round(time.monotonic() - t0, 3)
        if ready:
            self.verdict = self._accepted()
            return
        refusal = next((ln for ln in self.log_tail("dockerd", 40) if GRAPHDRIVER_ERROR in ln), "")
        if self.dockerd.poll() is not None and refusal:
            self.verdict = Verdict(False, refusal[refusal.index(GRAPHDRIVER_ERROR):],
                                   {"log": [ln for ln in self.log_tail("dockerd", 40) if "level=info" not in ln]})
            return
        raise EngineError(self._died("dockerd"), {"log": self.log_tail("dockerd")})

    def _spawn(self, name: str, argv: List[str]) -> subprocess.Popen:
        with open(self._path(name + ".log"), "wb") as log:
            return procutil.popen_group(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=shell._env())

    def _died(self, name: str) -> str:
        proc = self.containerd if name == "containerd" else self.dockerd
        state = "timed out after %ss" % START_TIMEOUT if proc is None or proc.poll() is None \
            else "exited %d" % proc.returncode
        last = next((ln for ln in reversed(self.log_tail(name)) if "level=fatal" in ln or "level=error" in ln
                     or "failed to start" in ln), "")
        return "%s %s%s" % (name, state, ": " + last if last else "")

    def log_tail(self, name: str, lines: int = 20) -> List[str]:
        """The last ``lines`` of the daemon's log, each message unquoted from logrus' text format."""
        try:
            with open(self._path(name + ".log"), "r", errors="replace") as f:
                text = f.read()
        except OSError:
            return []
        return [_log_message(ln) for ln in text.splitlines()[-lines:]]

    def _accepted(self) -> Verdict:
        info = self.api("GET", "/info")
        status = {k: v for k, v in info.get("DriverStatus") or []}
        message = "Storage Driver: %s (%s)" % (info.get("Driver"), ", ".join("%s: %s" % kv for kv in status.items()))
        driver_lines = [ln for ln in self.log_tail("dockerd", 200)
                        if re.search(r"overlay|graphdriver|d_type", ln) and "level=info" not in ln]
        return Verdict(True, message, {"Storage Driver": info.get("Driver"), "Driver Status": status,
                                       "Warnings": info.get("Warnings") or [], "log": driver_lines})

    def stop(self) -> None:
        """Everything the session started goes, whatever state it is in; what was done is logged."""
        t0 = time.monotonic()
        log = self.teardown
        if self.dockerd is not None and self.dockerd.poll() is None:
            for cid in self.containers:
                try:
                    self.api("DELETE", "/containers/%s?force=1" % cid, timeout=60)
                    log.append("removed container %s" % cid[:12])
                except EngineError as err:
                    log.append("remove container %s: %s" % (cid[:12], err))
        for name, proc in (("dockerd", self.dockerd), ("containerd", self.containerd)):
            if proc is not None and proc.poll() is None:
                clean = procutil.stop_group(proc, ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, None)))
                log.append("%s stopped %s" % (name, "cleanly" if clean else "by SIGKILL"))
        if self.run_root:
            for pid in self._shims():
                for p in [pid] + procutil.descendants(pid):
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
                log.append("killed shim %d and its container" % pid)
            wait_for(lambda: not self._shims(), 10)
            for cid in self.containers:
                with contextlib.suppress(OSError):
                    os.remove(self.shim_socket(cid))
        for root in (self.data_root, self.run_root):
            if root:
                log.extend(unmount_tree(root))
                if mountutil.mounts_under(root):
                    log.append("left %s in place: still mounted" % root)
                else:
                    shutil.rmtree(root, ignore_errors=True)
        if self.run_root:
            log.extend(_remove_cgroup_tree(self.cgroup_parent))
        if not daemon_pids():
            for path in self._absent:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        self.timings["stop"] = round(time.monotonic() - t0, 3)

    def _shims(self) -> List[int]:
        """Shims serving this session's containerd (they leave its process group on purpose)."""
        return [pid for pid in _pids() if procutil.cmdline(pid)[-2:] == ["-address", self.containerd_sock]]

    def shim_socket(self, container: str) -> str:
        key = os.path.join(self.containerd_sock, "moby", container)
        return os.path.join(SHIM_SOCKETS, hashlib.sha256(key.encode()).hexdigest())

    def evidence(self) -> Dict[str, object]:
        out = super().evidence()
        out.update({"timings": dict(self.timings), "teardown": list(self.teardown), "data_root": self.data_root})
        return out

    # the adapter --------------------------------------------------------------------------
    def _check(self) -> None:
        if not self.verdict.accepted:
            raise EngineRefused(self.verdict.message, self.verdict.evidence)

    def pull(self, layer_tars: Sequence[str]) -> str:
        self._check()
        layers = list(layer_tars) + [self._helper_layer()]
        diff_ids = ["sha256:" + _sha256_file(p) for p in layers]
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
        image_id = hashlib.sha256(config).hexdigest()
        archive = self._path("image.tar")
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            names: List[str] = []
            for path, diff_id in zip(layers, diff_ids):
                name = diff_id[len("sha256:"):] + "/layer.tar"
                if name not in names:
                    tar.add(path, arcname=name)
                names.append(name)
            _add_bytes(tar, image_id + ".json", config)
            _add_bytes(tar, "manifest.json", json.dumps(
                [{"Config": image_id + ".json", "RepoTags": None, "Layers": names}]).encode())
        try:
            self.api("POST", "/images/load?quiet=1", upload=archive, timeout=300)
        finally:
            os.remove(archive)
        self._layer_count["sha256:" + image_id] = len(layers)
        return "sha256:" + image_id

    def _helper_layer(self) -> str:
        """A layer holding only the static busybox the containers run."""
        if not self._helper_tar:
            self._helper_tar = self._path("helper-layer.tar")
            with tarfile.open(self._helper_tar, "w", format=tarfile.PAX_FORMAT) as tar:
                info = tarfile.TarInfo(HELPER_DIR)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                info = tar.gettarinfo(BUSYBOX, arcname=HELPER_DIR + "/busybox")
                info.mtime = info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(BUSYBOX, "rb") as f:
                    tar.addfile(info, f)
        return self._helper_tar

    def create(self, image: str) -> str:
        """``docker create --network none --log-driver none IMAGE busybox sleep``."""
        self._check()
        cid = self.api("POST", "/containers/create", {
            "Image": image, "Cmd": SLEEP_ARGV,
            "HostConfig": {"NetworkMode": "none", "LogConfig": {"Type": "none", "Config": {}}}})["Id"]
        self.containers.append(cid)
        return cid

    @contextlib.contextmanager
    def rootfs(self, container: str) -> Iterator[str]:
        self._check()
        self.api("POST", "/containers/%s/start" % container)
        try:
            merged = self.api("GET", "/containers/%s/json" % container)["GraphDriver"]["Data"]["MergedDir"]
            if not mountutil.is_mounted(merged):
                raise EngineError("docker's MergedDir %s is not mounted in this mount namespace" % merged)
            yield merged
        except BaseException:
            self._stop(container, check=False)  # the first error is the one to see
            raise
        if container in self.containers:  # removed inside the block (`rm -f` stopped it): nothing to stop
            self._stop(container)

    def _stop(self, container: str, check: bool = True) -> None:
        self.api("POST", "/containers/%s/stop?t=0" % container, check=check)

    def changes(self, container: str) -> List[Change]:
        self._check()
        found = self.api("GET", "/containers/%s/changes" % container) or []
        return sorted(((CHANGE_KINDS[c["Kind"]], c["Path"]) for c in found), key=lambda c: c[1])

    def export_diff(self, container: str, dest: str) -> None:
        """``docker commit`` (the driver's own Diff), ``docker save`` it, keep the new top layer."""
        self._check()
        image = self.api("GET", "/containers/%s/json" % container)["Image"]
        parent_layers = self._layer_count.get(image) or len(self.api("GET", "/images/%s/json" % image)["RootFS"]["Layers"])
        committed = self.api("POST", "/commit?container=%s" % container)["Id"]
        archive = self._path("commit.tar")
        try:
            self.api("GET", "/images/%s/get" % committed, download=archive, timeout=300)
            with tarfile.open(archive) as tar:
                layers = json.load(tar.extractfile("manifest.json"))[0]["Layers"]  # type: ignore[arg-type]
                with open(dest, "wb") as out:
                    if len(layers) > parent_layers:
                        shutil.copyfileobj(tar.extractfile(layers[-1]), out)  # type: ignore[arg-type]
                    else:  # no change: commit adds an empty layer that save leaves out
                        out.write(b"\0" * 1024)
        finally:
            with contextlib.suppress(OSError):
                os.remove(archive)
            self.api("DELETE", "/images/%s?force=1" % committed, check=False)

    def remove(self, ref: str) -> None:
        self._check()
        if ref in self.containers:
            self.api("DELETE", "/containers/%s?force=1" % ref)
            self.containers.remove(ref)
        else:
            self.api("DELETE", "/images/%s?force=1" % ref)


# --- helpers -------------------------------------------------------------------------------

def docker_cli() -> str:
    """The docker CLI of the package that brought ``dockerd`` (``/usr/sbin/dockerd`` ->
    ``/usr/bin/docker``), so client and daemon are one release; else the first on PATH."""
    dockerd = which("dockerd")
    if dockerd:
        sibling = os.path.join(os.path.dirname(os.path.dirname(dockerd)), "bin", "docker")
        if os.access(sibling, os.X_OK):
            return sibling
    return which("docker") or "docker"


def is_static_elf(path: str) -> bool:
    """An ELF64 executable without a program interpreter (``PT_INTERP``): runs in an empty rootfs."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:5] != b"\x7fELF\x02":
                return False
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def _remove_cgroup_tree(parent: str) -> List[str]:
    """Remove ``parent`` (and the container cgroups below it) from every cgroup hierarchy."""
    done = []
    for m in mountutil.mountinfo():
        top = m.mountpoint + parent
        if m.fstype not in ("cgroup", "cgroup2") or not os.path.isdir(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as err:
                done.append("rmdir %s: %s" % (dirpath, err))
    return done


def _pids() -> List[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _comm(pid: int) -> str:
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def daemon_pids() -> List[int]:
    """Live dockerd, containerd and containerd-shim processes on this machine (any owner)."""
    return [p for p in _pids() if _comm(p) in ("dockerd", "containerd", "containerd-shim")
            and not procutil._is_zombie(p)]


def _wait_ready(proc: subprocess.Popen, ready, timeout: float = START_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.1)
    return False


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the daemon's unix socket (what the CLI's ``-H unix://`` does)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("docker", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _pings(path: str) -> bool:
    """The daemon answers ``GET /_ping`` with OK (its API is up)."""
    conn = _UnixHTTPConnection(path, 10)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read().strip() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _decode(raw: bytes) -> Any:
    """A response body: JSON, a JSON stream (one object per line) as a list, or the text."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return text


def _api_error(status: int, result: Any) -> str:
    """The daemon's error message: ``{"message": ...}`` of an error status, or the
    ``errorDetail``/``error`` of a streamed message (moby ``pkg/jsonmessage``); "" when none."""
    if status >= 400:
        if isinstance(result, dict) and result.get("message"):
            return str(result["message"])
        return "HTTP %d%s" % (status, ": %s" % result if result else "")
    for msg in result if isinstance(result, list) else [result]:
        if isinstance(msg, dict) and (msg.get("errorDetail") or msg.get("error")):
            return str((msg.get("errorDetail") or {}).get("message") or msg.get("error"))
    return ""


def _connects(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _log_message(line: str) -> str:
    """``time=... level=error msg="a \\"b\\""`` -> ``level=error a "b"``; other lines as they are."""
    m = re.search(r'level=(\w+) msg="((?:[^"\\]|\\.)*)"', line)
    if not m:
        return line
    return "level=%s %s" % (m.group(1), m.group(2).replace('\\"', '"').replace("\\\\", "\\"))


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
