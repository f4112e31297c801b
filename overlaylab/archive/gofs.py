"""Filesystem calls with the semantics (and error texts) of the Go functions the reference
uses: ``os.RemoveAll``, ``system.Chtimes``/``LUtimesNano``/``Lgetxattr`` (moby v1.10.3 ``pkg/system``),
``ioutil.TempDir``, plus the scoped path resolution that stands in for the chroot (docs/reference-behaviour.md#the-tar-layer).
"""
from __future__ import annotations

import errno
import os
import random
import stat
from typing import List, Optional, Tuple

from ..goerrors import PathError, SyscallError
from . import fdwalk

#: ``system.Chtimes`` replaces times outside [epoch, 2^63-1 ns] by the epoch (moby v1.10.3 ``pkg/system/chtimes.go``).
MAX_CHTIMES_NS = (1 << 63) - 1

#: glibc's ``MAXSYMLINKS``-style bound used by Docker's ``FollowSymlinkInScope``.
MAX_SYMLINKS = 255


def sort_names(names: List[str]) -> None:
    """Sort file names bytewise, as Go does (str order differs only for undecodable bytes)."""
    if "".join(names).isascii():
        names.sort()
    else:
        names.sort(key=os.fsencode)


def read_dir_names(path: str, missing_ok: bool = False) -> List[str]:
    """Go's ``readDirNames``: the entries of ``path`` sorted bytewise; errors as
    ``open <path>: …``. With ``missing_ok`` a directory that vanished has no entries."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        if missing_ok:
            return []
        raise PathError("open", path, errno.ENOENT) from None
    except OSError as err:
        raise PathError("open", path, err.errno or errno.EIO) from None
    sort_names(names)
    return names


def _remove(path: str, dir_fd: Optional[int] = None) -> Optional[int]:
    """Go's ``os.Remove`` minus the error wrapping: unlink, else rmdir; the errno to report.
    With ``dir_fd`` the name is relative to that directory (``unlinkat``)."""
    try:
        os.unlink(path, dir_fd=dir_fd)
        return None
    except OSError as err:
        code = err.errno
    try:
        os.rmdir(path, dir_fd=dir_fd)
        return None
    except OSError as err1:
        # rmdir(file) is ENOTDIR on every OS, so any other rmdir error is the real one.
        if err1.errno != errno.ENOTDIR:
            code = err1.errno
    return code


def remove_all(path: str) -> None:
    """``os.RemoveAll``: remove ``path`` and, for a directory, everything below it.

    A missing path is not an error; the first error met is raised (as ``remove <p>: ...``)
    after trying everything else. Symlinks are removed, never followed. Iterative, and every
    call below ``path`` is relative to the descriptor of the directory being emptied, so a
    hostile deeply nested tree can exhaust neither the Python stack nor ``PATH_MAX``.
    """
    code = _remove(path)
    if code is None or code == errno.ENOENT:
        return
    try:
        st = os.lstat(path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise PathError("lstat", path, err.errno) from None
    if not stat.S_ISDIR(st.st_mode):
        raise PathError("remove", path, code)

    first: Optional[OSError] = None
    try:
        fd = os.open(path, fdwalk.DIR_FLAGS)
        try:
            names = os.listdir(fd)
        except BaseException:
            os.close(fd)
            raise
    except FileNotFoundError:
        return
    except OSError as err:
        raise PathError("open", path, err.errno) from None
    stack = fdwalk.DirStack()
    try:
        stack.push([fd], [path], iter(names))
        while stack:
            frame = stack.top()
            top, it, dfd = frame.paths[0], frame.data, frame.fds[0]
            descended = False
            for name in it:
                child = top + "/" + name
                ccode = _remove(name, dfd)
                if ccode is None or ccode == errno.ENOENT:
                    continue
                try:
                    cst = os.lstat(name, dir_fd=dfd)
                except OSError as err:
                    if err.errno not in (errno.ENOENT, errno.ENOTDIR) and first is None:
                        first = PathError("lstat", child, err.errno)
                    continue
                if not stat.S_ISDIR(cst.st_mode):
                    if first is None:
                        first = PathError("remove", child, ccode)
                    continue
                try:
                    cfd = os.open(name, fdwalk.DIR_FLAGS, dir_fd=dfd)
                    try:
                        cnames = os.listdir(cfd)
                    except BaseException:
                        os.close(cfd)
                        raise
                except FileNotFoundError:
                    continue
                except OSError as err:
                    if first is None:
                        first = PathError("open", child, err.errno)
                    continue
                stack.push([cfd], [child], iter(cnames), name)
                descended = True
                break
            if descended:
                continue
            try:
                stack.pop()
            except OSError as err:
                raise first or PathError("open", getattr(err, "filename", None) or top,
                                         err.errno or errno.EIO) from None
            if stack:
                dcode = _remove(frame.name, stack.top().fds[0])
            else:
                dcode = _remove(top)
            if dcode is not None and dcode != errno.ENOENT and first is None:
                first = PathError("remove", top, dcode)
    finally:
        stack.close()
    if first is not None:
        raise first


def _clamp(ns: int) -> int:
    return ns if 0 <= ns <= MAX_CHTIMES_NS else 0


def chtimes(path: str, atime_ns: int, mtime_ns: int, display: Optional[str] = None) -> None:
    """``system.Chtimes``: clamp each time to [epoch, max] (else the epoch), then a
    symlink-following utimes with nanoseconds (``chtimes <path>: ...`` on error)."""
    try:
        os.utime(path, ns=(_clamp(atime_ns), _clamp(mtime_ns)))
    except OSError as err:
        raise PathError("chtimes", display or path, err.errno) from None


def lutimes_nano(path: str, atime_ns: Optional[int], mtime_ns: Optional[int]) -> None:
    """``system.LUtimesNano``: ``utimensat(AT_SYMLINK_NOFOLLOW)``; ``None`` means UTIME_OMIT.

    ``os.utime`` cannot pass UTIME_OMIT, so an omitted time is re-set to its current value.
    Errors are bare errnos (``SyscallError``); ENOSYS is ignored like the reference.
    """
    try:
        if atime_ns is None or mtime_ns is None:
            st = os.lstat(path)
            atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
            mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
        os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    except OverflowError:
        raise SyscallError(errno.EINVAL) from None
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise SyscallError(err.errno or errno.EIO) from None


def lgetxattr(path: str, name: str) -> Optional[bytes]:
    """``system.Lgetxattr``: the raw value, ``None`` when absent (ENODATA); other errors raise."""
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as err:
        if err.errno == errno.ENODATA:
            return None
        raise SyscallError(err.errno or errno.EIO) from None


def capability(path: str) -> Optional[bytes]:
    """The ``security.capability`` xattr of ``path``; any error counts as absent (as in ``collectFileInfoForChanges`` and ``addTarFile``)."""
    try:
        return os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        return None


def temp_dir(parent: str, prefix: str) -> str:
    """``ioutil.TempDir(parent, prefix)``: a new 0700 directory ``<parent>/<prefix><9 digits>``;
    ``parent == ""`` means ``$TMPDIR`` or ``/tmp`` (read now, never cached)."""
    if parent == "":
        parent = os.environ.get("TMPDIR") or "/tmp"
    for _ in range(10000):
        name = os.path.join(parent, "%s%09d" % (prefix, random.randrange(10 ** 9)))
        try:
            os.mkdir(name, 0o700)
            return name
        except FileExistsError:
            continue
        except OSError as err:
            raise PathError("mkdir", name, err.errno) from None
    raise PathError("mkdir", os.path.join(parent, prefix), errno.EEXIST)


def resolve_in_scope(
    root: str, rel: str, follow_final: bool = True, mkdir_mode: Optional[int] = None
) -> Tuple[str, bool]:
    """Resolve ``rel`` below ``root`` the way the kernel would after ``chroot(root)``.

    Every symlink met is followed with ``root`` as ``/`` and ``..`` stops at ``root``, so the
    result never leaves ``root`` (Docker's ``FollowSymlinkInScope`` idea). With
    ``follow_final=False`` the last element is not followed (``lstat`` semantics). With
    ``mkdir_mode`` missing directories are created (``MkdirAll``). Once an element is missing
    or not a directory, the rest is appended lexically and the later syscall on the result
    fails with the error the kernel gives. Returns ``(path, complete)`` where ``complete`` is
    True if every element existed (as a directory, except possibly the last).
    """
    todo = [c for c in rel.split("/") if c not in ("", ".")]
    todo.reverse()
    done: List[str] = []
    links = 0
    lexical = False
    while todo:
        comp = todo.pop()
        if comp == "..":
            if done:
                done.pop()
            continue
        if comp == ".":
            continue
        if lexical or (not todo and not follow_final):
            done.append(comp)
            continue
        cur = _join_root(root, done, comp)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if mkdir_mode is not None:
                try:
                    os.mkdir(cur, mkdir_mode)
                except FileExistsError:
                    pass
                except OSError as err:
                    raise PathError("mkdir", cur, err.errno) from None
                done.append(comp)
                continue
            done.append(comp)
            lexical = True
            continue
        except OSError:
            done.append(comp)
            lexical = True
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise PathError("lstat", cur, errno.ELOOP)
            try:
                target = os.readlink(cur)
            except OSError as err:
                raise PathError("readlink", cur, err.errno) from None
            if target.startswith("/"):
                done = []
            todo.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
            continue
        done.append(comp)
        if todo and not stat.S_ISDIR(st.st_mode):
            lexical = True
    return _join_root(root, done, None), not lexical


def _join_root(root: str, done: List[str], last: Optional[str]) -> str:
    parts = done + [last] if last is not None else done
    if not parts:
        return root
    if root == "/":
        return "/" + "/".join(parts)
    return root + "/" + "/".join(parts)
