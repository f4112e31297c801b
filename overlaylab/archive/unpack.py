"""Applying a layer tar to a directory: ``archive.UnpackLayer`` and ``createTarFile``
(moby v1.10.3 ``pkg/archive/diff.go``, ``archive.go``), plus the in-process ``ApplyUncompressedLayer``.

The reference relies on the chroot of its apply helper for safety; run in-process it can be
made to write outside the destination (``..`` names create parents before the breakout
check, an absolute symlink followed by entries below it, hard links through such symlinks,
``.wh...`` whiteouts). Here the entry's path is always resolved inside ``dest`` the way the
kernel resolves it inside the chroot (every element is ``lstat``-ed, symlinks are followed
with ``dest`` as ``/``), so the in-process and chrooted paths behave alike and nothing is ever
created, changed or removed outside ``dest``. In addition (deviations, all on hostile input):
absolute names and names that clean to ``..`` are breakouts; the hard-link/symlink checks use
a directory-boundary prefix test; a whiteout that would remove ``dest`` itself or something
above it is a breakout; a non-directory entry for ``.`` is refused.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Union

from ..goerrors import LinkError, PathError, SyscallError, go_quote
from ..idtools import IDMap, IDMapError, get_root_uid_gid, maps_from_json, maps_to_json, to_host
from . import gofs, gopath
from .errors import ArchiveError, BreakoutError
from .tarheader import (
    TYPE_BLOCK, TYPE_CHAR, TYPE_DIR, TYPE_FIFO, TYPE_LINK, TYPE_REG, TYPE_REGA, TYPE_SYMLINK,
    TYPE_XGLOBAL, ZERO_TIME_NS, Header,
)
from .tarreader import TarReader
from .whiteouts import WHITEOUT_LINK_DIR, WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE_DIR, WHITEOUT_PREFIX

_LOGGER = "overlaylab.archive"


def _debug(msg: str) -> None:
    """``log.debug`` without importing :mod:`logging` into the chrooted apply helper: if
    nothing imported logging, nothing configured a handler either, and a debug record would
    go nowhere (the last-resort handler prints warnings and up only)."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(_LOGGER).debug(msg)

_COPY_CHUNK = 1 << 20
# The fast path creates a regular file exclusively: success proves nothing was in the way.
_REG_EXCL_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_FAST_TYPES = frozenset((TYPE_REG, TYPE_REGA, TYPE_DIR, TYPE_SYMLINK, TYPE_LINK))
_MAX_CHTIMES_NS = gofs.MAX_CHTIMES_NS


@dataclass
class TarOptions:
    """The ``TarOptions`` fields UnpackLayer uses; JSON uses the Go field names (``archive.TarOptions``)."""

    uid_maps: Optional[List[IDMap]] = None
    gid_maps: Optional[List[IDMap]] = None
    #: Port additions (not Go fields; written to the JSON only when set, and a Go decoder
    #: ignores them): ``shared_inodes`` says dest's files are hard links into another layer
    #: (overlay's ApplyDiff), so a hard-link entry to one of them is reported in
    #: ``warnings``; ``safe_apply`` copies such a file first so the other layer stays intact.
    shared_inodes: bool = False
    safe_apply: bool = False
    #: Where the warnings of the apply go (the caller's list; never serialized).
    warnings: Optional[List[str]] = None

    def to_json(self) -> str:
        # Every exported field of the Go struct, in declaration order, as json.Marshal writes
        # it after chrootarchive set ExcludePatterns to [].
        doc: Dict[str, Any] = {
            "IncludeFiles": None,
            "ExcludePatterns": [],
            "Compression": 0,
            "NoLchown": False,
            "UIDMaps": maps_to_json(self.uid_maps),
            "GIDMaps": maps_to_json(self.gid_maps),
            "ChownOpts": None,
            "IncludeSourceDir": False,
            "NoOverwriteDirNonDir": False,
            "RebaseNames": None,
        }
        if self.shared_inodes:
            doc["OverlaylabSharedInodes"] = True
        if self.safe_apply:
            doc["OverlaylabSafeApply"] = True
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Union[str, bytes]) -> "TarOptions":
        doc = json.loads(data)
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise ValueError("json: cannot unmarshal %s into Go value of type archive.TarOptions"
                             % type(doc).__name__)
        return cls(maps_from_json(doc.get("UIDMaps")), maps_from_json(doc.get("GIDMaps")),
                   doc.get("OverlaylabSharedInodes") is True, doc.get("OverlaylabSafeApply") is True)


