"""Backing-filesystem profiles (``vms/filesystems.toml``): the schema and its loader.

A profile is a name plus how to make the filesystem (README, "Add a filesystem profile"); the
commands and mounts it stands for are built in :mod:`.recipes`. Nothing here touches the system.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Union

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - 3.9/3.10
    import tomli as tomllib  # type: ignore[no-redef]

if TYPE_CHECKING:
    from pathlib import Path

KINDS = ("block", "tmpfs", "overlay")

ENV_PROFILES = "OVERLAYLAB_FILESYSTEMS"


def default_profiles_path() -> Path:
    """Where :func:`load_profiles` reads from when given no path.

    In order: ``$OVERLAYLAB_FILESYSTEMS``; the repository's ``vms/filesystems.toml`` next to the
    package (source checkout or editable install); a copy shipped inside the package
    (``overlaylab/lab/data/filesystems.toml``, for wheel installs that package it); and
    ``./vms/filesystems.toml``. The first that exists wins.
    """
    # imported here: agents get the profiles' text (--profiles-b64), and guests pay ~40 ms per
    # import under TCG (pathlib brings urllib.parse and ipaddress)
    from pathlib import Path

    from ..paths import PACKAGE_DIR
    candidates = []
    env = os.environ.get(ENV_PROFILES)
    if env:
        candidates.append(Path(env))
    candidates += [
        PACKAGE_DIR.parent / "vms" / "filesystems.toml",
        PACKAGE_DIR / "lab" / "data" / "filesystems.toml",
        Path.cwd() / "vms" / "filesystems.toml",
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError("no filesystems.toml found; looked at: " + ", ".join(str(c) for c in candidates))


@dataclass(frozen=True)
class FsProfile:
    """One backing-filesystem profile, as read from ``filesystems.toml``."""

    name: str
    description: str
    kind: str                                   # "block" | "tmpfs" | "overlay"
    fstype: str                                 # the type given to mount(2)
    size_mib: int
    mkfs: Tuple[str, ...] = ()                  # argv prefix (block only)
    mkfs_options: Tuple[str, ...] = ()          # extra arguments before the device
    mount_options: str = ""                     # mount(8)-style option string
    base: Optional[str] = None                  # overlay: name of the profile holding the layers
    tags: Tuple[str, ...] = ()
    requires_config: Tuple[str, ...] = ()       # kernel config symbols needed to mount at all
    expect: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    base_profile: Optional["FsProfile"] = field(default=None, hash=False, compare=False, repr=False)

    def keywords(self) -> List[str]:
        """Words an ``-k`` expression matches exactly: kind, fstype and tags."""
        return [self.kind, self.fstype] + list(self.tags)

    def to_dict(self) -> Dict[str, Any]:
        """The profile as JSON-ready data (what a result record carries)."""
        d: Dict[str, Any] = {
            "name": self.name, "description": self.description, "kind": self.kind,
            "fstype": self.fstype, "size_mib": self.size_mib, "mkfs": list(self.mkfs),
            "mkfs_options": list(self.mkfs_options), "mount_options": self.mount_options,
            "base": self.base, "tags": list(self.tags), "requires_config": list(self.requires_config),
            "expect": dict(self.expect),
        }
        return d


class ProfileError(ValueError):
    """A malformed profile table."""


def _str_tuple(value: Any, where: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        raise ProfileError("%s: expected a list of strings, got a string %r" % (where, value))
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
        raise ProfileError("%s: expected a list of strings" % where)
    return tuple(str(v) for v in value)


def profile_from_table(name: str, table: Mapping[str, Any]) -> FsProfile:
    """Build one :class:`FsProfile` from its TOML table (validates kinds and required fields)."""
    where = "profile %r" % name
    kind = table.get("kind", "block")
    if kind not in KINDS:
        raise ProfileError("%s: kind must be one of %s, got %r" % (where, "/".join(KINDS), kind))
    fstype = table.get("fstype") or {"tmpfs": "tmpfs", "overlay": "overlay"}.get(kind)
    if not fstype:
        raise ProfileError("%s: fstype is required for a block profile" % where)
    mkfs = _str_tuple(table.get("mkfs"), where + ".mkfs")
    if kind == "block" and not mkfs:
        raise ProfileError("%s: a block profile needs an mkfs argv" % where)
    base = table.get("base")
    if kind == "overlay" and not base:
        base = "tmpfs"
    known = {"description", "kind", "fstype", "size_mib", "mkfs", "mkfs_options", "mount_options",
             "base", "tags", "requires_config", "expect"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ProfileError("%s: unknown field(s) %s" % (where, ", ".join(unknown)))
    size = table.get("size_mib", 64)
    if not isinstance(size, int) or size <= 0:
        raise ProfileError("%s: size_mib must be a positive integer" % where)
    return FsProfile(
        name=name,
        description=str(table.get("description", "")),
        kind=kind,
        fstype=str(fstype),
        size_mib=size,
        mkfs=mkfs,
        mkfs_options=_str_tuple(table.get("mkfs_options"), where + ".mkfs_options"),
        mount_options=str(table.get("mount_options", "")),
        base=base if kind == "overlay" else None,
        tags=_str_tuple(table.get("tags"), where + ".tags"),
        requires_config=_str_tuple(table.get("requires_config"), where + ".requires_config"),
        expect=dict(table.get("expect", {})),
    )


def parse_profiles(text: str) -> Dict[str, FsProfile]:
    """Profiles from TOML text, in file order, with overlay bases resolved."""
    data = tomllib.loads(text)
    tables = data.get("profile", {})
    if not isinstance(tables, dict):
        raise ProfileError("expected [profile.<name>] tables")
    profiles = {name: profile_from_table(name, t) for name, t in tables.items()}
    for name, p in list(profiles.items()):
        if p.kind == "overlay":
            base = profiles.get(p.base or "")
            if base is None:
                raise ProfileError("profile %r: base profile %r does not exist" % (name, p.base))
            if base.kind == "overlay":
                raise ProfileError("profile %r: base %r must not itself be an overlay profile" % (name, p.base))
            profiles[name] = replace(p, base_profile=base)
    return profiles


def load_profiles(path: Optional[Union[str, "os.PathLike[str]"]] = None) -> Dict[str, FsProfile]:
    """Read ``filesystems.toml`` (default: :func:`default_profiles_path`) into ``{name: FsProfile}``."""
    with open(path if path is not None else default_profiles_path(), encoding="utf-8") as f:
        return parse_profiles(f.read())
