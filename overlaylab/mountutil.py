"""Thin ``mount(2)``/``umount(2)`` wrappers and a ``/proc/self/mountinfo`` reader.

The driver calls the raw syscalls as the reference does (no mount(8), no option parsing);
the lab uses the same helpers for its own scratch mounts so that everything that mounts goes
through one place.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import List, Optional

from .goerrors import SyscallError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_FORCE = 1
MNT_DETACH = 2

# libc as the interpreter already has it loaded (dlopen(NULL)): ctypes.util.find_library would
# run `ldconfig -p`, an exec at every import (~0.1 s in a TCG guest)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _b(value: Optional[str]) -> Optional[bytes]:
    return None if value is None else os.fsencode(value)


def mount(source: str, target: str, fstype: Optional[str], flags: int = 0, data: Optional[str] = None) -> None:
    """``mount(2)``; raises :class:`SyscallError` (bare errno text, as Go's ``syscall.Mount``)."""
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        raise SyscallError(ctypes.get_errno())


def umount(target: str, flags: int = 0) -> None:
    """``umount2(2)``; raises :class:`SyscallError`."""
    if _libc.umount2(_b(target), flags) != 0:
        raise SyscallError(ctypes.get_errno())


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/self/mountinfo``."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mountpoint: str
    options: str
    optional: str
    fstype: str
    source: str
    super_options: str
    line: str


def _unescape(field: str) -> str:
    # mountinfo encodes space, tab, newline and backslash as \ooo octal escapes.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> List[MountInfo]:
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        f = left.split(" ")
        r = right.split(" ")
        mounts.append(MountInfo(
            mount_id=int(f[0]), parent_id=int(f[1]), major_minor=f[2], root=_unescape(f[3]),
            mountpoint=_unescape(f[4]), options=f[5], optional=" ".join(f[6:]),
            fstype=r[0], source=_unescape(r[1]) if len(r) > 1 else "",
            super_options=r[2] if len(r) > 2 else "", line=line,
        ))
    return mounts


def _mountinfo_text() -> str:
    with open("/proc/self/mountinfo", "r", encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def mountinfo() -> List[MountInfo]:
    return parse_mountinfo(_mountinfo_text())


def _escaped(path: str) -> str:
    # how mountinfo writes a path: space, tab, newline and backslash as octal escapes
    # (fs/proc_namespace.c, seq_escape(m, path, " \t\n\\"))
    for ch in "\\ \t\n":
        path = path.replace(ch, "\\%03o" % ord(ch))
    return path


def mounts_under(path: str) -> List[MountInfo]:
    """Mounts at or below ``path``, deepest last in mount order (unmount in reverse). The table
    is parsed only when ``path`` occurs in its text (the usual answer is nothing mounted there):
    a parse of a qemu guest's table costs ~20 ms under TCG, and the lab asks after every cell."""
    text = _mountinfo_text()
    if _escaped(path.rstrip("/")) not in text:
        return []
    prefix = path.rstrip("/") + "/"
    return [m for m in parse_mountinfo(text)
            if m.mountpoint == path.rstrip("/") or m.mountpoint.startswith(prefix)]


def mount_entry(mountpoint: str) -> Optional[MountInfo]:
    """The mount table's first entry for ``mountpoint``, or None; only the line that names it
    is parsed."""
    field = _escaped(mountpoint)
    for line in _mountinfo_text().splitlines():
        if line.split(" ", 5)[4:5] == [field]:
            return parse_mountinfo(line)[0]
    return None


def is_mounted(path: str) -> bool:
    """``mount.Mounted``: an exact mountpoint match in mountinfo."""
    return any(m.mountpoint == path for m in mountinfo())


def unmount_all_under(path: str) -> List[str]:
    """Unmount everything at or below ``path``, deepest first, lazily if busy. Returns what it unmounted."""
    done = []
    for m in reversed(mounts_under(path)):
        try:
            umount(m.mountpoint)
        except OSError:
            try:
                umount(m.mountpoint, MNT_DETACH)
            except OSError:
                continue
        done.append(m.mountpoint)
    return done
