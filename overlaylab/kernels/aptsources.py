"""Derive the Debian mirror from the apt sources this machine has configured.

The lab never names a mirror host of its own: it reads the deb822 ``*.sources`` files and the
one-line ``sources.list`` files the system already uses, picks the entry that serves the main
Debian archive, and writes a throw-away sources.list for whichever suite a kernel comes from.

Everything here is a pure function over text, except :func:`configured_mirror` which reads the
files and :func:`write_sources_list` which writes one.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

#: Debian code names and aliases a main-archive suite may carry (a suite is "debian" if its
#: base name — the part before ``-updates``/``-backports``/… — is one of these).
DEBIAN_SUITES = frozenset(
    """
    stable testing unstable oldstable oldoldstable experimental
    jessie stretch buster bullseye bookworm trixie forky duke sid
    """.split()
)

#: Suite suffixes of the main archive that are not a release of their own.
_SUFFIXES = ("-updates", "-backports", "-backports-sloppy", "-proposed-updates", "-security")


@dataclass(frozen=True)
class SourceEntry:
    """One (type, uri, suite) source as apt sees it, with its components and options."""

    type: str
    uri: str
    suite: str
    components: Tuple[str, ...] = ()
    signed_by: Optional[str] = None
    origin: str = ""  # the file it came from, for messages

    @property
    def base_suite(self) -> str:
        s = self.suite.rstrip("/")
        for suffix in _SUFFIXES:
            if s.endswith(suffix):
                return s[: -len(suffix)]
        return s


@dataclass(frozen=True)
class Mirror:
    """A Debian main-archive mirror: its URI and the keyring apt verifies it with."""

    uri: str
    signed_by: Optional[str] = None
    components: Tuple[str, ...] = ("main",)
    suites: Tuple[str, ...] = field(default_factory=tuple)


class NoDebianMirror(LookupError):
    """No configured apt source serves the Debian main archive."""


def _is_inline_key(value: str) -> bool:
    return "BEGIN PGP PUBLIC KEY BLOCK" in value


def parse_deb822(text: str, origin: str = "") -> List[SourceEntry]:
    """Parse a deb822 ``.sources`` file into entries (one per type × URI × suite).

    Stanzas with ``Enabled: no`` are skipped; continuation lines (a leading space) are joined, so
    an inline ``Signed-By`` key block does not confuse the parser (it is kept as-is).
    """
    entries: List[SourceEntry] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key is not None:
                fields[key] += "\n" + raw.strip()
                continue
            if ":" not in raw:
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if not fields or fields.get("enabled", "yes").strip().lower() in ("no", "false", "0"):
            continue
        signed_by = fields.get("signed-by")
        if signed_by is not None and _is_inline_key(signed_by):
            signed_by = None  # an inline key cannot be passed on a one-line source; apt's defaults apply
        elif signed_by:
            signed_by = signed_by.split()[0]
        components = tuple(fields.get("components", "").split())
        for typ in fields.get("types", "").split():
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    entries.append(SourceEntry(typ, uri, suite, components, signed_by, origin))
    return entries


_ONE_LINE = re.compile(r"^\s*(deb|deb-src)\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<rest>.*)$")


def parse_one_line(text: str, origin: str = "") -> List[SourceEntry]:
    """Parse one-line-style ``sources.list`` text (``deb [opts] uri suite comp...``)."""
    entries: List[SourceEntry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = _ONE_LINE.match(line)
        if not m:
            continue
        parts = m.group("rest").split()
        if len(parts) < 2:
            continue
        signed_by = None
        for opt in (m.group("opts") or "").split():
            k, _, v = opt.partition("=")
            if k == "signed-by":
                signed_by = v.split(",")[0]
        entries.append(
            SourceEntry(m.group(1), parts[0], parts[1], tuple(parts[2:]), signed_by, origin)
        )
    return entries


def is_debian_main_archive(entry: SourceEntry) -> bool:
    """True for a binary source of the Debian main archive (not security, not third party)."""
    if entry.type != "deb":
        return False
    if entry.suite.endswith("-security") or "debian-security" in entry.uri:
        return False
    return entry.base_suite in DEBIAN_SUITES


def choose_mirror(entries: Iterable[SourceEntry]) -> Mirror:
    """Pick the configured mirror that serves the Debian main archive.

    A URI listing a bare release suite (``bookworm``) wins over one that only lists
    ``-updates``/``-backports``; among equals, the first configured wins.
    """
    by_uri: dict = {}
    order: List[str] = []
    for e in entries:
        if not is_debian_main_archive(e):
            continue
        uri = e.uri.rstrip("/")
        if uri not in by_uri:
            by_uri[uri] = []
            order.append(uri)
        by_uri[uri].append(e)
    if not order:
        raise NoDebianMirror("no configured apt source serves the Debian main archive")

    def score(uri: str) -> int:
        return 1 if any(e.suite == e.base_suite for e in by_uri[uri]) else 0

    best = max(order, key=lambda u: (score(u), -order.index(u)))
    es = by_uri[best]
    signed_by = next((e.signed_by for e in es if e.signed_by), None)
    components = tuple(dict.fromkeys(c for e in es for c in e.components)) or ("main",)
    return Mirror(best, signed_by, components, tuple(dict.fromkeys(e.suite for e in es)))


def sources_list_line(mirror: Mirror, suite: str, components: Sequence[str] = ("main",)) -> str:
    """The one-line source for ``suite`` on ``mirror`` (kernels live in ``main``)."""
    opts = "[signed-by=%s] " % mirror.signed_by if mirror.signed_by else ""
    return "deb %s%s %s %s\n" % (opts, mirror.uri, suite, " ".join(components))


def read_configured_entries(etc_apt: str = "/etc/apt") -> List[SourceEntry]:
    """All source entries apt would read from ``etc_apt`` (sources.list, .list and .sources)."""
    entries: List[SourceEntry] = []
    main = os.path.join(etc_apt, "sources.list")
    if os.path.isfile(main):
        with open(main, encoding="utf-8", errors="replace") as f:
            entries += parse_one_line(f.read(), main)
    for path in sorted(glob.glob(os.path.join(etc_apt, "sources.list.d", "*"))):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if path.endswith(".list"):
            entries += parse_one_line(text, path)
        elif path.endswith(".sources"):
            entries += parse_deb822(text, path)
    return entries


def configured_mirror(etc_apt: str = "/etc/apt") -> Mirror:
    """The Debian mirror the system's apt configuration uses (raises :class:`NoDebianMirror`)."""
    return choose_mirror(read_configured_entries(etc_apt))


def write_sources_list(path: str, mirror: Mirror, suite: str) -> str:
    """Write a temporary sources.list with just ``suite`` of ``mirror``; returns ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(sources_list_line(mirror, suite))
    return path
