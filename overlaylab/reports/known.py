"""Known issues: a checked-in file that names failures the lab reproduces and their upstream reports.

``reports/known-issues.toml`` (``$OVERLAYLAB_KNOWN_ISSUES`` names another) holds one ``[[issue]]``
per known failure::

    schema = 1

    [[issue]]
    id = "no-dtype-whiteouts"                     # unique: lower case, digits, '-'
    title = "No d_type on the upper: deleted files stay listed"
    url = "https://github.com/moby/moby/issues/22937"   # the upstream report (https)
    see = ["https://git.kernel.org/..."]          # optional: more references
    match = ["*/ext4-nofiletype/dtype-whiteouts"] # cell-id globs KERNEL/PROFILE/SCENARIO[/ENGINE]
    outcomes = ["FAIL"]                           # optional, default ["FAIL"]
    status = "open"                               # or "fixed-in 4.19" (a kernel version)
    since = "3.18"                                # optional: first kernel it applies to
    until = "4.19"                                # optional: first kernel it no longer applies to
    note = "why, in one line"                     # optional

A ``match`` glob is a cell id as reports and ``overlaylab bundle`` write it (:func:`cell_id` of
:mod:`.model`): part by part with ``*``, ``?`` and ``[..]``, a ``*`` never spanning a ``/``;
three parts name the port's cells, a fourth the engine (``*`` for every engine, the port
included), exactly as in a baseline file (:mod:`.compare`). The KERNEL part is the run's target
name (``host``, ``debian-6.1``); ``since``/``until`` (and ``fixed-in``, when ``until`` is not
given) bound the kernel *release* the cell ran on.

An entry *covers* a cell its globs name on a kernel in its range, and *matches* it when the
cell's outcome is one of its ``outcomes``. The reports' fold (:meth:`.model.RunReport.from_run`)
puts the matching entries on each cell (``CellView.known``); a cell that met its expectation
with a non-passing outcome and has an entry is KNOWN, a failing or unexpected one without is
new. The records are never changed: this is a reading of the run, like its tables.

:func:`check` answers ``overlaylab known check``: the entries whose covered cells ran but none
failed so (stale), those whose cells did not run at all, and those whose ``until``/``fixed-in``
kernel, or a later one, still fails.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from ..agent.records import OUTCOMES, cell_glob_matches
from ..paths import PROJECT_ROOT

try:
    import tomllib  # type: ignore[import-not-found]
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

KNOWN_SCHEMA = 1
ENV = "OVERLAYLAB_KNOWN_ISSUES"
DEFAULT_PATH = str(PROJECT_ROOT / "reports" / "known-issues.toml")

_KEYS = {"id", "title", "url", "see", "match", "outcomes", "status", "since", "until", "note"}
_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")
_STATUS = re.compile(r"^(open|fixed-in (\S+))$")

Version = Tuple[int, int, int]


class KnownIssuesError(ValueError):
    """A known-issues file that cannot be used: one line naming the file and the entry."""


def kernel_version(release: str) -> Optional[Version]:
    """``(6, 18, 44)`` of ``6.18.44-fc-v657``, ``(5, 10, 0)`` of ``5.10.0-30-amd64``; None if
    the release does not start with a version."""
    m = re.match(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?", (release or "").strip())
    if not m:
        return None
    return tuple(int(g or 0) for g in m.groups())  # type: ignore[return-value]


def version_text(version: Optional[Version]) -> str:
    """``4.19`` for ``(4, 19, 0)``, ``6.1.2`` for ``(6, 1, 2)``."""
    if not version:
        return ""
    return ".".join(str(n) for n in (version if version[2] else version[:2]))


@dataclass(frozen=True)
class KnownIssue:
    """One ``[[issue]]`` of the file."""

    id: str
    title: str
    url: str
    match: Tuple[str, ...]
    outcomes: Tuple[str, ...] = ("FAIL",)
    status: str = "open"
    since: Optional[Version] = None
    until: Optional[Version] = None
    fixed_in: Optional[Version] = None
    see: Tuple[str, ...] = ()
    note: str = ""

    @property
    def fix(self) -> Optional[Version]:
        """The first kernel the issue should be gone on: ``until``, else the ``fixed-in`` one."""
        return self.until or self.fixed_in

    def covers_key(self, key: Sequence[str]) -> bool:
        """A glob of ``match`` names the cell ``(kernel, profile, scenario, engine)``."""
        return any(cell_glob_matches(pattern, key) for pattern in self.match)

    def in_range(self, release: str) -> bool:
        """The kernel release is in ``[since, fix)`` (an unknown release is in every range)."""
        version = kernel_version(release)
        if version is None:
            return True
        if self.since and version < self.since:
            return False
        return not (self.fix and version >= self.fix)

    def covers(self, key: Sequence[str], release: str) -> bool:
        return self.covers_key(key) and self.in_range(release)

    def matches(self, key: Sequence[str], release: str, outcome: str) -> bool:
        return outcome in self.outcomes and self.covers(key, release)

    @property
    def range_text(self) -> str:
        if self.since and self.fix:
            return "%s <= kernel < %s" % (version_text(self.since), version_text(self.fix))
        if self.since:
            return "kernel >= %s" % version_text(self.since)
        if self.fix:
            return "kernel < %s" % version_text(self.fix)
        return "every kernel"

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "title": self.title, "url": self.url, "see": list(self.see),
                "match": list(self.match), "outcomes": list(self.outcomes), "status": self.status,
                "since": version_text(self.since) or None, "until": version_text(self.until) or None,
                "note": self.note}


@dataclass
class KnownIssues:
    """The entries of one file, in its order."""

    source: str
    issues: List[KnownIssue] = field(default_factory=list)

    def matching(self, key: Sequence[str], release: str, outcome: str) -> List[KnownIssue]:
        return [i for i in self.issues if i.matches(key, release, outcome)]

    def get(self, issue_id: str) -> Optional[KnownIssue]:
        return next((i for i in self.issues if i.id == issue_id), None)


# --- loading ----------------------------------------------------------------------------------

def _version(value: Any, where: str, name: str) -> Optional[Version]:
    if value is None:
        return None
    if not isinstance(value, str) or not _VERSION.match(value):
        raise KnownIssuesError("%s: %s must be a kernel version like \"4.19\", got %r" % (where, name, value))
    return kernel_version(value)


def _strings(value: Any, where: str, name: str) -> Tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise KnownIssuesError("%s: %s must be a non-empty string or list of strings" % (where, name))
    return tuple(v.strip() for v in values)


def _url(value: str, where: str, name: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme != "https" or not parsed.netloc or not parsed.path.strip("/") or any(c.isspace() for c in value):
        raise KnownIssuesError("%s: %s %r is not an https:// address of a page" % (where, name, value))
    return value


def _issue(raw: Any, where: str) -> KnownIssue:
    if not isinstance(raw, dict):
        raise KnownIssuesError("%s: not a table" % where)
    issue_id = raw.get("id")
    if not isinstance(issue_id, str) or not _ID.match(issue_id):
        raise KnownIssuesError("%s: id must be lower case letters, digits and '-', got %r" % (where, issue_id))
    where = "%s (%s)" % (where, issue_id)
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise KnownIssuesError("%s: unknown key %s (keys: %s)" % (where, ", ".join(unknown), ", ".join(sorted(_KEYS))))
    for name in ("title", "url", "match"):
        if name not in raw:
            raise KnownIssuesError("%s: no %s" % (where, name))
    title = raw["title"]
    if not isinstance(title, str) or not title.strip() or "\n" in title:
        raise KnownIssuesError("%s: title must be one non-empty line" % where)
    if not isinstance(raw["url"], str):
        raise KnownIssuesError("%s: url must be a string" % where)
    url = _url(raw["url"].strip(), where, "url")
    see = tuple(_url(u, where, "see") for u in _strings(raw["see"], where, "see")) if "see" in raw else ()
    match = _strings(raw["match"], where, "match")
    for pattern in match:
        parts = pattern.split("/")
        if len(parts) not in (3, 4) or not all(parts):
            raise KnownIssuesError("%s: match %r is not KERNEL/PROFILE/SCENARIO[/ENGINE]" % (where, pattern))
    outcomes = _strings(raw.get("outcomes", ["FAIL"]), where, "outcomes")
    for outcome in outcomes:
        if outcome not in OUTCOMES or outcome == "PASS":
            raise KnownIssuesError("%s: unknown outcome %r (one of %s)" % (
                where, outcome, ", ".join(o for o in OUTCOMES if o != "PASS")))
    status = raw.get("status", "open")
    m = _STATUS.match(status) if isinstance(status, str) else None
    if not m:
        raise KnownIssuesError("%s: status must be \"open\" or \"fixed-in VERSION\", got %r" % (where, status))
    fixed_in = _version(m.group(2), where, "fixed-in") if m.group(2) else None
    since = _version(raw.get("since"), where, "since")
    until = _version(raw.get("until"), where, "until")
    if since and (until or fixed_in) and since >= (until or fixed_in):
        raise KnownIssuesError("%s: since %s is not before %s" % (where, version_text(since), version_text(until or fixed_in)))
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise KnownIssuesError("%s: note must be a string" % where)
    return KnownIssue(id=issue_id, title=title.strip(), url=url, match=match, outcomes=outcomes, status=status,
                      since=since, until=until, fixed_in=fixed_in, see=see, note=" ".join(note.split()))


def parse(text: str, source: str) -> KnownIssues:
    """The entries of a known-issues file's text; :class:`KnownIssuesError` naming ``source``
    and the entry when anything is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise KnownIssuesError("%s: not TOML: %s" % (source, err)) from None
    if data.get("schema", KNOWN_SCHEMA) != KNOWN_SCHEMA:
        raise KnownIssuesError("%s: schema %r (this overlaylab reads %d)" % (source, data.get("schema"), KNOWN_SCHEMA))
    unknown = sorted(set(data) - {"schema", "issue"})
    if unknown:
        raise KnownIssuesError("%s: unknown top-level key %s (schema, [[issue]])" % (source, ", ".join(unknown)))
    raw_issues = data.get("issue", [])
    if not isinstance(raw_issues, list):
        raise KnownIssuesError("%s: issue must be an array of tables ([[issue]])" % source)
    issues: List[KnownIssue] = []
    for n, raw in enumerate(raw_issues, 1):
        issue = _issue(raw, "%s: issue %d" % (source, n))
        if any(i.id == issue.id for i in issues):
            raise KnownIssuesError("%s: issue %d: id %r is used twice" % (source, n, issue.id))
        issues.append(issue)
    return KnownIssues(source, issues)


