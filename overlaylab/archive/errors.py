"""Errors of the tar-layer package (moby v1.10.3 ``pkg/archive``; docs/reference-behaviour.md#error-classes).

Filesystem failures keep their Go texts as ``goerrors.PathError``/``LinkError``/``SyscallError``
(``OSError`` subclasses); everything about the archive itself is an :class:`ArchiveError`.
"""
from __future__ import annotations

from ..goerrors import GoError


class ArchiveError(GoError):
    """A malformed or unusable layer stream, or a failed apply; ``str()`` is the Go text.

    Every one is a ``fmt.Errorf``/``errors.New`` string in Go, so it carries no errno."""


class BreakoutError(ArchiveError):
    """An entry that would escape the extraction directory (the reference's ``breakoutError``)."""


#: Go's ``io.ErrUnexpectedEOF`` text.
UNEXPECTED_EOF = "unexpected EOF"

#: Go's ``tar.ErrHeader`` text.
INVALID_HEADER = "archive/tar: invalid tar header"
