"""Filesystem changes between two trees: ``ChangesDirs``, ``ChangesSize`` and the aufs-style
``Changes(layers, rw)`` (not used by overlay), after moby v1.10.3 ``pkg/archive/changes.go``
(docs/reference-behaviour.md#naivediff).

Quirks kept on purpose (they decide what ``docker diff``/``commit`` see):

- only mode (with type bits), uid, gid, rdev, and — unless the *old* mode has the S_IFDIR
  bit, which block devices and sockets also have — size and mtime are compared; mtimes are
  equal if the seconds match and the nanoseconds match or either is 0 (moby#21555);
- the ``security.capability`` bytes are compared; nothing else (not content, inode, ctime);
- a name present on both sides with the same ``d_ino`` on the same device is pruned with its
  whole subtree (the hard-link optimisation);
- a directory replaced by a file does not report the old children; a changed directory's
  ``Modify`` is inserted before its children's changes.

The reference iterates Go maps (random order); here children are visited in sorted order,
so the output order is deterministic but callers must still not rely on it.
"""
from __future__ import annotations

import enum
import errno
import logging
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..goerrors import PathError, go_quote
from . import fdwalk, gofs, gopath
from .whiteouts import WHITEOUT_META_PREFIX, WHITEOUT_PREFIX

log = logging.getLogger("overlaylab.archive")


class ChangeKind(enum.IntEnum):
    """``archive.ChangeType``: Modify = 0, Add = 1, Delete = 2."""

    MODIFY = 0
    ADD = 1
    DELETE = 2

    @property
    def letter(self) -> str:
        return "CAD"[self.value]


@dataclass(frozen=True)
class Change:
    """One changed path (absolute inside the layer, cleaned) and how it changed."""

    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        return "%s %s" % (self.kind.letter, self.path)


def sort_key(change: Change) -> Tuple[bytes, int]:
    """Bytewise path order (Go's string compare), then kind: what the reference tests sort by."""
    return os.fsencode(change.path), int(change.kind)


# -- phase 1: the two trees ------------------------------------------------------------------

class _Node:
    """A ``FileInfo`` of ``changes.go``: children by name, the StatT fields, the capability."""

    __slots__ = ("path", "children", "st", "cap", "added")

    def __init__(self, path: bytes, st: Optional[os.stat_result], cap: Optional[bytes]):
        self.path = path  # b"/" for the root, else b"/a/b"
        self.children: Dict[bytes, "_Node"] = {}
        self.st = st
        self.cap = cap or b""  # bytes.Compare(nil, []byte{}) == 0
        self.added = False

    def is_dir(self) -> bool:
        # A bit test, so block devices and sockets count as directories (``statDifferent``).
        return self.st is None or (self.st.st_mode & stat.S_IFDIR) != 0


_FS_ENC, _FS_ERR = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _readdir(fd: int, path: bytes) -> List[Tuple[bytes, int]]:
    """getdents: (name, d_ino) sorted bytewise, without ``.``/``..`` and d_ino 0 entries."""
    try:
        with os.scandir(fd) as it:
            out = [(e.name.encode(_FS_ENC, _FS_ERR), e.inode()) for e in it]
    except OSError as err:
        raise PathError("open", os.fsdecode(path), err.errno or errno.EIO) from None
    out = [x for x in out if x[1] != 0]
    out.sort()
    return out


def _lstat_at(fd: int, name: bytes, path: bytes) -> Optional[os.stat_result]:
    try:
        return os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise PathError("lstat", os.fsdecode(path), err.errno or errno.EIO) from None


def _open_at(fd: Optional[int], name, path: bytes) -> int:
    try:
        if fd is None:
            return fdwalk.open_dir_path(name)
        return os.open(name, fdwalk.DIR_FLAGS, dir_fd=fd)
    except OSError as err:
        raise PathError("open", os.fsdecode(path), err.errno or errno.EIO) from None


