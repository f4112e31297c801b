"""The kernel catalogue (``vms/kernels.toml``) and the pure parts of resolving an entry.

An entry names one kernel the lab can boot:

``kind = "debian"``
    a Debian kernel package fetched with apt: ``suite`` plus ``package``, a regular expression
    matched against whole package names; the newest matching version wins.
``kind = "host"``
    the kernel the machine runs (for the local provider, or qemu when ``/boot`` has it).
``kind = "custom"``
    any ``vmlinuz`` plus its ``modules`` directory (``/lib/modules/<release>``).
``kind = "deb"``
    one or more local ``.deb`` files (``deb = "path"`` or a list), unpacked like a fetched one.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

try:  # Python 3.11+
    import tomllib  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as tomllib  # type: ignore[no-redef]

KINDS = ("debian", "host", "custom", "deb")


class CatalogueError(ValueError):
    """The catalogue file or an entry in it is malformed."""


@dataclass(frozen=True)
class KernelEntry:
    name: str
    kind: str
    suite: Optional[str] = None
    package: Optional[str] = None
    vmlinuz: Optional[str] = None
    modules: Optional[str] = None
    deb: Tuple[str, ...] = ()
    description: str = ""
    extra: Dict[str, object] = field(default_factory=dict, compare=False, hash=False)


#: another catalogue file in place of ``vms/kernels.toml`` (``overlaylab bisect --kernels-dir``
#: points it at the catalogue it makes of a directory of kernel builds)
ENV_KERNELS = "OVERLAYLAB_KERNELS"


def default_catalogue_path() -> Path:
    """``$OVERLAYLAB_KERNELS``, else ``vms/kernels.toml`` of the project checkout this package lives in."""
    if os.environ.get(ENV_KERNELS):
        return Path(os.environ[ENV_KERNELS])
    from ..paths import PROJECT_ROOT
    return PROJECT_ROOT / "vms" / "kernels.toml"


def parse_entry(name: str, data: dict, base_dir: Optional[Path] = None) -> KernelEntry:
    """Validate one ``[kernels.<name>]`` table and return it as a :class:`KernelEntry`."""
    kind = data.get("kind", "debian")
    if kind not in KINDS:
        raise CatalogueError("kernel %r: unknown kind %r (one of %s)" % (name, kind, ", ".join(KINDS)))

    def path(p: Optional[str]) -> Optional[str]:
        if p is None:
            return None
        p = os.path.expanduser(str(p))
        if base_dir is not None and not os.path.isabs(p):
            p = str(base_dir / p)
        return p

    deb = data.get("deb", ())
    if isinstance(deb, str):
        deb = (deb,)
    entry = KernelEntry(
        name=name,
        kind=kind,
        suite=data.get("suite"),
        package=data.get("package"),
        vmlinuz=path(data.get("vmlinuz")),
        modules=path(data.get("modules")),
        deb=tuple(path(d) for d in deb),  # type: ignore[misc]
        description=data.get("description", ""),
        extra={k: v for k, v in data.items()
               if k not in ("kind", "suite", "package", "vmlinuz", "modules", "deb", "description")},
    )
    if kind == "debian":
        if not entry.suite or not entry.package:
            raise CatalogueError("kernel %r: kind=debian needs suite and package" % name)
        try:
            re.compile(entry.package)
        except re.error as e:
            raise CatalogueError("kernel %r: package pattern: %s" % (name, e)) from None
    elif kind == "custom" and not entry.vmlinuz:
        raise CatalogueError("kernel %r: kind=custom needs vmlinuz (and usually modules)" % name)
    elif kind == "deb" and not entry.deb:
        raise CatalogueError("kernel %r: kind=deb needs deb = path or [paths]" % name)
    return entry


def parse_catalogue(text: str, base_dir: Optional[Path] = None) -> Dict[str, KernelEntry]:
    """Parse catalogue TOML text (``[kernels.<name>]`` tables) into entries by name."""
    doc = tomllib.loads(text)
    kernels = doc.get("kernels", {})
    if not isinstance(kernels, dict):
        raise CatalogueError("[kernels] must be a table of tables")
    return {name: parse_entry(name, data, base_dir) for name, data in kernels.items()}


def load_catalogue(path: Optional[os.PathLike] = None) -> Dict[str, KernelEntry]:
    """Load ``vms/kernels.toml`` (or ``path``); relative paths resolve against its directory."""
    p = Path(path) if path is not None else default_catalogue_path()
    return parse_catalogue(p.read_text(encoding="utf-8"), p.parent.parent if p.parent.name == "vms" else p.parent)


def get_entry(name: str, path: Optional[os.PathLike] = None) -> KernelEntry:
    cat = load_catalogue(path)
    try:
        return cat[name]
    except KeyError:
        raise CatalogueError("no kernel %r in the catalogue (have: %s)" % (name, ", ".join(sorted(cat)))) from None


# --- Debian version ordering (Debian Policy 5.6.12, https://www.debian.org/doc/debian-policy/ch-controlfields.html#version) -------------------------------------------

def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if not c:
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _cmp_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_version(v: str) -> Tuple[int, str, str]:
    epoch = 0
    if ":" in v:
        e, v = v.split(":", 1)
        epoch = int(e or 0)
    if "-" in v:
        upstream, revision = v.rsplit("-", 1)
    else:
        upstream, revision = v, ""
    return epoch, upstream, revision


def compare_versions(a: str, b: str) -> int:
    """Compare two Debian version strings like ``dpkg --compare-versions`` (<0, 0, >0)."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return ea - eb
    return _cmp_part(ua, ub) or _cmp_part(ra, rb)


