"""Make a profile's backing filesystem for real, record what was made, and always tear it down.

``make_backing_fs(profile, workdir, device=None)`` is the executor for the recipes that
:mod:`overlaylab.agent.profiles` builds as data:

- block, on the host: sparse image in ``workdir`` -> ``losetup --find --show`` -> mkfs ->
  mount; in a VM: ``device="/dev/vdb"`` -> mkfs on it -> mount.
- tmpfs: mount a tmpfs of the profile's size.
- overlay: make the base profile, put ``lower/ upper/ work/`` on it, mount an overlay on
  ``merged/`` and yield ``merged/var/lib/docker`` (the docker-in-docker layout).

Each step that ran is appended to ``BackingFs.recipe`` as data (argv, or mount source/type/
options); ``BackingFs.info`` holds what was *really* made (``dumpe2fs -h``, ``xfs_info``,
``btrfs filesystem show``, the mountinfo line, statfs magic, df numbers). A mkfs or mount
failure raises :class:`BackingFsUnavailable`, which a caller turns into an ``UNSUPPORTED``
outcome; teardown (unmount everything below, deepest first, lazily if busy; ``losetup -d``;
remove the image) runs on every exit path, KeyboardInterrupt included.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from .. import mountutil
from .procutil import signals_deferred
from ..graphdriver.fsmagic import LAB_FS_NAMES, statfs_magic
from .profiles import FsProfile
from .recipes import MountSpec, losetup_argv, mkfs_argv, mount_spec, overlay_mount_spec, truncate_argv
from .shell import CmdResult, KernelLogCursor, run
from .timings import Timings

log = logging.getLogger("overlaylab.agent.backingfs")

MKFS_TIMEOUT = 300.0


class BackingFsUnavailable(Exception):
    """The environment could not provide the profile's filesystem (an UNSUPPORTED cell).

    ``step`` says where it failed: ``"image"``, ``"losetup"``, ``"device"`` (a host's disk the
    lab refused to format), ``"mkfs"``, ``"mount"`` or ``"prepare"``; ``stderr`` is the tool's error output or the errno text; ``dmesg`` the
    kernel log lines logged during a failed mount; ``recipe``/``info`` what had been done and
    learnt up to the failure.
    """

    def __init__(self, profile: str, step: str, stderr: str, dmesg: Optional[List[str]] = None,
                 recipe: Optional[List[Dict[str, Any]]] = None, info: Optional[Dict[str, Any]] = None,
                 errno: Optional[int] = None):
        self.profile = profile
        self.step = step
        self.stderr = stderr.strip()
        self.dmesg = list(dmesg or [])
        self.recipe = list(recipe or [])
        self.info = dict(info or {})
        self.errno = errno
        msg = "backing fs %r unavailable: %s failed: %s" % (profile, step, self.stderr or "(no output)")
        if self.dmesg:
            msg += " [dmesg: %s]" % " | ".join(self.dmesg[-5:])
        super().__init__(msg)

    @property
    def infrastructure(self) -> bool:
        """True when the failure is the lab's (no image space, no loop device, a real disk it
        must not format), not the kernel's."""
        return self.step in ("image", "losetup", "device")

    def to_dict(self) -> Dict[str, Any]:
        return {"profile": self.profile, "step": self.step, "stderr": self.stderr, "dmesg": self.dmesg,
                "errno": self.errno, "recipe": self.recipe, "info": self.info}


@dataclass
class BackingFs:
    """A backing filesystem while it exists (inside ``make_backing_fs``)."""

    profile: FsProfile
    kind: str
    root: str                          # private directory holding image, mountpoints, layers
    mountpoint: str                    # where the driver home's parent lives
    device: Optional[str] = None       # loop device or given disk (block kinds)
    image: Optional[str] = None        # the sparse image file (host block kinds)
    recipe: List[Dict[str, Any]] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)
    base: Optional["BackingFs"] = None  # overlay: the fs holding lower/upper/work
    teardown_log: List[str] = field(default_factory=list)
    #: seconds per set-up step: image, losetup, mkfs, inspect, mount (:mod:`overlaylab.agent.timings`)
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "profile": self.profile.name, "kind": self.kind, "mountpoint": self.mountpoint,
            "device": self.device, "image": self.image, "recipe": list(self.recipe), "info": dict(self.info),
            "base": self.base.to_dict() if self.base else None,
        }


