"""``copyDir`` of the overlay driver (moby v1.10.3 ``daemon/graphdriver/overlay/copy.go``;
docs/reference-behaviour.md#copydir-quirks) and Go's ``os.RemoveAll``.

Quirks kept on purpose, because the lab exists to show them:

- hard links *inside* the source are not preserved in content mode (each name is copied);
- a **socket** is "copied" with ``mkfifo(st_mode)``, which the kernel rejects with EINVAL, so
  copying a tree that holds a socket fails with ``invalid argument``;
- regular files are opened without ``O_TRUNC``, so copying over an existing longer file leaves
  its tail (the re-Create quirk, docs/reference-behaviour.md#create);
- directory times are set when the directory is visited (pre-order), so a non-empty copied
  directory ends with mtime ≈ copy time;
- only ``security.capability`` and ``trusted.overlay.opaque`` xattrs are copied.

Deliberate difference (issue 9.2): nothing already in the destination is followed; see
:func:`copy_dir`. Both walks here are iterative and descriptor-relative (``fdwalk``).
"""
from __future__ import annotations

import errno
import os
import stat
from typing import List, Optional, Set, Tuple

from ..archive import fdwalk
from ..archive.fdwalk import DirStack, at_path
from ..goerrors import LinkError, PathError, SyscallError

COPY_HARDLINK = 1

#: directory descriptors held by a walk (per side); shallower ones are reopened through ".."
_MAX_FD_DEPTH = fdwalk.MAX_HELD
_DIR_FLAGS = fdwalk.DIR_FLAGS

_COPIED_XATTRS = ("security.capability", "trusted.overlay.opaque")
_COPY_CHUNK = 1 << 20
_SRC_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DST_EXCL_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


_COPY_FILE_RANGE = getattr(os, "copy_file_range", None)
_KERNEL_COPY_FALLBACK = frozenset((errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL))


def _copy_bytes(fin: int, fout: int, dst: str) -> None:
    """Everything from ``fin`` to ``fout``, in the kernel (``copy_file_range``, else ``sendfile``)."""
    copy_range = _COPY_FILE_RANGE
    while True:
        try:
            if copy_range is not None:
                n = copy_range(fin, fout, _COPY_CHUNK)
            else:
                n = os.sendfile(fout, fin, None, _COPY_CHUNK)
        except OSError as err:
            if copy_range is not None and err.errno in _KERNEL_COPY_FALLBACK:
                copy_range = None
                continue
            raise PathError("write", dst, err.errno) from None
        if n == 0:
            return


def _exists_as(dfd: Optional[int], name: str, dst: str, fmt: int, op: str) -> None:
    """``name`` already exists in the destination: fine if it is a ``fmt`` (a directory for
    mkdir, a regular file for open: the reference's EEXIST-ignored and no-O_TRUNC quirks),
    else ``<op> <dst>: file exists`` -- never followed, whatever it is (a symlink there
    would lead the copy outside the destination)."""
    try:
        st = os.lstat(name, dir_fd=dfd)
    except OSError as err:
        raise PathError(op, dst, err.errno) from None
    if stat.S_IFMT(st.st_mode) != fmt:
        raise PathError(op, dst, errno.EEXIST)


def _open_dst_file(dfd: Optional[int], name: str, dst: str, mode: int) -> int:
    """``open(dst, O_WRONLY|O_CREAT)`` (no O_TRUNC: the re-Create quirk), but never through a
    symlink, fifo or device already at ``dst``."""
    try:
        return os.open(name, _DST_EXCL_FLAGS, mode & 0o7777, dir_fd=dfd)
    except FileExistsError:
        pass
    except OSError as err:
        raise PathError("open", dst, err.errno) from None
    _exists_as(dfd, name, dst, stat.S_IFREG, "open")
    try:
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as err:
        raise PathError("open", dst, err.errno) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the lstat
        os.close(fd)
        raise PathError("open", dst, errno.EEXIST)
    return fd


def _copy_xattrs_fd(fin: int, fout: int, dev: int, listed: Set[int]) -> None:
    """The reference's ``lgetxattr``/``lsetxattr`` of the two copied names, by descriptor.

    Most files have neither, and each ``getxattr`` that says ENODATA costs a syscall and a
    Python exception. So once both names have been read that way on a filesystem (``dev`` put
    in ``listed``, which lives for one walk) and said ENODATA or given a value -- proving that
    this filesystem answers them and would say ENODATA for a name a file lacks -- one
    ``flistxattr`` tells which of them a file has, and only those are read. A listing that
    fails falls back to reading both (whose errors are the reference's)."""
    names = _COPIED_XATTRS
    if dev in listed:
        try:
            present = os.listxattr(fin)
        except OSError:
            pass
        else:
            if not present:
                return
            names = tuple(name for name in _COPIED_XATTRS if name in present)
    for name in names:
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
    listed.add(dev)