def _pjoin(parent: str, name: str) -> str:
    return parent + name if parent.endswith("/") else parent + "/" + name


def _lstat(path: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except OSError:
        return None


def mkdev(major: int, minor: int) -> int:
    """``system.Mkdev``: the old 32-bit encoding, ``(minor & 0xfff00) << 12 | ...`` (``pkg/system/mknod.go``)."""
    return ((minor & 0xFFF00) << 12) | ((major & 0xFFF) << 8) | (minor & 0xFF)


class _Unpacker:
    def __init__(self, dest: str, options: Optional[TarOptions], display_root: str = ""):
        self.dest = gopath.clean(os.path.abspath(dest))
        self._dest_slash = self.dest if self.dest.endswith("/") else self.dest + "/"
        # The layer's real path, for texts: inside the chroot dest is "/" (port addition).
        self.shown_root = gopath.clean(display_root) if display_root else self.dest
        self.options = options or TarOptions()
        self.warnings: List[str] = self.options.warnings if self.options.warnings is not None else []
        self._own_inodes: Set[Any] = set()    # regular files this apply made (shared_inodes only)
        self._warned_inodes: Set[Any] = set()
        try:
            self.root_uid, self.root_gid = get_root_uid_gid(
                self.options.uid_maps, self.options.gid_maps)
        except IDMapError as err:
            raise ArchiveError(str(err)) from None
        self.dirs: List[Header] = []
        self.unpacked: Set[str] = set()
        self.aufs_tempdir = ""
        self.aufs_hardlinks: Dict[str, Header] = {}
        self._dir_cache: Dict[str, str] = {}

    # -- paths ---------------------------------------------------------------------------

    def _show(self, path: str) -> str:
        """A path below dest as the user knows it: under the layer's real path, not the
        chroot's ``/`` (the breakout texts; OS errors are mapped by the chrooted helper)."""
        if self.shown_root == self.dest:
            return path
        if path == self.dest:
            return self.shown_root
        return gopath.join(self.shown_root, path[len(self.dest):])

    def _display(self, name: str) -> str:
        """The path the reference would use (``filepath.Join(dest, name)``), for messages."""
        return gopath.join(self.dest, name)

    def _display_clean(self, name: str) -> str:
        """``_display`` for a clean relative name that is not ``.`` and does not start with
        ``..`` (what ``_entry`` has after its breakout check): plain concatenation."""
        return self._dest_slash + name

    def _resolve_dir(self, rel: str, create: bool) -> str:
        """The real directory for ``rel`` (symlinks followed inside dest); with ``create``
        missing elements are made 0600 like the reference's implicit parents."""
        if rel == ".":
            return self.dest
        hit = self._dir_cache.get(rel)
        if hit is not None:
            return hit
        real, complete = gofs.resolve_in_scope(
            self.dest, rel, follow_final=True, mkdir_mode=0o600 if create else None)
        if complete:
            st = _lstat(real)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self._dir_cache[rel] = real
        return real

    def _resolve(self, rel: str, follow_final: bool) -> str:
        if rel in (".", ""):
            return self.dest
        return gofs.resolve_in_scope(self.dest, rel, follow_final=follow_final)[0]

    def _changed(self) -> None:
        self._dir_cache.clear()

    def _remove_all(self, path: str) -> None:
        self._changed()
        gofs.remove_all(path)

    # -- main loop -------------------------------------------------------------------------

    def run(self, stream) -> int:
        reader = TarReader(stream)
        size = 0
        try:
            while True:
                hdr = reader.next()
                if hdr is None:
                    break
                size += hdr.size
                if "\x00" in hdr.name or "\x00" in hdr.linkname:
                    # Go's syscall layer refuses such names with EINVAL.
                    raise PathError("open", self._display(hdr.name.replace("\x00", "")),
                                    errno.EINVAL)
                self._entry(hdr, reader)
            cache = self._dir_cache
            for hdr in self.dirs:
                real = cache.get(hdr.name) or self._resolve(hdr.name, follow_final=True)
                gofs.chtimes(real, hdr.atime_ns, hdr.mtime_ns, display=self._display(hdr.name))
        except (ValueError, OverflowError) as err:  # a value no syscall accepts
            raise ArchiveError(str(err)) from None
        finally:
            if self.aufs_tempdir:
                try:
                    gofs.remove_all(self.aufs_tempdir)
                except OSError:
                    pass
        return size

    def _entry(self, hdr: Header, reader: TarReader) -> None:
        name = gopath.clean(hdr.name)
        hdr.name = name
        if name.startswith("/") or name == ".." or name.startswith("../"):
            raise BreakoutError("%s is outside of %s" % (go_quote(name), go_quote(self.shown_root)))

        # gopath.dirname/basename of a clean relative name
        i = name.rfind("/")
        parent_rel = name[:i] if i > 0 else "."
        if name == ".":
            parent_real = ""
        else:
            parent_real = self._dir_cache.get(parent_rel) or self._resolve_dir(parent_rel, create=True)

        if name.startswith(WHITEOUT_META_PREFIX):
            if name.startswith(WHITEOUT_LINK_DIR) and hdr.typeflag == TYPE_REG:
                base = gopath.basename(name)
                self.aufs_hardlinks[base] = hdr
                if not self.aufs_tempdir:
                    self.aufs_tempdir = gofs.temp_dir("", "dockerplnk")
                tmp = gopath.join(self.aufs_tempdir, base)
                self._create(tmp, tmp, hdr, reader)
            if name != WHITEOUT_OPAQUE_DIR:
                return

        base = name[i + 1:]
        if name != "." and base.startswith(WHITEOUT_PREFIX):
            self._whiteout(name, base, parent_rel, parent_real)
            return

        t = hdr.typeflag
        if name != "." and t in _FAST_TYPES and not (
                t == TYPE_LINK and gopath.clean(hdr.linkname).startswith(WHITEOUT_LINK_DIR)):
            real = _pjoin(parent_real, base)
            if self._fast_create(real, name, hdr, reader):
                if t == TYPE_DIR:
                    self.dirs.append(hdr)
                    self._dir_cache[name] = real  # a directory we just made or verified
                self.unpacked.add(real)
                return

        if name == ".":
            if hdr.typeflag != TYPE_DIR:
                raise ArchiveError("%s: refusing to replace the extraction root %s with a non-directory"
                                   % (go_quote(name), go_quote(self.shown_root)))
            real = self.dest
        else:
            real = _pjoin(parent_real, base)
        display = self._display(name)

        st = _lstat(real)
        if st is not None and not (stat.S_ISDIR(st.st_mode) and hdr.typeflag == TYPE_DIR):
            self._remove_all(real)

        src_hdr, src_data = hdr, reader
        tmp_file = None
        try:
            if hdr.typeflag == TYPE_LINK and gopath.clean(hdr.linkname).startswith(WHITEOUT_LINK_DIR):
                link_base = gopath.basename(hdr.linkname)
                stashed = self.aufs_hardlinks.get(link_base)
                if stashed is None:
                    raise ArchiveError("Invalid aufs hardlink")
                src_hdr = stashed
                tmp_path = gopath.join(self.aufs_tempdir, link_base)
                try:
                    tmp_file = open(tmp_path, "rb")
                except OSError as err:
                    raise PathError("open", tmp_path, err.errno or errno.EIO) from None
                src_data = tmp_file

            # The stashed plnk header is shared, so a second link to it maps its ids again,
            # exactly like the reference (which mutates the same *tar.Header).
            try:
                if src_hdr.uid != self.root_uid:
                    src_hdr.uid = to_host(src_hdr.uid, self.options.uid_maps)
                if src_hdr.gid != self.root_gid:
                    src_hdr.gid = to_host(src_hdr.gid, self.options.gid_maps)
            except IDMapError as err:
                raise ArchiveError(str(err)) from None

            self._create(real, display, src_hdr, src_data)
        finally:
            if tmp_file is not None:
                tmp_file.close()

        if hdr.typeflag == TYPE_DIR:
            self.dirs.append(hdr)
        self.unpacked.add(real)

    # -- whiteouts -------------------------------------------------------------------------

    def _whiteout(self, name: str, base: str, parent_rel: str, parent_real: str) -> None:
        if base == WHITEOUT_OPAQUE_DIR:
            dir_display = gopath.dirname(self._display(name))
            dir_real = self._resolve(parent_rel, follow_final=False)
            try:
                st = os.lstat(dir_real)
            except OSError as err:
                raise PathError("lstat", dir_display, err.errno or errno.EIO) from None
            self._changed()
            if stat.S_ISDIR(st.st_mode):
                self._wipe_opaque(dir_real)
            return
        original = base[len(WHITEOUT_PREFIX):]
        target = gopath.join(parent_real, original) if original else parent_real
        if target == self.dest or not gopath.is_within(self.dest, target):
            raise BreakoutError("%s is outside of %s" % (go_quote(name), go_quote(self.shown_root)))
        self._remove_all(target)

    def _wipe_opaque(self, top: str) -> None:
        """Remove everything below ``top`` not unpacked earlier in this layer (``top`` stays)."""
        stack = [top]
        while stack:
            d = stack.pop()
            subdirs = []
            for n in gofs.read_dir_names(d, missing_ok=True):
                p = _pjoin(d, n)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    raise PathError("lstat", p, err.errno or errno.EIO) from None
                if p not in self.unpacked:
                    gofs.remove_all(p)
                elif stat.S_ISDIR(st.st_mode):
                    subdirs.append(p)
            stack.extend(reversed(subdirs))

    # -- hazards the reference has (warned about; safe_apply avoids the first) ---------------

    def _own_fd(self, fd: int) -> None:
        if self.options.shared_inodes:
            st = os.fstat(fd)
            self._own_inodes.add((st.st_dev, st.st_ino))

    def _before_link(self, target_real: str, display: str, linkname: str) -> None:
        """A hard-link entry to a file dest inherited from another layer (shared inode): the
        entry's mode, owner, xattrs and times land on that layer's file too, as in the
        reference (moby v1.10.3 overlay ApplyDiff: copyDir with hard links, then
        createTarFile's Lchown/Chmod/Chtimes on the link). Warn; with ``safe_apply`` copy the
        file to a new inode first, so only this layer changes."""
        if not self.options.shared_inodes:
            return
        st = _lstat(target_real)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return
        key = (st.st_dev, st.st_ino)
        if key in self._own_inodes:
            return
        if self.options.safe_apply:
            self._break_link(target_real, st, display)
            return
        if key in self._warned_inodes:
            return
        self._warned_inodes.add(key)
        self.warnings.append(
            "hard link %s -> %s changes the parent layer's file too: the link's mode, owner, "
            "xattrs and times are set on the inode the parent shares (as moby v1.10.3's overlay "
            "ApplyDiff does; the option overlay.safe_apply=true copies the file first)"
            % (go_quote(self._in_layer(display)), go_quote(linkname)))

    def _in_layer(self, display: str) -> str:
        """``/usr/bin/x`` for an entry, whatever directory the layer is unpacked in."""
        return "/" + display[len(self._dest_slash):] if display.startswith(self._dest_slash) else display

    def _break_link(self, target_real: str, st: os.stat_result, display: str) -> None:
        """Replace ``target_real`` by a copy of itself (content, owner, xattrs, mode, times);
        its directory keeps its times."""
        parent = os.path.dirname(target_real) or "/"
        shown = self._show(display)
        try:
            pst = os.lstat(parent)
            src = os.open(target_real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise PathError("open", shown, err.errno or errno.EIO) from None
        copy = ""
        try:
            for attempt in range(10000):
                copy = os.path.join(parent, ".safe-apply-%d-%d" % (os.getpid(), attempt))
                try:
                    dst = os.open(copy, _REG_EXCL_FLAGS, 0o600)
                    break
                except FileExistsError:
                    continue
            try:
                while True:
                    chunk = os.read(src, _COPY_CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(dst, view):]
                os.fchown(dst, st.st_uid, st.st_gid)  # before xattrs: chown drops capabilities
                for name in os.listxattr(src):
                    os.setxattr(dst, name, os.getxattr(src, name))
                os.fchmod(dst, stat.S_IMODE(st.st_mode))
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                own = os.fstat(dst)
            finally:
                os.close(dst)
            os.rename(copy, target_real)
            copy = ""
            os.utime(parent, ns=(pst.st_atime_ns, pst.st_mtime_ns), follow_symlinks=False)
        except OSError as err:
            raise PathError("copy", shown, err.errno or errno.EIO) from None
        finally:
            os.close(src)
            if copy:
                try:
                    os.unlink(copy)
                except OSError:
                    pass
        self._own_inodes.add((own.st_dev, own.st_ino))
        self._changed()

    def _check_symlink(self, display: str, linkname: str) -> None:
        """Inside the chroot dest is ``/``, so the reference's symlink check (the target must
        stay below dest) cannot fire and a link above the layer root is stored. Kept, but
        warned about: the same entry applied anywhere else is an ``invalid symlink``."""
        if self.dest != "/" or linkname.startswith("/"):
            return
        probe_root = "/\x00layer"  # a root with room above it
        target = gopath.join(gopath.dirname(probe_root + display), linkname)
        if not gopath.is_within(probe_root, target):
            self.warnings.append(
                "symlink %s -> %s points above the layer root; stored as the reference does (in "
                "its chroot the layer is \"/\", where moby v1.10.3's createTarFile check cannot fire)"
                % (go_quote(self._show(display)), go_quote(linkname)))

    # -- createTarFile -----------------------------------------------------------------------

    def _link_target_stat(self, linkname: str) -> Optional[os.stat_result]:
        """``os.Lstat(hdr.Linkname)``: relative to the working directory, which is ``/`` = dest
        inside the chroot; resolved the same way here in-process."""
        rel = gopath.clean("/" + linkname)[1:]
        return _lstat(self._resolve(rel or ".", follow_final=False))

    def _create(self, real: str, display: str, hdr: Header, data) -> None:
        t = hdr.typeflag
        perm = hdr.mode & 0o7777
        if t == TYPE_DIR:
            st = _lstat(real)
            if not (st is not None and stat.S_ISDIR(st.st_mode)):
                try:
                    os.mkdir(real, perm)
                except OSError as err:
                    raise PathError("mkdir", display, err.errno or errno.EIO) from None
        elif t == TYPE_REG or t == TYPE_REGA:
            try:
                fd = os.open(real, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, perm)
            except OSError as err:
                raise PathError("open", display, err.errno or errno.EIO) from None
            self._own_fd(fd)
            try:
                while True:
                    chunk = data.read(_COPY_CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        try:
                            n = os.write(fd, view)
                        except OSError as err:
                            raise PathError("write", display, err.errno or errno.EIO) from None
                        view = view[n:]
            finally:
                os.close(fd)
        elif t in (TYPE_BLOCK, TYPE_CHAR, TYPE_FIFO):
            kind = {TYPE_BLOCK: stat.S_IFBLK, TYPE_CHAR: stat.S_IFCHR, TYPE_FIFO: stat.S_IFIFO}[t]
            try:
                os.mknod(real, perm | kind, mkdev(hdr.devmajor, hdr.devminor))
            except OSError as err:
                raise SyscallError(err.errno or errno.EIO) from None
        elif t == TYPE_LINK:
            target = gopath.join(self.dest, hdr.linkname)
            if not gopath.is_within(self.dest, target):
                raise BreakoutError("invalid hardlink %s -> %s" % (go_quote(self._show(target)), go_quote(hdr.linkname)))
            rel = target[len(self.dest):].lstrip("/") or "."
            target_real = self._resolve(rel, follow_final=False)
            self._before_link(target_real, display, hdr.linkname)
            try:
                os.link(target_real, real, follow_symlinks=False)
            except OSError as err:
                raise LinkError("link", target, display, err.errno or errno.EIO) from None
        elif t == TYPE_SYMLINK:
            target = gopath.join(gopath.dirname(display), hdr.linkname)
            if not gopath.is_within(self.dest, target):
                raise BreakoutError("invalid symlink %s -> %s" % (go_quote(self._show(display)), go_quote(hdr.linkname)))
            self._check_symlink(display, hdr.linkname)
            try:
                os.symlink(hdr.linkname, real)
            except OSError as err:
                raise LinkError("symlink", hdr.linkname, display, err.errno or errno.EIO) from None
        elif t == TYPE_XGLOBAL:
            _debug("PAX Global Extended Headers found and ignored")
            return
        else:
            raise ArchiveError("Unhandled tar header type %d\n" % t)
        self._finish(real, display, hdr, t, perm)

    def _finish(self, real: str, display: str, hdr: Header, t: int, perm: int) -> None:
        """createTarFile after the inode exists: lchown, xattrs, chmod, times."""
        try:
            os.chown(real, hdr.uid, hdr.gid, follow_symlinks=False)
        except OSError as err:
            raise PathError("lchown", display, err.errno or errno.EIO) from None
        except OverflowError:
            raise PathError("lchown", display, errno.EINVAL) from None

        _set_xattrs(real, hdr.xattrs, display)

        link_ok = True
        if t == TYPE_LINK:
            lst = self._link_target_stat(hdr.linkname)
            link_ok = lst is not None and not stat.S_ISLNK(lst.st_mode)
        if t != TYPE_SYMLINK and link_ok:
            try:
                os.chmod(real, perm)
            except OSError as err:
                raise PathError("chmod", display, err.errno or errno.EIO) from None

        atime = hdr.atime_ns if hdr.atime_ns >= hdr.mtime_ns else hdr.mtime_ns
        if t == TYPE_SYMLINK:
            gofs.lutimes_nano(real, None if atime == ZERO_TIME_NS else atime,
                              None if hdr.mtime_ns == ZERO_TIME_NS else hdr.mtime_ns)
        elif link_ok:
            gofs.chtimes(real, atime, hdr.mtime_ns, display=display)

    # -- fast path ---------------------------------------------------------------------------

    def _fast_create(self, real: str, name: str, hdr: Header, reader: TarReader) -> bool:
        """The common case of ``_entry`` + ``createTarFile`` for a regular file, directory,
        symlink or hard link whose path is free, in fewer syscalls: create first (exclusively)
        instead of ``lstat`` + create. Returns False, having changed nothing (not even
        ``hdr``), when anything before the inode exists fails: the caller then runs the
        reference sequence (lstat, remove what is in the way, create), which reproduces the
        reference's side effects and errors exactly. Once the inode exists, failures are the
        reference's own and are raised."""
        uid, gid = hdr.uid, hdr.gid
        try:
            if uid != self.root_uid:
                uid = to_host(uid, self.options.uid_maps)
            if gid != self.root_gid:
                gid = to_host(gid, self.options.gid_maps)
        except IDMapError:
            return False
        t = hdr.typeflag
        perm = hdr.mode & 0o7777
        if t == TYPE_REG or t == TYPE_REGA:
            try:
                fd = os.open(real, _REG_EXCL_FLAGS, perm)
            except (OSError, ValueError):
                return False
            hdr.uid, hdr.gid = uid, gid
            try:
                if self.options.shared_inodes:
                    self._own_fd(fd)
                self._fast_regular(fd, real, name, hdr, reader, perm)
            finally:
                os.close(fd)
            return True
        if t == TYPE_DIR:
            try:
                os.mkdir(real, perm)
            except (OSError, ValueError):
                return False
        elif t == TYPE_SYMLINK:
            display = self._display_clean(name)
            target = gopath.join(gopath.dirname(display), hdr.linkname)
            if not gopath.is_within(self.dest, target):
                return False
            try:
                os.symlink(hdr.linkname, real)
                self._check_symlink(display, hdr.linkname)
            except (OSError, ValueError):
                return False
        else:  # TYPE_LINK
            target = gopath.join(self.dest, hdr.linkname)
            if not gopath.is_within(self.dest, target):
                return False
            rel = target[len(self.dest):].lstrip("/") or "."
            try:
                target_real = self._resolve(rel, follow_final=False)
                self._before_link(target_real, self._display_clean(name), hdr.linkname)
                os.link(target_real, real, follow_symlinks=False)
            except (OSError, ValueError):
                return False
        hdr.uid, hdr.gid = uid, gid
        self._finish(real, self._display_clean(name), hdr, t, perm)
        return True

    def _fast_regular(self, fd: int, real: str, name: str, hdr: Header, data: TarReader,
                      perm: int) -> None:
        """Body and metadata of a regular file just created exclusively at ``real``: the
        same steps as createTarFile, on the open descriptor (the same inode as ``real``).
        Texts name the entry as ``_display_clean(name)``, made only when needed."""
        try:
            data.copy_to_fd(fd)
        except OSError as err:
            raise PathError("write", self._display_clean(name), err.errno or errno.EIO) from None
        try:
            os.fchown(fd, hdr.uid, hdr.gid)
        except OSError as err:
            raise PathError("lchown", self._display_clean(name), err.errno or errno.EIO) from None
        except OverflowError:
            raise PathError("lchown", self._display_clean(name), errno.EINVAL) from None
        if hdr.xattrs:
            _set_xattrs(real, hdr.xattrs, self._display_clean(name))
        try:
            os.fchmod(fd, perm)
        except OSError as err:
            raise PathError("chmod", self._display_clean(name), err.errno or errno.EIO) from None
        # system.Chtimes: atime raised to mtime, both clamped to [epoch, max] else the epoch
        mtime = hdr.mtime_ns
        atime = hdr.atime_ns if hdr.atime_ns >= mtime else mtime
        if not 0 <= atime <= _MAX_CHTIMES_NS:
            atime = 0
        if not 0 <= mtime <= _MAX_CHTIMES_NS:
            mtime = 0
        try:
            os.utime(fd, ns=(atime, mtime))
        except OSError as err:
            raise PathError("chtimes", self._display_clean(name), err.errno or errno.EIO) from None


def unpack_layer(dest: str, stream, options: Optional[TarOptions] = None, display_root: str = "") -> int:
    """``archive.UnpackLayer``: apply the layer tar read from ``stream`` to ``dest`` and return
    the sum of the entries' sizes (docs/reference-behaviour.md#the-tar-layer). Raises :class:`ArchiveError` (incl.
    :class:`BreakoutError`) or an ``OSError`` subclass carrying the Go error text.
    ``display_root`` is the layer's path for the texts when ``dest`` is a chroot's ``/``."""
    return _Unpacker(dest, options, display_root).run(stream)


def apply_layer_in_process(dest: str, stream, options: Optional[TarOptions] = None) -> int:
    """``archive.ApplyUncompressedLayer`` (``pkg/archive/diff.go``): umask 0 while unpacking, restored after.

    The umask is process-wide: other threads creating files meanwhile get umask 0 too.
    """
    dest = gopath.clean(dest)
    old = os.umask(0)
    try:
        return unpack_layer(dest, stream, options)
    finally:
        os.umask(old)


class XattrError(SyscallError):
    """A failed ``lsetxattr`` of a header's ``SCHILY.xattr.*``. Go returns the bare
    ``syscall.Errno`` (``numerical result out of range``); the port keeps that class and
    errno but names the entry and the xattr: ``lsetxattr <path> xattr <name> (<n>-byte
    value): <errno text>`` (a deliberate, documented addition to the text)."""

    def __init__(self, code: int, path: str, name: str, size: int):
        super().__init__(code)
        self.filename = path
        self.xattr = name
        self.size = size

    def __str__(self) -> str:
        name = self.xattr
        shown = go_quote(name) if len(name) <= 80 else "%s... (%d characters)" % (go_quote(name[:64]), len(name))
        return "lsetxattr %s xattr %s (%d-byte value): %s" % (self.filename, shown, self.size, self.strerror)


def _set_xattrs(path: str, xattrs, display: str = "") -> None:
    """Every ``SCHILY.xattr.*`` of the header, in name order; any failure is fatal (``createTarFile``)."""
    for key in sorted(xattrs or ()):
        value = xattrs[key]
        try:
            os.setxattr(path, key, value, 0, follow_symlinks=False)
        except OSError as err:
            raise XattrError(err.errno or errno.EIO, display or path, key, len(value)) from None
        except ValueError:  # an embedded NUL in the name
            raise XattrError(errno.EINVAL, display or path, key, len(value)) from None
