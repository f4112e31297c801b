"""The tar-layer package: a port of Docker v1.10.3's ``pkg/archive`` and
``pkg/chrootarchive`` as the overlay graph driver uses them (spec §4).

- :func:`changes_dirs`, :func:`changes_size`, :func:`aufs_changes` — what changed (§4.1, §4.2, §4.7)
- :func:`export_changes`, :func:`tar_tree`, :func:`add_tar_file` — producing tars (§4.3, §4.4)
- :func:`unpack_layer`, :func:`apply_layer_in_process` — applying a layer in-process (§4.5)
- :func:`apply_uncompressed_layer` — applying a layer in a chrooted child (§4.6)
"""
from __future__ import annotations

from .changes import Change, ChangeKind, aufs_changes, changes_dirs, changes_size, sort_key
from .chroot import apply_uncompressed_layer
from .errors import ArchiveError, BreakoutError
from .export import TarStream, add_tar_file, export_changes, file_info_header, tar_tree
from .tarheader import Header, TarWriter
from .tarreader import TarReader
from .unpack import TarOptions, apply_layer_in_process, unpack_layer
from .whiteouts import (
    WHITEOUT_LINK_DIR, WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE_DIR, WHITEOUT_PREFIX,
)

__all__ = [
    "Change", "ChangeKind", "changes_dirs", "changes_size", "aufs_changes", "sort_key",
    "export_changes", "tar_tree", "add_tar_file", "file_info_header", "TarStream",
    "unpack_layer", "apply_layer_in_process", "apply_uncompressed_layer", "TarOptions",
    "ArchiveError", "BreakoutError", "Header", "TarWriter", "TarReader",
    "WHITEOUT_PREFIX", "WHITEOUT_META_PREFIX", "WHITEOUT_LINK_DIR", "WHITEOUT_OPAQUE_DIR",
]
