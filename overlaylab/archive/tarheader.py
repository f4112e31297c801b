"""Tar headers and a streaming tar writer with Go 1.5 ``archive/tar`` encoding (docs/reference-behaviour.md#the-tar-layer).

Python's ``tarfile`` strips the file-type bits out of the mode field and writes GNU or PAX
layouts, while the reference (Go 1.5) writes USTAR headers whose mode field carries the type
bits (``0100644``, ``040755``...). This module encodes headers itself:

- USTAR magic ``ustar\\0`` version ``00``; uname/gname as given (Docker leaves them empty);
- a name longer than 100 bytes is split into prefix/name when possible; otherwise, and for
  non-ASCII names, long or non-ASCII linknames and any xattr, a PAX ``x`` header named
  ``<dir>/PaxHeaders.<pid>/<file>`` precedes the entry (records sorted here; Go's map order
  is random);
- numbers too big for octal use the base-256 (GNU) encoding, after which the writer uses the
  GNU magic ``ustar  \\0`` for the rest of the stream, as Go 1.5's ``usedBinary`` flag does;
- mtimes outside [epoch, 2^33-1 s] are written as 0;
- an entry is padded to 512 bytes; ``close`` writes two zero blocks and no record padding.
"""
from __future__ import annotations

import errno
import os
import struct
import sys
from typing import Callable, Dict, Optional, Tuple, Union

from . import gopath

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

# Type flags (as integers: the reference formats unknown ones with %d).
TYPE_REG = ord("0")
TYPE_REGA = 0
TYPE_LINK = ord("1")
TYPE_SYMLINK = ord("2")
TYPE_CHAR = ord("3")
TYPE_BLOCK = ord("4")
TYPE_DIR = ord("5")
TYPE_FIFO = ord("6")
TYPE_CONT = ord("7")
TYPE_XHEADER = ord("x")
TYPE_XGLOBAL = ord("g")
TYPE_GNU_LONGNAME = ord("L")
TYPE_GNU_LONGLINK = ord("K")
TYPE_GNU_SPARSE = ord("S")

# File-type bits Go <= 1.8 keeps in the mode field (c_IS* in archive/tar/common.go).
C_ISUID = 0o4000
C_ISGID = 0o2000
C_ISVTX = 0o1000
C_ISDIR = 0o40000
C_ISFIFO = 0o10000
C_ISREG = 0o100000
C_ISLNK = 0o120000
C_ISBLK = 0o60000
C_ISCHR = 0o20000
C_ISSOCK = 0o140000

#: Go's zero ``time.Time`` (0001-01-01 UTC) in Unix nanoseconds: "no time in the header".
ZERO_TIME_NS = -62135596800 * 10 ** 9

_MAX_MTIME_NS = ((1 << 33) - 1) * 10 ** 9
_MAGIC_USTAR = b"ustar\x0000"
_MAGIC_GNU = b"ustar  \x00"

PAX_XATTR = "SCHILY.xattr."

_FS_ENC = sys.getfilesystemencoding()
_FS_ERR = sys.getfilesystemencodeerrors()
_MAX7 = 8 ** 7
_MAX11 = 8 ** 11
_TYPEFLAGS = [bytes([i]) for i in range(256)]
_ZERO64 = bytes(64)
_ZERO167 = bytes(155 + 12)
_ZEROS = bytes(BLOCK)
_CONST_SUM = 8 * 0x20 + sum(b"ustar\x0000")


class Header:
    """One tar entry, with the fields of Go's ``tar.Header`` that matter here.

    Names are ``str`` holding the raw bytes via ``surrogateescape`` (``os.fsencode`` gives the
    exact bytes back); times are integer Unix nanoseconds, ``ZERO_TIME_NS`` when absent;
    ``typeflag`` is the flag byte as an int; ``xattrs`` maps names to raw values.
    """

    __slots__ = (
        "name", "mode", "uid", "gid", "size", "mtime_ns", "typeflag", "linkname",
        "uname", "gname", "devmajor", "devminor", "atime_ns", "ctime_ns", "xattrs", "format",
    )

    def __init__(
        self,
        name: str = "",
        mode: int = 0,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        mtime_ns: int = 0,
        typeflag: int = TYPE_REGA,
        linkname: str = "",
        uname: str = "",
        gname: str = "",
        devmajor: int = 0,
        devminor: int = 0,
        atime_ns: int = ZERO_TIME_NS,
        ctime_ns: int = ZERO_TIME_NS,
        xattrs: Optional[Dict[str, bytes]] = None,
        format: str = "",
    ):
        self.name = name
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.typeflag = typeflag
        self.linkname = linkname
        self.uname = uname
        self.gname = gname
        self.devmajor = devmajor
        self.devminor = devminor
        self.atime_ns = atime_ns
        self.ctime_ns = ctime_ns
        self.xattrs = xattrs if xattrs is not None else {}
        self.format = format

    def copy(self) -> "Header":
        h = Header()
        for k in self.__slots__:
            setattr(h, k, getattr(self, k))
        h.xattrs = dict(self.xattrs)
        return h

    def __repr__(self) -> str:
        return "Header(name=%r, typeflag=%r, mode=0o%o, size=%d, linkname=%r)" % (
            self.name, chr(self.typeflag), self.mode, self.size, self.linkname)


