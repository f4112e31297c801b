"""NaiveDiffDriver (moby v1.10.3 ``daemon/graphdriver/fsdiff.go``; docs/reference-behaviour.md#naivediff).

Derives Diff, Changes, DiffSize and ApplyDiff for any ProtoDriver from Get/Put plus the
archive package: it mounts the layer (and the parent), compares the two trees, and exports or
applies tars. For overlay that means the **merged view** is compared with the parent's view;
overlay whiteouts and opaque xattrs are never seen, deletions are names missing from the view.
"""
from __future__ import annotations

import io
import logging
import time
from typing import BinaryIO, Callable, List, Optional

from .. import archive
from ..archive import Change, TarOptions
from ..idtools import IDMaps
from .errors import ErrApplyDiffFallback

log = logging.getLogger("overlaylab.graphdriver")

# The unpack function (``graphdriver.ApplyUncompressedLayer``): the chrooted re-exec by default,
# as in the daemon. Tests may swap in ``archive.apply_layer_in_process`` as 1.12's tests do.
apply_uncompressed_layer: Callable[[str, BinaryIO, TarOptions], int] = archive.apply_uncompressed_layer


class _ReadCloser(io.RawIOBase):
    """A tar stream whose close also releases the layer (``ioutils.NewReadCloserWrapper``)."""

    def __init__(self, stream: BinaryIO, on_close: Callable[[], None]):
        super().__init__()
        self._stream = stream
        self._on_close: Optional[Callable[[], None]] = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self._stream.read(len(buf))
        n = len(data)
        buf[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._stream.close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()
            super().close()


class NaiveDiffDriver:
    """Wraps a ProtoDriver; every ProtoDriver method passes straight through."""

    def __init__(self, proto, uid_maps: IDMaps = None, gid_maps: IDMaps = None):
        self.proto = proto
        self.uid_maps = uid_maps
        self.gid_maps = gid_maps
        #: What the last ApplyDiff warned about (port addition; also logged as warnings).
        self.last_apply_warnings: List[str] = []

    # ProtoDriver surface -------------------------------------------------------------------
    def __str__(self) -> str:
        return str(self.proto)

    def __repr__(self) -> str:
        return "<%s %s home=%s>" % (type(self).__name__, self.proto, getattr(self.proto, "home", "?"))

    @property
    def home(self) -> str:
        return self.proto.home

    def create(self, id: str, parent: str = "", mount_label: str = "") -> None:
        self.proto.create(id, parent, mount_label)

    def remove(self, id: str) -> None:
        self.proto.remove(id)

    def get(self, id: str, mount_label: str = "") -> str:
        return self.proto.get(id, mount_label)

    def put(self, id: str) -> None:
        self.proto.put(id)

    def exists(self, id: str) -> bool:
        return self.proto.exists(id)

    def status(self):
        return self.proto.status()

    def get_metadata(self, id: str):
        return self.proto.get_metadata(id)

    def cleanup(self) -> None:
        self.proto.cleanup()

    # Derived methods -----------------------------------------------------------------------
    def diff(self, id: str, parent: str = "") -> BinaryIO:
        """An uncompressed tar of ``id``'s changes against ``parent`` (everything if ``""``).

        The layer stays mounted until the returned stream is closed.
        """
        layer_fs = self.proto.get(id, "")
        try:
            if not parent:
                stream = archive.tar_tree(layer_fs)
            else:
                parent_fs = self.proto.get(parent, "")
                try:
                    changes = archive.changes_dirs(layer_fs, parent_fs)
                finally:
                    self.proto.put(parent)
                stream = archive.export_changes(layer_fs, changes, self.uid_maps, self.gid_maps)
        except BaseException:
            self.proto.put(id)
            raise
        return _ReadCloser(stream, lambda: self.proto.put(id))  # type: ignore[return-value]

    def changes(self, id: str, parent: str = "") -> List[Change]:
        """The changes of ``id`` against ``parent``; with no parent everything is an Add."""
        layer_fs = self.proto.get(id, "")
        try:
            parent_fs = ""
            if parent:
                parent_fs = self.proto.get(parent, "")
            try:
                return archive.changes_dirs(layer_fs, parent_fs)
            finally:
                if parent:
                    self.proto.put(parent)
        finally:
            self.proto.put(id)

    def apply_diff(self, id: str, parent: str, stream: BinaryIO) -> int:
        """Extract ``stream`` into the mounted layer; returns the tar's size (sum of entry sizes)."""
        layer_fs = self.proto.get(id, "")
        try:
            log.debug("Start untar layer")
            start = time.monotonic()
            warnings: List[str] = []
            self.last_apply_warnings = warnings
            size = apply_uncompressed_layer(layer_fs, stream, TarOptions(self.uid_maps, self.gid_maps,
                                                                         warnings=warnings))
            log.debug("Untar time: %ss", time.monotonic() - start)
            for warning in warnings:
                log.warning("ApplyDiff %s: %s", id, warning)
            return size
        finally:
            self.proto.put(id)

    def diff_size(self, id: str, parent: str = "") -> int:
        """Bytes of changed content (``ChangesSize`` over ``changes(id, parent)``)."""
        changes = self.changes(id, parent)
        layer_fs = self.proto.get(id, "")
        try:
            return archive.changes_size(layer_fs, changes)
        finally:
            self.proto.put(id)


class NaiveDiffDriverWithApply(NaiveDiffDriver):
    """``naiveDiffDriverWithApply``: the driver's own ApplyDiff first, the naive one on fallback."""

    def apply_diff(self, id: str, parent: str, stream: BinaryIO) -> int:
        try:
            size = self.proto.apply_diff(id, parent, stream)
            self.last_apply_warnings = list(getattr(self.proto, "last_apply_warnings", ()))
            return size
        except ErrApplyDiffFallback:
            return super().apply_diff(id, parent, stream)
