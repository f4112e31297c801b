"""Backing-filesystem magic numbers and ``statfs(2)`` (moby v1.10.3
``daemon/graphdriver/driver_linux.go`` ``GetFSMagic``, ``FsNames``)."""
from __future__ import annotations

import ctypes
import os

from ..goerrors import SyscallError

FS_MAGIC_UNSUPPORTED = 0x00000000
FS_MAGIC_AUFS = 0x61756673
FS_MAGIC_BTRFS = 0x9123683E
FS_MAGIC_CRAMFS = 0x28CD3D45
FS_MAGIC_EXTFS = 0x0000EF53
FS_MAGIC_F2FS = 0xF2F52010
FS_MAGIC_GPFS = 0x47504653
FS_MAGIC_JFFS2 = 0x000072B6
FS_MAGIC_JFS = 0x3153464A
FS_MAGIC_NFS = 0x00006969
FS_MAGIC_RAMFS = 0x858458F6
FS_MAGIC_REISERFS = 0x52654973
FS_MAGIC_SMB = 0x0000517B
FS_MAGIC_SQUASHFS = 0x73717368
FS_MAGIC_TMPFS = 0x01021994
FS_MAGIC_VXFS = 0xA501FCF5
FS_MAGIC_XFS = 0x58465342
FS_MAGIC_ZFS = 0x2FC12FC1
# Not in 1.10.3's FsNames: known here only so the lab can name what it sees.
FS_MAGIC_OVERLAY = 0x794C7630
FS_MAGIC_ECRYPTFS = 0xF15F
FS_MAGIC_FUSE = 0x65735546

# The reference's FsNames table at v1.10.3, exactly: overlay/ecryptfs/fuse are absent.
FS_NAMES = {
    FS_MAGIC_AUFS: "aufs",
    FS_MAGIC_BTRFS: "btrfs",
    FS_MAGIC_CRAMFS: "cramfs",
    FS_MAGIC_EXTFS: "extfs",
    FS_MAGIC_F2FS: "f2fs",
    FS_MAGIC_GPFS: "gpfs",
    FS_MAGIC_JFFS2: "jffs2",
    FS_MAGIC_JFS: "jfs",
    FS_MAGIC_NFS: "nfs",
    FS_MAGIC_RAMFS: "ramfs",
    FS_MAGIC_REISERFS: "reiserfs",
    FS_MAGIC_SMB: "smb",
    FS_MAGIC_SQUASHFS: "squashfs",
    FS_MAGIC_TMPFS: "tmpfs",
    FS_MAGIC_VXFS: "vxfs",
    FS_MAGIC_XFS: "xfs",
    FS_MAGIC_ZFS: "zfs",
    FS_MAGIC_UNSUPPORTED: "unsupported",
}

# Names the lab uses for magics the reference did not know (later releases' names).
LAB_FS_NAMES = dict(FS_NAMES)
LAB_FS_NAMES.update({FS_MAGIC_OVERLAY: "overlayfs", FS_MAGIC_ECRYPTFS: "ecryptfs", FS_MAGIC_FUSE: "fuse"})


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type is the first long; the rest only sizes the buffer.
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


# libc as the interpreter already has it loaded (dlopen(NULL)): ctypes.util.find_library would
# run `ldconfig -p`, an exec at every import (~0.1 s in a TCG guest)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]


def statfs_magic(path: str) -> int:
    """``statfs(2)`` f_type of ``path`` (an unsigned 32-bit magic).

    Errors are bare errnos, as ``syscall.Statfs`` returns them (no op, no path in the text).
    """
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        raise SyscallError(ctypes.get_errno())
    return buf.f_type & 0xFFFFFFFF


def get_fs_magic(rootpath: str) -> int:
    """``GetFSMagic`` of 1.10.3: the magic of the **parent** of ``rootpath``."""
    return statfs_magic(os.path.dirname(rootpath.rstrip("/")) or "/")
