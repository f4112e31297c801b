"""Descriptor-relative tree walking: what lets copy, remove, changes and export handle any
tree that can be applied, however deep, and never be led elsewhere by a symlink.

- :class:`DirStack` holds the directory descriptors of an iterative walk, at most
  :data:`MAX_HELD` frames' worth; deeper frames close the descriptors of shallower ones, which
  are reopened through ``..`` of the child (and checked by device and inode) when the walk
  climbs back. So a 1000-level tree needs neither 1000 descriptors nor a Python stack.
- :func:`open_dir_path`, :func:`lstat_path`: ``open``/``lstat`` that also work on paths longer
  than ``PATH_MAX`` (the path is resolved piecewise, each piece shorter than ``PATH_MAX``,
  which is how the kernel would resolve the whole).
- :func:`at_path`: a short path naming ``name`` in the directory ``fd`` for the calls that
  have no ``*at`` form (``lgetxattr``, ``lsetxattr``): ``/proc/self/fd/<fd>/<name>``.
"""
from __future__ import annotations

import errno
import os
from typing import Any, List, Optional, Sequence, Tuple

#: Linux ``PATH_MAX``: a path (with its NUL) this long cannot be passed to a syscall.
PATH_MAX = 4096
#: directory descriptors a walk keeps open (per fd slot of a frame)
MAX_HELD = 64

#: errors that say the walk itself could not go on, not that an entry is gone or odd: an
#: export or listing that meets one fails (naming the path) instead of leaving the entry out
RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENAMETOOLONG))

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_PROC_FD = "/proc/self/fd"


def have_proc() -> bool:
    """``/proc/self/fd`` is usable (not inside the apply chroot, for instance)."""
    return os.path.isdir(_PROC_FD)


def at_path(fd: Optional[int], name: str, full: str) -> str:
    """A path for ``name`` relative to directory ``fd`` that fits in ``PATH_MAX``: through
    ``/proc/self/fd`` when ``fd`` is set and procfs is there, else ``full``."""
    if fd is None or not _PROC_OK[0]:
        return full
    return "%s/%d/%s" % (_PROC_FD, fd, name)


_PROC_OK = [have_proc()]


def proc_ok() -> bool:
    """:func:`have_proc`, as found when this module was loaded."""
    return _PROC_OK[0]


def is_long(path: str) -> bool:
    return len(path) >= PATH_MAX // 4 and len(os.fsencode(path)) >= PATH_MAX - 1


def _pieces(path: str) -> List[str]:
    """Split ``path`` at ``/`` into pieces each shorter than ``PATH_MAX`` (the first keeps a
    leading ``/``). A single component longer than that is left whole (the kernel then says
    ENAMETOOLONG, as it would for the whole path)."""
    b = os.fsencode(path)
    out: List[str] = []
    limit = PATH_MAX - 256
    while len(b) >= limit:
        cut = b.rfind(b"/", 1, limit)
        if cut <= 0:
            break
        out.append(os.fsdecode(b[:cut]))
        b = b[cut + 1:]
        while b.startswith(b"/"):
            b = b[1:]
    out.append(os.fsdecode(b) if b else ".")
    return out


def open_dir_path(path: str, nofollow: bool = False) -> int:
    """``open(path, O_DIRECTORY)`` for a path of any length. Intermediate symlinks are
    followed as the kernel follows them; with ``nofollow`` the last component is not."""
    last = DIR_FLAGS if nofollow else _DIR_FOLLOW
    if not is_long(path):
        return os.open(path, last)
    pieces = _pieces(path)
    fd: Optional[int] = None
    try:
        for i, piece in enumerate(pieces):
            flags = last if i == len(pieces) - 1 else _DIR_FOLLOW
            nfd = os.open(piece, flags, dir_fd=fd)
            if fd is not None:
                os.close(fd)
            fd = nfd
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    assert fd is not None
    return fd


def split_parent(path: str) -> Tuple[str, str]:
    """``(dirname, basename)`` of a path without a trailing slash."""
    head, _, tail = path.rpartition("/")
    if not head:
        head = "/" if path.startswith("/") else "."
    return head, tail