class HeaderError(ValueError):
    """A header that cannot be encoded (a field too long where Go has no PAX fallback)."""


def _is_ascii(b: bytes) -> bool:
    return b.isascii()


def _to_ascii(b: bytes) -> bytes:
    return bytes(c for c in b if c < 0x80)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """``"%d %s=%s\\n"`` where the length counts itself (Go's ``paxHeader``)."""
    msg = key + b"=" + value
    size = len(msg) + 2
    size += len(str(size))
    record = b"%d %s\n" % (size, msg)
    if len(record) != size:
        size = len(record)
        record = b"%d %s\n" % (size, msg)
    return record


def _split_ustar_long_name(name: bytes):
    """Go 1.5 ``splitUSTARLongName``: split at a ``/`` so that prefix <= 155 and name <= 100."""
    length = len(name)
    if length > 156:
        length = 156
    elif name[length - 1:length] == b"/":
        length -= 1
    i = name.rfind(b"/", 0, length)
    nlen = len(name) - i - 1
    plen = i
    if i <= 0 or nlen > 100 or nlen == 0 or plen > 155:
        return None
    return name[:i], name[i + 1:]


# The USTAR block of the fast path: name, mode+uid+gid, size, mtime, chksum, typeflag,
# linkname, magic+version, (uname, gname: empty), devmajor+devminor, (prefix, pad: empty).
_pack_ustar = struct.Struct("100s24s12s12s8sB100s8s64x16s167x").pack

_Piece = Tuple[Optional[bytes], int]
_PIECE_CACHE_MAX = 4096
_IDS_CACHE: Dict[object, _Piece] = {}
_SIZE_CACHE: Dict[object, _Piece] = {}
_MTIME_CACHE: Dict[object, _Piece] = {}


def _piece(raw: bytes, width: int) -> _Piece:
    """A formatted field and its byte sum; ``None`` if it does not fit its width."""
    return (raw, sum(raw)) if len(raw) == width else (None, 0)


def _fmt_ids(key) -> _Piece:
    return _piece(b"%07o\x00%07o\x00%07o\x00" % key, 24)


def _fmt_11(value: int) -> _Piece:
    return _piece(b"%011o\x00" % value, 12)


def _fmt_dev(key) -> _Piece:
    return _piece(b"%07o\x00%07o\x00" % key, 16)


_DEV_ZERO = _fmt_dev((0, 0))


def _cached_piece(cache: Dict[object, _Piece], key, fmt: Callable[..., _Piece]) -> _Piece:
    piece = cache.get(key)
    if piece is None:
        piece = fmt(key)
        if len(cache) >= _PIECE_CACHE_MAX:
            cache.clear()
        cache[key] = piece
    return piece


