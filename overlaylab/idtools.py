"""User-namespace id maps and owner-aware mkdir, after moby v1.10.3 ``pkg/idtools`` (docs/reference-behaviour.md#idtools)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .goerrors import PathError, go_quote

SUBUID_FILE = "/etc/subuid"
SUBGID_FILE = "/etc/subgid"


@dataclass(frozen=True)
class IDMap:
    """One range of a user-namespace mapping (JSON keys ``container_id``, ``host_id``, ``size``)."""

    container_id: int
    host_id: int
    size: int

    def to_json(self) -> Dict[str, int]:
        return {"container_id": self.container_id, "host_id": self.host_id, "size": self.size}

    @classmethod
    def from_json(cls, data: Dict[str, int]) -> "IDMap":
        return cls(int(data["container_id"]), int(data["host_id"]), int(data["size"]))


IDMaps = Optional[Sequence[IDMap]]


class IDMapError(ValueError):
    """An id that no range of the map covers, or an unparsable subuid/subgid file."""


def to_host(container_id: int, maps: IDMaps) -> int:
    """Map a container id to the host (``ToHost``); ``None`` maps are the identity.

    An empty but non-None list has no range, so every id fails, as in the reference.
    """
    if maps is None:
        return container_id
    for m in maps:
        if m.container_id <= container_id <= m.container_id + m.size - 1:
            return m.host_id + (container_id - m.container_id)
    raise IDMapError("Container ID %d cannot be mapped to a host ID" % container_id)


def to_container(host_id: int, maps: IDMaps) -> int:
    """Map a host id into the container (``ToContainer``)."""
    if maps is None:
        return host_id
    for m in maps:
        if m.host_id <= host_id <= m.host_id + m.size - 1:
            return m.container_id + (host_id - m.host_id)
    raise IDMapError("Host ID %d cannot be mapped to a container ID" % host_id)


def get_root_uid_gid(uid_maps: IDMaps, gid_maps: IDMaps) -> Tuple[int, int]:
    """The host uid/gid of the container's root (``GetRootUIDGID``)."""
    uid = to_host(0, uid_maps) if uid_maps is not None else 0
    gid = to_host(0, gid_maps) if gid_maps is not None else 0
    return uid, gid


def _parse_subids(path: str, name: str) -> List[Tuple[int, int]]:
    ranges: List[Tuple[int, int]] = []
    label = "subuid" if path.endswith("subuid") else "subgid"
    with open(path, "r", encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(":")
            if len(parts) != 3:
                raise IDMapError(
                    "Cannot parse subuid/gid information: Format not correct for %s file" % label
                )
            if parts[0] != name:
                continue
            try:
                start, length = int(parts[1]), int(parts[2])
            except ValueError as err:
                raise IDMapError("Cannot parse subuid/gid information: %s" % err) from None
            ranges.append((start, length))
    return ranges


def _ranges_to_maps(ranges: List[Tuple[int, int]]) -> List[IDMap]:
    maps, next_id = [], 0
    for start, length in sorted(ranges):
        maps.append(IDMap(next_id, start, length))
        next_id += length
    return maps


def create_id_mappings(
    user: str, group: str, subuid_file: str = SUBUID_FILE, subgid_file: str = SUBGID_FILE
) -> Tuple[List[IDMap], List[IDMap]]:
    """Build uid and gid maps from ``/etc/subuid`` and ``/etc/subgid`` (``CreateIDMappings``)."""
    uid_ranges = _parse_subids(subuid_file, user)
    if not uid_ranges:
        raise IDMapError("No subuid ranges found for user %s" % go_quote(user))
    gid_ranges = _parse_subids(subgid_file, group)
    if not gid_ranges:
        raise IDMapError("No subgid ranges found for group %s" % go_quote(group))
    return _ranges_to_maps(uid_ranges), _ranges_to_maps(gid_ranges)


def _mkdir_as(path: str, mode: int, uid: int, gid: int, mk_all: bool, chown_existing: bool) -> None:
    if os.path.exists(path):
        if chown_existing:
            try:
                os.chown(path, uid, gid)
            except OSError as err:
                raise PathError("chown", path, err.errno) from None
        return
    created = [path]
    if mk_all:
        parent = os.path.dirname(path)
        while parent not in ("/", "") and not os.path.exists(parent):
            created.append(parent)
            parent = os.path.dirname(parent)
        try:
            os.makedirs(path, mode, exist_ok=True)
        except OSError as err:
            raise PathError("mkdir", err.filename or path, err.errno) from None
    else:
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass
        except OSError as err:
            raise PathError("mkdir", path, err.errno) from None
    for p in created:
        try:
            os.chown(p, uid, gid)
        except OSError as err:
            raise PathError("chown", p, err.errno) from None


def mkdir_all_as(path: str, mode: int, uid: int, gid: int) -> None:
    """``MkdirAllAs``: create missing components, chown what it made, and chown ``path`` if it exists."""
    _mkdir_as(path, mode, uid, gid, mk_all=True, chown_existing=True)


def mkdir_all_new_as(path: str, mode: int, uid: int, gid: int) -> None:
    """``MkdirAllNewAs``: like :func:`mkdir_all_as` but an existing ``path`` is left alone."""
    _mkdir_as(path, mode, uid, gid, mk_all=True, chown_existing=False)


def mkdir_as(path: str, mode: int, uid: int, gid: int) -> None:
    """``MkdirAs``: one mkdir (existing is fine, and gets chowned)."""
    _mkdir_as(path, mode, uid, gid, mk_all=False, chown_existing=True)


def maps_to_json(maps: IDMaps) -> Optional[List[Dict[str, int]]]:
    return None if maps is None else [m.to_json() for m in maps]


def maps_from_json(data: Optional[List[Dict[str, int]]]) -> Optional[List[IDMap]]:
    return None if data is None else [IDMap.from_json(d) for d in data]