def _meta_fd(fin: int, fout: int, dst: str, st: os.stat_result, listed: Set[int]) -> None:
    """lchown, the two xattrs, chmod, utimes of the reference, on the open ``dst``."""
    try:
        os.fchown(fout, st.st_uid, st.st_gid)
    except OSError as err:
        raise PathError("lchown", dst, err.errno) from None
    _copy_xattrs_fd(fin, fout, st.st_dev, listed)
    try:
        os.fchmod(fout, st.st_mode & 0o7777)
    except OSError as err:
        raise PathError("chmod", dst, err.errno) from None
    try:
        os.utime(fout, ns=(max(st.st_atime_ns, 0), max(st.st_mtime_ns, 0)))
    except OSError as err:
        raise SyscallError(err.errno) from None


def _copy_regular(sfd: Optional[int], sname: str, dfd: Optional[int], dname: str,
                  src: str, dst: str, st: os.stat_result, listed: Set[int]) -> None:
    """Content copy of a regular file, all on descriptors (the same inodes as the reference's
    path-based steps, so the same results)."""
    try:
        fin = os.open(sname, _SRC_FLAGS, dir_fd=sfd)
    except OSError as err:
        raise PathError("open", src, err.errno) from None
    try:
        try:  # the common case of _open_dst_file: a new file
            fout = os.open(dname, _DST_EXCL_FLAGS, st.st_mode & 0o7777, dir_fd=dfd)
        except OSError:
            fout = _open_dst_file(dfd, dname, dst, st.st_mode)
        try:
            _copy_bytes(fin, fout, dst)
            _meta_fd(fin, fout, dst, st, listed)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _copy_xattr(src: str, dst: str, name: str, follow_dst: bool = False) -> None:
    try:
        value = os.getxattr(src, name, follow_symlinks=False)
    except OSError as err:
        if err.errno == errno.ENODATA:
            return
        raise SyscallError(err.errno) from None
    try:
        os.setxattr(dst, name, value, follow_symlinks=follow_dst)
    except OSError as err:
        raise SyscallError(err.errno) from None


