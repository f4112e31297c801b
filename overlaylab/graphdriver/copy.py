"""``copyDir`` of the overlay driver (``overlay/copy.go``, spec §2.10) and Go's ``os.RemoveAll``.

Quirks kept on purpose, because the lab exists to show them:

- hard links *inside* the source are not preserved in content mode (each name is copied);
- a **socket** is "copied" with ``mkfifo(st_mode)``, which the kernel rejects with EINVAL, so
  copying a tree that holds a socket fails with ``invalid argument``;
- regular files are opened without ``O_TRUNC``, so copying over an existing longer file leaves
  its tail (the re-Create quirk of §2.3);
- directory times are set when the directory is visited (pre-order), so a non-empty copied
  directory ends with mtime ≈ copy time;
- only ``security.capability`` and ``trusted.overlay.opaque`` xattrs are copied.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import List

from ..goerrors import LinkError, PathError, SyscallError

COPY_HARDLINK = 1

_COPIED_XATTRS = ("security.capability", "trusted.overlay.opaque")
_COPY_CHUNK = 1 << 20


def _sorted_names(path: str) -> List[str]:
    # Go's filepath.Walk sorts names bytewise.
    return sorted(os.listdir(path), key=os.fsencode)


def _copy_regular(src: str, dst: str, mode: int) -> None:
    try:
        fin = os.open(src, os.O_RDONLY)
    except OSError as err:
        raise PathError("open", src, err.errno) from None
    try:
        try:
            fout = os.open(dst, os.O_WRONLY | os.O_CREAT, mode & 0o7777)
        except OSError as err:
            raise PathError("open", dst, err.errno) from None
        try:
            _copy_bytes(fin, fout, src, dst)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _copy_bytes(fin: int, fout: int, src: str, dst: str) -> None:
    copy_range = getattr(os, "copy_file_range", None)
    while True:
        try:
            if copy_range is not None:
                n = copy_range(fin, fout, _COPY_CHUNK)
            else:
                n = os.sendfile(fout, fin, None, _COPY_CHUNK)
        except OSError as err:
            if err.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) and copy_range:
                copy_range = None
                continue
            raise PathError("write", dst, err.errno) from None
        if n == 0:
            return


def _copy_xattr(src: str, dst: str, name: str) -> None:
    try:
        value = os.getxattr(src, name, follow_symlinks=False)
    except OSError as err:
        if err.errno == errno.ENODATA:
            return
        raise SyscallError(err.errno) from None
    try:
        os.setxattr(dst, name, value, follow_symlinks=False)
    except OSError as err:
        raise SyscallError(err.errno) from None


def _copy_entry(src: str, dst: str, st: os.stat_result, flags: int) -> None:
    mode = st.st_mode
    fmt = stat.S_IFMT(mode)
    is_symlink = False
    if fmt == stat.S_IFREG:
        if flags & COPY_HARDLINK:
            try:
                os.link(src, dst)
            except OSError as err:
                raise LinkError("link", src, dst, err.errno) from None
            return
        _copy_regular(src, dst, mode)
    elif fmt == stat.S_IFDIR:
        try:
            os.mkdir(dst, mode & 0o7777)
        except FileExistsError:
            pass
        except OSError as err:
            raise PathError("mkdir", dst, err.errno) from None
    elif fmt == stat.S_IFLNK:
        is_symlink = True
        try:
            target = os.readlink(src)
        except OSError as err:
            raise PathError("readlink", src, err.errno) from None
        try:
            os.symlink(target, dst)
        except OSError as err:
            raise LinkError("symlink", target, dst, err.errno) from None
    elif fmt in (stat.S_IFIFO, stat.S_IFSOCK):
        # The full st_mode goes to mkfifo: for a socket that is S_IFSOCK|S_IFIFO -> EINVAL.
        try:
            os.mkfifo(dst, mode)
        except OSError as err:
            raise SyscallError(err.errno) from None
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        try:
            os.mknod(dst, mode, st.st_rdev)
        except OSError as err:
            raise SyscallError(err.errno) from None
    else:
        raise ValueError("Unknown file type for %s\n" % src)

    try:
        os.lchown(dst, st.st_uid, st.st_gid)
    except OSError as err:
        raise PathError("lchown", dst, err.errno) from None
    for name in _COPIED_XATTRS:
        _copy_xattr(src, dst, name)
    if not is_symlink:
        try:
            os.chmod(dst, mode & 0o7777)
        except OSError as err:
            raise PathError("chmod", dst, err.errno) from None
    try:
        if is_symlink:
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        else:
            os.utime(dst, ns=(max(st.st_atime_ns, 0), max(st.st_mtime_ns, 0)))
    except OSError as err:
        if not (is_symlink and err.errno == errno.ENOSYS):
            raise SyscallError(err.errno) from None


def copy_dir(src_dir: str, dst_dir: str, flags: int = 0) -> None:
    """Replicate ``src_dir`` into ``dst_dir``: pre-order, names sorted bytewise, lstat-based.

    With ``COPY_HARDLINK`` regular files are hard-linked (no metadata steps); everything else
    is a new inode with owner, the two xattrs, mode and times copied. The first error aborts
    and is raised; the partial copy is left for the caller (spec §2.10).
    """
    stack = [(src_dir, dst_dir)]
    while stack:
        src, dst = stack.pop()
        try:
            st = os.lstat(src)
        except OSError as err:
            raise PathError("lstat", src, err.errno) from None
        _copy_entry(src, dst, st, flags)
        if stat.S_ISDIR(st.st_mode):
            try:
                names = _sorted_names(src)
            except OSError as err:
                raise PathError("open", src, err.errno) from None
            # Reversed onto the stack so they are visited in sorted order.
            for name in reversed(names):
                stack.append((os.path.join(src, name), os.path.join(dst, name)))


def remove_all(path: str) -> None:
    """Go's ``os.RemoveAll`` (the unlinkat-based one the reference trace was recorded with).

    Missing is not an error. Children are removed in directory order; on failure the first
    error wins, except that a directory that cannot be removed reports its own ``unlinkat``
    error when nothing below it failed, e.g. ``unlinkat H/id/merged: device or resource busy``
    for a still-mounted overlay.
    """
    try:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno not in (errno.EISDIR, errno.EPERM, errno.EACCES):
            raise PathError("unlinkat", path, err.errno) from None
    err = _remove_dir(path)
    if err is not None:
        raise err


def _remove_dir(path: str):
    # Like Go: recurse into the directory first (through a mount, if one sits here), then rmdir.
    first = None
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return None
    except OSError as err:
        entries = []
        first = PathError("open", path, err.errno)
    for entry in entries:
        child = entry.path
        try:
            os.unlink(child)
            child_err = None
        except FileNotFoundError:
            child_err = None
        except OSError as err:
            if err.errno in (errno.EISDIR, errno.EPERM, errno.EACCES):
                child_err = _remove_dir(child)
            else:
                child_err = PathError("unlinkat", child, err.errno)
        if child_err is not None and first is None:
            first = child_err
    try:
        os.rmdir(path)
        return None
    except FileNotFoundError:
        return None
    except OSError as err:
        return first or PathError("unlinkat", path, err.errno)