class _Encoder:
    """Header encoding state of one stream (Go's ``usedBinary`` is sticky per writer)."""

    __slots__ = ("used_binary", "pid")

    def __init__(self) -> None:
        self.used_binary = False
        self.pid = os.getpid()

    def _numeric(self, buf: bytearray, off: int, width: int, value: int) -> None:
        if 0 <= value < 8 ** (width - 1):
            buf[off:off + width - 1] = b"%0*o" % (width - 1, value)
            return
        # Too big (or negative) for octal: base-256, high bit set (GNU extension).
        self.used_binary = True
        x = value
        raw = bytearray(width)
        i = width - 1
        while x > 0 and i >= 0:
            raw[i] = x & 0xFF
            x >>= 8
            i -= 1
        raw[0] |= 0x80
        buf[off:off + width] = raw

    def encode(self, hdr: Header, allow_pax: bool = True) -> bytes:
        """The header block(s) for ``hdr``: an optional PAX header+body, then the entry block."""
        name = hdr.name.encode(_FS_ENC, _FS_ERR)
        link = hdr.linkname.encode(_FS_ENC, _FS_ERR)
        # Fast path for the common entry: everything fits USTAR, nothing needs PAX. Each
        # numeric field is formatted as "%0*o" (cached with its byte sum: modes, owners and
        # times repeat); a value too big for its field formats longer than the field.
        if (len(name) <= 100 and len(link) <= 100 and not hdr.xattrs and not self.used_binary
                and not hdr.uname and not hdr.gname and name.isascii() and link.isascii()):
            key = (hdr.mode, hdr.uid, hdr.gid)
            ids = _IDS_CACHE.get(key) or _cached_piece(_IDS_CACHE, key, _fmt_ids)
            size = _SIZE_CACHE.get(hdr.size) or _cached_piece(_SIZE_CACHE, hdr.size, _fmt_11)
            mt = hdr.mtime_ns
            mt = mt // 1000000000 if 0 <= mt <= _MAX_MTIME_NS else 0
            mtime = _MTIME_CACHE.get(mt) or _cached_piece(_MTIME_CACHE, mt, _fmt_11)
            if hdr.devmajor or hdr.devminor:
                dev = _fmt_dev((hdr.devmajor, hdr.devminor))
            else:
                dev = _DEV_ZERO
            if ids[0] is not None and size[0] is not None and mtime[0] is not None and dev[0] is not None:
                typeflag = hdr.typeflag & 0xFF
                # Zero padding adds nothing to the checksum: sum only the non-zero parts.
                chksum = (sum(name) + ids[1] + size[1] + mtime[1] + dev[1] + _CONST_SUM + typeflag
                          + (sum(link) if link else 0))
                return _pack_ustar(name, ids[0], size[0], mtime[0], b"%06o\x00 " % chksum,
                                   typeflag, link, _MAGIC_USTAR, dev[0])
        return self._encode_general(hdr, name, link, allow_pax)

    def _encode_general(self, hdr: Header, name: bytes, link: bytes, allow_pax: bool) -> bytes:
        pax: Dict[bytes, bytes] = {}
        buf = bytearray(BLOCK)
        if (allow_pax and len(name) > 100) or not _is_ascii(name):
            pax[b"path"] = name
        else:
            buf[0:len(name)] = name

        mt = hdr.mtime_ns
        mtime = mt // 10 ** 9 if 0 <= mt <= _MAX_MTIME_NS else 0

        buf[100:107] = b"%07o" % (hdr.mode & 0o7777777) if 0 <= hdr.mode < 8 ** 7 else b"0000000"
        self._numeric(buf, 108, 8, hdr.uid)
        self._numeric(buf, 116, 8, hdr.gid)
        self._numeric(buf, 124, 12, hdr.size)
        self._numeric(buf, 136, 12, mtime)
        buf[156] = hdr.typeflag & 0xFF

        if (allow_pax and len(link) > 100) or not _is_ascii(link):
            pax[b"linkpath"] = link
        elif len(link) > 100:
            raise HeaderError("archive/tar: header field too long")
        else:
            buf[157:157 + len(link)] = link

        buf[257:265] = _MAGIC_USTAR
        for key, off, value in ((b"uname", 265, hdr.uname), (b"gname", 297, hdr.gname)):
            if value:
                raw = os.fsencode(value)
                if (allow_pax and len(raw) > 32) or not _is_ascii(raw):
                    pax[key] = raw
                elif len(raw) > 32:
                    raise HeaderError("archive/tar: header field too long")
                else:
                    buf[off:off + len(raw)] = raw
        self._numeric(buf, 329, 8, hdr.devmajor)
        self._numeric(buf, 337, 8, hdr.devminor)

        if self.used_binary:
            buf[257:265] = _MAGIC_GNU

        if len(pax) == 1 and b"path" in pax and len(name) > 100 and _is_ascii(name):
            parts = _split_ustar_long_name(name)
            if parts is not None:
                del pax[b"path"]
                prefix, suffix = parts
                buf[0:len(suffix)] = suffix
                buf[345:345 + len(prefix)] = prefix

        buf[148:156] = b"        "
        chksum = sum(buf)
        buf[148:155] = b"%06o\x00" % chksum
        buf[155] = 0x20

        if allow_pax:
            for key in sorted(hdr.xattrs):
                pax[(PAX_XATTR + key).encode("utf-8", "surrogateescape")] = hdr.xattrs[key]
        if not pax:
            return bytes(buf)
        if not allow_pax:
            raise HeaderError("archive/tar: invalid tar header")
        return self._pax_header(hdr, name, pax) + bytes(buf)

    def _pax_header(self, hdr: Header, name: bytes, pax: Dict[bytes, bytes]) -> bytes:
        dir_, file_ = gopath.split(os.fsdecode(name))
        full = os.fsencode(gopath.join(dir_, "PaxHeaders.%d" % self.pid, file_))
        full = _to_ascii(full)[:100]
        body = b"".join(_pax_record(k, pax[k]) for k in sorted(pax))
        ext = Header(name=os.fsdecode(full), size=len(body), mtime_ns=hdr.mtime_ns,
                     typeflag=TYPE_XHEADER)
        padding = -len(body) % BLOCK
        return self.encode(ext, allow_pax=False) + body + bytes(padding)