# --- small executors that record -------------------------------------------------------

def _record_cmd(recipe: List[Dict[str, Any]], res: CmdResult, step: str) -> None:
    recipe.append({"op": "run", "step": step, "argv": res.argv, "returncode": res.returncode,
                   "duration": round(res.duration, 3)})


def _do_mount(profile: FsProfile, spec: MountSpec, recipe: List[Dict[str, Any]],
              info: Dict[str, Any]) -> None:
    entry = spec.to_dict()
    recipe.append(entry)
    with KernelLogCursor() as klog:
        try:
            mountutil.mount(spec.source, spec.target, spec.fstype, spec.flags, spec.data or None)
        except OSError as err:
            dmesg = klog.read_new()
            entry["error"] = str(err)
            entry["dmesg"] = dmesg
            raise BackingFsUnavailable(profile.name, "mount", str(err), dmesg=dmesg, recipe=recipe,
                                       info=info, errno=err.errno) from None
        entry["dmesg"] = klog.read_new()


# --- what was really made ---------------------------------------------------------------

def _parse_kv_numbers(text: str, key: str) -> Optional[int]:
    m = re.search(r"\b%s=(\d+)" % re.escape(key), text)
    return int(m.group(1)) if m else None


def inspect_device(fstype: str, device: str) -> Dict[str, Any]:
    """Read back the on-disk parameters of a fresh filesystem on ``device`` (before mounting).

    ext4: ``dumpe2fs -h`` (+ the feature list and inode count); xfs: ``xfs_info`` (+ ftype, crc);
    btrfs: ``btrfs filesystem show``. Failures are recorded, never raised.
    """
    out: Dict[str, Any] = {}
    if fstype in ("ext2", "ext3", "ext4"):
        res = run(["dumpe2fs", "-h", device], timeout=60)
        out["dumpe2fs"] = res.stdout if res.ok else res.stderr
        m = re.search(r"^Filesystem features:\s*(.*)$", res.stdout, re.M)
        if m:
            out["ext4_features"] = m.group(1).split()
            out["filetype"] = "filetype" in out["ext4_features"]
        m = re.search(r"^Inode count:\s*(\d+)", res.stdout, re.M)
        if m:
            out["inode_count"] = int(m.group(1))
        m = re.search(r"^Block count:\s*(\d+)", res.stdout, re.M)
        if m:
            out["block_count"] = int(m.group(1))
    elif fstype == "xfs":
        res = run(["xfs_info", device], timeout=60)
        out["xfs_info"] = res.stdout if res.ok else res.stderr
        text = res.stdout
        if res.ok:
            out["xfs"] = {k: _parse_kv_numbers(text, k) for k in ("ftype", "crc", "finobt", "reflink", "bsize", "isize")}
    elif fstype == "btrfs":
        res = run(["btrfs", "filesystem", "show", device], timeout=60)
        out["btrfs_show"] = res.stdout if res.ok else res.stderr
    return out