def lstat_path(path: str) -> os.stat_result:
    """``lstat(path)`` for a path of any length (errors as ``OSError`` with the errno)."""
    if not is_long(path):
        return os.lstat(path)
    head, tail = split_parent(path)
    fd = open_dir_path(head)
    try:
        return os.lstat(tail, dir_fd=fd)
    finally:
        os.close(fd)


class Frame:
    """One directory level of a walk: its descriptors (one per tree walked in parallel, ``None``
    where that tree has no such directory or while evicted), the paths they name (for error
    texts), its name in the parent frame, and whatever the walk keeps there (``data``)."""

    __slots__ = ("fds", "paths", "name", "ids", "data")

    def __init__(self, fds: Sequence[Optional[int]], paths: Sequence[str], name: Optional[str], data: Any):
        self.fds: List[Optional[int]] = list(fds)
        self.paths = list(paths)
        self.name = name
        self.ids: Optional[List[Optional[Tuple[int, int]]]] = None
        self.data = data


class StaleDirectory(OSError):
    """A directory of the walk was moved while the walk was below it."""


class DirStack:
    """The frames of an iterative walk, holding descriptors for the deepest ``held`` (and the
    first frame) only."""

    def __init__(self, held: int = MAX_HELD):
        self.frames: List[Frame] = []
        self.held = max(1, held)

    def __len__(self) -> int:
        return len(self.frames)

    def __bool__(self) -> bool:
        return bool(self.frames)

    def top(self) -> Frame:
        return self.frames[-1]

    def push(self, fds: Sequence[Optional[int]], paths: Sequence[str], data: Any,
             name: Optional[str] = None) -> Frame:
        frame = Frame(fds, paths, name, data)
        self.frames.append(frame)
        idx = len(self.frames) - self.held - 1
        if idx > 0:
            old = self.frames[idx]
            if old.ids is None:
                ids: List[Optional[Tuple[int, int]]] = []
                for fd in old.fds:
                    if fd is None:
                        ids.append(None)
                    else:
                        st = os.fstat(fd)
                        ids.append((st.st_dev, st.st_ino))
                _close(old.fds)
                old.ids = ids
                old.fds = [None] * len(old.fds)
        return frame

    def pop(self) -> Frame:
        """Drop the top frame, closing its descriptors; the new top has its own again (an
        evicted one is reopened as ``..`` of the frame just left, or by name from the nearest
        frame that still holds one, and must be the same directory, else
        :class:`StaleDirectory` naming it)."""
        child = self.frames.pop()
        try:
            if self.frames and self.frames[-1].ids is not None:
                self._reopen(len(self.frames) - 1, child)
        finally:
            _close(child.fds)
            child.fds = [None] * len(child.fds)
        return child

    def _reopen(self, idx: int, child: Frame) -> None:
        parent = self.frames[idx]
        assert parent.ids is not None
        fds: List[Optional[int]] = [None] * len(parent.ids)
        try:
            for i, want in enumerate(parent.ids):
                if want is None:
                    continue
                cfd = child.fds[i]
                if cfd is not None:
                    fd = os.open("..", DIR_FLAGS, dir_fd=cfd)
                else:
                    fd = self._open_by_names(idx, i)
                fds[i] = fd
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != want:
                    raise StaleDirectory(errno.ESTALE, os.strerror(errno.ESTALE), parent.paths[i])
        except BaseException:
            _close(fds)
            raise
        parent.fds = fds
        parent.ids = None

    def _open_by_names(self, idx: int, slot: int) -> int:
        k = idx - 1
        while self.frames[k].fds[slot] is None:
            k -= 1  # frame 0 is never evicted
        fd = os.open(self.frames[k + 1].name, DIR_FLAGS, dir_fd=self.frames[k].fds[slot])
        try:
            for frame in self.frames[k + 2:idx + 1]:
                nfd = os.open(frame.name, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        for frame in self.frames:
            _close(frame.fds)
            frame.fds = [None] * len(frame.fds)
        self.frames = []


def _close(fds: Sequence[Optional[int]]) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
