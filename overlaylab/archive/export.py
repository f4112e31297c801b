"""Producing layer tars: ``addTarFile``, ``ExportChanges`` and the full-tree ``Tar``
(moby v1.10.3 ``pkg/archive/changes.go``, ``archive.go``; docs/reference-behaviour.md#the-tar-layer).

Both streams are written by a background thread into an ``os.pipe`` and returned as a
binary readable file object, so arbitrarily large trees stream with bounded memory. Closing
the returned object early stops the writer (it gets EPIPE) and joins it.

Deliberate differences from the reference, none visible on a consistent tree: a regular
file is opened before its header is written, so a file that vanished or became unreadable
is skipped instead of leaving a header without content; a file that shrinks or grows while
it is copied is zero-filled or cut to the size in its header.
"""
from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import stat
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..goerrors import PathError
from ..idtools import IDMaps, to_container
from . import fdwalk, gofs, gopath
from .changes import Change, ChangeKind
from .errors import ArchiveError
from .tarheader import (
    C_ISBLK, C_ISCHR, C_ISDIR, C_ISFIFO, C_ISLNK, C_ISREG, C_ISSOCK, TYPE_BLOCK, TYPE_CHAR,
    TYPE_DIR, TYPE_FIFO, TYPE_LINK, TYPE_REG, TYPE_REGA, TYPE_SYMLINK, Header, TarWriter,
)
from .whiteouts import WHITEOUT_PREFIX

log = logging.getLogger("overlaylab.archive")

_SMALL = 64 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_CAP = "security.capability"
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


_FORMATS = {
    stat.S_IFREG: (C_ISREG, TYPE_REG),
    stat.S_IFDIR: (C_ISDIR, TYPE_DIR),
    stat.S_IFLNK: (C_ISLNK, TYPE_SYMLINK),
    stat.S_IFCHR: (C_ISCHR, TYPE_CHAR),
    stat.S_IFBLK: (C_ISBLK, TYPE_BLOCK),
    stat.S_IFIFO: (C_ISFIFO, TYPE_FIFO),
    stat.S_IFSOCK: (C_ISSOCK, TYPE_REGA),  # Go 1.5 sets no type flag for sockets
}


def file_info_header(st: os.stat_result, name: str, link: str) -> Header:
    """Go 1.5 ``tar.FileInfoHeader`` for an lstat result: the mode field keeps the file-type
    bits plus the permission, setuid, setgid and sticky bits; a socket gets no type flag
    (``\0``); only regular files have a size, only symlinks a linkname."""
    mode = st.st_mode
    try:
        bits, flag = _FORMATS[mode & 0o170000]
    except KeyError:
        raise ArchiveError("archive/tar: unknown file mode %o" % mode) from None
    return Header(name, bits | (mode & 0o7777), st.st_uid, st.st_gid,
                  st.st_size if flag == TYPE_REG else 0, st.st_mtime_ns, flag,
                  link if flag == TYPE_SYMLINK else "", "", "", 0, 0,
                  st.st_atime_ns, st.st_ctime_ns)


def add_tar_file(
    writer: TarWriter,
    path: str,
    name: str,
    inode_map: Dict[int, str],
    uid_maps: IDMaps = None,
    gid_maps: IDMaps = None,
) -> None:
    """``tarAppender.addTarFile`` (``pkg/archive/archive.go``): one entry for ``path`` named ``name``.

    ``inode_map`` (``st_ino`` -> first name) turns later names of a hard-linked inode into
    ``TypeLink`` entries. Raises on any failure before anything was written for the entry.
    """
    try:
        st = os.lstat(path)
    except OSError as err:
        raise PathError("lstat", path, err.errno or errno.EIO) from None
    _add_tar_file(writer, path, name, st, inode_map, uid_maps, gid_maps)


