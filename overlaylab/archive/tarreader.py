"""A streaming tar reader with Go 1.5 ``archive/tar`` semantics (https://github.com/golang/go/tree/go1.5.3/src/archive/tar).

What the reference's reader does and Python's ``tarfile`` does not (or differently):

- PAX ``x`` headers and GNU ``L``/``K`` long names are consumed and merged into the next
  entry: ``path``, ``linkpath``, ``size``, ``uid``, ``gid``, ``uname``, ``gname``, ``mtime``,
  ``atime``, ``ctime`` (nanoseconds kept) and ``SCHILY.xattr.*`` (raw bytes); unparsable
  values are ignored;
- PAX global ``g`` headers are returned as entries (the caller logs and ignores them);
- the mode field is returned raw, file-type bits included;
- a plain USTAR header has no atime: ``atime_ns`` is ``ZERO_TIME_NS``; "star" headers carry
  atime/ctime;
- end of archive is a zero block followed by EOF or a second zero block, or EOF at a header
  boundary; a zero block followed by anything else, a bad checksum or an unparsable number
  is ``archive/tar: invalid tar header``.

Stricter than Go 1.5 (which would silently stop or mis-read): a stream cut inside a header,
a body or its padding raises ``unexpected EOF``; the PAX ``size`` governs how much body is
read; PAX (GNU 0.x/1.0) sparse files are refused instead of being expanded.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import struct
import sys
from typing import Dict, List, Optional, Tuple

try:
    from zlib import adler32 as _adler32
except ImportError:  # pragma: no cover
    _adler32 = None  # type: ignore[assignment]

from .errors import INVALID_HEADER, UNEXPECTED_EOF, ArchiveError
from .tarheader import (
    BLOCK, PAX_XATTR, TYPE_BLOCK, TYPE_CHAR, TYPE_GNU_LONGLINK, TYPE_GNU_LONGNAME,
    TYPE_XHEADER, ZERO_BLOCK, ZERO_TIME_NS, Header,
)

_CHUNK = 64 * 1024
_MAX_META = 16 * 1024 * 1024  # PAX/GNU long-name bodies are held in memory
_FS_ENC = sys.getfilesystemencoding()
_FS_ERR = sys.getfilesystemencodeerrors()

# Bodies of at least this much still unread are copied to the file in the kernel, when the
# stream is unbuffered (the chrooted helper's stdin): by splice(2) from a pipe (if Python has
# os.splice), by sendfile(2) from a regular file (never copy_file_range(2): a reflink would
# not allocate the blocks a write does, and out-of-space behaviour must stay the same).
_SPLICE = getattr(os, "splice", None)
_SENDFILE = getattr(os, "sendfile", None)
_KERNEL_COPY_MIN = 64 * 1024


def _splice(src: int, dst: int, count: int) -> int:
    return _SPLICE(src, dst, count)  # type: ignore[misc]


def _sendfile(src: int, dst: int, count: int) -> int:
    return _SENDFILE(dst, src, None, count)  # type: ignore[misc]

# One pass over a header block: name, mode+uid+gid, size, mtime, chksum, typeflag (int),
# linkname, magic+version, uname, gname, devmajor, devminor, prefix (+ star times), tail.
_HEADER = struct.Struct("100s24s12s12s8sB100s8s32s32s8s8s155s12s")
_unpack_header = _HEADER.unpack


def _cstring(b: bytes) -> bytes:
    i = b.find(b"\x00")
    return b if i < 0 else b[:i]


def _read_error(err: OSError) -> BaseException:
    """A failed read of the layer stream: Go's ``tar.Reader`` returns the reader's error as it
    is, so a Go-typed error (a ``PathError`` from an export pipe, say) passes through with its
    class; a raw Python ``OSError`` keeps its text as an :class:`ArchiveError`."""
    from ..goerrors import LinkError, PathError, SyscallError
    if isinstance(err, (PathError, LinkError, SyscallError)):
        return err
    return ArchiveError("read: %s" % (err.strerror or err))


class _FieldError(Exception):
    pass


def _octal(b: bytes) -> int:
    """Go 1.5 ``Reader.octal``: base-256 if the high bit is set, else trimmed octal text."""
    if b and b[0] & 0x80:
        x = b[0] & 0x7F
        for c in b[1:]:
            x = (x << 8) | c
        if x >= 1 << 63:  # int64 wrap-around in Go: a negative number
            x -= 1 << 64
        return x
    t = _cstring(b.strip(b" \x00"))
    if not t:
        return 0
    if t.translate(None, b"01234567"):
        raise _FieldError()
    return int(t, 8)


_HIGH = bytes(range(0x80, 0x100))

# Numeric fields repeat a lot within a layer (modes, owners, often times and sizes), and
# ``_octal`` is a pure function of the raw field bytes: remember its results (bounded).
_OCTAL_CACHE: Dict[bytes, int] = {}
_OCTAL_CACHE_MAX = 4096
_IDS_CACHE: Dict[bytes, Tuple[int, int, int]] = {}  # raw mode+uid+gid fields -> values


def _octal_cached(b: bytes) -> int:
    try:
        return _OCTAL_CACHE[b]
    except KeyError:
        pass
    value = _octal(b)  # raises _FieldError, never cached
    if len(_OCTAL_CACHE) >= _OCTAL_CACHE_MAX:
        _OCTAL_CACHE.clear()
    _OCTAL_CACHE[b] = value
    return value


def _byte_sum(block: bytes) -> int:
    """The sum of a 512-byte block's bytes, by ``zlib.adler32``: its low half is 1 + the sum
    modulo 65521, exact for 256 bytes (at most 65280)."""
    return (_adler32(block[:256]) & 0xFFFF) + (_adler32(block[256:]) & 0xFFFF) - 2


if _adler32 is None:  # pragma: no cover - a Python built without zlib
    def _byte_sum(block: bytes) -> int:  # noqa: F811
        return sum(block.translate(None, b"\x00"))  # zero bytes add nothing: drop them in C


def _checksums(block: bytes) -> Tuple[int, int]:
    """Unsigned and signed sums with the checksum field read as spaces."""
    rest = block[:148] + block[156:]
    unsigned = sum(rest) + 8 * 0x20
    high = len(rest) - len(rest.translate(None, _HIGH))
    return unsigned, unsigned - 256 * high


def _write_all(fd: int, data) -> None:
    n = os.write(fd, data)
    if n < len(data):
        view = memoryview(data)[n:]
        while view:
            n = os.write(fd, view)
            view = view[n:]


def _pax_time(value: str) -> int:
    """Go 1.5 ``parsePAXTime``: ``sec[.frac]`` with the fraction padded/truncated to 9 digits."""
    if "." in value:
        sec_s, frac = value.split(".", 1)
        frac = (frac + "000000000")[:9]
        if not frac.isdigit():
            raise ValueError(value)
        sec, nsec = int(sec_s, 10), int(frac, 10)
    else:
        sec, nsec = int(value, 10), 0
    return sec * 10 ** 9 + nsec


def _parse_int(value: str) -> int:
    v = value.strip()
    if not v or not (v.lstrip("+-").isdigit()):
        raise ValueError(value)
    return int(v, 10)


def parse_pax(body: bytes) -> Dict[str, bytes]:
    """Records ``"%d key=value\\n"``; any malformed record is ``invalid tar header``."""
    out: Dict[str, bytes] = {}
    buf = body
    while buf:
        sp = buf.find(b" ")
        if sp <= 0:
            raise ArchiveError(INVALID_HEADER)
        try:
            n = int(buf[:sp].decode("ascii"), 10)
        except (ValueError, UnicodeDecodeError):
            raise ArchiveError(INVALID_HEADER) from None
        if n < 5 or len(buf) < n or sp + 1 > n - 1:
            raise ArchiveError(INVALID_HEADER)
        record, buf = buf[sp + 1:n - 1], buf[n:]
        eq = record.find(b"=")
        if eq < 0:
            raise ArchiveError(INVALID_HEADER)
        out[os.fsdecode(record[:eq])] = record[eq + 1:]
    return out


def merge_pax(hdr: Header, headers: Dict[str, bytes]) -> None:
    """Go 1.5 ``mergePAX`` (an unparsable number or time leaves that field alone)."""
    for key, raw in headers.items():
        try:
            if key == "path":
                hdr.name = os.fsdecode(raw)
            elif key == "linkpath":
                hdr.linkname = os.fsdecode(raw)
            elif key == "uname":
                hdr.uname = os.fsdecode(raw)
            elif key == "gname":
                hdr.gname = os.fsdecode(raw)
            elif key == "uid":
                hdr.uid = _parse_int(raw.decode("ascii"))
            elif key == "gid":
                hdr.gid = _parse_int(raw.decode("ascii"))
            elif key == "size":
                size = _parse_int(raw.decode("ascii"))
                if size < 0:
                    raise ValueError
                hdr.size = size
            elif key == "mtime":
                hdr.mtime_ns = _pax_time(raw.decode("ascii"))
            elif key == "atime":
                hdr.atime_ns = _pax_time(raw.decode("ascii"))
            elif key == "ctime":
                hdr.ctime_ns = _pax_time(raw.decode("ascii"))
            elif key.startswith(PAX_XATTR):
                hdr.xattrs[key[len(PAX_XATTR):]] = raw
        except (ValueError, UnicodeDecodeError):
            continue


class TarReader:
    """Iterate entries with :meth:`next`; read the current body with :meth:`read` or
    :meth:`copy_to_fd`. Every failure is an :class:`ArchiveError` with Go's text."""

    def __init__(self, stream):
        self._stream = stream
        self._buf = b""
        self._pos = 0
        self._remaining = 0  # unread body bytes of the current entry
        self._pad = 0
        self._eof = False
        self._kernel_fd = -1  # the stream's descriptor, if bodies can be copied in the kernel
        self._kernel_copy = _splice
        if type(stream) is io.FileIO:  # nothing buffered behind our back
            try:
                fd = stream.fileno()
                mode = os.fstat(fd).st_mode
            except (OSError, ValueError):
                mode = 0
            if _SPLICE is not None and stat.S_ISFIFO(mode):
                self._kernel_fd = fd
            elif _SENDFILE is not None and stat.S_ISREG(mode):
                self._kernel_fd, self._kernel_copy = fd, _sendfile

    # -- raw input ---------------------------------------------------------------------

    def _fill(self) -> bool:
        try:
            chunk = self._stream.read(_CHUNK)
        except OSError as err:
            raise _read_error(err) from None
        if not chunk:
            return False
        self._buf = self._buf[self._pos:] + bytes(chunk) if self._pos < len(self._buf) else bytes(chunk)
        self._pos = 0
        return True

    def _read_exact(self, n: int) -> bytes:
        """``n`` bytes; ``b""`` if the stream ends right here; ``unexpected EOF`` if partway."""
        while len(self._buf) - self._pos < n:
            if not self._fill():
                if len(self._buf) == self._pos:
                    return b""
                raise ArchiveError(UNEXPECTED_EOF)
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def _read_some(self, n: int) -> bytes:
        """Up to ``n`` (> 0) bytes; ``b""`` only at end of stream."""
        if self._pos >= len(self._buf):
            if n >= _CHUNK:
                try:
                    chunk = self._stream.read(min(n, 1 << 20))
                except OSError as err:
                    raise _read_error(err) from None
                return bytes(chunk) if chunk else b""
            if not self._fill():
                return b""
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def _skip(self, n: int) -> None:
        avail = len(self._buf) - self._pos
        if n <= avail:
            self._pos += n
            return
        self._pos = len(self._buf)
        n -= avail
        while n > 0:
            got = self._read_some(min(n, 1 << 20))
            if not got:
                raise ArchiveError(UNEXPECTED_EOF)
            n -= len(got)

    # -- entry bodies ------------------------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        """Read from the current entry's body (all of it if ``n < 0``); ``b""`` at its end."""
        remaining = self._remaining
        if remaining <= 0 or n == 0:
            return b""
        if n < 0:
            parts: List[bytes] = []
            while True:
                part = self.read(1 << 20)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        if n > remaining:
            n = remaining
        pos = self._pos
        if len(self._buf) - pos >= n:  # already buffered: the common case for small bodies
            self._pos = pos + n
            self._remaining = remaining - n
            return self._buf[pos:pos + n]
        got = self._read_some(n)
        if not got:
            raise ArchiveError(UNEXPECTED_EOF)
        self._remaining = remaining - len(got)
        return got

    def copy_to_fd(self, fd: int) -> None:
        """Write the rest of the current entry's body to ``fd``, as ``read`` + ``os.write``
        would, minus copies: buffered bytes are written from a memoryview, and a large rest
        is spliced from a pipe or sent from a file when possible. A short stream raises ``unexpected EOF``
        after writing what there was; a failed write raises the ``OSError`` of the write."""
        remaining = self._remaining
        if remaining <= 0:
            return
        pos = self._pos
        avail = len(self._buf) - pos
        if avail > 0:
            k = avail if avail < remaining else remaining
            self._pos = pos + k
            self._remaining = remaining = remaining - k
            _write_all(fd, memoryview(self._buf)[pos:pos + k] if k < len(self._buf) else self._buf)
        while remaining > 0:
            if self._kernel_fd >= 0 and remaining >= _KERNEL_COPY_MIN:
                try:
                    n = self._kernel_copy(self._kernel_fd, fd, min(remaining, 1 << 30))
                except OSError as err:
                    if err.errno in (errno.EINVAL, errno.ENOSYS):  # not for this pair: copy instead
                        self._kernel_fd = -1
                        continue
                    raise
                if n == 0:
                    raise ArchiveError(UNEXPECTED_EOF)
                self._remaining = remaining = remaining - n
                continue
            chunk = self._read_some(min(remaining, 1 << 20))
            if not chunk:
                raise ArchiveError(UNEXPECTED_EOF)
            self._remaining = remaining = remaining - len(chunk)
            _write_all(fd, chunk)

    def _finish_entry(self) -> None:
        n = self._remaining + self._pad
        if n:
            self._skip(n)
            self._remaining = 0
            self._pad = 0

    # -- headers -----------------------------------------------------------------------

    def _read_block(self) -> Optional[bytes]:
        pos = self._pos
        if len(self._buf) - pos >= BLOCK:
            block = self._buf[pos:pos + BLOCK]
            self._pos = pos + BLOCK
        else:
            block = self._read_exact(BLOCK)
            if not block:
                return None
        if block == ZERO_BLOCK:
            block2 = self._read_exact(BLOCK)
            if not block2 or block2 == ZERO_BLOCK:
                return None
            raise ArchiveError(INVALID_HEADER)
        return block

    def _read_header(self) -> Optional[Header]:
        pos = self._pos
        buf = self._buf
        if len(buf) - pos >= BLOCK and buf[pos]:  # _read_block's common case, inlined: a
            block = buf[pos:pos + BLOCK]          # buffered block that is no zero block
            self._pos = pos + BLOCK
        else:
            block = self._read_block()
            if block is None:
                self._eof = True
                return None
        (name, ids, size_f, mtime_f, chksum, typeflag, linkname, magic, uname, gname,
         devmajor, devminor, prefix, tail) = _unpack_header(block)
        cache = _OCTAL_CACHE
        try:
            given = cache.get(chksum)
            if given is None:
                given = _octal_cached(chksum)
            # Unsigned sum with the checksum field read as spaces; the signed sum only if
            # that does not match.
            if given != _byte_sum(block) - sum(chksum) + 8 * 0x20 and given not in _checksums(block):
                raise ArchiveError(INVALID_HEADER)
            # mode, uid and gid together: one lookup for the usual few combinations
            mode_uid_gid = _IDS_CACHE.get(ids)
            if mode_uid_gid is None:
                mode_uid_gid = (_octal_cached(ids[0:8]), _octal_cached(ids[8:16]),
                                _octal_cached(ids[16:24]))
                if len(_IDS_CACHE) >= _OCTAL_CACHE_MAX:
                    _IDS_CACHE.clear()
                _IDS_CACHE[ids] = mode_uid_gid
            size = cache.get(size_f)
            if size is None:
                size = _octal_cached(size_f)
            mtime = cache.get(mtime_f)
            if mtime is None:
                mtime = _octal_cached(mtime_f)
            i = name.find(b"\x00")
            if i >= 0:
                name = name[:i]
            i = linkname.find(b"\x00")
            if i >= 0:
                linkname = linkname[:i]
            fmt = ""
            if magic[:6] == b"ustar\x00":
                fmt = "star" if tail[8:12] == b"tar\x00" else "posix"
            elif magic == b"ustar  \x00":
                fmt = "gnu"
            hdr = Header(name.decode(_FS_ENC, _FS_ERR), mode_uid_gid[0], mode_uid_gid[1],
                         mode_uid_gid[2], size, mtime * 1000000000, typeflag,
                         linkname.decode(_FS_ENC, _FS_ERR) if linkname else "", "", "", 0, 0,
                         ZERO_TIME_NS, ZERO_TIME_NS, None, fmt or "v7")
            if fmt:
                if uname[0]:
                    hdr.uname = _cstring(uname).decode(_FS_ENC, _FS_ERR)
                if gname[0]:
                    hdr.gname = _cstring(gname).decode(_FS_ENC, _FS_ERR)
                if typeflag == TYPE_CHAR or typeflag == TYPE_BLOCK:
                    hdr.devmajor = _octal_cached(devmajor)
                    hdr.devminor = _octal_cached(devminor)
                if fmt == "star":
                    prefix_b = _cstring(block[345:476])
                    hdr.atime_ns = _octal_cached(block[476:488]) * 10 ** 9
                    hdr.ctime_ns = _octal_cached(block[488:500]) * 10 ** 9
                elif prefix[0]:
                    prefix_b = _cstring(prefix)
                else:
                    prefix_b = b""
                if prefix_b:
                    hdr.name = prefix_b.decode(_FS_ENC, _FS_ERR) + "/" + hdr.name
        except _FieldError:
            raise ArchiveError(INVALID_HEADER) from None
        if size < 0:
            raise ArchiveError(INVALID_HEADER)
        self._remaining = size
        self._pad = -size % BLOCK
        return hdr

    def _read_meta_body(self, hdr: Header) -> bytes:
        if hdr.size > _MAX_META:
            raise ArchiveError(INVALID_HEADER)
        body = self.read()
        self._finish_entry()
        return body

    def next(self) -> Optional[Header]:
        """The next entry, ``None`` at the end of the archive."""
        if self._eof:
            return None
        if self._remaining or self._pad:
            self._finish_entry()
        long_name: Optional[str] = None
        long_link: Optional[str] = None
        while True:
            hdr = self._read_header()
            if hdr is None:
                if long_name is not None or long_link is not None:
                    raise ArchiveError(UNEXPECTED_EOF)
                return None
            if hdr.typeflag == TYPE_XHEADER:
                headers = parse_pax(self._read_meta_body(hdr))
                if any(k.startswith("GNU.sparse.") for k in headers):
                    raise ArchiveError("archive/tar: PAX sparse files are not supported")
                hdr = self._read_header()
                if hdr is None:
                    if long_name is not None or long_link is not None:
                        raise ArchiveError(UNEXPECTED_EOF)
                    return None
                merge_pax(hdr, headers)
                self._remaining = hdr.size
                self._pad = -hdr.size % BLOCK
                break
            if hdr.typeflag == TYPE_GNU_LONGNAME:
                value = os.fsdecode(_cstring(self._read_meta_body(hdr)))
                if long_name is None:  # the reference lets the outermost one win
                    long_name = value
                continue
            if hdr.typeflag == TYPE_GNU_LONGLINK:
                value = os.fsdecode(_cstring(self._read_meta_body(hdr)))
                if long_link is None:
                    long_link = value
                continue
            break
        if long_name is not None:
            hdr.name = long_name
        if long_link is not None:
            hdr.linkname = long_link
        return hdr

    def __iter__(self):
        while True:
            hdr = self.next()
            if hdr is None:
                return
            yield hdr