def _capability_at(fd: int, name: bytes, full: bytes) -> Optional[bytes]:
    # The full path while it fits (as cheap, and what the reference reads), else by the fd.
    try:
        return os.getxattr(full if len(full) < fdwalk.PATH_MAX - 1 else fdwalk.at_path(fd, os.fsdecode(name), ""),
                           "security.capability", follow_symlinks=False)
    except OSError:
        return None


def _children(fds: List[Optional[int]], bases: Tuple[bytes, bytes], prefix: bytes,
              same_device: bool) -> List[Tuple[bytes, Optional[os.stat_result], Optional[os.stat_result]]]:
    """The merged, pruned child list of one directory level, each child lstat-ed on both sides."""
    fd1, fd2 = fds
    names1 = _readdir(fd1, bases[0]) if fd1 is not None else []
    names2 = _readdir(fd2, bases[1]) if fd2 is not None else []
    names: List[bytes] = []
    i = j = 0
    while i < len(names1) and j < len(names2):
        a, b = names1[i], names2[j]
        if a[0] < b[0]:
            names.append(a[0])
            i += 1
        elif a[0] > b[0]:
            names.append(b[0])
            j += 1
        else:
            if a[1] != b[1] or not same_device:
                names.append(a[0])
            i += 1
            j += 1
    names.extend(n for n, _ in names1[i:])
    names.extend(n for n, _ in names2[j:])
    out = []
    for name in names:
        c1 = _lstat_at(fd1, name, bases[0] + b"/" + name) if fd1 is not None else None
        c2 = _lstat_at(fd2, name, bases[1] + b"/" + name) if fd2 is not None else None
        out.append((prefix + b"/" + name, c1, c2))
    return out


def _collect(old_dir: bytes, new_dir: bytes) -> Tuple[_Node, _Node]:
    """The parallel walk of ``changes_linux.go``: iterative, and relative to the descriptors
    of the two directories being read (:mod:`fdwalk`), so trees deeper than the Python stack
    or longer than ``PATH_MAX`` from here are listed whole."""
    try:
        i1 = os.lstat(old_dir)
    except OSError as err:
        raise PathError("lstat", os.fsdecode(old_dir), err.errno or errno.EIO) from None
    try:
        i2 = os.lstat(new_dir)
    except OSError as err:
        raise PathError("lstat", os.fsdecode(new_dir), err.errno or errno.EIO) from None
    root1 = _Node(b"/", None, None)
    root2 = _Node(b"/", None, None)
    stack = fdwalk.DirStack()
    try:
        is1, is2 = stat.S_ISDIR(i1.st_mode), stat.S_ISDIR(i2.st_mode)
        if not is1 and not is2:
            return root1, root2
        fds = [_open_at(None, os.fsdecode(old_dir), old_dir) if is1 else None, None]
        try:
            fds[1] = _open_at(None, os.fsdecode(new_dir), new_dir) if is2 else None
            kids = _children(fds, (old_dir, new_dir), b"", i1.st_dev == i2.st_dev)
        except BaseException:
            fdwalk._close(fds)
            raise
        stack.push(fds, [os.fsdecode(old_dir), os.fsdecode(new_dir)], (iter(kids), root1, root2))
        while stack:
            frame = stack.top()
            it, p1, p2 = frame.data
            fd1, fd2 = frame.fds
            for path, s1, s2 in it:
                name = path.rsplit(b"/", 1)[1]
                n1 = n2 = None
                if s1 is not None:
                    n1 = _Node(path, s1, _capability_at(fd1, name, old_dir + path))
                    p1.children[name] = n1
                if s2 is not None:
                    n2 = _Node(path, s2, _capability_at(fd2, name, new_dir + path))
                    p2.children[name] = n2
                d1 = s1 is not None and stat.S_ISDIR(s1.st_mode)
                d2 = s2 is not None and stat.S_ISDIR(s2.st_mode)
                if not d1 and not d2:
                    continue
                same_device = s1 is not None and s2 is not None and s1.st_dev == s2.st_dev
                cfds = [_open_at(fd1, name, old_dir + path) if d1 else None, None]
                try:
                    cfds[1] = _open_at(fd2, name, new_dir + path) if d2 else None
                    kids = _children(cfds, (old_dir + path, new_dir + path), path, same_device)
                except BaseException:
                    fdwalk._close(cfds)
                    raise
                stack.push(cfds, [os.fsdecode(old_dir + path), os.fsdecode(new_dir + path)],
                           (iter(kids), n1, n2), name)
                break
            else:
                try:
                    stack.pop()
                except OSError as err:
                    raise PathError("open", getattr(err, "filename", None) or frame.paths[1],
                                    err.errno or errno.EIO) from None
    finally:
        stack.close()
    return root1, root2