def _add_tar_file(writer: TarWriter, path: str, name: str, st: os.stat_result,
                  inode_map: Dict[int, str], uid_maps: IDMaps, gid_maps: IDMaps,
                  dfd: Optional[int] = None, base: str = "") -> None:
    """With ``dfd`` the entry is ``base`` in that directory (``*at`` calls; ``path`` only
    names it in errors), which is how entries deeper than ``PATH_MAX`` are read."""
    mode = st.st_mode
    fmt = mode & 0o170000
    link = ""
    if fmt == stat.S_IFLNK:
        try:
            link = os.readlink(base, dir_fd=dfd) if dfd is not None else os.readlink(path)
        except OSError as err:
            raise PathError("readlink", path, err.errno or errno.EIO) from None

    is_dir = fmt == stat.S_IFDIR
    if is_dir and not name.endswith("/"):
        name += "/"
    # file_info_header, inlined for the hot path
    try:
        bits, flag = _FORMATS[fmt]
    except KeyError:
        raise ArchiveError("archive/tar: unknown file mode %o" % mode) from None
    hdr = Header(name, bits | (mode & 0o7777), st.st_uid, st.st_gid,
                 st.st_size if flag == TYPE_REG else 0, st.st_mtime_ns, flag,
                 link if flag == TYPE_SYMLINK else "", "", "", 0, 0,
                 st.st_atime_ns, st.st_ctime_ns)

    # Bitwise tests, as in setHeaderForSpecialDevice: true for dirs/symlinks/sockets too,
    # whose rdev is 0. The old 32-bit encoding of major/minor.
    if mode & 0o60000:
        rdev = st.st_rdev
        hdr.devmajor = (rdev >> 8) & 0xFFF
        hdr.devminor = (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)

    if not is_dir and st.st_nlink > 1:
        first = inode_map.get(st.st_ino)
        if first is not None:
            hdr.typeflag = flag = TYPE_LINK
            hdr.linkname = first
            hdr.size = 0
        else:
            inode_map[st.st_ino] = name

    # Whiteouts were written by the kernel with host ownership already, so not mapped.
    if (uid_maps is not None or gid_maps is not None) and not gopath.basename(
            hdr.name).startswith(WHITEOUT_PREFIX):
        hdr.uid = to_container(st.st_uid, uid_maps)
        hdr.gid = to_container(st.st_gid, gid_maps)

    fd = None
    if flag == TYPE_REG:
        try:
            fd = os.open(base, _OPEN_FLAGS, dir_fd=dfd) if dfd is not None else os.open(path, _OPEN_FLAGS)
        except OSError as err:
            raise PathError("open", path, err.errno or errno.EIO) from None
    try:
        if fd is not None:
            hdr.xattrs = {_CAP: os.getxattr(fd, _CAP)}
        else:
            hdr.xattrs = {_CAP: os.getxattr(fdwalk.at_path(dfd, base, path) if dfd is not None else path,
                                            _CAP, follow_symlinks=False)}
    except OSError:
        pass  # absent, or unreadable: the reference ignores the error too

    if fd is None:
        writer.write_header(hdr)
        return
    try:
        size = hdr.size
        if size <= _SMALL:
            try:
                body = os.read(fd, size) if size else b""
                while 0 < len(body) < size:
                    more = os.read(fd, size - len(body))
                    if not more:
                        break
                    body += more
            except OSError as err:
                raise PathError("read", path, err.errno or errno.EIO) from None
            writer.write_entry(hdr, body)
        else:
            writer.write_header(hdr)
            writer.copy_from_fd(fd)
    finally:
        os.close(fd)


def _reader_error(err: BaseException) -> BaseException:
    """What the reader of the pipe gets: the producer's error itself when it is a Go error
    (``io.Pipe``'s ``CloseWithError`` hands the same value over, class and errno included),
    else its text as an :class:`ArchiveError`."""
    from ..goerrors import GoError
    if isinstance(err, (OSError, GoError)):
        return err
    return ArchiveError(str(err))


