"""The ``overlay`` graph driver of Docker v1.10.3 (moby ``daemon/graphdriver/overlay/overlay.go`` at
v1.10.3; its behaviour in our words: docs/reference-behaviour.md).

Layout under the driver home ``H`` (docs/reference-behaviour.md#layout):

- Shape R, every image layer: ``H/<id>/root/`` holds the full flattened tree; unchanged regular
  files are hard links into the parent layer's ``root/``.
- Shape O, ``-init`` and container layers: ``H/<id>/lower-id`` names one Shape-R layer, plus
  ``upper/``, ``work/`` and ``merged/`` (the overlay mount point while the layer is in use).

Reference behaviour is kept, quirks included, because the lab's job is to show how *this*
driver behaves on a kernel and filesystem. Deliberate differences: layer ids are checked
(:func:`check_layer_id`) because the reference would happily ``rm -rf H/..`` or mount with
the options an id like ``x,lowerdir=/`` smuggles in; and copies never follow a symlink
already in their destination (:func:`copy.copy_dir`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import stat
import subprocess
import threading
from dataclasses import dataclass
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

from .. import archive
from ..archive.gofs import temp_dir
from ..goerrors import LinkError, PathError, go_quote
from ..idtools import IDMaps, get_root_uid_gid, mkdir_all_as, mkdir_as
from ..mountutil import mount, mountinfo, umount
from . import register
from .copy import COPY_HARDLINK, copy_dir, remove_all
from .errors import ErrApplyDiffFallback, ErrIncompatibleFS, ErrNotSupported
from .fsmagic import FS_MAGIC_AUFS, FS_MAGIC_BTRFS, FS_MAGIC_ZFS, FS_NAMES, get_fs_magic
from .naivediff import NaiveDiffDriverWithApply
from ..goerrors import GoError

log = logging.getLogger(__name__)

DRIVER_NAME = "overlay"
PROC_FILESYSTEMS = "/proc/filesystems"

# A package variable in the reference: the last Init in the process wins (docs/reference-behaviour.md#init).
backing_fs = "<unknown>"

_REJECTED = {
    FS_MAGIC_BTRFS: "btrfs",
    FS_MAGIC_AUFS: "aufs",
    FS_MAGIC_ZFS: "zfs",
}


class InvalidLayerID(ValueError):
    """A layer id that is not a single safe path component (a deliberate port addition)."""


#: characters no layer id may hold: a path separator, NUL, and the separators of the overlay
#: mount options that ids end up in (``lowerdir=H/<id>/root,...``; ``:`` splits lowerdirs)
_ID_FORBIDDEN = ("/", "\0", ",", ":")


def check_layer_id(layer_id: str, what: str = "layer id") -> None:
    """The one check of every id entering the driver: refuse ids that would escape the home
    (empty, ``.``, ``..``, ``/`` or NUL inside) or change a mount's options (``,`` or ``:``)."""
    if (not isinstance(layer_id, str) or layer_id in ("", ".", "..")
            or any(c in layer_id for c in _ID_FORBIDDEN)):
        raise InvalidLayerID("invalid %s %s: must be a non-empty name without '/', ',' or ':'"
                             % (what, go_quote(str(layer_id))))


def mount_options(lower_dir: str, upper_dir: str, work_dir: str, mount_label: str = "") -> str:
    """The exact ``mount(2)`` data string of ``Get`` (docs/reference-behaviour.md#mount-options), with the label suffix."""
    opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (lower_dir, upper_dir, work_dir)
    return format_mount_label(opts, mount_label)


def format_mount_label(src: str, mount_label: str) -> str:
    """``label.FormatMountLabel`` of an selinux build (runc ``libcontainer/label/label_selinux.go``, vendored in moby v1.10.3)."""
    if not mount_label:
        return src
    if not src:
        return "context=%s" % go_quote(mount_label)
    return "%s,context=%s" % (src, go_quote(mount_label))


#: how long Init waits for its ``modprobe overlay`` before killing it (a hung modprobe must not hang Init)
MODPROBE_TIMEOUT = 30.0