def load(path: str) -> KnownIssues:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise KnownIssuesError("%s: cannot read: %s" % (path, err.strerror or err)) from None
    except UnicodeDecodeError as err:
        raise KnownIssuesError("%s: not UTF-8 text: %s" % (path, err)) from None
    return parse(text, path)


_CACHE: Dict[str, Tuple[float, KnownIssues]] = {}


def default_path() -> str:
    return os.environ.get(ENV) or DEFAULT_PATH


def load_default() -> KnownIssues:
    """The file reports read (``$OVERLAYLAB_KNOWN_ISSUES``, else the project's); none when the
    project's is absent. Read again only when it changed."""
    path = default_path()
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        if path == DEFAULT_PATH:
            return KnownIssues(path)
        raise KnownIssuesError("%s (from $%s): no such file" % (path, ENV)) from None
    cached = _CACHE.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, load(path))
        _CACHE[path] = cached
    return cached[1]


# --- overlaylab known check -------------------------------------------------------------------

@dataclass
class CheckResult:
    """What ``known check`` says of one run."""

    stale: List[KnownIssue] = field(default_factory=list)
    not_run: List[KnownIssue] = field(default_factory=list)
    #: (entry, the cells on a kernel at or after its fix that still fail so)
    still_failing: List[Tuple[KnownIssue, List[Any]]] = field(default_factory=list)
    #: entry id -> the cells it made KNOWN in this run
    matched: Dict[str, List[Any]] = field(default_factory=dict)

    @property
    def attention(self) -> bool:
        return bool(self.stale or self.still_failing)