def inspect_mount(path: str) -> Dict[str, Any]:
    """The live facts of the mount under ``path``: mountinfo line, statfs magic, df numbers
    (and ``df -k`` / ``df -k -i`` as GNU df prints them, from the same statvfs: no exec)."""
    out: Dict[str, Any] = {}
    m = None
    try:
        real = os.path.realpath(path)
        candidates = [m for m in mountutil.mountinfo()
                      if real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")]
        if candidates:
            m = max(candidates, key=lambda m: (len(m.mountpoint), m.mount_id))
            out["mountinfo"] = m.line
            out["mount"] = {"mountpoint": m.mountpoint, "fstype": m.fstype, "source": m.source,
                            "options": m.options, "super_options": m.super_options}
    except OSError as err:
        out["mountinfo_error"] = str(err)
    try:
        magic = statfs_magic(path)
        out["statfs_magic"] = "0x%x" % magic
        out["fs_name"] = LAB_FS_NAMES.get(magic, "<unknown>")
    except OSError as err:
        out["statfs_error"] = str(err)
    try:
        st = os.statvfs(path)
        out["df"] = {"bsize": st.f_frsize, "blocks": st.f_blocks, "bfree": st.f_bfree, "bavail": st.f_bavail,
                     "files": st.f_files, "ffree": st.f_ffree, "size_mib": st.f_blocks * st.f_frsize // (1 << 20)}
        if m is not None:
            out["df_i"] = df_text(st, m, inodes=True)
            out["df_k"] = df_text(st, m, inodes=False)
    except OSError as err:
        out["df_error"] = str(err)
    if "df_k" not in out:  # no mount entry or no statvfs: df's own words
        for key, argv in (("df_i", ["df", "-k", "-i", path]), ("df_k", ["df", "-k", path])):
            res = run(argv, timeout=30)
            out[key] = (res.stdout if res.ok else res.stderr).strip()
    return out


def _percent(used: int, avail: int) -> str:
    """df's Use%: used of (used + available), rounded up; ``-`` when both are 0."""
    total = used + avail
    return "-" if total == 0 else "%d%%" % (-(-used * 100 // total))


def df_text(st: os.statvfs_result, mount: mountutil.MountInfo, inodes: bool) -> str:
    """What GNU ``df -k [-i] PATH`` prints for the mount ``mount`` with statvfs ``st``: a header
    and one row, each column as wide as its widest cell (at least its minimum: 14 for the
    source, 5 for numbers, 4 for percentages), right-aligned but for the source and the mount
    point, the last column unpadded (coreutils ``src/df.c``: ``field_data``, ``print_table``,
    ``get_dev``). A fs without inode counts (btrfs: ``f_files`` 0) shows 0s and ``-``."""
    if inodes:
        total, free = st.f_files, st.f_ffree
        used = total - free
        head = ["Filesystem", "Inodes", "IUsed", "IFree", "IUse%", "Mounted on"]
        row = [mount.source, str(total), str(used), str(free), _percent(used, free), mount.mountpoint]
    else:
        kib = st.f_frsize / 1024.0
        used_blocks = st.f_blocks - st.f_bfree
        size, used, avail = (int(-(-n * kib // 1)) for n in (st.f_blocks, used_blocks, st.f_bavail))
        head = ["Filesystem", "1K-blocks", "Used", "Available", "Use%", "Mounted on"]
        row = [mount.source, str(size), str(used), str(avail), _percent(used_blocks, st.f_bavail), mount.mountpoint]
    minimum = [14, 5, 5, 5, 4, 0]
    widths = [max(w, len(h), len(c)) for w, h, c in zip(minimum, head, row)]

    def line(cells: List[str]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:5], widths[1:5])]
        return " ".join(out + [cells[5]])
    return line(head) + "\n" + line(row)


def _host_fs(path: str) -> Dict[str, Any]:
    # The lab records the host filesystem under its image files (kdevops: it changes results).
    try:
        magic = statfs_magic(path)
        return {"statfs_magic": "0x%x" % magic, "fs_name": LAB_FS_NAMES.get(magic, "<unknown>")}
    except OSError as err:
        return {"error": str(err)}


# --- teardown ---------------------------------------------------------------------------

def unmount_tree(root: str, attempts: int = 5) -> List[str]:
    """Unmount everything at or below ``root``, deepest first, lazily (``MNT_DETACH``) if busy,
    repeated until nothing is left. Returns what it did.

    The order is the reverse of the mount table's: a mount is always listed after the mount
    it sits on, and after the mounts it was made from (an overlay after the fs holding its
    layers), so undoing the list backwards unmounts children and users before what they use.
    """
    done: List[str] = []
    root = os.path.realpath(root)
    for _ in range(attempts):
        mounts = mountutil.mounts_under(root)
        if not mounts:
            break
        for m in reversed(mounts):
            try:
                mountutil.umount(m.mountpoint)
                done.append("umount %s" % m.mountpoint)
            except OSError as err:
                try:
                    mountutil.umount(m.mountpoint, mountutil.MNT_DETACH)
                    done.append("umount -l %s (%s)" % (m.mountpoint, err))
                except OSError as err2:
                    done.append("umount %s failed: %s" % (m.mountpoint, err2))
    return done


def loop_devices_for(image: str) -> List[str]:
    """Loop devices backed by ``image`` (``losetup -j``)."""
    res = run(["losetup", "-j", image], timeout=30)
    return [line.split(":", 1)[0] for line in res.stdout.splitlines() if ":" in line]


def detach_loop(dev: str, attempts: int = 10) -> str:
    """``losetup -d DEV``, retried while the kernel calls the device busy (a just-unmounted
    filesystem can hold it a moment); returns the teardown log line."""
    import time
    res = None
    for i in range(attempts):
        res = run(["losetup", "-d", dev], timeout=60)
        if res.ok:
            return "losetup -d %s -> 0%s" % (dev, " (try %d)" % (i + 1) if i else "")
        if not os.path.exists("/sys/block/%s/loop/backing_file" % os.path.basename(dev)):
            return "losetup -d %s -> %s, already free" % (dev, res.returncode)
        time.sleep(0.2 * (i + 1))
    return "losetup -d %s -> %s %s (gave up after %d tries)" % (dev, res.returncode, res.stderr.strip(), attempts)


def _teardown_steps(bfs_log: List[str], steps: List[Any]) -> None:
    """Run every teardown step even if some fail or are interrupted; re-raise an interrupt last."""
    interrupted: Optional[BaseException] = None
    for step in steps:
        try:
            step()
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupted = interrupted or exc
        except Exception as exc:  # noqa: BLE001 - teardown must go on
            bfs_log.append("teardown step failed: %r" % (exc,))
            log.warning("backing fs teardown step failed: %r", exc)
    if interrupted is not None:
        raise interrupted


# --- the context manager ----------------------------------------------------------------

@contextlib.contextmanager
def make_backing_fs(profile: FsProfile, workdir: str, device: Optional[str] = None) -> Iterator[BackingFs]:
    """Make ``profile``'s filesystem under ``workdir`` (or on ``device``), yield a :class:`BackingFs`.

    ``device`` (e.g. ``/dev/vdb`` in a VM) replaces the sparse image + loop device of block
    profiles and is used whole; tmpfs ignores it; overlay passes it to its base profile.
    Raises :class:`BackingFsUnavailable` when mkfs or mount fails (after tearing down).
    """
    os.makedirs(workdir, exist_ok=True)
    root = tempfile.mkdtemp(prefix=profile.name + ".", dir=os.path.realpath(workdir))
    bfs = BackingFs(profile=profile, kind=profile.kind, root=root, mountpoint=os.path.join(root, "mnt"))
    bfs.info["profile"] = profile.to_dict()
    bfs.info["host_fs"] = _host_fs(root)
    stack = contextlib.ExitStack()
    loop_device: List[str] = []

    def _detach_loops() -> None:
        for dev in loop_device:
            bfs.teardown_log.append(detach_loop(dev))
        if bfs.image:
            for dev in loop_devices_for(bfs.image):  # anything a scenario or a race left behind
                bfs.teardown_log.append(detach_loop(dev) + " (leftover)")

    def _unmount() -> None:
        bfs.teardown_log.extend(unmount_tree(root))

    def _remove_root() -> None:
        if mountutil.mounts_under(root):
            # Never rmtree across a mount that would not go away: it would delete its contents.
            bfs.teardown_log.append("left %s in place: still mounted" % root)
            log.error("backing fs %s: mounts under %s remain after teardown", profile.name, root)
            return
        shutil.rmtree(root, ignore_errors=True)

    try:
        try:
            if profile.kind == "block":
                _make_block(bfs, device, loop_device)
            elif profile.kind == "tmpfs":
                os.makedirs(bfs.mountpoint)
                with bfs.timings.phase("mount"):
                    _do_mount(profile, mount_spec(profile, "tmpfs", bfs.mountpoint), bfs.recipe, bfs.info)
                with bfs.timings.phase("inspect"):
                    bfs.info.update(inspect_mount(bfs.mountpoint))
            elif profile.kind == "overlay":
                _make_overlay(bfs, device, stack)
            else:  # pragma: no cover - profiles.py validates kinds
                raise ValueError("unknown profile kind %r" % profile.kind)
        except BackingFsUnavailable as err:
            if err.profile != profile.name:  # the base of an overlay profile failed
                err.recipe = list(bfs.recipe) + [{"op": "base", "profile": err.profile, "recipe": err.recipe}]
                err.info = dict(bfs.info, base=err.info)
            else:
                err.recipe = list(bfs.recipe)
                err.info = dict(bfs.info)
            raise
        yield bfs
    finally:
        # Inner mounts first (anything under the merged view or the mountpoint), then the
        # base of an overlay profile (its own context), then loop devices and files. Stop
        # signals wait until it is done: a Ctrl-C during `losetup -d` would otherwise kill the
        # detach and leak the loop device (they are delivered, and unwind, right after).
        with signals_deferred():
            _teardown_steps(bfs.teardown_log, [_unmount, stack.close, _unmount, _detach_loops, _remove_root])


def _make_block(bfs: BackingFs, device: Optional[str], loop_device: List[str]) -> None:
    profile = bfs.profile
    if device is None:
        image = os.path.join(bfs.root, "fs.img")
        bfs.image = image
        bfs.recipe.append({"op": "truncate", "argv": truncate_argv(image, profile.size_mib),
                           "path": image, "size_mib": profile.size_mib})
        try:
            with bfs.timings.phase("image"), open(image, "wb") as f:
                f.truncate(profile.size_mib << 20)
        except OSError as err:
            raise BackingFsUnavailable(profile.name, "image", str(err), errno=err.errno) from None
        # an attached device is always recorded, so always detached
        with signals_deferred(), bfs.timings.phase("losetup"):
            res = run(losetup_argv(image), timeout=60)
            if res.ok and res.stdout.strip():
                loop_device.append(res.stdout.strip().splitlines()[-1])
        _record_cmd(bfs.recipe, res, "losetup")
        if not res.ok or not res.stdout.strip():
            raise BackingFsUnavailable(profile.name, "losetup", res.stderr or res.stdout)
        device = loop_device[-1]
        bfs.recipe[-1]["device"] = device
    bfs.device = device
    with bfs.timings.phase("mkfs"):
        res = run(mkfs_argv(profile, device), timeout=MKFS_TIMEOUT)
    _record_cmd(bfs.recipe, res, "mkfs")
    bfs.info["mkfs_output"] = (res.stdout + res.stderr).strip()
    if not res.ok:
        raise BackingFsUnavailable(profile.name, "mkfs", res.stderr or res.stdout)
    with bfs.timings.phase("inspect"):
        bfs.info.update(inspect_device(profile.fstype, device))
    os.makedirs(bfs.mountpoint)
    with bfs.timings.phase("mount"):
        _do_mount(profile, mount_spec(profile, device, bfs.mountpoint), bfs.recipe, bfs.info)
    with bfs.timings.phase("inspect"):
        bfs.info.update(inspect_mount(bfs.mountpoint))


def _make_overlay(bfs: BackingFs, device: Optional[str], stack: contextlib.ExitStack) -> None:
    profile = bfs.profile
    base_profile = profile.base_profile
    if base_profile is None:
        raise ValueError("overlay profile %r has no resolved base profile (use load_profiles)" % profile.name)
    base = stack.enter_context(make_backing_fs(base_profile, bfs.root, device))
    bfs.base = base
    for step, seconds in base.timings.items():
        bfs.timings.add(step, seconds)
    bfs.device = base.device
    bfs.recipe.append({"op": "base", "profile": base_profile.name, "recipe": base.recipe})
    layers = base.mountpoint
    lower, upper, work = (os.path.join(layers, d) for d in ("lower", "upper", "work"))
    merged = os.path.join(bfs.root, "merged")
    try:
        # The lower is the "image": it already has /var/lib, as a container rootfs would.
        os.makedirs(os.path.join(lower, "var", "lib"))
        os.makedirs(upper)
        os.makedirs(work)
        os.makedirs(merged)
    except OSError as err:
        raise BackingFsUnavailable(profile.name, "prepare", str(err), errno=err.errno) from None
    bfs.recipe.append({"op": "mkdir", "paths": [os.path.join(lower, "var", "lib"), upper, work, merged]})
    with bfs.timings.phase("mount"):
        _do_mount(profile, overlay_mount_spec([lower], upper, work, merged, profile.mount_options),
                  bfs.recipe, bfs.info)
    bfs.mountpoint = os.path.join(merged, "var", "lib", "docker")
    os.makedirs(bfs.mountpoint)
    bfs.recipe.append({"op": "mkdir", "paths": [bfs.mountpoint]})
    with bfs.timings.phase("inspect"):
        bfs.info.update(inspect_mount(bfs.mountpoint))
    bfs.info["base"] = base.info
    bfs.info["layers"] = {"lower": lower, "upper": upper, "work": work, "merged": merged}
