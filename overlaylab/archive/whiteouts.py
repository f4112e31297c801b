"""aufs whiteout names, as written into and read from layer tars (moby v1.10.3 ``pkg/archive/whiteouts.go``; docs/reference-behaviour.md#whiteouts)."""
from __future__ import annotations

#: A file ``.wh.<name>`` in a layer deletes ``<name>`` of the layers below.
WHITEOUT_PREFIX = ".wh."

#: Top-level entries starting with this are aufs metadata, never extracted as such.
WHITEOUT_META_PREFIX = WHITEOUT_PREFIX + WHITEOUT_PREFIX

#: aufs keeps the targets of hard links across branches here; tars may link into it.
WHITEOUT_LINK_DIR = WHITEOUT_META_PREFIX + "plnk"

#: A file with this name makes its directory opaque: lower layers' entries are hidden.
WHITEOUT_OPAQUE_DIR = WHITEOUT_META_PREFIX + ".opq"
