"""Probes: facts about a target (kernel, overlay module) and about a backing filesystem.

Every probe returns a :class:`Probe` ``(name, value, evidence, error)`` and never raises: a
probe that cannot run returns ``value=None`` with ``error`` set. Backing-fs probes work in a
scratch directory under the given directory and remove it (and unmount every scratch
overlay) in ``finally`` blocks. The overlay-behaviour probes are the classic overlay sanity
checks (docs/reference-behaviour.md#field-failures) done with real mounts: upperdir acceptance, whiteouts, opaque directories, several
lower directories, directory rename (EXDEV vs redirect_dir).

:func:`driver_verdict` asks the ported driver itself: it runs
``overlaylab.graphdriver.overlay.init(<home_parent>/overlay)`` and classifies the answer as
Docker 1.10.3 would (``Init``, docs/reference-behaviour.md#init): accepted, ``ErrIncompatibleFS`` (btrfs/aufs/zfs) or
``ErrNotSupported`` (no ``nodev\\toverlay`` in /proc/filesystems), with the log lines.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import functools
import json
import logging
import os
import platform
import shutil
import stat
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .. import mountutil
from ..goerrors import errno_text
from ..graphdriver.fsmagic import LAB_FS_NAMES, statfs_magic
from .backingfs import unmount_tree
from .logcapture import capture_log
from .recipes import MountSpec, overlay_mount_spec
from .shell import KernelLogCursor, run

log = logging.getLogger("overlaylab.agent.probes")

OVERLAY_FS_LINE = "nodev\toverlay"
OVERLAY_PARAMS_DIR = "/sys/module/overlay/parameters"
DRIVER_LOGGER = "overlaylab.graphdriver"


@dataclass
class Probe:
    """One fact: ``value`` (None if the probe could not run), how it was seen, and why not."""

    name: str
    value: Any
    evidence: str = ""
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One JSON object (a results line)."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


def _failed(name: str, exc: BaseException, evidence: str = "") -> Probe:
    return Probe(name, None, evidence, "%s: %s" % (type(exc).__name__, exc))


def _guarded(name: str, fn: Callable[[], Probe]) -> Probe:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a probe never raises
        log.debug("probe %s failed", name, exc_info=True)
        return _failed(name, exc)


def _oserror_text(err: OSError) -> str:
    if err.errno:
        return "%s (%s)" % (errno_text(err.errno), _errno.errorcode.get(err.errno, err.errno))
    return str(err)


# --- target-level probes ----------------------------------------------------------------

def probe_kernel_release() -> Probe:
    """``uname -r`` (taken from ``os.uname()``; the same string)."""
    return _guarded("kernel_release", lambda: Probe("kernel_release", os.uname().release,
                                                   "os.uname(): %s" % " ".join(os.uname())))


def read_kernel_config(release: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
    """``(text, source)`` of the running kernel's config from /proc/config.gz or
    /boot/config-<release>; ``(None, reason)`` when neither is readable. Read once per process
    (the running kernel's config does not change under it; the target probes ask twice)."""
    return _read_kernel_config(release or os.uname().release)


@functools.lru_cache(maxsize=None)
def _read_kernel_config(release: str) -> Tuple[Optional[str], Optional[str]]:
    tried = []
    try:
        with open("/proc/config.gz", "rb") as raw:
            # imported here: Debian's kernels have no /proc/config.gz (CONFIG_IKCONFIG unset), and
            # guests pay ~9 ms per import under TCG
            import gzip
            with gzip.open(raw, "rt", encoding="utf-8", errors="replace") as f:
                return f.read(), "/proc/config.gz"
    except OSError as err:
        tried.append("/proc/config.gz: %s" % _oserror_text(err))
    for path in ("/boot/config-%s" % release, "/lib/modules/%s/config" % release,
                 "/usr/lib/modules/%s/config" % release):
        try:
            with open(path, "r", encoding="utf-8", errors="replace") as f:
                return f.read(), path
        except OSError as err:
            tried.append("%s: %s" % (path, _oserror_text(err)))
    return None, "; ".join(tried)


def parse_kernel_config(text: str, prefixes: Sequence[str]) -> Dict[str, str]:
    """``{symbol: "y"|"m"|"n"|value}`` for symbols starting with any of ``prefixes``
    (``# CONFIG_X is not set`` gives ``"n"``)."""
    out: Dict[str, str] = {}
    wanted = tuple(prefixes)  # str.startswith takes them all at once (a config has ~10,000 lines)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            sym, val = line[2:-len(" is not set")], "n"
        elif line.startswith("CONFIG_") and "=" in line:
            sym, val = line.split("=", 1)
            val = val.strip('"')
        else:
            continue
        if sym.startswith(wanted):
            out[sym] = val
    return out


def probe_kernel_config(prefixes: Sequence[str] = ("CONFIG_OVERLAY_FS",), name: str = "kernel_config_overlay") -> Probe:
    """Kernel config symbols (default: ``CONFIG_OVERLAY_FS*``); value None with the reason
    when the config is not available on the target."""
    def go() -> Probe:
        text, source = read_kernel_config()
        if text is None:
            return Probe(name, None, "", "kernel config not available: %s" % source)
        values = parse_kernel_config(text, prefixes)
        return Probe(name, values, "from %s" % source)
    return _guarded(name, go)


# Config symbols that decide whether a backing-fs profile can exist on a kernel at all.
BACKING_CONFIG_SYMBOLS = ("CONFIG_EXT4_FS", "CONFIG_XFS_FS", "CONFIG_XFS_SUPPORT_V4", "CONFIG_BTRFS_FS",
                          "CONFIG_TMPFS", "CONFIG_TMPFS_XATTR", "CONFIG_BLK_DEV_LOOP")


def probe_kernel_config_backing() -> Probe:
    """The config symbols the profiles' ``requires_config`` refer to (exact symbols)."""
    def go() -> Probe:
        text, source = read_kernel_config()
        if text is None:
            return Probe("kernel_config_backing", None, "", "kernel config not available: %s" % source)
        found = parse_kernel_config(text, BACKING_CONFIG_SYMBOLS)
        values = {s: found.get(s, "n") for s in BACKING_CONFIG_SYMBOLS}
        return Probe("kernel_config_backing", values, "from %s (absent symbols reported as n)" % source)
    return _guarded("kernel_config_backing", go)


def probe_overlay_filesystem() -> Probe:
    """What 1.10.3's ``supportsOverlay`` sees: ``modprobe overlay`` (result ignored), then
    whether /proc/filesystems has a line exactly ``nodev\\toverlay`` (docs/reference-behaviour.md#init)."""
    def go() -> Probe:
        mp = run(["modprobe", "overlay"], timeout=60)
        ev = ["modprobe overlay -> rc %d%s" % (mp.returncode, (": " + mp.stderr.strip()) if mp.stderr.strip() else "")]
        try:
            with open("/proc/filesystems", "r", encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as err:
            return Probe("overlay_filesystem", None, "\n".join(ev), "open /proc/filesystems: %s" % _oserror_text(err))
        related = [repr(l) for l in lines if "overlay" in l]
        ev.append("/proc/filesystems overlay lines: %s" % (", ".join(related) or "none"))
        return Probe("overlay_filesystem", OVERLAY_FS_LINE in lines, "\n".join(ev))
    return _guarded("overlay_filesystem", go)


def read_overlay_params(path: str = OVERLAY_PARAMS_DIR) -> Dict[str, str]:
    out = {}
    for name in sorted(os.listdir(path)):
        try:
            with open(os.path.join(path, name), "r") as f:
                out[name] = f.read().strip()
        except OSError as err:
            out[name] = "<%s>" % _oserror_text(err)
    return out


def probe_overlay_params() -> Probe:
    """``/sys/module/overlay/parameters/*`` as a dict (redirect_dir, index, metacopy, ...)."""
    def go() -> Probe:
        if not os.path.isdir(OVERLAY_PARAMS_DIR):
            return Probe("overlay_params", None, "", "%s does not exist (overlay not loaded?)" % OVERLAY_PARAMS_DIR)
        return Probe("overlay_params", read_overlay_params(), "read %s/*" % OVERLAY_PARAMS_DIR)
    return _guarded("overlay_params", go)


def param_enabled(value: Optional[str]) -> bool:
    """A module bool parameter's text (``Y``/``N``, ``1``/``0``, ``on``/``off``) as a bool."""
    return (value or "").strip().lower() in ("y", "1", "on", "yes", "true")


def run_target_probes() -> List[Probe]:
    """All target-level probes (run once per kernel/target)."""
    return [probe_kernel_release(), probe_kernel_config(), probe_kernel_config_backing(),
            probe_overlay_filesystem(), probe_overlay_params()]


# --- backing-fs probes ------------------------------------------------------------------

@contextlib.contextmanager
def scratch_dir(backing_dir: str, prefix: str) -> Iterator[str]:
    """A fresh directory under ``backing_dir``; everything mounted below it is unmounted and
    the directory removed on exit."""
    path = tempfile.mkdtemp(prefix=prefix, dir=backing_dir)
    try:
        yield path
    finally:
        unmount_tree(path)
        if not mountutil.mounts_under(path):
            shutil.rmtree(path, ignore_errors=True)


def probe_fs_magic(backing_dir: str) -> Probe:
    """``statfs(2)`` f_type of ``backing_dir``: value ``{"magic": "0x...", "name": ...}`` with
    the lab's names (1.10.3's FsNames plus overlayfs/ecryptfs/fuse)."""
    def go() -> Probe:
        magic = statfs_magic(backing_dir)
        name = LAB_FS_NAMES.get(magic, "<unknown>")
        return Probe("fs_magic", {"magic": "0x%x" % magic, "name": name},
                     "statfs(%s).f_type = 0x%x (%s)" % (backing_dir, magic, name))
    return _guarded("fs_magic", go)


DT_NAMES = {0: "DT_UNKNOWN", 1: "DT_FIFO", 2: "DT_CHR", 4: "DT_DIR", 6: "DT_BLK", 8: "DT_REG", 10: "DT_LNK",
            12: "DT_SOCK", 14: "DT_WHT"}

_SYS_GETDENTS64 = {"x86_64": 217, "amd64": 217, "i386": 220, "i686": 220, "aarch64": 61, "arm64": 61,
                   "riscv64": 61, "loongarch64": 61, "armv7l": 217, "armv6l": 217, "ppc64le": 202,
                   "ppc64": 202, "s390x": 220}

# libc as the interpreter already has it loaded (dlopen(NULL)): ctypes.util.find_library would
# run ldconfig -p, an exec that costs ~0.1 s at every agent start in a TCG guest
_libc = ctypes.CDLL(None, use_errno=True)


def getdents64(path: str) -> List[Tuple[str, int]]:
    """``(name, d_type)`` of every entry of directory ``path``, read with the raw
    ``getdents64(2)`` (as moby's ``fsutils.SupportsDType`` reads them, ``.``/``..`` included)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = ctypes.create_string_buffer(32768)
        fn = getattr(_libc, "getdents64", None)
        entries: List[Tuple[str, int]] = []
        while True:
            if fn is not None:
                fn.restype = ctypes.c_ssize_t
                fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
                n = fn(fd, buf, len(buf))
            else:
                nr = _SYS_GETDENTS64.get(platform.machine())
                if nr is None:
                    raise OSError(_errno.ENOSYS, "no getdents64 syscall number for %s" % platform.machine())
                _libc.syscall.restype = ctypes.c_long
                n = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(fd), buf, ctypes.c_size_t(len(buf)))
            if n < 0:
                e = ctypes.get_errno()
                raise OSError(e, errno_text(e), path)
            if n == 0:
                return entries
            raw = buf.raw[:n]
            off = 0
            while off < n:
                # struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
                reclen = int.from_bytes(raw[off + 16:off + 18], sys.byteorder)
                d_type = raw[off + 18]
                name = raw[off + 19:off + reclen].split(b"\0", 1)[0]
                entries.append((os.fsdecode(name), d_type))
                off += reclen
    finally:
        os.close(fd)


def probe_d_type(backing_dir: str) -> Probe:
    """d_type support the way moby 1.13+ checks it (``fsutils.SupportsDType``): a file in an
    empty scratch dir, ``getdents64``, any ``DT_UNKNOWN`` -> false."""
    def go() -> Probe:
        with scratch_dir(backing_dir, ".dtype-probe-") as d:
            with open(os.path.join(d, "fsutils-dummy"), "w"):
                pass
            entries = getdents64(d)
        if not entries:
            return Probe("d_type", None, "", "no dirent returned for %s" % d)
        supports = all(t != 0 for _, t in entries)
        ev = "getdents64: " + ", ".join("%s=%s" % (n, DT_NAMES.get(t, t)) for n, t in entries)
        return Probe("d_type", supports, ev)
    return _guarded("d_type", go)


def _probe_xattr(backing_dir: str, namespace: str) -> Probe:
    name = "xattr_" + namespace
    key = "%s.overlaylab.probe" % namespace

    def go() -> Probe:
        with scratch_dir(backing_dir, ".xattr-probe-") as d:
            f = os.path.join(d, "f")
            with open(f, "w"):
                pass
            steps = []
            try:
                os.setxattr(f, key, b"1")
                steps.append("setxattr %s ok" % key)
                got = os.getxattr(f, key)
                steps.append("getxattr -> %r" % got)
                os.removexattr(f, key)
                steps.append("removexattr ok")
                if got != b"1":
                    return Probe(name, False, "; ".join(steps + ["read back a different value"]))
                return Probe(name, True, "; ".join(steps))
            except OSError as err:
                steps.append("failed: %s" % _oserror_text(err))
                return Probe(name, False, "; ".join(steps))
    return _guarded(name, go)


def probe_xattr_trusted(backing_dir: str) -> Probe:
    """``trusted.*`` xattrs (what overlay stores whiteout/opaque/redirect markers in)."""
    return _probe_xattr(backing_dir, "trusted")


def probe_xattr_user(backing_dir: str) -> Probe:
    """``user.*`` xattrs (what a ``userxattr`` overlay would use)."""
    return _probe_xattr(backing_dir, "user")


class ScratchMountError(Exception):
    """A scratch overlay mount failed: errno text plus the kernel's words."""

    def __init__(self, spec: MountSpec, err: OSError, dmesg: List[str]):
        self.spec = spec
        self.oserror = err
        self.dmesg = dmesg
        super().__init__("%s: %s" % (spec.command(), _oserror_text(err)))

    def evidence(self) -> str:
        lines = ["%s -> %s" % (self.spec.command(), _oserror_text(self.oserror))]
        lines += ["dmesg: " + l for l in self.dmesg] or ["dmesg: (nothing logged)"]
        return "\n".join(lines)


@dataclass
class ScratchOverlay:
    root: str
    lowers: List[str]          # bottom first (l1, l2, ...)
    upper: str
    work: str
    merged: str
    spec: Optional[MountSpec] = None
    dmesg: List[str] = field(default_factory=list)


@contextlib.contextmanager
def scratch_overlay(backing_dir: str, populate: Optional[Callable[[ScratchOverlay], None]] = None,
                    nlowers: int = 1, extra_options: str = "") -> Iterator[ScratchOverlay]:
    """Mount a scratch overlay whose lower/upper/work/merged live under ``backing_dir``.

    ``populate`` fills the lowers (and upper) before the mount. The overlay is mounted with
    ``lowerdir=lN:...:l1`` (l1 at the bottom) and only the options 1.10.3's driver passes.
    Raises :class:`ScratchMountError` if the mount fails; always unmounts and removes.
    """
    with scratch_dir(backing_dir, ".ovl-probe-") as root:
        ov = ScratchOverlay(root=root, lowers=[os.path.join(root, "l%d" % (i + 1)) for i in range(nlowers)],
                            upper=os.path.join(root, "upper"), work=os.path.join(root, "work"),
                            merged=os.path.join(root, "merged"))
        for d in ov.lowers + [ov.upper, ov.work, ov.merged]:
            os.mkdir(d)
        if populate is not None:
            populate(ov)
        ov.spec = overlay_mount_spec(list(reversed(ov.lowers)), ov.upper, ov.work, ov.merged, extra_options)
        with KernelLogCursor() as klog:
            try:
                mountutil.mount(ov.spec.source, ov.spec.target, ov.spec.fstype, ov.spec.flags, ov.spec.data)
            except OSError as err:
                raise ScratchMountError(ov.spec, err, klog.read_new()) from None
            ov.dmesg = klog.read_new()
        try:
            yield ov
        finally:
            try:
                mountutil.umount(ov.merged)
            except OSError:
                pass  # scratch_dir's unmount_tree retries, lazily if need be


def _overlay_probe(name: str, backing_dir: str, populate: Optional[Callable[[ScratchOverlay], None]],
                   check: Callable[[ScratchOverlay], Tuple[Any, List[str]]], nlowers: int = 1) -> Probe:
    def go() -> Probe:
        try:
            with scratch_overlay(backing_dir, populate, nlowers=nlowers) as ov:
                head = [ov.spec.command() if ov.spec else ""] + ["dmesg: " + l for l in ov.dmesg]
                try:
                    value, ev = check(ov)
                except OSError as err:
                    # The overlay under test misbehaved (e.g. rm -rf -> ENOTEMPTY without
                    # d_type): that is the probe's answer, not a failure to probe.
                    where = os.path.relpath(err.filename, ov.root) if err.filename else "?"
                    value, ev = False, ["operation on %s failed: %s" % (where, _oserror_text(err))]
                return Probe(name, value, "\n".join(head + ev))
        except ScratchMountError as err:
            return Probe(name, None, err.evidence(), "scratch overlay mount failed: %s" % _oserror_text(err.oserror))
    return _guarded(name, go)


def probe_upperdir(backing_dir: str) -> Probe:
    """Whether the kernel accepts this filesystem as an overlay upperdir: value True if a
    scratch overlay mounts and takes a write, False with the errno text and dmesg lines if
    the mount is refused (e.g. overlay on overlay: ``invalid argument``)."""
    def go() -> Probe:
        try:
            with scratch_overlay(backing_dir) as ov:
                ev = [ov.spec.command() + " -> ok" if ov.spec else ""] + ["dmesg: " + l for l in ov.dmesg]
                try:
                    with open(os.path.join(ov.merged, "probe"), "w") as f:
                        f.write("x")
                except OSError as err:
                    ev.append("mounted, but writing merged/probe failed: %s" % _oserror_text(err))
                    return Probe("upperdir", False, "\n".join(ev))
                in_upper = os.path.exists(os.path.join(ov.upper, "probe"))
                ev.append("write through merged landed in upper: %s" % in_upper)
                return Probe("upperdir", in_upper, "\n".join(ev))
        except ScratchMountError as err:
            return Probe("upperdir", False, err.evidence())
    return _guarded("upperdir", go)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def probe_whiteout(backing_dir: str) -> Probe:
    """``rm merged/f`` must leave ``upper/f`` as a 0:0 character device (created) and ``f``
    must disappear from ``merged`` (hidden); value = created and hidden."""
    def populate(ov: ScratchOverlay) -> None:
        _write(os.path.join(ov.lowers[0], "f"), "lower\n")
        _write(os.path.join(ov.lowers[0], "keep"), "lower\n")

    def check(ov: ScratchOverlay) -> Tuple[Any, List[str]]:
        os.remove(os.path.join(ov.merged, "f"))
        ev = []
        try:
            st = os.lstat(os.path.join(ov.upper, "f"))
            created = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            ev.append("upper/f: mode %s rdev %d:%d" % (stat.filemode(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)))
        except FileNotFoundError:
            created = False
            ev.append("upper/f: missing")
        listing = sorted(os.listdir(ov.merged))
        hidden = "f" not in listing and not os.path.lexists(os.path.join(ov.merged, "f"))
        ev.append("merged after rm: %s" % listing)
        ev.append("whiteout created: %s, hidden: %s" % (created, hidden))
        return created and hidden, ev
    return _overlay_probe("whiteout", backing_dir, populate, check)


def probe_opaque(backing_dir: str) -> Probe:
    """``rm -rf merged/d; mkdir merged/d`` must give ``upper/d`` the xattr
    ``trusted.overlay.opaque=y`` and hide the lower's children of ``d``."""
    def populate(ov: ScratchOverlay) -> None:
        os.mkdir(os.path.join(ov.lowers[0], "d"))
        _write(os.path.join(ov.lowers[0], "d", "x"), "lower\n")

    def check(ov: ScratchOverlay) -> Tuple[Any, List[str]]:
        shutil.rmtree(os.path.join(ov.merged, "d"))
        os.mkdir(os.path.join(ov.merged, "d"))
        ev = []
        try:
            opaque = os.getxattr(os.path.join(ov.upper, "d"), "trusted.overlay.opaque")
        except OSError as err:
            opaque = None
            ev.append("getxattr upper/d trusted.overlay.opaque: %s" % _oserror_text(err))
        children = sorted(os.listdir(os.path.join(ov.merged, "d")))
        ev.append("upper/d trusted.overlay.opaque = %r" % (opaque,))
        ev.append("merged/d after recreate: %s" % children)
        return opaque == b"y" and children == [], ev
    return _overlay_probe("opaque", backing_dir, populate, check)


def probe_multi_lower(backing_dir: str) -> Probe:
    """``lowerdir=l2:l1`` mounts and merges: files of both lowers visible, l2 wins on clashes."""
    def populate(ov: ScratchOverlay) -> None:
        l1, l2 = ov.lowers
        _write(os.path.join(l1, "a"), "l1\n")
        _write(os.path.join(l2, "b"), "l2\n")
        _write(os.path.join(l1, "c"), "l1\n")
        _write(os.path.join(l2, "c"), "l2\n")

    def check(ov: ScratchOverlay) -> Tuple[Any, List[str]]:
        listing = sorted(os.listdir(ov.merged))
        with open(os.path.join(ov.merged, "c")) as f:
            c = f.read()
        ok = listing == ["a", "b", "c"] and c == "l2\n"
        return ok, ["merged: %s" % listing, "merged/c = %r (top lower l2 expected)" % c]
    return _overlay_probe("multi_lower", backing_dir, populate, check, nlowers=2)


def probe_dir_rename(backing_dir: str) -> Probe:
    """Rename a directory that exists in the lower, through merged (moby #25409):
    ``"EXDEV"`` (redirect_dir off), ``"redirect"`` (succeeds, ``trusted.overlay.redirect`` set
    on the upper copy), ``"renamed"`` (succeeds without a redirect xattr) or ``"error: ..."``."""
    def populate(ov: ScratchOverlay) -> None:
        os.mkdir(os.path.join(ov.lowers[0], "d1"))
        _write(os.path.join(ov.lowers[0], "d1", "x"), "lower\n")

    def check(ov: ScratchOverlay) -> Tuple[Any, List[str]]:
        src, dst = os.path.join(ov.merged, "d1"), os.path.join(ov.merged, "d2")
        try:
            os.rename(src, dst)
        except OSError as err:
            if err.errno == _errno.EXDEV:
                return "EXDEV", ["rename(merged/d1, merged/d2): %s" % _oserror_text(err)]
            return "error: %s" % _oserror_text(err), ["rename(merged/d1, merged/d2): %s" % _oserror_text(err)]
        try:
            redirect = os.getxattr(os.path.join(ov.upper, "d2"), "trusted.overlay.redirect")
        except OSError as err:
            return "renamed", ["rename ok; upper/d2 trusted.overlay.redirect: %s" % _oserror_text(err)]
        return "redirect", ["rename ok; upper/d2 trusted.overlay.redirect = %r" % redirect]
    return _overlay_probe("dir_rename", backing_dir, populate, check)


BACKING_PROBES: Tuple[Callable[[str], Probe], ...] = (
    probe_fs_magic, probe_d_type, probe_xattr_trusted, probe_xattr_user, probe_upperdir,
    probe_whiteout, probe_opaque, probe_multi_lower, probe_dir_rename,
)


def run_backing_probes(backing_dir: str) -> List[Probe]:
    """Every backing-fs probe on ``backing_dir`` (a directory on the filesystem under test)."""
    out = []
    for fn in BACKING_PROBES:
        name = fn.__name__[len("probe_"):]
        out.append(_guarded(name, lambda fn=fn: fn(backing_dir)))
    return out


def run_all_probes(backing_dir: str, target: bool = True) -> List[Probe]:
    """Target-level probes (unless ``target=False``) followed by the backing-fs probes."""
    return (run_target_probes() if target else []) + run_backing_probes(backing_dir)


def probes_by_name(probes: Sequence[Probe]) -> Dict[str, Probe]:
    return {p.name: p for p in probes}


# --- the driver's own verdict -----------------------------------------------------------

@dataclass
class DriverVerdict:
    """What ``overlay.init(home)`` said about a backing filesystem.

    ``verdict``: ``"accepted"``, ``"ErrIncompatibleFS"``, ``"ErrNotSupported"``,
    ``"ErrPrerequisites"``, ``"error"`` (any other exception) or ``"unavailable"`` (the driver
    module could not be imported). ``outcome`` maps it to the lab's words: ``ACCEPTED``,
    ``REFUSED`` (a sentinel error, as designed) or ``ERROR``.
    """

    home: str
    verdict: str
    outcome: str
    error: Optional[str] = None
    error_type: Optional[str] = None
    log: List[str] = field(default_factory=list)
    status: List[Tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["status"] = [list(r) for r in self.status]
        return d

    def to_probe(self) -> Probe:
        ev = ["overlay.init(%s) -> %s" % (self.home, self.error if self.error is not None else "ok")]
        ev += ["log: " + l for l in self.log]
        ev += ["status: %s = %s" % r for r in self.status]
        return Probe("driver_init", self.verdict, "\n".join(ev),
                     None if self.verdict not in ("error", "unavailable") else self.error)


def driver_verdict(home_parent: str, options: Sequence[str] = (), keep_home: bool = False) -> DriverVerdict:
    """Run the ported driver's ``Init`` on ``<home_parent>/overlay`` and classify the result.

    Log records of logger ``overlaylab.graphdriver`` (and children) emitted during Init are
    captured as ``"LEVEL logger: message"`` lines. An accepted driver is cleaned up and, unless
    ``keep_home``, a home directory that Init created is removed again.
    """
    home = os.path.join(home_parent, "overlay")
    try:
        from ..graphdriver import errors as gd_errors
        from ..graphdriver import overlay as gd_overlay  # lazily: the port may be absent
    except Exception as exc:  # noqa: BLE001
        return DriverVerdict(home, "unavailable", "ERROR", "%s: %s" % (type(exc).__name__, exc), type(exc).__name__)
    existed = os.path.lexists(home)
    driver = None
    with capture_log(DRIVER_LOGGER) as capture:
        try:
            driver = gd_overlay.init(home, tuple(options), None, None)
            verdict, outcome, err_text, err_type = "accepted", "ACCEPTED", None, None
        except gd_errors.ErrIncompatibleFS as exc:
            verdict, outcome, err_text, err_type = "ErrIncompatibleFS", "REFUSED", str(exc), type(exc).__name__
        except gd_errors.ErrNotSupported as exc:
            verdict, outcome, err_text, err_type = "ErrNotSupported", "REFUSED", str(exc), type(exc).__name__
        except gd_errors.ErrPrerequisites as exc:
            verdict, outcome, err_text, err_type = "ErrPrerequisites", "REFUSED", str(exc), type(exc).__name__
        except Exception as exc:  # noqa: BLE001
            verdict, outcome, err_text, err_type = "error", "ERROR", str(exc), type(exc).__name__
    status: List[Tuple[str, str]] = []
    if driver is not None:
        try:
            status = [tuple(r) for r in driver.status()]  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001
            status = [("status() failed", "%s: %s" % (type(exc).__name__, exc))]
        try:
            driver.cleanup()
        except Exception:  # noqa: BLE001
            pass
    if not existed and not keep_home and os.path.isdir(home) and not mountutil.mounts_under(home):
        shutil.rmtree(home, ignore_errors=True)
    return DriverVerdict(home, verdict, outcome, err_text, err_type, capture.lines, status)


def probe_driver_init(home_parent: str) -> Probe:
    """:func:`driver_verdict` as a :class:`Probe` named ``driver_init``."""
    return _guarded("driver_init", lambda: driver_verdict(home_parent).to_probe())


# --- expectations -----------------------------------------------------------------------

def probe_value_for(key: str, probes: Mapping[str, Probe], verdict: Optional[DriverVerdict] = None) -> Any:
    """The value an ``expect`` key of a profile is compared with."""
    if key == "driver_init":
        return verdict.outcome if verdict is not None else None
    p = probes.get(key)
    if p is None:
        return None
    if key == "fs_magic" and isinstance(p.value, dict):
        return p.value.get("name")
    return p.value


def check_expectations(expect: Mapping[str, Any], probes: Sequence[Probe],
                       verdict: Optional[DriverVerdict] = None) -> List[Dict[str, Any]]:
    """Compare a profile's ``expect`` table with probe results: one row per key with
    ``expected``, ``actual`` and ``ok`` (a key with no probe result has ``ok=None``)."""
    by_name = probes_by_name(probes)
    rows = []
    for key, expected in expect.items():
        actual = probe_value_for(key, by_name, verdict)
        missing = actual is None and (key != "driver_init" or verdict is None) and (
            key not in by_name or by_name[key].error is not None)
        rows.append({"key": key, "expected": expected, "actual": actual,
                     "ok": None if missing else actual == expected})
    return rows
