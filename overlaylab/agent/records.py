"""The lab's records: the outcome vocabulary and the records a run is made of.

One module, standard library only (the agent imports it inside a target), for what the agent
prints, the runner stores in ``results.jsonl``, the store reads back and every report shows:

- :class:`Outcome` and its labels (the word, the short label of a table cell, the symbol and
  the meaning of the legend);
- :class:`TargetRecord` (facts about one kernel), :class:`ProfileRecord` (the backing fs that
  was really made, and its probes), :class:`CellRecord` (one target x profile x scenario
  outcome with its evidence); each has ``to_json()`` (the dict written as one JSON line) and
  ``from_json(dict)``. Keys a record does not know are kept in ``extra`` and written back, so
  old and newer runs load and round-trip unchanged.

``SCHEMA_VERSION`` is written on every record and in ``run.json``.
"""
from __future__ import annotations

import enum
import fnmatch
import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

SCHEMA_VERSION = 1


class Outcome(str, enum.Enum):
    """What one cell (target x profile x scenario) came to."""

    PASS = "PASS"                # the behaviour the scenario checks holds
    FAIL = "FAIL"                # it does not: the driver or kernel misbehaves
    REFUSED = "REFUSED"          # the driver refused, as designed (e.g. ErrIncompatibleFS on btrfs)
    UNSUPPORTED = "UNSUPPORTED"  # the environment cannot provide the prerequisite
    ERROR = "ERROR"              # the lab itself failed: timeout, crash, hang, harness bug

    def __str__(self) -> str:
        return self.value


#: the outcomes a single attempt can have, in report order
OUTCOMES: Tuple[str, ...] = tuple(o.value for o in Outcome)
#: a cell whose attempts (``--repeat``) came to different outcomes
FLAKY = "FLAKY"
ALL_OUTCOMES: Tuple[str, ...] = OUTCOMES + (FLAKY,)
#: outcomes that fail a release engineer's run
BAD_OUTCOMES: Tuple[str, ...] = (Outcome.FAIL.value, Outcome.ERROR.value)

#: the label of a table cell (terminal tables and the HTML matrix)
SHORT = {"PASS": "PASS", "FAIL": "FAIL", "REFUSED": "REF", "UNSUPPORTED": "UNSUP", "ERROR": "ERR", FLAKY: "FLAKY"}
#: one symbol per outcome: for markdown (GitHub renders these everywhere) and the legend
SYMBOLS = {"PASS": "✅", "FAIL": "❌", "REFUSED": "⛔", "UNSUPPORTED": "➖", "ERROR": "💥", FLAKY: "🔀"}
MEANING = {
    "PASS": "the scenario worked",
    "FAIL": "the driver or kernel misbehaved (a real failure; may be a known one)",
    "REFUSED": "the driver refused, as designed (e.g. ErrIncompatibleFS over btrfs)",
    "UNSUPPORTED": "the environment cannot provide a prerequisite (e.g. no xfs V4 in this kernel)",
    "ERROR": "the lab's infrastructure failed (timeout, crash, hang, target down)",
    FLAKY: "the outcome differed between repeats (--repeat)",
}
#: the engine of a cell that names none: this project's port of the v1.10.3 driver
PORT_ENGINE = "port"


def cell_key(rec: Dict[str, Any]) -> Tuple[str, str, str, str]:
    """``(target, profile, scenario, engine)`` of a cell record read from JSON."""
    return (rec.get("target") or "", rec["profile"], rec["scenario"], rec.get("engine") or PORT_ENGINE)


def cell_glob_matches(pattern: str, key: Sequence[str]) -> bool:
    """Whether the glob ``pattern`` (``KERNEL/PROFILE/SCENARIO[/ENGINE]``, matched part by part:
    a ``*`` never spans a ``/``) names the cell ``key``; three parts, of either, mean the port.
    The one matching rule of baselines and known issues."""
    parts, key = pattern.split("/"), list(key)
    for form in (parts, key):
        if len(form) == 3:
            form.append(PORT_ENGINE)
    return len(parts) == len(key) == 4 and all(fnmatch.fnmatchcase(k, p) for k, p in zip(key, parts))


