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
from typing import List, Optional, Tuple

from ..goerrors import LinkError, PathError, SyscallError

COPY_HARDLINK = 1

#: (entry name, source directory fd, destination directory fd), for the *at() syscalls
_At = Optional[Tuple[str, int, int]]
#: directory fds are held for the directories being walked, up to this depth
_MAX_FD_DEPTH = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_COPIED_XATTRS = ("security.capability", "trusted.overlay.opaque")
_COPY_CHUNK = 1 << 20


def _entry_name(entry: "os.DirEntry[str]") -> str:
    return entry.name


def _entry_bytes(entry: "os.DirEntry[str]") -> bytes:
    return os.fsencode(entry.name)


def _sorted_entries(path: str) -> "List[os.DirEntry[str]]":
    """The directory's entries sorted bytewise by name (Go's filepath.Walk order), with the
    ``d_type`` that ``readdir`` gave (``DirEntry``). For ASCII names str order is byte order."""
    with os.scandir(path) as it:
        entries = list(it)
    if "".join([e.name for e in entries]).isascii():
        entries.sort(key=_entry_name)
    else:
        entries.sort(key=_entry_bytes)
    return entries


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


def _copy_regular_new(src: str, dst: str, st: os.stat_result, at: _At = None) -> bool:
    """Content copy of a regular file to a ``dst`` that does not exist yet, with all the
    metadata steps of ``_copy_entry`` done on the two open descriptors (the same inodes as
    ``src`` and the new ``dst``, so the same results, in fewer path lookups). Returns False
    if ``dst`` already exists, having done nothing: the caller then takes the path-based
    route, whose quirks (no O_TRUNC, following a symlink at ``dst``) only matter there.
    With ``at`` = (name, src dir fd, dst dir fd) the files are opened relative to their
    directories (``openat``); errors still name the full paths."""
    mode = st.st_mode
    if at is None:
        src_rel, dst_rel, sfd, dfd = src, dst, None, None
    else:
        src_rel = dst_rel = at[0]
        sfd, dfd = at[1], at[2]
    try:
        fin = os.open(src_rel, os.O_RDONLY, dir_fd=sfd)
    except OSError as err:
        raise PathError("open", src, err.errno) from None
    try:
        try:
            fout = os.open(dst_rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o7777, dir_fd=dfd)
        except FileExistsError:
            return False
        except OSError as err:
            raise PathError("open", dst, err.errno) from None
        try:
            _copy_bytes(fin, fout, src, dst)
            try:
                os.fchown(fout, st.st_uid, st.st_gid)
            except OSError as err:
                raise PathError("lchown", dst, err.errno) from None
            for name in _COPIED_XATTRS:
                try:
                    value = os.getxattr(fin, name)
                except OSError as err:
                    if err.errno == errno.ENODATA:
                        continue
                    raise SyscallError(err.errno) from None
                try:
                    os.setxattr(fout, name, value)
                except OSError as err:
                    raise SyscallError(err.errno) from None
            try:
                os.fchmod(fout, mode & 0o7777)
            except OSError as err:
                raise PathError("chmod", dst, err.errno) from None
            try:
                os.utime(fout, ns=(max(st.st_atime_ns, 0), max(st.st_mtime_ns, 0)))
            except OSError as err:
                raise SyscallError(err.errno) from None
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return True


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


def _copy_entry(src: str, dst: str, st: os.stat_result, flags: int, at: _At = None) -> None:
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
        if _copy_regular_new(src, dst, st, at):
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

    Each directory is read once with ``scandir``; entries are visited in sorted order, each
    ``lstat``-ed when visited, as Go's ``filepath.Walk`` does, except that in hard-link mode
    an entry that ``readdir`` already reports as a regular file (``d_type``) is linked
    without the ``lstat`` (which would only have told the same; ``DT_UNKNOWN`` still gets it).
    The hot syscalls (lstat, link, opening regular files) go through descriptors of the
    source and destination directories (``*at``) instead of resolving full paths each time;
    where such a descriptor cannot be had (permissions, a symlink, depth) full paths are used.
    """
    try:
        st = os.lstat(src_dir)
    except OSError as err:
        raise PathError("lstat", src_dir, err.errno) from None
    _copy_entry(src_dir, dst_dir, st, flags)
    if not stat.S_ISDIR(st.st_mode):
        return
    hardlink = bool(flags & COPY_HARDLINK)
    link = os.link
    lstat = os.lstat
    stack: list = []
    try:
        stack.append(_frame(src_dir, dst_dir, 0))
        while stack:
            dst, it, sfd, dfd = stack[-1]
            dst_slash = dst if dst.endswith("/") else dst + "/"
            use_fds = sfd is not None and dfd is not None
            for entry in it:
                name = entry.name
                src = entry.path
                child = dst_slash + name
                if hardlink:
                    try:
                        is_reg = entry.is_file(follow_symlinks=False)
                    except OSError:
                        is_reg = False  # lstat below reports it
                    if is_reg:
                        try:
                            if use_fds:
                                link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                            else:
                                link(src, child)
                        except OSError as err:
                            raise LinkError("link", src, child, err.errno) from None
                        continue
                try:
                    st = lstat(name, dir_fd=sfd) if use_fds else lstat(src)
                except OSError as err:
                    raise PathError("lstat", src, err.errno) from None
                _copy_entry(src, child, st, flags, (name, sfd, dfd) if use_fds else None)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(_frame(src, child, len(stack)))
                    break
            else:
                stack.pop()
                _close_fds(sfd, dfd)
    finally:
        for frame in stack:
            _close_fds(frame[2], frame[3])


def _frame(src: str, dst: str, depth: int):
    """A walk frame: (dst, iterator over the sorted entries of src, src dir fd, dst dir fd).
    The listing is taken now, right after the directory itself was copied, like Walk."""
    sfd = dfd = None
    if depth < _MAX_FD_DEPTH:
        try:
            sfd = os.open(src, _DIR_FLAGS)
            dfd = os.open(dst, _DIR_FLAGS)
        except OSError:
            pass
    try:
        entries = _list_dir(src)
    except BaseException:
        _close_fds(sfd, dfd)
        raise
    return (dst, iter(entries), sfd, dfd)


def _close_fds(*fds) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _list_dir(path: str) -> "List[os.DirEntry[str]]":
    try:
        return _sorted_entries(path)
    except OSError as err:
        raise PathError("open", path, err.errno) from None


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
