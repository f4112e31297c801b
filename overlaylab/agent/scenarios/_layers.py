"""Shared helpers of the scenario catalogue: layer tars, layer ids, mounted views, file checks.

Layer ids, ``Get``/``Put`` as a context, file writing/reading and the time-stamping and change
helpers come from the graph driver suite (:mod:`overlaylab.graphdriver.graphtest`), which the
graphtest scenarios run; the rest is the scenarios' own.

Layer tars are built in memory with :class:`LayerTar` (ustar/PAX via :mod:`tarfile`, every
header field under control: owners, modes, mtimes, device numbers, hard links, whiteouts,
xattrs as ``SCHILY.xattr.*`` PAX records) and written to the scenario's scratch directory
(``ctx.path()``, which is *not* on the backing filesystem) before being applied, the way a
pulled layer reaches ``ApplyDiff`` as an uncompressed stream.

:class:`GeneratedTarStream` is a tar that is generated while it is read (nothing is kept on disk
or in memory), for the layers that are meant to be bigger than the filesystem.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ...graphdriver.graphtest import (  # noqa: F401  (the scenarios' helpers are the suite's)
    backdate,
    change_pairs,
    mounted,
    read_dir,
    read_file,
    tar_bytes,
    write_file,
)
from ...graphdriver.graphtest import random_id as new_id
from ... import mountutil

#: A fixed, whole-second mtime for tar entries (what a pulled layer carries).
TAR_MTIME = 1500000000

# security.capability value: VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, permitted CAP_NET_RAW.
CAP_NET_RAW_XATTR = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")


@dataclass
class _Entry:
    info: tarfile.TarInfo
    data: Optional[bytes] = None


@dataclass
class LayerTar:
    """An image layer tar, entry by entry (names relative, no leading ``/`` or ``./``)."""

    entries: List[_Entry] = field(default_factory=list)
    mtime: int = TAR_MTIME

    def _info(self, name: str, kind: bytes, mode: int, uid: int, gid: int,
              mtime: Optional[int]) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.mtime = self.mtime if mtime is None else mtime
        return info

    def dir(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0,
            mtime: Optional[int] = None) -> "LayerTar":
        self.entries.append(_Entry(self._info(name.rstrip("/") + "/", tarfile.DIRTYPE, mode, uid, gid, mtime)))
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
             mtime: Optional[int] = None, xattrs: Optional[Dict[str, bytes]] = None) -> "LayerTar":
        if isinstance(data, str):
            data = data.encode()
        info = self._info(name, tarfile.REGTYPE, mode, uid, gid, mtime)
        info.size = len(data)
        if xattrs:
            info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                                for k, v in xattrs.items()}
        self.entries.append(_Entry(info, data))
        return self

    def symlink(self, name: str, target: str, uid: int = 0, gid: int = 0) -> "LayerTar":
        info = self._info(name, tarfile.SYMTYPE, 0o777, uid, gid, None)
        info.linkname = target
        self.entries.append(_Entry(info))
        return self

    def hardlink(self, name: str, target: str, mode: int = 0o644, uid: int = 0, gid: int = 0,
                 xattrs: Optional[Dict[str, bytes]] = None) -> "LayerTar":
        info = self._info(name, tarfile.LNKTYPE, mode, uid, gid, None)
        info.linkname = target
        if xattrs:
            info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                                for k, v in xattrs.items()}
        self.entries.append(_Entry(info))
        return self

    def fifo(self, name: str, mode: int = 0o644) -> "LayerTar":
        self.entries.append(_Entry(self._info(name, tarfile.FIFOTYPE, mode, 0, 0, None)))
        return self

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> "LayerTar":
        info = self._info(name, tarfile.CHRTYPE, mode, 0, 0, None)
        info.devmajor, info.devminor = major, minor
        self.entries.append(_Entry(info))
        return self

    def blockdev(self, name: str, major: int, minor: int, mode: int = 0o660) -> "LayerTar":
        info = self._info(name, tarfile.BLKTYPE, mode, 0, 0, None)
        info.devmajor, info.devminor = major, minor
        self.entries.append(_Entry(info))
        return self

    def whiteout(self, path: str) -> "LayerTar":
        """``.wh.<name>``: deletes ``path`` of the layers below."""
        head, tail = os.path.split(path.strip("/"))
        return self.file(os.path.join(head, ".wh." + tail), b"", mode=0o600)

    def opaque(self, directory: str) -> "LayerTar":
        """``<dir>/.wh..wh..opq``: hides every entry the layers below have in ``directory``."""
        return self.file(os.path.join(directory.strip("/"), ".wh..wh..opq"), b"", mode=0o600)

    @property
    def payload_size(self) -> int:
        """What ``ApplyDiff`` must return: the sum of the entries' header sizes (``UnpackLayer``, docs/reference-behaviour.md#the-tar-layer)."""
        return sum(e.info.size for e in self.entries)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for e in self.entries:
                tar.addfile(e.info, io.BytesIO(e.data) if e.data is not None else None)
        return buf.getvalue()

    def write(self, path: str) -> str:
        with open(path, "wb") as f:
            f.write(self.to_bytes())
        return path