# -- phase 2: the changes ------------------------------------------------------------------

def _stat_different(old: os.stat_result, new: os.stat_result) -> bool:
    if (old.st_mode != new.st_mode or old.st_uid != new.st_uid or old.st_gid != new.st_gid
            or old.st_rdev != new.st_rdev):
        return True
    if old.st_mode & stat.S_IFDIR != stat.S_IFDIR:
        if not same_fs_timespec(old.st_mtime_ns, new.st_mtime_ns) or old.st_size != new.st_size:
            return True
    return False


def same_fs_timespec(a_ns: int, b_ns: int) -> bool:
    """``sameFsTimeSpec``: same second, and same nanoseconds or either nanoseconds is 0."""
    a_sec, a_nsec = divmod(a_ns, 10 ** 9)
    b_sec, b_nsec = divmod(b_ns, 10 ** 9)
    return a_sec == b_sec and (a_nsec == b_nsec or a_nsec == 0 or b_nsec == 0)


def _add_changes(new_root: _Node, old_root: _Node) -> List[Change]:
    """``FileInfo.addChanges`` as an explicit post-order walk. Each frame collects its own
    list; prepending the directory's Modify to it is the reference's insert at ``start``."""
    out: List[Tuple[bytes, ChangeKind]] = []
    # frame: [node, old, own changes, iterator over children, old_children]
    def enter(node: _Node, old: Optional[_Node]) -> list:
        own: List[Tuple[bytes, ChangeKind]] = []
        if old is None:
            own.append((node.path, ChangeKind.ADD))
            node.added = True
        old_children = dict(old.children) if (old is not None and node.is_dir()) else {}
        return [node, old, own, iter(sorted(node.children.items())), old_children]

    stack = [enter(new_root, old_root)]
    while stack:
        frame = stack[-1]
        node, old, own, it, old_children = frame
        pushed = False
        for name, new_child in it:
            old_child = old_children.pop(name, None)
            if old_child is not None:
                if (_stat_different(old_child.st, new_child.st)
                        or old_child.cap != new_child.cap):
                    own.append((new_child.path, ChangeKind.MODIFY))
                    new_child.added = True
            stack.append(enter(new_child, old_child))
            pushed = True
            break
        if pushed:
            continue
        for name in sorted(old_children):
            own.append((old_children[name].path, ChangeKind.DELETE))
        stack.pop()
        if own and node.is_dir() and not node.added and node.path != b"/":
            own.insert(0, (node.path, ChangeKind.MODIFY))
        if stack:
            stack[-1][2].extend(own)
        else:
            out = own
    return [Change(os.fsdecode(p), k) for p, k in out]