class TarStream(io.RawIOBase):
    """The read end of a pipe filled by a tar-producing thread.

    ``close()`` closes the read end (so a blocked writer fails with EPIPE), tells the
    producer to stop and joins it. An unexpected producer failure is raised from the read
    that reaches the end of the data: a Go error as it is (as ``io.Pipe.CloseWithError``
    hands it over), anything else as an :class:`ArchiveError`.
    """

    def __init__(self, produce: Callable[[TarWriter, threading.Event], None], name: str):
        super().__init__()
        self._r, self._w = os.pipe()
        try:  # fewer wake-ups between producer and consumer
            fcntl.fcntl(self._w, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[TarWriter, threading.Event], None]) -> None:
        try:
            writer = TarWriter(self._w)
            produce(writer, self._stop)
            if not self._stop.is_set():
                writer.close()
        except BrokenPipeError:
            pass  # the reader went away
        except BaseException as err:  # noqa: BLE001 - handed to the reader
            if not self._stop.is_set():
                log.debug("tar stream producer failed: %s", err)
                self._error = err
        finally:
            os.close(self._w)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._r

    def readinto(self, buf) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        n = os.readv(self._r, [buf])
        if n == 0 and self._error is not None:
            err, self._error = self._error, None
            raise _reader_error(err)
        return n

    def read(self, size: int = -1) -> bytes:
        """``RawIOBase.read`` without its intermediate buffer (one copy less per chunk)."""
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("I/O operation on closed file")
        data = os.read(self._r, size)
        if not data and self._error is not None:
            err, self._error = self._error, None
            raise _reader_error(err)
        return data

    def close(self) -> None:
        if self.closed:
            return
        self._stop.set()
        try:
            os.close(self._r)
        finally:
            self._thread.join()
            super().close()


def export_changes(
    dir: str,  # noqa: A002 - the reference's parameter name
    changes: Sequence[Change],
    uid_maps: IDMaps = None,
    gid_maps: IDMaps = None,
) -> TarStream:
    """``ExportChanges`` (``pkg/archive/changes.go``; docs/reference-behaviour.md#whiteouts): a tar of ``changes`` taken from ``dir``, sorted by path;
    deletes become ``.wh.`` entries (mode 0, size 0, type ``\\0``, times now). Per-entry
    failures are logged at debug level and the entry is skipped, as in the reference, except
    where the entry could not be reached at all (out of descriptors or memory): then the
    stream fails naming it. Entries past ``PATH_MAX`` are read relative to their directory."""
    ordered: List[Change] = sorted(changes, key=lambda c: os.fsencode(c.path))

    def produce(writer: TarWriter, stop: threading.Event) -> None:
        inode_map: Dict[int, str] = {}
        for change in ordered:
            if stop.is_set():
                return
            if change.kind == ChangeKind.DELETE:
                whiteout = gopath.join(gopath.dirname(change.path),
                                       WHITEOUT_PREFIX + gopath.basename(change.path))
                now = time.time_ns()
                hdr = Header(name=whiteout[1:], size=0, mtime_ns=now, atime_ns=now, ctime_ns=now)
                try:
                    writer.write_header(hdr)
                except (ValueError, OSError) as err:
                    if isinstance(err, BrokenPipeError):
                        raise
                    log.debug("Can't write whiteout header: %s", err)
            else:
                path = gopath.join(dir, change.path)
                try:
                    if fdwalk.is_long(path):
                        parents.add(writer, path, change.path[1:], inode_map, uid_maps, gid_maps)
                    else:
                        add_tar_file(writer, path, change.path[1:], inode_map, uid_maps, gid_maps)
                except BrokenPipeError:
                    raise
                except (OSError, ValueError, ArchiveError) as err:
                    _give_up_on(err, path)
                    log.debug("Can't add file %s to tar: %s", path, err)

    parents = _Parents()

    def produce_and_close(writer: TarWriter, stop: threading.Event) -> None:
        try:
            produce(writer, stop)
        finally:
            parents.close()

    return TarStream(produce_and_close, "export-changes")


def _give_up_on(err: BaseException, path: str) -> None:
    """Skipping an entry is the reference's answer to an entry that vanished or cannot be
    mapped; an export that could not *reach* it (no descriptors, no memory, a path the
    kernel refuses) fails instead, naming the path: never a tar with less and exit 0."""
    if isinstance(err, OSError) and err.errno in fdwalk.RESOURCE_ERRNOS:
        raise ArchiveError("Can't add file %s to tar: %s" % (path, err)) from None


class _Parents:
    """The directory of the last long-path entry, kept open: the changes come sorted, so
    consecutive deep entries mostly share it."""

    def __init__(self) -> None:
        self.path: Optional[str] = None
        self.fd: Optional[int] = None

    def add(self, writer: TarWriter, path: str, name: str, inode_map: Dict[int, str],
            uid_maps: IDMaps, gid_maps: IDMaps) -> None:
        head, base = fdwalk.split_parent(path)
        if head != self.path:
            self.close()
            try:
                self.fd = fdwalk.open_dir_path(head)
            except OSError as err:
                raise PathError("lstat", path, err.errno or errno.EIO) from None
            self.path = head
        try:
            st = os.lstat(base, dir_fd=self.fd)
        except OSError as err:
            raise PathError("lstat", path, err.errno or errno.EIO) from None
        _add_tar_file(writer, path, name, st, inode_map, uid_maps, gid_maps, self.fd, base)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = self.path = None