_COUNTER = [0]


def apply_layer(ctx, driver, layer_id: str, parent: str, tar: LayerTar) -> int:
    """``ApplyDiff(layer_id, parent, <tar from a file in the scratch dir>)``; returns the size."""
    _COUNTER[0] += 1
    path = tar.write(ctx.path("layer-%d-%s.tar" % (_COUNTER[0], layer_id[:12])))
    with open(path, "rb") as stream:
        return driver.apply_diff(layer_id, parent, stream)


def image_layer(ctx, driver, parent: str, tar: LayerTar, layer_id: Optional[str] = None) -> Tuple[str, int]:
    """Register an image layer as the daemon does: ``Create`` then ``ApplyDiff``."""
    layer_id = layer_id or new_id()
    driver.create(layer_id, parent, "")
    size = apply_layer(ctx, driver, layer_id, parent, tar)
    return layer_id, size


def container(driver, image: str, name: Optional[str] = None) -> Tuple[str, str]:
    """The daemon's ``CreateRWLayer`` without the init hook: ``<id>-init`` on the image, then
    the container layer on the init layer (Create case C). Returns ``(ctr, init)``."""
    ctr = name or new_id()
    init = ctr + "-init"
    driver.create(init, image, "")
    driver.create(ctr, init, "")
    return ctr, init


def lexists(path: str) -> bool:
    return os.path.lexists(path)


def stat_errno(path: str) -> Optional[int]:
    """0 if ``lstat`` works, else its errno."""
    try:
        os.lstat(path)
        return 0
    except OSError as err:
        return err.errno


def walk_tree(root: str) -> Dict[str, str]:
    """Relative path -> type letter (``d f l c b p s``) of everything below ``root``.

    A name that readdir lists but lstat cannot find (an overlay whiteout shown by a kernel
    that cannot tell whiteouts without d_type) is recorded with the letter ``?``.
    """
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            try:
                out[rel] = type_letter(os.lstat(full).st_mode)
            except FileNotFoundError:
                out[rel] = "?"
    return out


def type_letter(mode: int) -> str:
    for test, letter in ((stat.S_ISDIR, "d"), (stat.S_ISREG, "f"), (stat.S_ISLNK, "l"), (stat.S_ISCHR, "c"),
                         (stat.S_ISBLK, "b"), (stat.S_ISFIFO, "p"), (stat.S_ISSOCK, "s")):
        if test(mode):
            return letter
    return "?"


