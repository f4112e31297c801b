"""The graphdriver framework's sentinel errors (moby v1.10.3 ``daemon/graphdriver/driver.go``;
docs/reference-behaviour.md#error-classes), with their exact texts.

The reference compares these by identity; here each is its own exception class, so callers
branch with ``except ErrIncompatibleFS`` and ``is_sentinel`` answers what ``New`` asks.
"""
from __future__ import annotations


class GraphDriverError(Exception):
    """Base of the sentinel errors; ``str()`` is the reference's text."""

    text = ""

    def __init__(self, text: str = ""):
        super().__init__(text or self.text)


class ErrNotSupported(GraphDriverError):
    text = "driver not supported"


class ErrPrerequisites(GraphDriverError):
    text = "prerequisites for driver not satisfied (wrong filesystem?)"


class ErrIncompatibleFS(GraphDriverError):
    text = "backing file system is unsupported for this graph driver"


class ErrApplyDiffFallback(GraphDriverError):
    text = "Fall back to normal ApplyDiff"


class RegistryError(GraphDriverError):
    """Registration clashes, no usable backend, or a root holding several prior drivers."""


SENTINELS = (ErrNotSupported, ErrPrerequisites, ErrIncompatibleFS)


def is_sentinel(err: BaseException) -> bool:
    """True for the three errors that make ``New`` skip a driver instead of failing."""
    return isinstance(err, SENTINELS)