Sink = Union[int, Callable[[bytes], object]]


class TarWriter:
    """A streaming tar writer into a file descriptor or a ``write`` callable.

    Usage mirrors Go's ``tar.Writer``: ``write_header`` then the body (``write`` or
    ``copy_from_fd``), ``close`` at the end. A body shorter than the header's size is
    zero-filled and a longer one truncated, so the stream always stays well formed (the
    reference would instead fail every later entry with "missed writing N bytes").
    """

    FLUSH_AT = 256 * 1024
    SENDFILE_MIN = 128 * 1024

    def __init__(self, sink: Sink):
        self._fd: Optional[int] = sink if isinstance(sink, int) else None
        self._write_cb = None if isinstance(sink, int) else sink
        self._buf = bytearray()
        self._remaining = 0
        self._pad = 0
        self._enc = _Encoder()
        self.closed = False

    # -- low level -------------------------------------------------------------------------

    def _emit(self, data) -> None:
        if self._fd is None:
            self._write_cb(bytes(data))  # type: ignore[misc]
            return
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def flush(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf = bytearray()

    def _finish_entry(self) -> None:
        if self._remaining:
            self._buf += bytes(self._remaining)
            self._remaining = 0
        if self._pad:
            self._buf += bytes(self._pad)
            self._pad = 0

    # -- API -------------------------------------------------------------------------------

    def write_header(self, hdr: Header) -> None:
        """Finish the previous entry and write ``hdr`` (raises ``HeaderError`` if unencodable)."""
        self._finish_entry()
        self._buf += self._enc.encode(hdr)
        size = hdr.size if hdr.size > 0 else 0
        self._remaining = size
        self._pad = -size % BLOCK
        if len(self._buf) >= self.FLUSH_AT:
            self.flush()

    def write_entry(self, hdr: Header, body: bytes) -> None:
        """``write_header`` plus a body that is already in memory (cut or zero-filled to
        ``hdr.size``) in one step: the fast path for small files."""
        self._finish_entry()
        size = hdr.size if hdr.size > 0 else 0
        if len(body) != size:
            body = body[:size] + bytes(max(0, size - len(body)))
        buf = self._buf
        buf += self._enc.encode(hdr)
        buf += body
        pad = -size % BLOCK
        if pad:
            buf += _ZEROS[:pad]
        if len(buf) >= self.FLUSH_AT:
            self.flush()

    def write(self, data: bytes) -> int:
        """Append body bytes of the current entry (anything past its size is dropped)."""
        n = min(len(data), self._remaining)
        if n:
            self._buf += data[:n] if n < len(data) else data
            self._remaining -= n
            if len(self._buf) >= self.FLUSH_AT:
                self.flush()
        return n

    def copy_from_fd(self, fd: int) -> None:
        """Copy the current entry's body from ``fd`` (its file position onwards)."""
        if self._fd is not None and self._remaining >= self.SENDFILE_MIN:
            self.flush()
            while self._remaining > 0:
                try:
                    n = os.sendfile(self._fd, fd, None, min(self._remaining, 1 << 30))
                except OSError as err:
                    if err.errno in (errno.EINVAL, errno.ENOSYS):  # no sendfile for this pair
                        break
                    raise
                if n == 0:
                    break
                self._remaining -= n
        while self._remaining > 0:
            chunk = os.read(fd, min(self._remaining, 1 << 20))
            if not chunk:
                break
            self.write(chunk)

    def close(self) -> None:
        """Finish the last entry, write the two zero blocks and flush."""
        if self.closed:
            return
        self._finish_entry()
        self._buf += bytes(2 * BLOCK)
        self.flush()
        self.closed = True
