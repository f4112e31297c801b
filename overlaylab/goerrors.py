"""Errors that print the way Go's standard library prints them.

The reference driver returns Go errors and the spec requires their exact texts, e.g.
``stat /var/lib/docker/overlay/nope: no such file or directory`` (an ``*os.PathError``) or
``link a b: too many links`` (an ``*os.LinkError``). Python's ``OSError`` prints
``[Errno 2] No such file or directory: '...'`` instead, so every syscall failure that can reach
a caller is re-raised as one of these classes. They stay ``OSError`` subclasses, so ``errno``
and ``except FileNotFoundError``-style checks keep working through :func:`is_not_exist`.
"""
from __future__ import annotations

import errno as _errno
import os
from contextlib import contextmanager
from typing import Iterator, Optional


def errno_text(code: int) -> str:
    """Go's text for a syscall.Errno: the C library's message with a lower-case first letter."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def go_quote(value: str) -> str:
    """Go's ``%q`` for a string: double quotes, backslash escapes, printable UTF-8 kept."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\v":
            out.append("\\v")
        elif 0xDC80 <= code <= 0xDCFF:  # a surrogate-escaped undecodable byte
            out.append("\\x%02x" % (code - 0xDC00))
        elif code < 0x20 or code == 0x7F:
            out.append("\\x%02x" % code)
        elif not ch.isprintable():
            out.append("\\u%04x" % code if code <= 0xFFFF else "\\U%08x" % code)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _needs_escape(ch: str) -> bool:
    code = ord(ch)
    return (code < 0x20 or code == 0x7F or 0xDC80 <= code <= 0xDCFF
            or (code >= 0x80 and not ch.isprintable()))


def quote_name(name: str) -> str:
    """A file name for human output: as it is when it is plain, else Go's ``%q`` of it.

    Plain means no control character, no undecodable byte, nothing unprintable and no ``"``
    or ``\\`` (which would make a quoted name ambiguous). So ``innocent\\nD /etc/shadow`` prints
    as ``"innocent\\nD /etc/shadow"`` on one line, and no ESC/OSC sequence reaches a terminal,
    the way ``ls --quoting-style=c`` shows such names. JSON output keeps names exact instead.
    """
    if any(ch in '"\\' or _needs_escape(ch) for ch in name):
        return go_quote(name)
    return name


def safe_text(text: str) -> str:
    """A message for a terminal line: control characters, undecodable bytes and unprintable
    characters escaped as Go's ``%q`` would (``\\n``, ``\\x1b``, ``\\u200b``), the rest kept, no
    quotes added. One line, and no terminal escape sequence, whatever a file name held."""
    if not any(_needs_escape(ch) for ch in text):
        return text
    return "".join(go_quote(ch)[1:-1] if _needs_escape(ch) else ch for ch in text)


class GoError(Exception):
    """A Go error made by ``errors.New`` or ``fmt.Errorf``: a text and nothing else.

    No errno, so :func:`is_not_exist` and :func:`is_exist` are false for it, as Go's
    ``os.IsNotExist`` is for an ``*errors.errorString`` even when a ``%v`` formatted an
    ENOENT into its text (``error creating overlay mount to …: no such file or directory``).
    ``wrapped`` keeps the error that was formatted in, as evidence only (Go drops it).
    """

    def __init__(self, text: str, wrapped: Optional[BaseException] = None):
        super().__init__(text)
        self.text = text
        self.wrapped = wrapped

    @property
    def wrapped_errno(self) -> Optional[int]:
        """The errno of the formatted-in error, for the lab's evidence (not Go's class)."""
        return getattr(self.wrapped, "errno", None)

    def __str__(self) -> str:
        return self.text


class PathError(OSError):
    """Go's ``*os.PathError``: ``<op> <path>: <errno text>``."""

    def __init__(self, op: str, path: str, code: int, detail: Optional[str] = None):
        super().__init__(code, detail or errno_text(code), path)
        self.op = op

    def __str__(self) -> str:
        return "%s %s: %s" % (self.op, self.filename, self.strerror)


class LinkError(OSError):
    """Go's ``*os.LinkError``: ``<op> <old> <new>: <errno text>`` (link, symlink, rename)."""

    def __init__(self, op: str, old: str, new: str, code: int):
        super().__init__(code, errno_text(code), old, None, new)
        self.op = op

    def __str__(self) -> str:
        return "%s %s %s: %s" % (self.op, self.filename, self.filename2, self.strerror)


class SyscallError(OSError):
    """A bare ``syscall.Errno`` (no op, no path), as returned by e.g. ``syscall.Mount``."""

    def __init__(self, code: int):
        super().__init__(code, errno_text(code))

    def __str__(self) -> str:
        return self.strerror


def is_not_exist(err: BaseException) -> bool:
    """Go's ``os.IsNotExist``."""
    return isinstance(err, OSError) and err.errno == _errno.ENOENT


def is_exist(err: BaseException) -> bool:
    """Go's ``os.IsExist``."""
    return isinstance(err, OSError) and err.errno in (_errno.EEXIST, _errno.ENOTEMPTY)


def as_path_error(err: OSError, op: str, path: str) -> PathError:
    """Turn a raw Python ``OSError`` into the PathError Go would have returned for ``op``."""
    if isinstance(err, (PathError, LinkError)):
        return err  # type: ignore[return-value]
    return PathError(op, path, err.errno or _errno.EIO)


@contextmanager
def go_op(op: str, path: str) -> Iterator[None]:
    """Run a block of one syscall and re-raise its OSError as Go's ``<op> <path>: ...``."""
    try:
        yield
    except (PathError, LinkError):
        raise
    except OSError as err:
        raise PathError(op, path, err.errno or _errno.EIO) from None