def changes_dirs(new_dir: str, old_dir: str) -> List[Change]:
    """``ChangesDirs(newDir, oldDir)``; ``old_dir == ""`` compares against an empty directory.

    Raises ``PathError`` (Go text) if a tree cannot be read.
    """
    tmp = None
    if old_dir == "":
        tmp = tempfile.mkdtemp(prefix="empty")
        old_dir = tmp
    try:
        old_root, new_root = _collect(os.fsencode(old_dir), os.fsencode(new_dir))
        return _add_changes(new_root, old_root)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def changes_size(new_dir: str, changes: Sequence[Change]) -> int:
    """``ChangesSize``: bytes of the added/modified non-directories, a hard-linked inode
    (``st_nlink > 1``, keyed by ``st_ino`` only) counted once; unstat-able paths are logged
    and skipped (as upstream)."""
    size = 0
    seen = set()
    for change in changes:
        if change.kind not in (ChangeKind.MODIFY, ChangeKind.ADD):
            continue
        path = gopath.join(new_dir, change.path)
        try:
            st = fdwalk.lstat_path(path)  # also past PATH_MAX
        except OSError as err:
            log.error("Can not stat %s: %s", go_quote(path),
                      PathError("lstat", path, err.errno or errno.EIO))
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if st.st_nlink > 1:
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
        size += st.st_size
    return size


def _same_fs_time(a_ns: int, b_ns: int) -> bool:
    return a_ns == b_ns or same_fs_timespec(a_ns, b_ns)


def aufs_changes(layers: Sequence[str], rw: str) -> List[Change]:
    """``Changes(layers, rw)``: the aufs-style walk of a read-write layer (``pkg/archive/changes.go`` ``Changes``)."""
    changes: List[Change] = []
    changed_dirs = set()
    try:
        top = os.lstat(rw)
    except FileNotFoundError:
        return changes
    except OSError as err:
        raise PathError("lstat", rw, err.errno or errno.EIO) from None
    # Sorted pre-order walk (filepath.Walk); a listing error of rw itself aborts, as there.
    stack: List[Tuple[str, os.stat_result]] = [("/", top)]
    while stack:
        path, f = stack.pop()
        is_dir = stat.S_ISDIR(f.st_mode)
        # Top-level "/.wh..wh.*" entries (glob: no "/" in the star) are skipped, but their
        # children are still walked.
        if path != "/" and not (path.startswith("/" + WHITEOUT_META_PREFIX) and "/" not in path[1:]):
            _record(path, f, is_dir, layers, changes, changed_dirs)
        if not is_dir:
            continue
        full = rw if path == "/" else rw + path
        kids = []
        for n in gofs.read_dir_names(full, missing_ok=True):
            child = ("" if path == "/" else path) + "/" + n
            try:
                kids.append((child, os.lstat(rw + child)))
            except FileNotFoundError:
                continue
            except OSError as err:
                raise PathError("lstat", rw + child, err.errno or errno.EIO) from None
        stack.extend(reversed(kids))
    return changes


def _record(path: str, f: os.stat_result, is_dir: bool, layers: Sequence[str],
            changes: List[Change], changed_dirs: set) -> None:
    base = gopath.basename(path)
    if base.startswith(WHITEOUT_PREFIX):
        kind = ChangeKind.DELETE
        change_path = gopath.join(gopath.dirname(path), base[len(WHITEOUT_PREFIX):])
    else:
        kind = ChangeKind.ADD
        change_path = path
        for layer in layers:
            try:
                st = os.stat(gopath.join(layer, path))
            except FileNotFoundError:
                continue
            except OSError as err:  # ENOTDIR included: Go 1.5's IsNotExist is ENOENT only
                raise PathError("stat", gopath.join(layer, path), err.errno or errno.EIO) from None
            if stat.S_ISDIR(st.st_mode) and is_dir:
                if (f.st_size == st.st_size and f.st_mode == st.st_mode
                        and _same_fs_time(f.st_mtime_ns, st.st_mtime_ns)):
                    return
            kind = ChangeKind.MODIFY
            break
    if is_dir:
        changed_dirs.add(path)
    if kind in (ChangeKind.ADD, ChangeKind.DELETE):
        parent = gopath.dirname(path)
        if parent not in changed_dirs and parent != "/":
            changes.append(Change(parent, ChangeKind.MODIFY))
            changed_dirs.add(parent)
    changes.append(Change(change_path, kind))
