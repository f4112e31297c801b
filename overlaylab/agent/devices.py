"""May the lab format this real block device? (``overlaylab run --allow-mkfs`` on a remote host)

A device an inventory names for a profile (``overlaylab_disks: {xfs: /dev/sdb}``) is refused
when it is in use — mounted (itself or one of its partitions: the ``major:minor`` or the source
of a line of ``/proc/self/mountinfo``), a swap area (``/proc/swaps``), or held by another
device (``/sys/class/block/NAME/holders``: LVM, dm-crypt, md) — or when it carries a signature
the lab did not write: a partition table, or a filesystem whose label is not
:data:`~overlaylab.agent.recipes.LAB_LABEL` (``blkid -p``, which probes the device itself,
not blkid's cache; util-linux ``blkid(8)``). An empty device, or one the lab formatted before,
is fine.

Standard library only: this runs on the target.
"""
from __future__ import annotations

import os
import stat
from typing import Dict, List, Optional, Set, Tuple

from .recipes import LAB_LABEL
from .shell import run


def _devnums(name: str) -> Set[Tuple[int, int]]:
    """``(major, minor)`` of block device ``name`` and of its partitions, from sysfs."""
    out: Set[Tuple[int, int]] = set()
    base = "/sys/class/block/" + name
    for d in [base] + [os.path.join(base, e) for e in _listdir(base)]:
        try:
            with open(os.path.join(d, "dev")) as f:
                major, minor = f.read().strip().split(":")
            out.add((int(major), int(minor)))
        except (OSError, ValueError):
            continue
    return out


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _mounted(device: str, devnums: Set[Tuple[int, int]]) -> Optional[str]:
    """The mountpoint of the first mount of ``device`` (or a partition of it), if any."""
    real = os.path.realpath(device)
    try:
        with open("/proc/self/mountinfo", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        try:
            major, minor = (int(x) for x in fields[2].split(":"))
            source = fields[fields.index("-") + 2]
        except (IndexError, ValueError):
            continue
        if (major, minor) in devnums or (source.startswith("/dev/") and os.path.realpath(source) == real):
            return fields[4]
    return None


def _swap(devnums: Set[Tuple[int, int]]) -> bool:
    try:
        with open("/proc/swaps") as f:
            paths = [line.split()[0] for line in f.read().splitlines()[1:] if line.strip()]
    except OSError:
        return False
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) in devnums:
            return True
    return False


def blkid(device: str) -> Dict[str, str]:
    """What ``blkid -p -o export`` finds on ``device`` (TYPE, LABEL, PTTYPE, ...); empty when
    there is no signature (status 2)."""
    res = run(["blkid", "-p", "-o", "export", device], timeout=60)
    out: Dict[str, str] = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def device_problem(device: str) -> Optional[str]:
    """Why the lab must not mkfs ``device`` (one line), or None if it may."""
    try:
        st = os.stat(device)
    except OSError as err:
        return "%s: %s" % (device, err.strerror)
    if not stat.S_ISBLK(st.st_mode):
        return "%s is not a block device" % device
    name = os.path.basename(os.path.realpath("/sys/dev/block/%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))))
    devnums = _devnums(name) | {(os.major(st.st_rdev), os.minor(st.st_rdev))}
    where = _mounted(device, devnums)
    if where:
        return "%s is mounted (on %s): the lab formats only unused disks" % (device, where)
    if _swap(devnums):
        return "%s is in use as swap" % device
    for d in [name] + [e for e in _listdir("/sys/class/block/" + name) if e.startswith(name)]:
        holders = _listdir("/sys/class/block/%s/holders" % d)
        if holders:
            return "%s is in use by %s (holders of %s)" % (device, ", ".join(sorted(holders)), d)
    found = blkid(device)
    if found.get("PTTYPE"):
        return "%s has a %s partition table: the lab formats only whole unused disks" % (device, found["PTTYPE"])
    if found.get("TYPE") and found.get("LABEL") != LAB_LABEL:
        return "%s holds a %s filesystem labelled %r, not one the lab made (label %r)" % (
            device, found["TYPE"], found.get("LABEL", ""), LAB_LABEL)
    return None