def tar_members(stream) -> List[tarfile.TarInfo]:
    """Read a whole (Diff) stream and return its members; the stream is closed."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(stream)), mode="r:") as tar:
        return tar.getmembers()


def member_map(members: Iterable[tarfile.TarInfo]) -> Dict[str, tarfile.TarInfo]:
    return {m.name.rstrip("/"): m for m in members}


def mounts(driver) -> List[Any]:
    """The mounts at or below the driver home (the table parsed only when it names the home)."""
    return mountutil.mounts_under(driver.home)


def tmproots(driver, layer_id: str) -> List[str]:
    d = os.path.join(driver.home, layer_id)
    try:
        return sorted(n for n in os.listdir(d) if n.startswith("tmproot"))
    except OSError:
        return []


def errno_name(code: Optional[int]) -> str:
    return errno.errorcode.get(code or 0, str(code))


def describe_error(err: BaseException) -> Dict[str, Any]:
    code = getattr(err, "errno", None) or getattr(err, "wrapped_errno", None)
    return {"error": str(err), "type": type(err).__name__, "errno": code, "errno_name": errno_name(code)}


class GeneratedTarStream(io.RawIOBase):
    """A tar stream produced while it is read: ``files`` regular files of ``file_size`` bytes
    (zeros) each, plus the end-of-archive blocks. Never held on disk or in memory as a whole."""

    def __init__(self, files: int, file_size: int, prefix: str = "blob", chunk: int = 1 << 20):
        super().__init__()
        self.files = files
        self.file_size = file_size
        self.prefix = prefix
        self.chunk = chunk
        self.produced = 0
        self._gen = self._generate()
        self._buf = b""

    @property
    def payload_size(self) -> int:
        return self.files * self.file_size

    def _generate(self) -> Iterator[bytes]:
        zeros = bytes(self.chunk)
        for i in range(self.files):
            info = tarfile.TarInfo("%s-%03d" % (self.prefix, i))
            info.size = self.file_size
            info.mode = 0o644
            info.mtime = TAR_MTIME
            yield info.tobuf(format=tarfile.USTAR_FORMAT)
            left = self.file_size
            while left > 0:
                n = min(left, self.chunk)
                yield zeros if n == self.chunk else bytes(n)
                left -= n
            pad = (-self.file_size) % tarfile.BLOCKSIZE
            if pad:
                yield bytes(pad)
        yield bytes(tarfile.BLOCKSIZE * 2)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        want = len(buf)
        while len(self._buf) < want:
            try:
                self._buf += next(self._gen)
            except StopIteration:
                break
        n = min(want, len(self._buf))
        buf[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.produced += n
        return n


def fs_free_bytes(path: str) -> int:
    """Bytes root can still write (``f_bfree``: root may use the reserved blocks)."""
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def fs_inodes(path: str) -> Tuple[int, int]:
    """(total, free) inodes; 0 total means the fs has no fixed inode table (btrfs reports 0)."""
    st = os.statvfs(path)
    return st.f_files, st.f_ffree


def short_dir_path(dir_fd: int, name: str) -> str:
    """A path to ``name`` inside an open directory that stays under AF_UNIX's 108-byte limit."""
    return "/proc/self/fd/%d/%s" % (dir_fd, name)


def param_enabled(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("y", "1", "on", "yes", "true")


def mode_str(mode: int) -> str:
    return stat.filemode(mode)


def chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


@contextlib.contextmanager
def in_process_apply() -> Iterator[None]:
    """Apply layers with ``archive.apply_layer_in_process`` instead of the chrooted helper
    process (what moby 1.12's overlay graphtest binding does). Only for scenarios whose point
    is not the extraction itself and that would otherwise spend ~0.1 s per layer starting the
    helper; restored on exit."""
    from ... import archive
    real = archive.apply_uncompressed_layer
    archive.apply_uncompressed_layer = archive.apply_layer_in_process
    try:
        yield
    finally:
        archive.apply_uncompressed_layer = real


# expectations shared by several scenarios ---------------------------------------------------

def few_inodes(facts, need: int) -> bool:
    """True where the backing fs cannot hold ``need`` inodes: known from ``facts["fs_inodes"]``
    (statvfs ``f_files``, if the runner records it; 0 = no fixed inode table, e.g. btrfs)
    or, failing that, from a profile named or tagged ``fewinodes``."""
    total = facts.get("fs_inodes")
    if isinstance(total, dict):
        total = total.get("total")
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        return total < need + 64  # root dir, lost+found, reserved inodes, the probes' leftovers
    name = str(facts.get("profile") or "")
    tags = facts.get("profile_tags") or ()
    return "fewinodes" in name or "fewinodes" in tags


def expect_inodes(need: int):
    """An ``expect=`` function: the default, but FAIL (ENOSPC) where the fs has fewer than
    ``need`` inodes (measured on ext4: what the scenario really allocates at its peak)."""
    def expect(sc, facts):
        from ..scenario import Expectation, Outcome, default_expect
        base = default_expect(sc, facts)
        if base.outcome is Outcome.PASS and few_inodes(facts, need):
            return Expectation(Outcome.FAIL, "needs ~%d inodes; the fs has too few (ENOSPC with free blocks, moby#17486)"
                               % need)
        return base
    expect.inodes_needed = need  # type: ignore[attr-defined]
    return expect
