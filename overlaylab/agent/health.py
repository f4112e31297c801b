"""Kernel health around one cell: new warnings in the kernel log and changes of the taint flags.

Like LTP's kirk (``libkirk``: it reads the kernel log and ``/proc/sys/kernel/tainted`` before
and after each test), a cell is *marked* when the kernel logged a WARN, BUG, Oops, lockdep
splat, hung task, general protection fault, RCU stall or soft lockup while it ran, or when the
taint flags changed — even when the scenario itself passed. The mark never changes the
outcome: it is the cell record's ``health``::

    {"kernel_warnings": [{"kind": "warning", "line": "[ 12.3] WARNING: CPU: 0 PID: 1 at ..."}],
     "taint_before": {"value": 0, "flags": []}, "taint_after": {"value": 512, "flags": ["W"]},
     "new_taint": ["W: kernel issued warning"]}

The headlines are the kernel's own: ``__warn()`` in kernel/panic.c prints ``WARNING: CPU: %d
PID: %d at %pS``; lockdep's reports (kernel/locking/lockdep.c) start ``WARNING: possible
circular locking dependency detected``, ``WARNING: possible recursive locking detected``, ...;
``check_hung_task()`` (kernel/hung_task.c) prints ``INFO: task %s:%d blocked for more than %ld
seconds.``; RCU (kernel/rcu/tree_stall.h) ``rcu: INFO: rcu_sched self-detected stall on CPU``.
The taint letters are those of ``taint_flags[]`` in kernel/panic.c, documented in
Documentation/admin-guide/tainted-kernels.rst.

Standard library only: the agent runs this inside a target.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

TAINT_PATH = "/proc/sys/kernel/tainted"

#: bit -> (letter when set, meaning), from kernel/panic.c ``taint_flags[]``; bit 0 reads ``G``
#: (all modules GPL) when clear and ``P`` when set
TAINT_FLAGS: Tuple[Tuple[str, str], ...] = (
    ("P", "proprietary module was loaded"),
    ("F", "module was force loaded"),
    ("S", "kernel running on an out of specification system"),
    ("R", "module was force unloaded"),
    ("M", "processor reported a Machine Check Exception"),
    ("B", "bad page referenced or some unexpected page flags"),
    ("U", "taint requested by userspace application"),
    ("D", "kernel died recently (OOPS or BUG)"),
    ("A", "ACPI table overridden by user"),
    ("W", "kernel issued warning"),
    ("C", "staging driver was loaded"),
    ("I", "workaround for bug in platform firmware applied"),
    ("O", "externally-built (out-of-tree) module was loaded"),
    ("E", "unsigned module was loaded"),
    ("L", "soft lockup occurred"),
    ("K", "kernel has been live patched"),
    ("X", "auxiliary taint, defined for and used by distros"),
    ("T", "kernel was built with the struct randomization plugin"),
    ("N", "an in-kernel test has been run"),
    ("J", "userspace used a mutating debug operation in fwctl"),
)

#: (kind, pattern) in the order they are tried: the specific lockdep headlines before the
#: generic ``WARNING:`` they also start with
_PATTERNS: Tuple[Tuple[str, "re.Pattern[str]"], ...] = tuple((kind, re.compile(rx)) for kind, rx in (
    ("lockdep", r"WARNING: (possible circular locking|possible recursive locking|inconsistent lock state"
                r"|possible irq lock inversion|suspicious RCU usage|held lock freed|lock held when returning)"),
    ("panic", r"Kernel panic - not syncing"),
    ("hung_task", r"INFO: task .+ blocked for more than \d+ seconds"),
    ("rcu_stall", r"(rcu: )?INFO: rcu_\w+ (self-)?detected (stall|stalls)"),
    ("soft_lockup", r"(BUG: soft lockup|watchdog: BUG: soft lockup) - CPU#\d+ stuck"),
    ("hard_lockup", r"Watchdog detected hard LOCKUP on cpu"),
    ("gpf", r"general protection fault"),
    ("oops", r"\bOops: "),
    ("bug", r"(\bBUG: |kernel BUG at )"),
    ("warning", r"\bWARNING: (CPU: \d+ PID: \d+|at )"),
))

#: the ``[    1.234567] `` prefix dmesg and the agent's kmsg reader put before a message
_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")


def classify_line(line: str) -> Optional[str]:
    """The kind of kernel-health event a log line announces (``warning``, ``bug``, ``oops``,
    ``lockdep``, ``hung_task``, ``gpf``, ``rcu_stall``, ``soft_lockup``, ``hard_lockup``,
    ``panic``), or None for an ordinary line."""
    message = _STAMP.sub("", line, count=1)
    for kind, rx in _PATTERNS:
        if rx.search(message):
            return kind
    return None


def kernel_warnings(lines: Iterable[str]) -> List[Dict[str, str]]:
    """The health events among kernel log lines, each ``{"kind", "line"}`` (the headline
    lines only: a report's call trace follows in the cell's ``dmesg`` evidence)."""
    out = []
    for line in lines:
        kind = classify_line(line)
        if kind is not None:
            out.append({"kind": kind, "line": line.rstrip()})
    return out


def decode_taint(value: int) -> List[str]:
    """The letters of the taint bits set in ``value`` (``P`` for bit 0; unknown bits as ``bitN``)."""
    letters = []
    for bit in range(int(value).bit_length()):
        if value >> bit & 1:
            letters.append(TAINT_FLAGS[bit][0] if bit < len(TAINT_FLAGS) else "bit%d" % bit)
    return letters


def describe_taint(letter: str) -> str:
    """``W: kernel issued warning``."""
    for flag, meaning in TAINT_FLAGS:
        if flag == letter:
            return "%s: %s" % (flag, meaning)
    return letter


def read_taint(path: str = TAINT_PATH) -> Optional[int]:
    """The kernel's taint value, or None where it cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def cell_health(lines: Iterable[str], taint_before: Optional[int], taint_after: Optional[int]) -> Optional[Dict[str, Any]]:
    """The ``health`` mark of a cell whose run logged ``lines`` with the taint going from
    ``taint_before`` to ``taint_after``; None when the kernel stayed healthy (nothing logged,
    taint unchanged or unreadable)."""
    warnings = kernel_warnings(lines)
    changed = taint_before is not None and taint_after is not None and taint_after != taint_before
    if not warnings and not changed:
        return None
    health: Dict[str, Any] = {"kernel_warnings": warnings}
    if taint_before is not None:
        health["taint_before"] = {"value": taint_before, "flags": decode_taint(taint_before)}
    if taint_after is not None:
        health["taint_after"] = {"value": taint_after, "flags": decode_taint(taint_after)}
    if changed:
        before = set(decode_taint(taint_before or 0))
        health["new_taint"] = [describe_taint(f) for f in decode_taint(taint_after or 0) if f not in before]
    return health
