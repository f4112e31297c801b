"""Storage engines the lab drives side by side: a name -> class table, imported lazily.

``port`` is this project's driver in process; the others are the living drivers from Debian's
packages. Each module holds one engine (or a family: Docker's ``overlay`` and ``overlay2``).
"""
from __future__ import annotations

import importlib
from typing import Dict, List

from .base import Change, Engine, EngineError, EngineRefused, EngineSession, EngineUnavailable, Verdict  # noqa: F401

#: engine name -> "module:Class", in the order tables show them (the port first)
ENGINES: Dict[str, str] = {
    "port": "port:PortEngine",
    "containers-storage": "containers_storage:ContainersStorageEngine",
    "fuse-overlayfs": "containers_storage:FuseOverlayfsEngine",
    "docker-overlay": "docker:DockerOverlayEngine",
    "docker-overlay2": "docker:DockerOverlay2Engine",
}
DEFAULT_ENGINE = "port"


def engine_names() -> List[str]:
    return list(ENGINES)


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (KeyError for an unknown name)."""
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module("." + module, __name__), cls)()