class DebVersion:
    """A sort key for Debian versions."""

    __slots__ = ("v",)

    def __init__(self, v: str) -> None:
        self.v = v

    def __lt__(self, other: "DebVersion") -> bool:
        return compare_versions(self.v, other.v) < 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DebVersion) and compare_versions(self.v, other.v) == 0


# --- apt-cache output --------------------------------------------------------------------------

def parse_apt_cache_show(text: str) -> List[Dict[str, str]]:
    """Parse ``apt-cache show`` output (RFC-822 stanzas) into dicts of field -> value."""
    records: List[Dict[str, str]] = []
    for stanza in re.split(r"\n\s*\n", text):
        rec: Dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                rec[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                rec[key] = value.strip()
        if rec.get("Package"):
            records.append(rec)
    return records


def parse_depends(value: str) -> List[List[Tuple[str, Optional[str]]]]:
    """Split a Depends value into alternatives: ``[[(name, "(= 1.0)"|None), ...], ...]``."""
    out = []
    for group in value.split(","):
        alts = []
        for alt in group.split("|"):
            alt = alt.strip()
            if not alt:
                continue
            m = re.match(r"^([^\s(\[:]+)(?::\S+)?\s*(\([^)]*\))?", alt)
            if m:
                alts.append((m.group(1), m.group(2)))
        if alts:
            out.append(alts)
    return out


@dataclass(frozen=True)
class ResolvedPackage:
    package: str
    version: str
    sha256: str
    filename: str = ""
    depends: Tuple[str, ...] = ()


def matching_packages(pattern: str, names: Iterable[str]) -> List[str]:
    """Package names that ``pattern`` (a regular expression over the whole name) matches."""
    rx = re.compile(pattern)
    return sorted({n.strip() for n in names if n.strip() and rx.fullmatch(n.strip())})


def newest(records: Sequence[Dict[str, str]], pattern: Optional[str] = None) -> Optional[ResolvedPackage]:
    """The newest record (by Debian version, then name) whose package matches ``pattern``."""
    rx = re.compile(pattern) if pattern else None
    cands = [r for r in records if rx is None or rx.fullmatch(r["Package"])]
    if not cands:
        return None
    best = max(cands, key=lambda r: (DebVersion(r.get("Version", "0")), _natural(r["Package"])))
    return ResolvedPackage(
        package=best["Package"],
        version=best.get("Version", ""),
        sha256=best.get("SHA256", ""),
        filename=best.get("Filename", ""),
        depends=tuple(alts[0][0] for alts in parse_depends(best.get("Depends", ""))),
    )


def _natural(s: str) -> Tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


#: Dependencies of a kernel image package that carry the kernel itself: 7.x splits the image
#: into ``linux-binary-<ver>`` (vmlinuz), ``linux-modules-<ver>`` and ``linux-base-<ver>``
#: (config, modules.builtin). Others (initramfs tools, the unversioned ``linux-base`` scripts)
#: are not needed to boot it.
KERNEL_PART = re.compile(r"^linux-(image|binary|modules|base)-[0-9]\S*$")


def kernel_parts(depends: Iterable[str]) -> List[str]:
    """The dependencies worth downloading alongside a kernel image package."""
    return [d for d in depends if KERNEL_PART.match(d) and "-dbg" not in d]


def render_catalogue(as_json: bool = False) -> str:
    """The catalogue with what is in the cache (nothing is downloaded): a table, or a JSON list
    of name, kind, suite, description, cached, release, version."""
    from tabulate import tabulate

    from .cache import kernels_dir, read_json
    index = (read_json(kernels_dir() / "index.json", {}) or {}).get("entries", {})
    rows, items = [], []
    for entry in load_catalogue().values():
        cached = index.get(entry.name, {})
        state = "%s (%s)" % (cached["release"], cached.get("version", "")) if cached else (
            "running: %s" % os.uname().release if entry.kind == "host" else "not fetched")
        rows.append((entry.name, entry.kind, entry.suite or "", entry.description, state))
        items.append({"name": entry.name, "kind": entry.kind, "suite": entry.suite or None,
                      "description": entry.description, "cached": bool(cached) or entry.kind == "host",
                      "release": cached.get("release") or (os.uname().release if entry.kind == "host" else None),
                      "version": cached.get("version")})
    if as_json:
        import json
        return json.dumps(items, indent=2, sort_keys=True)
    return tabulate(rows, headers=["kernel", "kind", "suite", "description", "cached"])
