"""The graph-driver framework: a registry of drivers by name and driver selection (moby v1.10.3
``daemon/graphdriver/driver.go``; docs/reference-behaviour.md#driver-selection).

Drivers register an init function at import time; ``get_driver`` initialises one by name with
``home = root/<name>``; ``new`` picks a driver for a root the way the daemon does (a provided
name, else a prior driver's directory, else the priority list). This project has one driver
(``overlay``), so the priority list is the reference's restricted to what is registered.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

from ..goerrors import go_quote
from ..idtools import IDMaps
from .errors import (
    ErrApplyDiffFallback,
    ErrIncompatibleFS,
    ErrNotSupported,
    ErrPrerequisites,
    GraphDriverError,
    RegistryError,
    is_sentinel,
)

log = logging.getLogger(__name__)

InitFunc = Callable[..., object]

# The reference's order on linux at 1.10.3; entries that are not registered are skipped.
PRIORITY: Sequence[str] = ("aufs", "btrfs", "zfs", "devicemapper", "overlay", "vfs")

_drivers: Dict[str, InitFunc] = {}

__all__ = [
    "register", "get_driver", "new", "registered", "PRIORITY",
    "ErrNotSupported", "ErrPrerequisites", "ErrIncompatibleFS", "ErrApplyDiffFallback",
    "GraphDriverError", "RegistryError", "is_sentinel",
]


def register(name: str, init: InitFunc) -> None:
    """Register ``init(home, options, uid_maps, gid_maps)`` under ``name`` (``Register``)."""
    if name in _drivers:
        raise RegistryError("Name already registered %s" % name)
    _drivers[name] = init


def registered() -> List[str]:
    _load_builtin_drivers()
    return sorted(_drivers)


def _load_builtin_drivers() -> None:
    # Importing the module registers it, as the reference's register_overlay.go does.
    from . import overlay  # noqa: F401


def _init(name: str, home: str, options: Sequence[str], uid_maps: IDMaps, gid_maps: IDMaps):
    return _drivers[name](home, options, uid_maps, gid_maps)


def get_driver(name: str, root: str, options: Sequence[str] = (), uid_maps: IDMaps = None,
               gid_maps: IDMaps = None):
    """``GetDriver``: initialise driver ``name`` with home ``root/<name>``.

    An unknown name is ``ErrNotSupported`` (there are no plugins here). Init errors are
    returned as they are.
    """
    _load_builtin_drivers()
    if name in _drivers:
        return _init(name, os.path.join(root, name), options, uid_maps, gid_maps)
    log.error("Failed to GetDriver graph %s %s", name, root)
    raise ErrNotSupported()


def _get_builtin_driver(name: str, root: str, options: Sequence[str], uid_maps: IDMaps,
                        gid_maps: IDMaps):
    if name in _drivers:
        return _init(name, os.path.join(root, name), options, uid_maps, gid_maps)
    log.error("Failed to built-in GetDriver graph %s %s", name, root)
    raise ErrNotSupported()


def _scan_prior_drivers(root: str) -> List[str]:
    return [name for name in _drivers if name != "vfs" and os.path.exists(os.path.join(root, name))]


def new(root: str, name: str = "", options: Sequence[str] = (), uid_maps: IDMaps = None,
        gid_maps: IDMaps = None):
    """``New``: choose and initialise a driver for ``root`` (docs/reference-behaviour.md#driver-selection)."""
    _load_builtin_drivers()
    if name:
        log.debug("[graphdriver] trying provided driver %s", go_quote(name))
        return get_driver(name, root, options, uid_maps, gid_maps)

    prior = _scan_prior_drivers(root)
    for candidate in PRIORITY:
        if candidate == "vfs" or candidate not in prior:
            continue
        try:
            driver = _get_builtin_driver(candidate, root, options, uid_maps, gid_maps)
        except Exception as err:
            log.error("[graphdriver] prior storage driver %s failed: %s", go_quote(candidate), err)
            raise
        others = [p for p in prior if p != candidate]
        if others:
            raise RegistryError(
                "%s contains other graphdrivers: %s; Please cleanup or explicitly choose storage "
                "driver (-s <DRIVER>)" % (go_quote(root), ",".join(others)))
        log.info("[graphdriver] using prior storage driver %s", go_quote(candidate))
        return driver

    for candidate in PRIORITY:
        if candidate not in _drivers:
            continue
        try:
            return _get_builtin_driver(candidate, root, options, uid_maps, gid_maps)
        except GraphDriverError as err:
            if is_sentinel(err):
                continue
            raise

    # The reference passes root itself (not root/<name>) here; kept for fidelity. Docker never
    # gets here (vfs is in the priority list); this project has no vfs, so e.g. a btrfs root
    # whose parent is not btrfs ends with an overlay driver homed at root itself.
    for candidate in list(_drivers):
        try:
            return _drivers[candidate](root, options, uid_maps, gid_maps)
        except GraphDriverError as err:
            if is_sentinel(err):
                continue
            raise
    raise RegistryError("No supported storage backend found")
