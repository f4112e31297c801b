"""Backing-filesystem profiles (``vms/filesystems.toml``) and the recipes they stand for.

A profile is a name plus how to make the filesystem (README, "Add a filesystem profile"). Following containerd's
overlay snapshotter, every command and mount is built here as *plain data* by pure
functions — mkfs argv, :class:`MountSpec` (source, target, type, option string) — and
executed elsewhere (:mod:`overlaylab.agent.backingfs`), which records the same data as
evidence. Nothing in this module touches the system.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - 3.9/3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..mountutil import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
)
from ..paths import PACKAGE_DIR

KINDS = ("block", "tmpfs", "overlay")

ENV_PROFILES = "OVERLAYLAB_FILESYSTEMS"

_PKG_DIR = PACKAGE_DIR  # .../overlaylab


def default_profiles_path() -> Path:
    """Where :func:`load_profiles` reads from when given no path.

    In order: ``$OVERLAYLAB_FILESYSTEMS``; the repository's ``vms/filesystems.toml`` next to the
    package (source checkout or editable install); a copy shipped inside the package
    (``overlaylab/lab/data/filesystems.toml``, for wheel installs that package it); and
    ``./vms/filesystems.toml``. The first that exists wins.
    """
    candidates = []
    env = os.environ.get(ENV_PROFILES)
    if env:
        candidates.append(Path(env))
    candidates += [
        _PKG_DIR.parent / "vms" / "filesystems.toml",
        _PKG_DIR / "lab" / "data" / "filesystems.toml",
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
    p = Path(path) if path is not None else default_profiles_path()
    return parse_profiles(p.read_text(encoding="utf-8"))


# --- selection: a small pytest "-k" language ----------------------------------------------

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_OPERATORS = ("and", "or", "not", "(", ")")


class ExpressionError(ValueError):
    """A malformed ``-p``/``-k`` expression (or one naming nothing): says what and at which column.

    ``column`` is 1-based; the end of the expression is ``len(expr) + 1``. ``str()`` is one line:
    ``profile expression 'ext4 and': unexpected end at column 9: expected a word, 'not' or '('``.
    """

    def __init__(self, expr: str, column: int, problem: str, what: str = "profile"):
        self.expr, self.column, self.problem, self.what = expr, column, problem, what
        super().__init__("%s expression %r: %s" % (what, expr, problem))


def _tokenize(expr: str) -> List[Tuple[str, int]]:
    """``(token, column)`` pairs; columns are 1-based positions in ``expr`` as given."""
    return [(m.group(0), m.start() + 1) for m in _TOKEN.finditer(expr)]


def expression_words(expr: str) -> List[Tuple[str, int]]:
    """The words (not operators) of an expression, with their columns."""
    return [(tok, col) for tok, col in _tokenize(expr) if tok not in _OPERATORS]


def _word_matches(word: str, profile: FsProfile) -> bool:
    name = profile.name.lower()
    w = word.lower()
    if w.startswith("="):
        return name == w[1:]
    if any(ch in w for ch in "*?["):
        return fnmatch.fnmatchcase(name, w)
    return w in name or w in (k.lower() for k in profile.keywords())


class _Parser:
    """``expr := and ('or' and)*; and := not ('and' not)*; not := 'not' not | '(' expr ')' | word``."""

    def __init__(self, expr: str, what: str = "profile"):
        self.expr = expr
        self.what = what
        self.tokens = _tokenize(expr)
        self.i = 0

    def _error(self, column: int, problem: str) -> ExpressionError:
        return ExpressionError(self.expr, column, problem, self.what)

    def _peek(self) -> Optional[str]:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def _column(self) -> int:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else len(self.expr) + 1

    def _take(self) -> str:
        tok = self._peek()
        if tok is None:
            raise self._error(self._column(), "unexpected end at column %d: expected a word, 'not' or '('"
                              % self._column())
        self.i += 1
        return tok

    def parse(self):
        if not self.tokens:
            return lambda p: True
        fn = self._or()
        if self._peek() is not None:
            tok, col = self.tokens[self.i]
            hint = "" if tok in _OPERATORS else " (join words with 'and' or 'or')"
            raise self._error(col, "unexpected %r at column %d%s" % (tok, col, hint))
        return fn

    def _or(self):
        parts = [self._and()]
        while self._peek() == "or":
            self._take()
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda p, parts=parts: any(f(p) for f in parts))

    def _and(self):
        parts = [self._not()]
        while self._peek() == "and":
            self._take()
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else (lambda p, parts=parts: all(f(p) for f in parts))

    def _not(self):
        col = self._column()
        tok = self._take()
        if tok == "not":
            inner = self._not()
            return lambda p: not inner(p)
        if tok == "(":
            inner = self._or()
            if self._peek() != ")":
                raise self._error(self._column(), "missing ')' at column %d for the '(' at column %d"
                                  % (self._column(), col))
            self._take()
            return inner
        if tok in ("and", "or", ")"):
            raise self._error(col, "unexpected %r at column %d: expected a word, 'not' or '('" % (tok, col))
        return lambda p, w=tok: _word_matches(w, p)


def profile_matcher(expr: str, what: str = "profile"):
    """Compile a ``-k``-style expression into a predicate over :class:`FsProfile` (or anything
    with ``name`` and ``keywords()``, such as a scenario: ``what`` names it in errors).

    Words match case-insensitively as a substring of the name or exactly one of the
    profile's keywords (kind, fstype, tags); ``=name`` matches one name exactly and a word
    with ``*?[`` is a glob over the name. ``not``, ``and``, ``or`` and parentheses combine
    them with pytest's precedence. A malformed expression raises :class:`ExpressionError`.
    """
    return _Parser(expr, what).parse()


def check_expression_words(expr: str, items: Iterable[Any], what: str = "profile") -> None:
    """Raise :class:`ExpressionError` for the first word of ``expr`` that matches none of
    ``items`` (a typo: ``=ext5``, ``xfz``), with the closest names and keywords as a hint."""
    from ..cli.util import close_matches
    items = list(items)
    for word, col in expression_words(expr):
        if any(_word_matches(word, item) for item in items):
            continue
        vocabulary: List[str] = []
        for item in items:
            for k in [item.name] + list(item.keywords()):
                if k not in vocabulary:
                    vocabulary.append(k)
        bare = word.lstrip("=").lower()
        close = close_matches(bare, vocabulary)
        if word.startswith("="):
            close = ["=" + c for c in close]
        hint = " (did you mean %s?)" % " or ".join(close) if close else ""
        raise ExpressionError(expr, col, "%r at column %d matches no %s%s" % (word, col, what, hint), what)


def select_profiles(profiles: Mapping[str, FsProfile],
                    patterns: Union[None, str, Iterable[str]]) -> Dict[str, FsProfile]:
    """The profiles matching ``patterns`` (one expression, or several OR-ed), in file order.

    ``None``/empty selects everything. Examples: ``"ext4"`` (all ext4 variants), ``"xfs and
    not v4"``, ``"=ext4 or btrfs"``, ``"not scale"`` (tags), ``"core"``.
    """
    if patterns is None:
        return dict(profiles)
    exprs = [patterns] if isinstance(patterns, str) else [p for p in patterns]
    exprs = [e for e in exprs if e and e.strip()]
    if not exprs:
        return dict(profiles)
    preds = [profile_matcher(e) for e in exprs]
    return {n: p for n, p in profiles.items() if any(f(p) for f in preds)}


# --- recipes as data ----------------------------------------------------------------------

# mount(8) options that are mount(2) flags rather than filesystem data.
_FLAG_OPTIONS = {
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
    "sync": (0x10, True), "async": (0x10, False),
    "noatime": (0x400, True), "atime": (0x400, False),
    "nodiratime": (0x800, True), "diratime": (0x800, False),
    "relatime": (1 << 21, True), "norelatime": (1 << 21, False),
    "strictatime": (1 << 24, True),
    "lazytime": (1 << 25, True), "nolazytime": (1 << 25, False),
    "defaults": (0, True),
}


def split_mount_options(options: str) -> Tuple[int, str]:
    """Split a mount(8)-style option string into mount(2) ``flags`` and the fs ``data`` string."""
    flags, data = 0, []
    for opt in (o.strip() for o in options.split(",")):
        if not opt:
            continue
        if opt in _FLAG_OPTIONS:
            bit, on = _FLAG_OPTIONS[opt]
            flags = (flags | bit) if on else (flags & ~bit)
        else:
            data.append(opt)
    return flags, ",".join(data)


def join_options(*parts: str) -> str:
    return ",".join(p for p in (s.strip(",") for s in parts) if p)


@dataclass(frozen=True)
class MountSpec:
    """One mount as data: what ``mount -t <fstype> -o <options> <source> <target>`` would do."""

    source: str
    target: str
    fstype: str
    options: str = ""

    @property
    def flags(self) -> int:
        return split_mount_options(self.options)[0]

    @property
    def data(self) -> str:
        return split_mount_options(self.options)[1]

    def argv(self) -> List[str]:
        """The equivalent mount(8) command (for reproduction commands in bug bundles)."""
        argv = ["mount", "-t", self.fstype]
        if self.options:
            argv += ["-o", self.options]
        return argv + [self.source, self.target]

    def command(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv())

    def to_dict(self) -> Dict[str, Any]:
        return {"op": "mount", "source": self.source, "target": self.target, "fstype": self.fstype,
                "options": self.options, "flags": self.flags, "data": self.data, "command": self.command()}


def mkfs_argv(profile: FsProfile, device: str) -> List[str]:
    """The mkfs command for ``profile`` on ``device`` (block profiles only)."""
    if profile.kind != "block":
        raise ValueError("profile %r (%s) has no mkfs step" % (profile.name, profile.kind))
    return list(profile.mkfs) + list(profile.mkfs_options) + [device]


def truncate_argv(image: str, size_mib: int) -> List[str]:
    """The sparse-image step, as the equivalent command (executed with ``os.truncate``)."""
    return ["truncate", "-s", "%dM" % size_mib, image]


def losetup_argv(image: str) -> List[str]:
    return ["losetup", "--find", "--show", image]


def mount_spec(profile: FsProfile, source: str, target: str) -> MountSpec:
    """How ``profile``'s filesystem is mounted (block and tmpfs kinds).

    tmpfs gets ``size=<size_mib>m`` ahead of the profile's own options.
    """
    if profile.kind == "tmpfs":
        return MountSpec("tmpfs" if source in ("", None) else source, target, "tmpfs",
                         join_options("size=%dm" % profile.size_mib, profile.mount_options))
    if profile.kind == "block":
        return MountSpec(source, target, profile.fstype, profile.mount_options)
    raise ValueError("use overlay_mount_spec for overlay profile %r" % profile.name)


def overlay_mount_data(lowerdirs: Sequence[str], upperdir: Optional[str] = None,
                       workdir: Optional[str] = None, extra: str = "") -> str:
    """The overlay data string: ``lowerdir=top:...:bottom[,upperdir=..,workdir=..][,extra]``."""
    opts = ["lowerdir=" + ":".join(lowerdirs)]
    if upperdir is not None:
        opts.append("upperdir=" + upperdir)
    if workdir is not None:
        opts.append("workdir=" + workdir)
    return join_options(",".join(opts), extra)


def overlay_mount_spec(lowerdirs: Sequence[str], upperdir: Optional[str], workdir: Optional[str],
                       target: str, extra: str = "") -> MountSpec:
    return MountSpec("overlay", target, "overlay", overlay_mount_data(lowerdirs, upperdir, workdir, extra))


def reproduce_commands(profile: FsProfile, device: str, mountpoint: str) -> List[str]:
    """Shell lines that remake ``profile`` by hand on ``device`` (a bug bundle's repro)."""
    if profile.kind == "block":
        return [" ".join(shlex.quote(a) for a in mkfs_argv(profile, device)),
                "mkdir -p " + shlex.quote(mountpoint),
                mount_spec(profile, device, mountpoint).command()]
    if profile.kind == "tmpfs":
        return ["mkdir -p " + shlex.quote(mountpoint), mount_spec(profile, "tmpfs", mountpoint).command()]
    base = profile.base_profile
    lines = reproduce_commands(base, device, "BASE") if base else []
    lines += ["mkdir -p BASE/lower/var/lib BASE/upper BASE/work MERGED",
              overlay_mount_spec(["BASE/lower"], "BASE/upper", "BASE/work", "MERGED",
                                 profile.mount_options).command(),
              "mkdir -p MERGED/var/lib/docker"]
    return lines