def _copy_entry(sfd: Optional[int], sname: str, dfd: Optional[int], dname: str,
                src: str, dst: str, st: os.stat_result, flags: int,
                listed: Set[int]) -> Optional[Tuple[int, int]]:
    """One entry of the walk, every syscall relative to the walked directories (``sfd``,
    ``dfd``; ``None`` with full paths for the top) and none following a symlink. For a
    directory returns its (source, destination) descriptors, for the walk to descend.
    ``listed``: see :func:`_copy_xattrs_fd`."""
    mode = st.st_mode
    fmt = stat.S_IFMT(mode)
    if fmt == stat.S_IFREG:
        if flags & COPY_HARDLINK:
            try:
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            except OSError as err:
                raise LinkError("link", src, dst, err.errno) from None
            return None
        _copy_regular(sfd, sname, dfd, dname, src, dst, st, listed)
        return None
    if fmt == stat.S_IFDIR:
        try:
            os.mkdir(dname, mode & 0o7777, dir_fd=dfd)
        except FileExistsError:
            _exists_as(dfd, dname, dst, stat.S_IFDIR, "mkdir")
        except OSError as err:
            raise PathError("mkdir", dst, err.errno) from None
        try:
            fout = os.open(dname, _DIR_FLAGS, dir_fd=dfd)
        except OSError as err:
            raise PathError("open", dst, err.errno) from None
        try:
            fin = os.open(sname, _DIR_FLAGS, dir_fd=sfd)
        except OSError as err:
            os.close(fout)
            raise PathError("open", src, err.errno) from None
        try:
            _meta_fd(fin, fout, dst, st, listed)
        except BaseException:
            os.close(fin)
            os.close(fout)
            raise
        return fin, fout
    if fmt == stat.S_IFLNK:
        try:
            target = os.readlink(sname, dir_fd=sfd)
        except OSError as err:
            raise PathError("readlink", src, err.errno) from None
        try:
            os.symlink(target, dname, dir_fd=dfd)
        except OSError as err:
            raise LinkError("symlink", target, dst, err.errno) from None
        try:
            os.chown(dname, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        except OSError as err:
            raise PathError("lchown", dst, err.errno) from None
        for name in _COPIED_XATTRS:
            _copy_xattr(at_path(sfd, sname, src), at_path(dfd, dname, dst), name)
        try:
            os.utime(dname, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        except OSError as err:
            if err.errno != errno.ENOSYS:
                raise SyscallError(err.errno) from None
        return None
    if fmt in (stat.S_IFIFO, stat.S_IFSOCK):
        # Go's Mkfifo is mknod(st_mode|S_IFIFO): for a socket S_IFSOCK|S_IFIFO -> EINVAL.
        try:
            os.mknod(dname, mode | stat.S_IFIFO, 0, dir_fd=dfd)
        except OSError as err:
            raise SyscallError(err.errno) from None
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        try:
            os.mknod(dname, mode, st.st_rdev, dir_fd=dfd)
        except OSError as err:
            raise SyscallError(err.errno) from None
    else:
        raise ValueError("Unknown file type for %s\n" % src)
    # The node just made, by an O_PATH descriptor: nothing can swap a symlink in its place.
    try:
        fout = os.open(dname, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as err:
        raise PathError("lchown", dst, err.errno) from None
    try:
        try:
            os.chown(dname, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        except OSError as err:
            raise PathError("lchown", dst, err.errno) from None
        proc = "/proc/self/fd/%d" % fout if fdwalk.proc_ok() else None
        for name in _COPIED_XATTRS:
            _copy_xattr(at_path(sfd, sname, src), proc or at_path(dfd, dname, dst), name, proc is not None)
        try:
            if proc is not None:
                os.chmod(proc, mode & 0o7777)
            else:
                os.chmod(dname, mode & 0o7777, dir_fd=dfd)
        except OSError as err:
            raise PathError("chmod", dst, err.errno) from None
        try:
            os.utime(dname, ns=(max(st.st_atime_ns, 0), max(st.st_mtime_ns, 0)),
                     dir_fd=dfd, follow_symlinks=False)
        except OSError as err:
            raise SyscallError(err.errno) from None
    finally:
        os.close(fout)
    return None


def copy_dir(src_dir: str, dst_dir: str, flags: int = 0) -> None:
    """Replicate ``src_dir`` into ``dst_dir``: pre-order, names sorted bytewise, lstat-based.

    With ``COPY_HARDLINK`` regular files are hard-linked (no metadata steps); everything else
    is a new inode with owner, the two xattrs, mode and times copied. The first error aborts
    and is raised; the partial copy is left for the caller (as ``copyDir`` does upstream).

    Deliberate difference: nothing already in the destination is followed. The reference's
    path-based steps (``mkdir`` with EEXIST ignored, then ``chmod``/``utimes``; ``open``
    without ``O_NOFOLLOW``) go through a symlink, fifo or device that sits where a directory
    or file is to be copied, out of the destination (a re-Create of a container layer whose
    upper holds ``etc -> /``). Here every syscall is relative to the descriptors of the two
    directories being walked, none follows a symlink, and an existing entry that is not of
    the copied type fails with ``<op> <dst>: file exists`` (as an existing symlink, fifo or
    device already does in the reference). Existing directories and regular files are still
    reused as the reference reuses them.

    Each directory is read once with ``scandir``; entries are visited in sorted order, each
    ``lstat``-ed when visited, as Go's ``filepath.Walk`` does, except that in hard-link mode
    an entry that ``readdir`` already reports as a regular file (``d_type``) is linked
    without the ``lstat`` (which would only have told the same; ``DT_UNKNOWN`` still gets it).
    Iterative, with at most a bounded number of directory descriptors held (:mod:`fdwalk`),
    so any depth is copied.
    """
    try:
        st = os.lstat(src_dir)
    except OSError as err:
        raise PathError("lstat", src_dir, err.errno) from None
    listed: Set[int] = set()
    fds = _copy_entry(None, src_dir, None, dst_dir, src_dir, dst_dir, st, flags, listed)
    if fds is None:
        return
    hardlink = bool(flags & COPY_HARDLINK)
    link = os.link
    lstat = os.lstat
    stack = DirStack(_MAX_FD_DEPTH)
    try:
        stack.push(fds, (src_dir, dst_dir), _listing(fds[0], src_dir))
        while stack:
            frame = stack.top()
            sfd, dfd = frame.fds
            src_slash = _slash(frame.paths[0])
            dst_slash = _slash(frame.paths[1])
            for entry in frame.data:
                name = entry.name
                src = src_slash + name
                child = dst_slash + name
                if hardlink:
                    try:
                        is_reg = entry.is_file(follow_symlinks=False)
                    except OSError:
                        is_reg = False  # lstat below reports it
                if hardlink and is_reg:
                    try:
                        link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                    except OSError as err:
                        raise LinkError("link", src, child, err.errno) from None
                    continue
                try:
                    st = lstat(name, dir_fd=sfd)
                except OSError as err:
                    raise PathError("lstat", src, err.errno) from None
                fds = _copy_entry(sfd, name, dfd, name, src, child, st, flags, listed)
                if fds is not None:
                    try:
                        listing = _listing(fds[0], src)
                    except BaseException:
                        _close_fds(*fds)
                        raise
                    stack.push(fds, (src, child), listing, name)
                    break
            else:
                try:
                    stack.pop()
                except OSError as err:
                    raise PathError("open", getattr(err, "filename", None) or frame.paths[0],
                                    err.errno) from None
    finally:
        stack.close()


def _slash(path: str) -> str:
    return path if path.endswith("/") else path + "/"


def _entry_name(entry: "os.DirEntry[str]") -> str:
    return entry.name


def _entry_bytes(entry: "os.DirEntry[str]") -> bytes:
    return os.fsencode(entry.name)


def _listing(fd: int, path: str):
    """An iterator over the directory's entries sorted bytewise by name (Go's Walk order),
    taken when the directory is entered, with the ``d_type`` readdir gave (``DirEntry``).
    For ASCII names str order is byte order."""
    try:
        with os.scandir(fd) as it:
            entries = list(it)
    except OSError as err:
        raise PathError("open", path, err.errno) from None
    if "".join([e.name for e in entries]).isascii():
        entries.sort(key=_entry_name)
    else:
        entries.sort(key=_entry_bytes)
    return iter(entries)


def _close_fds(*fds) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def remove_all(path: str) -> None:
    """Go's ``os.RemoveAll`` (the unlinkat-based one the reference trace was recorded with).

    Missing is not an error. Children are removed in directory order; on failure the first
    error wins, except that a directory that cannot be removed reports its own ``unlinkat``
    error when nothing below it failed, e.g. ``unlinkat H/id/merged: device or resource busy``
    for a still-mounted overlay.

    Iterative, and every call below ``path`` is relative to the descriptor of the directory
    being emptied (``unlinkat``, ``openat(O_NOFOLLOW)``), so any depth is removed and a
    symlink is only ever removed, never followed.
    """
    try:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno not in (errno.EISDIR, errno.EPERM, errno.EACCES):
            raise PathError("unlinkat", path, err.errno) from None
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError as err:
        opened = PathError("open", path, err.errno)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            raise opened from None
    err = _remove_tree(fd, path)
    if err is not None:
        raise err


def _remove_tree(fd: int, path: str) -> Optional[OSError]:
    # Like Go: empty the directory first (through a mount, if one sits here), then rmdir.
    stack = DirStack()
    result: Optional[OSError] = None
    try:
        names = _names(fd, path)
        stack.push([fd], [path], [iter(names), getattr(names, "err", None), None])
        while stack:
            frame = stack.top()
            dfd = frame.fds[0]
            data = frame.data
            top = frame.paths[0]
            for name in data[0]:
                child = top + "/" + name
                try:
                    os.unlink(name, dir_fd=dfd)
                    continue
                except FileNotFoundError:
                    continue
                except OSError as err:
                    if err.errno not in (errno.EISDIR, errno.EPERM, errno.EACCES):
                        if data[1] is None:
                            data[1] = PathError("unlinkat", child, err.errno)
                        continue
                try:
                    cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    opened = PathError("open", child, err.errno)
                    try:
                        os.rmdir(name, dir_fd=dfd)
                        opened = None
                    except FileNotFoundError:
                        opened = None
                    except OSError:
                        pass
                    if data[1] is None:
                        data[1] = opened
                    continue
                names = _names(cfd, child)
                stack.push([cfd], [child], [iter(names), getattr(names, "err", None), name], name)
                break
            else:
                try:
                    stack.pop()
                except OSError as err:
                    failed = PathError("open", getattr(err, "filename", None) or top, err.errno)
                    stack.close()
                    return failed
                name = data[2]
                try:
                    if name is None:
                        os.rmdir(top)
                    else:
                        os.rmdir(name, dir_fd=stack.top().fds[0])
                    own = None
                except FileNotFoundError:
                    own = None
                except OSError as err:
                    own = data[1] or PathError("unlinkat", top, err.errno)
                if stack:
                    parent = stack.top().data
                    if parent[1] is None:
                        parent[1] = own
                else:
                    result = own
    finally:
        stack.close()
    return result


class _Failed(list):
    """An empty listing that remembers why the directory could not be read."""

    def __init__(self, err: OSError):
        super().__init__()
        self.err = err


def _names(fd: int, path: str) -> List[str]:
    try:
        return os.listdir(fd)
    except OSError as err:
        return _Failed(PathError("open", path, err.errno))