def tar_tree(
    dir: str,  # noqa: A002
    uid_maps: IDMaps = None,
    gid_maps: IDMaps = None,
) -> TarStream:
    """``Tar(dir, Uncompressed)`` (``pkg/archive/archive.go``): every entry below ``dir`` in sorted walk order,
    relative names, directories with a trailing ``/``, the root itself skipped."""

    def produce(writer: TarWriter, stop: threading.Event) -> None:
        inode_map: Dict[int, str] = {}
        root = dir.rstrip("/") or "/"

        def add(path: str, rel: str, st: os.stat_result) -> None:  # the root, if not a dir
            try:
                _add_tar_file(writer, path, rel, st, inode_map, uid_maps, gid_maps)
            except BrokenPipeError:
                raise
            except (OSError, ValueError, ArchiveError) as err:
                log.debug("Can't add file %s to tar: %s", path, err)

        try:
            top = os.lstat(root)
        except OSError as err:
            log.debug("Tar: Can't stat file %s to tar: %s", dir, err)
            return
        if not stat.S_ISDIR(top.st_mode):
            add(root, ".", top)
            return

        def listing(fd: int, path: str) -> List[str]:
            try:
                names = os.listdir(fd)
            except OSError as err:
                if err.errno in fdwalk.RESOURCE_ERRNOS:
                    raise ArchiveError("Tar: Can't read directory %s: %s" % (
                        path, PathError("open", path, err.errno))) from None
                log.debug("Tar: Can't stat file %s to tar: %s", dir, err)
                return []
            gofs.sort_names(names)
            return names

        def open_dir(fd: Optional[int], name: str, path: str) -> Optional[int]:
            try:
                if fd is None:
                    return fdwalk.open_dir_path(path)
                return os.open(name, fdwalk.DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in fdwalk.RESOURCE_ERRNOS:
                    raise ArchiveError("Tar: Can't read directory %s: %s" % (
                        path, PathError("open", path, err.errno))) from None
                log.debug("Tar: Can't stat file %s to tar: %s", dir, err)
                return None

        # Pre-order, sorted, iterative, relative to the descriptor of the directory read
        # (:mod:`fdwalk`): any depth, any path length. Frame data: (relative name, names).
        stack = fdwalk.DirStack()
        try:
            rfd = open_dir(None, root, root)
            if rfd is None:
                return
            stack.push([rfd], [root], ("", iter(listing(rfd, root))))
            while stack:
                if stop.is_set():
                    return
                frame = stack.top()
                dfd = frame.fds[0]
                dpath = frame.paths[0]
                drel, it = frame.data
                for name in it:
                    path = dpath + "/" + name if dpath != "/" else "/" + name
                    rel = drel + name
                    try:
                        st = os.lstat(name, dir_fd=dfd)
                    except OSError as err:
                        if err.errno in fdwalk.RESOURCE_ERRNOS:
                            raise ArchiveError("Can't add file %s to tar: %s" % (
                                path, PathError("lstat", path, err.errno))) from None
                        log.debug("Tar: Can't stat file %s to tar: %s", dir, err)
                        continue
                    try:
                        _add_tar_file(writer, path, rel, st, inode_map, uid_maps, gid_maps, dfd, name)
                    except BrokenPipeError:
                        raise
                    except (OSError, ValueError, ArchiveError) as err:
                        _give_up_on(err, path)
                        log.debug("Can't add file %s to tar: %s", path, err)
                    if stat.S_ISDIR(st.st_mode):
                        cfd = open_dir(dfd, name, path)
                        if cfd is None:
                            continue
                        try:
                            names = listing(cfd, path)
                        except BaseException:
                            os.close(cfd)
                            raise
                        stack.push([cfd], [path], (rel + "/", iter(names)), name)
                        break
                else:
                    try:
                        stack.pop()
                    except OSError as err:
                        raise ArchiveError("Tar: Can't read directory %s: %s" % (
                            dpath, err)) from None
        finally:
            stack.close()

    return TarStream(produce, "tar-tree")
