"""Kernels for the lab: the catalogue (``vms/kernels.toml``), fetching Debian kernel packages
with apt into a private cache, and resolving the host kernel."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "KernelImage": "cache",
    "cache_root": "cache",
    "CatalogueError": "catalogue",
    "KernelEntry": "catalogue",
    "get_entry": "catalogue",
    "load_catalogue": "catalogue",
    "KernelUnavailable": "fetch",
    "fetch_kernel": "fetch",
    "resolve_host_kernel": "fetch",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # lazy, so `python -m overlaylab.kernels.fetch` stays clean
    if name in _EXPORTS:
        return getattr(importlib.import_module("." + _EXPORTS[name], __name__), name)
    raise AttributeError(name)