#: appended to a cell's label when the outcome differs from what the facts led us to expect
UNMET_MARK = "!"
NOT_RUN = "·"


def short_label(outcome: str, met: bool = True) -> str:
    """A table cell: the short label, marked when not as expected."""
    text = SHORT.get(outcome, outcome)
    return text if met else text + UNMET_MARK


class _Record:
    """``to_json``/``from_json`` for the record dataclasses below."""

    KIND: ClassVar[str] = ""
    #: fields written even when empty (readers of old runs rely on them)
    ALWAYS: ClassVar[Tuple[str, ...]] = ()

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"record": self.KIND}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            if value is None and f.name not in self.ALWAYS:
                continue
            out[f.name] = value
        extra = getattr(self, "extra", {}) or {}
        for key, value in extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json(cls, data: Dict[str, Any]):
        names = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "record"}
        return cls(**known, extra=extra)  # type: ignore[call-arg]

    def line(self) -> str:
        """The record as one JSON line (no newline)."""
        return json.dumps(self.to_json(), sort_keys=True, default=str)


@dataclass
class CellRecord(_Record):
    """One target x profile x scenario outcome, with its evidence."""

    KIND: ClassVar[str] = "cell"
    ALWAYS: ClassVar[Tuple[str, ...]] = ()

    profile: str
    scenario: str
    outcome: str
    group: str = ""
    expected: str = Outcome.PASS.value
    expected_why: str = ""
    met: bool = False
    duration: float = 0.0
    error: str = ""
    log: List[str] = field(default_factory=list)
    evidence: Dict[str, Any] = field(default_factory=dict)
    #: the storage engine the cell ran on (None in records of runs before engines: the port)
    engine: Optional[str] = None
    #: seconds per phase of the cell in the agent (:mod:`overlaylab.agent.timings`; None in older runs)
    timings: Optional[Dict[str, float]] = None
    # set by the runner (the agent does not know them)
    target: Optional[str] = None
    provider: Optional[str] = None
    kernel_release: Optional[str] = None
    attempt: Optional[int] = None
    schema: Optional[int] = None
    run_id: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.outcome, Outcome):
            self.outcome = self.outcome.value
        if isinstance(self.expected, Outcome):
            self.expected = self.expected.value

    @property
    def key(self) -> Tuple[str, str, str, str]:
        return (self.target or "", self.profile, self.scenario, self.engine or PORT_ENGINE)


@dataclass
class ProfileRecord(_Record):
    """What backing filesystem was really made for a profile (or why it could not be)."""

    KIND: ClassVar[str] = "profile"
    ALWAYS: ClassVar[Tuple[str, ...]] = ("fs",)

    profile: str
    fs: Optional[Dict[str, Any]] = None
    probes: Dict[str, Any] = field(default_factory=dict)
    facts: Dict[str, Any] = field(default_factory=dict)
    dmesg: List[str] = field(default_factory=list)
    setup_seconds: Optional[float] = None
    #: seconds per phase of the set-up (:mod:`overlaylab.agent.timings`; None in older runs)
    timings: Optional[Dict[str, float]] = None
    unavailable: Optional[Dict[str, Any]] = None
    target: Optional[str] = None
    provider: Optional[str] = None
    kernel_release: Optional[str] = None
    attempt: Optional[int] = None
    schema: Optional[int] = None
    run_id: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TargetRecord(_Record):
    """Facts about one kernel (or why its target did not come up)."""

    KIND: ClassVar[str] = "target"

    target: Optional[str] = None
    provider: Optional[str] = None
    kernel_release: Optional[str] = None
    probes: Optional[Dict[str, Any]] = None
    facts: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    evidence: Optional[Dict[str, Any]] = None
    schema: Optional[int] = None
    run_id: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


RECORD_TYPES = {cls.KIND: cls for cls in (CellRecord, ProfileRecord, TargetRecord)}


def parse_records(stdout: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The JSON records (objects with a ``record`` key) among an agent's output lines, and the
    lines that are not records (noise a target printed)."""
    records, junk = [], []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            junk.append(line)
            continue
        if isinstance(rec, dict) and "record" in rec:
            records.append(rec)
        else:
            junk.append(line)
    return records, junk