def modprobe_overlay(timeout: float = MODPROBE_TIMEOUT) -> None:
    """Run ``modprobe overlay`` (the ``PATH``'s modprobe) and ignore whatever happens, as
    ``supportsOverlay`` does (``exec.Command("modprobe", "overlay").Run()``, error dropped).

    The wait blocks in ``poll(2)`` on a pidfd (Linux 5.3+) and so returns the moment modprobe
    exits; ``subprocess.run(timeout=)`` would sleep in steps of up to 50 ms instead, which added
    ~15 ms to every Init in a qemu guest. Where there is no pidfd, the plain bounded wait.
    In a lab guest the PATH's modprobe is the host's kmod run in the guest's chroot (the
    ``MODPROBE_OPTIONS`` of :func:`overlaylab.providers.qemu.guest_environment` point it at the
    guest kernel's modules; overlaylab/vm/guest_init.sh says why it is not busybox's)."""
    try:
        proc = subprocess.Popen(["modprobe", "overlay"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return
    try:
        if not _exits_within(proc, timeout):
            proc.kill()
        proc.wait()
    except BaseException:  # a scenario's time limit, Ctrl-C: leave no modprobe behind
        proc.kill()
        proc.wait()
        raise


def _exits_within(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether ``proc`` exits within ``timeout`` seconds (not reaped: the caller waits)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd_open (kernel < 5.3)
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))
    finally:
        os.close(pidfd)


def supports_overlay() -> bool:
    """``supportsOverlay``: ``modprobe overlay`` (result ignored, :func:`modprobe_overlay`), then
    ``nodev\\toverlay`` in /proc/filesystems."""
    modprobe_overlay()
    try:
        with open(PROC_FILESYSTEMS, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.rstrip("\n") == "nodev\toverlay":
                    return True
    except OSError:
        return False
    log.error("'overlay' not found as a supported filesystem on this host. Please ensure kernel "
              "is new enough and has overlay support loaded.")
    return False


def init(home: str, options: Sequence[str] = (), uid_maps: IDMaps = None,
         gid_maps: IDMaps = None) -> NaiveDiffDriverWithApply:
    """``Init`` (docs/reference-behaviour.md#init): check overlay support and the backing fs, make the home, wrap the driver.

    Options are ignored, as in the reference, except the port's own ``overlay.safe_apply``
    (:func:`parse_options`).
    """
    global backing_fs
    safe_apply = parse_options(options)
    if not supports_overlay():
        raise ErrNotSupported()
    magic = get_fs_magic(home)
    if magic in FS_NAMES:
        backing_fs = FS_NAMES[magic]
    if magic in _REJECTED:
        log.error("'overlay' is not supported over %s.", _REJECTED[magic])
        raise ErrIncompatibleFS()
    root_uid, root_gid = get_root_uid_gid(uid_maps, gid_maps)
    mkdir_all_as(home, 0o700, root_uid, root_gid)
    driver = OverlayDriver(home, uid_maps, gid_maps, safe_apply=safe_apply)
    return NaiveDiffDriverWithApply(driver, uid_maps, gid_maps)


SAFE_APPLY_OPTION = "overlay.safe_apply"
_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
             "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def parse_options(options: Sequence[str]) -> bool:
    """The value of ``overlay.safe_apply=<bool>`` (default false; Go's ``strconv.ParseBool``
    spellings). A port addition: the reference ignores every option, and so is every other
    option ignored here. With it, ApplyDiff copies a file the parent layer shares before a
    hard-link entry of the new layer changes its metadata (see :meth:`OverlayDriver.apply_diff`)."""
    safe = False
    for opt in options or ():
        key, sep, value = str(opt).partition("=")
        if key.strip().lower() != SAFE_APPLY_OPTION:
            continue
        value = value.strip()
        if not sep or value not in _GO_BOOLS:
            raise ValueError("overlay: invalid value %s for %s (want true or false)"
                             % (go_quote(value), SAFE_APPLY_OPTION))
        safe = _GO_BOOLS[value]
    return safe


@dataclass
class ActiveMount:
    count: int
    path: str
    mounted: bool


@dataclass(frozen=True)
class Layer:
    """One layer directory as :meth:`OverlayDriver.layers` finds it on disk."""
    id: str
    shape: str                # "R" (has root/) or "O" (lower-id, upper/, work/, merged/)
    lower_id: Optional[str]   # "" for Shape R; None when a Shape-O layer's lower-id cannot be read
    mounted: bool             # its merged/ is a mount point now (Shape O only)


class OverlayDriver:
    """The ProtoDriver plus overlay's own ApplyDiff. Use it through :func:`init`."""

    def __init__(self, home: str, uid_maps: IDMaps = None, gid_maps: IDMaps = None,
                 safe_apply: bool = False):
        self.home = home
        self.uid_maps = uid_maps
        self.gid_maps = gid_maps
        self.safe_apply = safe_apply
        #: What the last ApplyDiff warned about (also logged as warnings).
        self.last_apply_warnings: List[str] = []
        self._lock = threading.Lock()
        self.active: Dict[str, ActiveMount] = {}

    def __str__(self) -> str:
        return DRIVER_NAME

    def dir(self, layer_id: str) -> str:
        return os.path.join(self.home, layer_id)

    # Status and metadata -------------------------------------------------------------------
    def status(self) -> List[Tuple[str, str]]:
        """One row, the process-global backing filesystem name (docs/reference-behaviour.md#put-remove-status)."""
        return [("Backing Filesystem", backing_fs)]

    def get_metadata(self, layer_id: str) -> Dict[str, str]:
        """``RootDir`` for Shape R; ``LowerDir/UpperDir/WorkDir/MergedDir`` for Shape O."""
        check_layer_id(layer_id)
        d = self.dir(layer_id)
        _stat(d)
        root = os.path.join(d, "root")
        if os.path.exists(root):
            return {"RootDir": root}
        lower_id = _read_file(os.path.join(d, "lower-id"))
        return {
            "LowerDir": os.path.normpath(os.path.join(self.dir(lower_id), "root")),
            "UpperDir": os.path.join(d, "upper"),
            "WorkDir": os.path.join(d, "work"),
            "MergedDir": os.path.join(d, "merged"),
        }

    def cleanup(self) -> None:
        """Does nothing: mounts stay in place at shutdown, as in the reference."""

    def layers(self) -> List[Layer]:
        """Every layer directory under the home, sorted by the bytes of its id.

        A lab addition for ``overlaylab driver list``: moby's overlay driver (v1.10.3
        ``daemon/graphdriver/overlay/overlay.go``) has no such call, the daemon's layer store
        keeps the list. This reads only the layout, so it needs no Init:
        ``OverlayDriver(home).layers()`` lists a home without making it. A home that cannot
        be read is a :class:`PathError` (``open``); entries that are not directories are
        skipped; a Shape-O layer whose ``lower-id`` cannot be read is still listed.
        """
        try:
            names = sorted(os.listdir(self.home), key=os.fsencode)
        except OSError as err:
            raise PathError("open", self.home, err.errno) from None
        mount_points = {m.mountpoint for m in mountinfo()}
        found = []
        for name in names:
            d = self.dir(name)
            if not os.path.isdir(d):
                continue
            if os.path.isdir(os.path.join(d, "root")):
                found.append(Layer(name, "R", "", False))
                continue
            try:
                lower_id: Optional[str] = _read_file(os.path.join(d, "lower-id"))
            except PathError:
                lower_id = None
            found.append(Layer(name, "O", lower_id, os.path.join(d, "merged") in mount_points))
        return found

    # Create / Remove / Exists --------------------------------------------------------------
    def create(self, layer_id: str, parent: str = "", mount_label: str = "") -> None:
        """``Create`` cases A (no parent), B (parent is Shape R) and C (parent is Shape O).

        ``mount_label`` is ignored. Re-creating an existing id is not an error (quirk, docs/reference-behaviour.md#create):
        A and B silently succeed; C re-copies the parent's upper over the existing one
        (``MkdirAs`` of existing dirs succeeds, as in v1.10.3 and the recorded trace), reusing
        existing directories and regular files, and if that meets anything else where it
        copies -- a symlink, fifo or device -- fails with EEXIST and **deletes the whole
        layer**. Unlike the reference, the copy never goes through such a symlink (a
        container's ``etc -> /outside`` would otherwise have it write outside the home).
        """
        check_layer_id(layer_id)
        if parent:
            check_layer_id(parent, "parent id")
        d = self.dir(layer_id)
        root_uid, root_gid = get_root_uid_gid(self.uid_maps, self.gid_maps)
        mkdir_all_as(os.path.dirname(d), 0o700, root_uid, root_gid)
        mkdir_as(d, 0o700, root_uid, root_gid)
        try:
            self._create_layout(d, parent, root_uid, root_gid)
        except BaseException:
            try:
                remove_all(d)
            except OSError:
                pass
            raise

    def _create_layout(self, d: str, parent: str, uid: int, gid: int) -> None:
        if not parent:
            mkdir_as(os.path.join(d, "root"), 0o755, uid, gid)
            return
        parent_dir = self.dir(parent)
        _lstat(parent_dir)
        try:
            parent_root = os.lstat(os.path.join(parent_dir, "root"))
        except OSError:
            parent_root = None
        if parent_root is not None:  # case B
            mkdir_as(os.path.join(d, "upper"), _perm_bits(parent_root.st_mode), uid, gid)
            mkdir_as(os.path.join(d, "work"), 0o700, uid, gid)
            mkdir_as(os.path.join(d, "merged"), 0o700, uid, gid)
            _write_file(os.path.join(d, "lower-id"), parent.encode())
            return
        # case C: duplicate the parent's upper over the same single lower.
        lower_id = _read_file_bytes(os.path.join(parent_dir, "lower-id"))
        _write_file(os.path.join(d, "lower-id"), lower_id)
        parent_upper = os.path.join(parent_dir, "upper")
        upper_st = _lstat(parent_upper)
        upper = os.path.join(d, "upper")
        mkdir_as(upper, _perm_bits(upper_st.st_mode), uid, gid)
        mkdir_as(os.path.join(d, "work"), 0o700, uid, gid)
        mkdir_as(os.path.join(d, "merged"), 0o700, uid, gid)
        copy_dir(parent_upper, upper, 0)

    def remove(self, layer_id: str) -> None:
        """``rm -rf H/<id>``; missing is fine. Does not unmount (a mounted layer fails with EBUSY)."""
        check_layer_id(layer_id)
        remove_all(self.dir(layer_id))

    def exists(self, layer_id: str) -> bool:
        """``stat(H/<id>)`` succeeds. A malformed id simply does not exist."""
        try:
            check_layer_id(layer_id)
            os.stat(self.dir(layer_id))
            return True
        except (OSError, InvalidLayerID):
            return False

    # Get / Put ----------------------------------------------------------------------------
    def get(self, layer_id: str, mount_label: str = "") -> str:
        """Make the layer's view available and return its path (docs/reference-behaviour.md#mount-options).

        Shape R: ``H/<id>/root``, no mount. Shape O: mount the overlay on ``merged`` once per id;
        further Gets only count. The whole method holds the driver lock.
        """
        check_layer_id(layer_id)
        with self._lock:
            mnt = self.active.get(layer_id)
            if mnt is not None:
                mnt.count += 1
                return mnt.path
            d = self.dir(layer_id)
            _stat(d)
            root = os.path.join(d, "root")
            if os.path.exists(root):
                self.active[layer_id] = ActiveMount(1, root, False)
                return root
            lower_id = _read_file(os.path.join(d, "lower-id"))
            check_layer_id(lower_id, "lower id")  # it goes into the mount options too
            lower_dir = os.path.normpath(os.path.join(self.dir(lower_id), "root"))
            upper_dir = os.path.join(d, "upper")
            work_dir = os.path.join(d, "work")
            merged_dir = os.path.join(d, "merged")
            opts = mount_options(lower_dir, upper_dir, work_dir, mount_label)
            try:
                mount("overlay", merged_dir, "overlay", 0, opts)
            except OSError as err:
                raise MountError("error creating overlay mount to %s: %s" % (merged_dir, err), err) from None
            # The kernel made work/work as root; user namespaces need it owned by remapped root.
            root_uid, root_gid = 0, 0
            try:
                root_uid, root_gid = get_root_uid_gid(self.uid_maps, self.gid_maps)
            except ValueError:
                pass  # ignored by the reference; only the chown error matters
            work_work = os.path.join(work_dir, "work")
            try:
                os.chown(work_work, root_uid, root_gid)
            except OSError as err:
                # Quirk kept: the mount stays and is not recorded.
                raise PathError("chown", work_work, err.errno) from None
            self.active[layer_id] = ActiveMount(1, merged_dir, True)
            return merged_dir

    def put(self, layer_id: str) -> None:
        """Release one Get; the last Put of a mounted layer unmounts it (docs/reference-behaviour.md#put-remove-status).

        An unknown id is not an error: the merged dir is unmounted if the layer exists.
        """
        check_layer_id(layer_id)
        with self._lock:
            mnt = self.active.get(layer_id)
            if mnt is None:
                log.debug("Put on a non-mounted device %s", layer_id)
                if self.exists(layer_id):
                    merged = os.path.join(self.dir(layer_id), "merged")
                    try:
                        umount(merged, 0)
                    except OSError as err:
                        log.debug("Failed to unmount %s overlay: %s", layer_id, err)
                return
            mnt.count -= 1
            if mnt.count > 0:
                return
            del self.active[layer_id]
            if mnt.mounted:
                try:
                    umount(mnt.path, 0)
                except OSError as err:
                    log.debug("Failed to unmount %s overlay: %s", layer_id, err)
                    raise

    # ApplyDiff ----------------------------------------------------------------------------
    def apply_diff(self, layer_id: str, parent: str, stream: BinaryIO) -> int:
        """Overlay's own ApplyDiff (docs/reference-behaviour.md#applydiff): hard-link copy of the parent's root, extract, rename.

        Raises :class:`ErrApplyDiffFallback` when there is no parent or the parent has no
        ``root/``; the wrapper then applies through the naive path instead.

        Hazard kept from the reference: the new root's files are hard links to the parent's, so
        a hard-link entry to an inherited file sets its mode, owner, xattrs and times on the
        **parent's** inode too. Each such entry is logged as a warning (and listed in
        ``last_apply_warnings``); with ``overlay.safe_apply`` the file is copied first instead.
        """
        check_layer_id(layer_id)
        if not parent:
            raise ErrApplyDiffFallback()
        check_layer_id(parent, "parent id")
        parent_root = os.path.join(self.dir(parent), "root")
        try:
            os.stat(parent_root)
        except OSError:
            raise ErrApplyDiffFallback() from None
        d = self.dir(layer_id)
        tmp_root = temp_dir(d, "tmproot")
        try:
            copy_dir(parent_root, tmp_root, COPY_HARDLINK)
            warnings: List[str] = []
            self.last_apply_warnings = warnings
            size = archive.apply_uncompressed_layer(
                tmp_root, stream, archive.TarOptions(self.uid_maps, self.gid_maps, shared_inodes=True,
                                                     safe_apply=self.safe_apply, warnings=warnings))
            for warning in warnings:
                log.warning("ApplyDiff %s: %s", layer_id, warning)
            root = os.path.join(d, "root")
            try:
                os.rename(tmp_root, root)
            except OSError as err:
                raise LinkError("rename", tmp_root, root, err.errno) from None
        except BaseException:
            with _signals_deferred():  # a second Ctrl-C/SIGTERM must not cut the clean-up short
                try:
                    remove_all(tmp_root)
                except OSError:
                    pass
            raise
        for name in ("upper", "work", "merged", "lower-id"):
            try:
                remove_all(os.path.join(d, name))
            except OSError:
                pass
        return size


class MountError(GoError):
    """``error creating overlay mount to <merged>: <errno text>``: a ``fmt.Errorf`` in Get, so a
    plain Go error with no errno (``os.IsNotExist`` is false even for a missing lowerdir). The
    mount's :class:`SyscallError` is kept as ``wrapped`` for evidence."""


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM held back (delivered after) while a clean-up runs."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, OSError, ValueError):  # pragma: no cover
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _perm_bits(mode: int) -> int:
    # os.FileMode -> syscall mode: permission plus setuid/setgid/sticky, no type bits.
    return stat.S_IMODE(mode)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as err:
        raise PathError("stat", path, err.errno) from None


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as err:
        raise PathError("lstat", path, err.errno) from None


def _read_file_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise PathError("open", path, err.errno) from None


def _read_file(path: str) -> str:
    # Used verbatim (no trimming), as the reference does.
    return os.fsdecode(_read_file_bytes(path))


def _write_file(path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError as err:
        raise PathError("open", path, err.errno) from None
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


register(DRIVER_NAME, init)