def check(cells: Iterable[Any], issues: KnownIssues, release_of) -> CheckResult:
    """Check ``issues`` against a run's folded cells (:class:`.model.CellView`; ``release_of``
    gives a cell's kernel release). An entry is *stale* when cells it covers ran (outcome not
    UNSUPPORTED: the target could provide the prerequisite) but none of them was KNOWN through
    it; *not run* when no covered cell ran; *still failing* when a cell its globs name, on a
    kernel at or after its ``until``/``fixed-in`` kernel, still has one of its outcomes."""
    cells = list(cells)
    result = CheckResult()
    for issue in issues.issues:
        covered = [c for c in cells if issue.covers(c.key, release_of(c))]
        known = [c for c in covered if c.is_known and issue in c.known]
        result.matched[issue.id] = known
        if not known:
            if any(c.outcome != "UNSUPPORTED" for c in covered):
                result.stale.append(issue)
            else:
                result.not_run.append(issue)
        if issue.fix:
            late = [c for c in cells if issue.covers_key(c.key) and c.outcome in issue.outcomes
                    and (kernel_version(release_of(c)) or (0, 0, 0)) >= issue.fix
                    and not (c.is_known and issue not in c.known)]  # another entry accounts for it
            if late:
                result.still_failing.append((issue, late))
    return result
