"""The recipes a profile stands for, as plain data: mkfs/losetup argv, mounts, overlay options.

Following containerd's overlay snapshotter (``snapshots/overlay/overlay.go``, ``mounts()``),
every command and mount is built here by pure functions — argv lists, :class:`MountSpec`
(source, target, type, flags, option string) — and performed elsewhere
(:mod:`overlaylab.agent.backingfs`, :mod:`overlaylab.agent.probes`), which record the same data
as evidence. Nothing in this module touches the system.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..mountutil import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY
from .profiles import FsProfile


# mount(8) options that are mount(2) flags rather than filesystem data.
_FLAG_OPTIONS = {
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
    "sync": (0x10, True), "async": (0x10, False),
    "noatime": (0x400, True), "atime": (0x400, False),
    "nodiratime": (0x800, True), "diratime": (0x800, False),
    "relatime": (1 << 21, True), "norelatime": (1 << 21, False),
    "strictatime": (1 << 24, True),
    "lazytime": (1 << 25, True), "nolazytime": (1 << 25, False),
    "defaults": (0, True),
}


def split_mount_options(options: str) -> Tuple[int, str]:
    """Split a mount(8)-style option string into mount(2) ``flags`` and the fs ``data`` string."""
    flags, data = 0, []
    for opt in (o.strip() for o in options.split(",")):
        if not opt:
            continue
        if opt in _FLAG_OPTIONS:
            bit, on = _FLAG_OPTIONS[opt]
            flags = (flags | bit) if on else (flags & ~bit)
        else:
            data.append(opt)
    return flags, ",".join(data)


def join_options(*parts: str) -> str:
    return ",".join(p for p in (s.strip(",") for s in parts) if p)


@dataclass(frozen=True)
class MountSpec:
    """One mount as data: what ``mount -t <fstype> -o <options> <source> <target>`` would do."""

    source: str
    target: str
    fstype: str
    options: str = ""

    @property
    def flags(self) -> int:
        return split_mount_options(self.options)[0]

    @property
    def data(self) -> str:
        return split_mount_options(self.options)[1]

    def argv(self) -> List[str]:
        """The equivalent mount(8) command (for reproduction commands in bug bundles)."""
        argv = ["mount", "-t", self.fstype]
        if self.options:
            argv += ["-o", self.options]
        return argv + [self.source, self.target]

    def command(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv())

    def to_dict(self) -> Dict[str, Any]:
        return {"op": "mount", "source": self.source, "target": self.target, "fstype": self.fstype,
                "options": self.options, "flags": self.flags, "data": self.data, "command": self.command()}


#: the label every filesystem the lab makes carries (xfs allows 12 characters), so that a real
#: disk named for ``--allow-mkfs`` can be told apart from one holding someone's data
LAB_LABEL = "overlaylab"
#: the mkfs programs whose ``-L`` sets that label
_LABELLED_MKFS = ("mkfs.ext2", "mkfs.ext3", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs")


def mkfs_argv(profile: FsProfile, device: str) -> List[str]:
    """The mkfs command for ``profile`` on ``device`` (block profiles only), labelled
    :data:`LAB_LABEL` when the program is one of the lab's and the profile sets no label."""
    if profile.kind != "block":
        raise ValueError("profile %r (%s) has no mkfs step" % (profile.name, profile.kind))
    options = list(profile.mkfs_options)
    if profile.mkfs and os.path.basename(profile.mkfs[0]) in _LABELLED_MKFS and "-L" not in options:
        options += ["-L", LAB_LABEL]
    return list(profile.mkfs) + options + [device]


def truncate_argv(image: str, size_mib: int) -> List[str]:
    """The sparse-image step, as the equivalent command (executed with ``os.truncate``)."""
    return ["truncate", "-s", "%dM" % size_mib, image]


def losetup_argv(image: str) -> List[str]:
    return ["losetup", "--find", "--show", image]


def mount_spec(profile: FsProfile, source: str, target: str) -> MountSpec:
    """How ``profile``'s filesystem is mounted (block and tmpfs kinds).

    tmpfs gets ``size=<size_mib>m`` ahead of the profile's own options.
    """
    if profile.kind == "tmpfs":
        return MountSpec("tmpfs" if source in ("", None) else source, target, "tmpfs",
                         join_options("size=%dm" % profile.size_mib, profile.mount_options))
    if profile.kind == "block":
        return MountSpec(source, target, profile.fstype, profile.mount_options)
    raise ValueError("use overlay_mount_spec for overlay profile %r" % profile.name)


def overlay_mount_data(lowerdirs: Sequence[str], upperdir: Optional[str] = None,
                       workdir: Optional[str] = None, extra: str = "") -> str:
    """The overlay data string: ``lowerdir=top:...:bottom[,upperdir=..,workdir=..][,extra]``."""
    opts = ["lowerdir=" + ":".join(lowerdirs)]
    if upperdir is not None:
        opts.append("upperdir=" + upperdir)
    if workdir is not None:
        opts.append("workdir=" + workdir)
    return join_options(",".join(opts), extra)


def overlay_mount_spec(lowerdirs: Sequence[str], upperdir: Optional[str], workdir: Optional[str],
                       target: str, extra: str = "") -> MountSpec:
    return MountSpec("overlay", target, "overlay", overlay_mount_data(lowerdirs, upperdir, workdir, extra))


def reproduce_commands(profile: FsProfile, device: str, mountpoint: str) -> List[str]:
    """Shell lines that remake ``profile`` by hand on ``device`` (a bug bundle's repro)."""
    if profile.kind == "block":
        return [" ".join(shlex.quote(a) for a in mkfs_argv(profile, device)),
                "mkdir -p " + shlex.quote(mountpoint),
                mount_spec(profile, device, mountpoint).command()]
    if profile.kind == "tmpfs":
        return ["mkdir -p " + shlex.quote(mountpoint), mount_spec(profile, "tmpfs", mountpoint).command()]
    base = profile.base_profile
    lines = reproduce_commands(base, device, "BASE") if base else []
    lines += ["mkdir -p BASE/lower/var/lib BASE/upper BASE/work MERGED",
              overlay_mount_spec(["BASE/lower"], "BASE/upper", "BASE/work", "MERGED",
                                 profile.mount_options).command(),
              "mkdir -p MERGED/var/lib/docker"]
    return lines
