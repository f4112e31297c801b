"""The tar-layer package: a port of Docker v1.10.3's ``pkg/archive`` and
``pkg/chrootarchive`` as the overlay graph driver uses them (moby v1.10.3; docs/reference-behaviour.md#the-tar-layer).

- :func:`changes_dirs`, :func:`changes_size`, :func:`aufs_changes` — what changed (``changes.go``)
- :func:`export_changes`, :func:`tar_tree`, :func:`add_tar_file` — producing tars (``changes.go``, ``archive.go``)
- :func:`unpack_layer`, :func:`apply_layer_in_process` — applying a layer in-process (``diff.go``)
- :func:`apply_uncompressed_layer` — applying a layer in a chrooted child (``pkg/chrootarchive``)

The names are loaded on first use (PEP 562): the chrooted apply helper
(``overlaylab.archive.applylayer``) starts once per ApplyDiff and must not pay for the
export/changes side (``logging``, ``threading``, ``subprocess``...) it never uses.
"""
from __future__ import annotations

import importlib
from typing import Any, List

_EXPORTS = {
    "Change": ".changes", "ChangeKind": ".changes", "aufs_changes": ".changes",
    "changes_dirs": ".changes", "changes_size": ".changes", "sort_key": ".changes",
    "apply_uncompressed_layer": ".chroot",
    "ArchiveError": ".errors", "BreakoutError": ".errors",
    "TarStream": ".export", "add_tar_file": ".export", "export_changes": ".export",
    "file_info_header": ".export", "tar_tree": ".export",
    "Header": ".tarheader", "TarWriter": ".tarheader",
    "TarReader": ".tarreader",
    "TarOptions": ".unpack", "apply_layer_in_process": ".unpack", "unpack_layer": ".unpack",
    "WHITEOUT_LINK_DIR": ".whiteouts", "WHITEOUT_META_PREFIX": ".whiteouts",
    "WHITEOUT_OPAQUE_DIR": ".whiteouts", "WHITEOUT_PREFIX": ".whiteouts",
}

__all__ = [
    "Change", "ChangeKind", "changes_dirs", "changes_size", "aufs_changes", "sort_key",
    "export_changes", "tar_tree", "add_tar_file", "file_info_header", "TarStream",
    "unpack_layer", "apply_layer_in_process", "apply_uncompressed_layer", "TarOptions",
    "ArchiveError", "BreakoutError", "Header", "TarWriter", "TarReader",
    "WHITEOUT_PREFIX", "WHITEOUT_META_PREFIX", "WHITEOUT_LINK_DIR", "WHITEOUT_OPAQUE_DIR",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
