"""What a run covers: kernels x filesystem profiles x scenarios (x engines), chosen with
``-K``/``-p``/``-k``/``--engine``.

Scenarios of the ``engine`` group run once per selected storage engine; every other scenario
runs once, on the port (issue #12: the engine is an axis of the matrix).

The selection language is pytest's ``-k`` (words, ``and``/``or``/``not``, parentheses) over
names and keywords; every mistake in it is a :class:`SelectionError` of one line naming the
column and the closest names, which the CLI shows as a usage error (exit 2).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..agent.engines import engine_names
from ..agent.profiles import FsProfile
from ..agent.records import PORT_ENGINE
from ..agent.scenario import ENGINE_GROUP, Scenario, all_scenarios
from ..hints import close_matches, did_you_mean
from .shard import CellKey, matrix_cells, runs_for


class SelectionError(ValueError):
    """A usage error in what to run (a bad ``-p``/``-k`` expression, an unknown kernel, a
    selection matching nothing): one line, shown by the CLI as a usage error."""


# --- the -k language ------------------------------------------------------------------------

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


def select_scenarios(patterns: Sequence[str]) -> Dict[str, Any]:
    """Scenarios matching any of the ``-k`` expressions (all if none), in catalogue order."""
    catalogue = all_scenarios()
    exprs = [p for p in patterns if p and p.strip()]
    if not exprs:
        return catalogue
    preds = [profile_matcher(e, "scenario") for e in exprs]
    return {sid: sc for sid, sc in catalogue.items() if any(f(sc) for f in preds)}


def check_expressions(option: str, exprs: Sequence[str], items: Mapping[str, Any], what: str) -> None:
    """:class:`SelectionError` for ``-p``/``-k``: a malformed expression, or a word naming no
    profile or scenario, in one line with the column of the bad token and the closest names."""
    for expr in exprs:
        if not expr or not expr.strip():
            continue
        try:
            profile_matcher(expr, what)
            check_expression_words(expr, items.values(), what)
        except ExpressionError as err:
            raise SelectionError("%s %r: %s" % (option, expr, err.problem)) from None


def is_engine_scenario(sid: str) -> bool:
    """Whether scenario ``sid`` of the catalogue runs once per engine."""
    sc = all_scenarios().get(sid)
    return sc is not None and sc.group == ENGINE_GROUP


@dataclass(frozen=True)
class EngineChoice:
    """An engine as ``--engine`` expressions see it: a name and its keywords (family, how it runs)."""

    name: str

    def keywords(self) -> List[str]:
        from ..agent.engines import get_engine
        return list(get_engine(self.name).keywords)


def select_engines(exprs: Sequence[str]) -> List[str]:
    """The registered engines ``--engine`` selects, in registry order (all when none is given):
    ``all``, an exact engine name (``docker-overlay`` is not also ``docker-overlay2``), or a
    ``-k``-style expression over names and keywords (``'docker*'``, ``'not fuse'``, ``daemon``).
    :class:`SelectionError` for a word naming no engine (with the closest names) or a selection
    of none."""
    names = engine_names()
    exprs = [e.strip() for e in exprs if e and e.strip()]
    if not exprs or "all" in exprs:
        return names
    exprs = ["=" + e if e in names else e for e in exprs]
    choices = {n: EngineChoice(n) for n in names}
    check_expressions("--engine", exprs, choices, "engine")
    preds = [profile_matcher(e, "engine") for e in exprs]
    chosen = [n for n in names if any(f(choices[n]) for f in preds)]
    if not chosen:
        raise SelectionError("--engine %s: matches no engine (have: %s)" % (
            " / ".join(repr(e) for e in exprs), ", ".join(names)))
    return chosen


def catalogue_kernels() -> List[str]:
    """Every catalogue entry, ``host`` first (the default kernels of ``overlaylab run``)."""
    from ..kernels.catalogue import load_catalogue
    names = list(load_catalogue())
    return (["host"] if "host" in names else []) + [n for n in names if n != "host"]


def check_kernels(provider: str, kernels: Sequence[str]) -> None:
    """:class:`SelectionError` for ``-K``: a name the catalogue does not have, or a VM kernel
    for the local provider. (Vagrant takes any box name, so its names are left to Vagrant; the
    ssh provider's targets are the hosts of --hosts/--inventory.)"""
    if provider in ("vagrant", "ssh"):
        return
    known = catalogue_kernels()
    for kernel in kernels:
        if kernel not in known and kernel != "local":
            raise SelectionError("-K %s: no such kernel in vms/kernels.toml%s; have: %s"
                                 % (kernel, did_you_mean(kernel, known), ", ".join(known)))
        if provider == "local" and kernel not in ("host", "local"):
            raise SelectionError("-K %s: --provider local runs only the host kernel; "
                                 "use --provider auto or qemu for catalogue kernels" % kernel)


# --- the matrix -------------------------------------------------------------------------------

@dataclass
class Matrix:
    """What to run: kernels x profiles x scenarios (already filtered); the scenarios of the
    ``engine`` group once per engine of ``engines``, every other scenario once (the port)."""

    kernels: List[str]
    profiles: Dict[str, FsProfile]
    scenarios: Dict[str, Scenario]
    all_profiles: Dict[str, FsProfile] = field(default_factory=dict)  # for overlay bases
    # What VM kernels run when no scenario was asked for: TCG makes scale scenarios cost minutes.
    vm_scenarios: Optional[Dict[str, Scenario]] = None
    #: the engines the ``engine`` scenarios run on (empty when none of them is selected)
    engines: List[str] = field(default_factory=lambda: [PORT_ENGINE])
    #: the cells to run when not all of them (a shard, or what a resumed run still lacks)
    only: Optional[FrozenSet[CellKey]] = None

    def scenarios_for(self, kernel: str) -> Dict[str, Scenario]:
        if self.vm_scenarios is None or kernel in ("host", "local"):
            return self.scenarios
        return self.vm_scenarios

    def runs_for(self, kernel: str) -> List[Tuple[str, str]]:
        """``(scenario, engine)`` of each cell per profile on ``kernel``, in catalogue order."""
        return runs_for(self.to_dict(), kernel)

    def all_cells(self) -> List[CellKey]:
        """Every cell of the full matrix (``only`` aside), in matrix order."""
        return matrix_cells(self.to_dict())

    def cells(self) -> List[CellKey]:
        """The cells this run is to run: all of them, or those of ``only``."""
        return [c for c in self.all_cells() if self.only is None or c in self.only]

    def cells_for(self, kernel: str) -> int:
        return sum(1 for c in self.cells() if c[0] == kernel)

    @property
    def cell_count(self) -> int:
        return len(self.cells())

    def disks(self, names: Optional[Iterable[str]] = None) -> List[Tuple[str, int]]:
        """One disk per profile (of ``names``, default all) that needs a block device (tmpfs needs none)."""
        wanted = set(self.profiles if names is None else names)
        return [(p.name, p.size_mib) for p in self.profiles.values() if p.kind != "tmpfs" and p.name in wanted]

    def to_dict(self) -> Dict[str, Any]:
        out = {"kernels": self.kernels, "profiles": list(self.profiles), "scenarios": list(self.scenarios),
               "engines": list(self.engines)}
        if self.vm_scenarios is not None:
            out["vm_scenarios"] = list(self.vm_scenarios)
        return out


def plan_matrix(provider: str, kernels: Sequence[str], boxes: Sequence[str], profile_exprs: Sequence[str],
                scenario_exprs: Sequence[str], all_profiles: Mapping[str, FsProfile],
                engine_exprs: Sequence[str] = ()) -> Tuple[str, Matrix]:
    """The provider and matrix of ``overlaylab run -K/-B/-p/-k/--engine``, or :class:`SelectionError`.

    No kernel named: the host alone for ``local``, else the host and every catalogue kernel.
    With no ``-k``, VM kernels skip the ``scale`` tier and the ``engine`` group (under TCG they
    cost minutes per kernel; ``-k engine`` runs the group there). No
    ``--engine``: every registered engine (one not installed on a target gives UNSUPPORTED
    cells there); engines add nothing when no ``engine`` scenario is selected."""
    check_expressions("-p", profile_exprs, all_profiles, "profile")
    check_expressions("-k", scenario_exprs, all_scenarios(), "scenario")
    engines = select_engines(engine_exprs)
    profiles = select_profiles(all_profiles, list(profile_exprs) or None)
    scenarios = select_scenarios(scenario_exprs)
    if not profiles:
        raise SelectionError("-p %s: matches no profile (have: %s)" % (
            " / ".join(repr(e) for e in profile_exprs), ", ".join(all_profiles)))
    if not scenarios:
        raise SelectionError("-k %s: matches no scenario (`overlaylab list scenarios`)" %
                             " / ".join(repr(e) for e in scenario_exprs))
    if not any(sc.group == ENGINE_GROUP for sc in scenarios.values()):
        engines = []
    if boxes:
        if provider not in ("auto", "vagrant"):
            raise SelectionError("--box goes with --provider vagrant")
        provider = "vagrant"
        kernels = list(kernels) + list(boxes)
    check_kernels(provider, kernels)
    if kernels:
        kernel_list = list(kernels)
    elif provider == "local":
        kernel_list = ["host"]
    else:  # the lab's reason to exist: the host and every catalogue kernel
        kernel_list = catalogue_kernels()
    vm_scenarios = None
    if not scenario_exprs:  # under TCG the scale tier costs minutes, and the engine group (a
        # dockerd start and container runs per profile) about 3 s a cell: asked for by -k only
        vm_scenarios = {sid: sc for sid, sc in scenarios.items()
                        if "scale" not in sc.tags and sc.group != ENGINE_GROUP}
    return provider, Matrix(kernel_list, dict(profiles), scenarios, dict(all_profiles), vm_scenarios, engines)


def matrix_from_dict(stored: Mapping[str, Any], all_profiles: Mapping[str, FsProfile]) -> Matrix:
    """The :class:`Matrix` a run recorded (``run.json``'s ``matrix``), or :class:`SelectionError`
    naming a profile or scenario this catalogue no longer has."""
    catalogue = all_scenarios()
    for what, names, known in (("profile", stored.get("profiles") or [], all_profiles),
                               ("scenario", list(stored.get("scenarios") or []) + list(stored.get("vm_scenarios") or []),
                                catalogue)):
        gone = [n for n in names if n not in known]
        if gone:
            raise SelectionError("the run's %s %s is not in this catalogue" % (what, ", ".join(gone)))
    vm = stored.get("vm_scenarios")
    return Matrix(list(stored["kernels"]), {n: all_profiles[n] for n in stored["profiles"]},
                  {s: catalogue[s] for s in stored["scenarios"]}, dict(all_profiles),
                  None if vm is None else {s: catalogue[s] for s in vm}, list(stored.get("engines") or []))
