"""``overlaylab run --shard K/N``: a deterministic, cost-balanced split of a matrix's cells, and
the matrix fingerprint that tells whether runs (shards, resumed or merged runs) belong together.

Granularity: a shard gets whole *units*, one unit = one target's cells on one profile
``(kernel, profile)``. The agent makes a profile's backing filesystem once and runs every scenario
on it (and opens each engine once per profile), so splitting a unit would pay the mkfs and the
engine start-ups twice; whole targets would leave too few units to balance (the default host
matrix is one target). A VM kernel's boot is charged to every shard that runs one of its units,
so the split keeps a VM kernel's units together unless spreading them really pays.

The split is longest-processing-time-first over the units in matrix order: no randomness, no
hashing, no dict order beyond the catalogue's own (kernels as given, profiles in
``filesystems.toml`` order, scenarios in catalogue order), so the same selection and catalogue
give the same shards on any machine.

The cost model (all of it is here; tenths of a second, integers so the split never depends on
float rounding), from mean cell durations of real runs on the 2-core development host (loaded:
port 0.10 s, scale 1.07 s, containers-storage/fuse-overlayfs 0.80 s, docker 2.63 s; profile set-up
0.3 s plus teardown) and the README's VM figures (TCG: boot to first result 29-41 s, a guest
profile 5x the host's); see README "Shards, merge and resume":
``CELL`` a port scenario, ``SCALE_CELL`` one tagged ``scale``, ``ENGINE_CELL`` a scenario through
a non-daemon engine (containers-storage, fuse-overlayfs), ``DAEMON_CELL`` one through a daemon
engine (dockerd), ``PROFILE`` making and removing a backing filesystem, ``DAEMON_START`` a private
dockerd per profile; on a VM kernel each of these times ``VM_SLOWDOWN`` plus ``BOOT`` per shard.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..agent.records import PORT_ENGINE
from ..agent.scenario import all_scenarios

CELL = 1
SCALE_CELL = 11
ENGINE_CELL = 8
DAEMON_CELL = 26
PROFILE = 10
DAEMON_START = 30
VM_SLOWDOWN = 5
BOOT = 300

CellKey = Tuple[str, str, str, str]  # (target, profile, scenario, engine)


class ShardError(ValueError):
    """A malformed ``--shard`` (one line)."""


def parse_shard(text: str) -> Tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``, or :class:`ShardError`."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ShardError("--shard %r: expected K/N, e.g. 1/4 (the K-th of N shards)" % text)
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ShardError("--shard %s: K must be 1..N and N at least 1 (got K=%d, N=%d)" % (text.strip(), k, n))
    return k, n


def is_vm(kernel: str) -> bool:
    return kernel not in ("host", "local")


def _daemon(engine: str) -> bool:
    from ..agent.engines import get_engine
    return "daemon" in get_engine(engine).keywords


def cell_cost(kernel: str, scenario: str, engine: str) -> int:
    """Expected tenths of a second of one cell (see the module's cost model)."""
    sc = all_scenarios().get(scenario)
    if engine != PORT_ENGINE:
        cost = DAEMON_CELL if _daemon(engine) else ENGINE_CELL
    else:
        cost = SCALE_CELL if sc is not None and "scale" in sc.tags else CELL
    return cost * (VM_SLOWDOWN if is_vm(kernel) else 1)


@dataclass(frozen=True)
class Unit:
    """One target's cells on one profile: what a shard takes whole."""

    kernel: str
    profile: str
    cells: Tuple[CellKey, ...]
    cost: int


def units(matrix_dict: Dict) -> List[Unit]:
    """The units of a matrix (its :meth:`~overlaylab.lab.matrix.Matrix.to_dict` form), in
    matrix order, each with its expected cost."""
    out = []
    for kernel in matrix_dict["kernels"]:
        runs = runs_for(matrix_dict, kernel)
        for profile in matrix_dict["profiles"]:
            cells = tuple((kernel, profile, sid, engine) for sid, engine in runs)
            if not cells:
                continue
            out.append(Unit(kernel, profile, cells, unit_cost(kernel, runs)))
    return out


def unit_cost(kernel: str, runs: Sequence[Tuple[str, str]]) -> int:
    """The expected cost of ``runs`` (``(scenario, engine)``) on one profile of ``kernel``: the
    profile's set-up, a start per daemon engine, and each cell."""
    daemons = {e for _, e in runs if e != PORT_ENGINE and _daemon(e)}
    setup = (PROFILE + DAEMON_START * len(daemons)) * (VM_SLOWDOWN if is_vm(kernel) else 1)
    return setup + sum(cell_cost(kernel, sid, engine) for sid, engine in runs)


def runs_for(matrix_dict: Dict, kernel: str) -> List[Tuple[str, str]]:
    """``(scenario, engine)`` per profile on ``kernel``: the ``engine`` group once per engine,
    every other scenario on the port (as :meth:`Matrix.runs_for`, from the stored form)."""
    from ..agent.scenario import ENGINE_GROUP
    catalogue = all_scenarios()
    sids = matrix_dict["scenarios"]
    if is_vm(kernel) and matrix_dict.get("vm_scenarios") is not None:
        sids = matrix_dict["vm_scenarios"]
    engines = list(matrix_dict.get("engines") or [PORT_ENGINE])
    out = []
    for sid in sids:
        sc = catalogue.get(sid)
        for engine in (engines if sc is not None and sc.group == ENGINE_GROUP else [PORT_ENGINE]):
            out.append((sid, engine))
    return out


def matrix_cells(matrix_dict: Dict) -> List[CellKey]:
    """Every cell of the matrix, in matrix order."""
    return [c for u in units(matrix_dict) for c in u.cells]


def fingerprint(matrix_dict: Dict, repeat: int = 1) -> str:
    """``sha256:…`` of the full matrix's cell list, the repeat count and the lab's version:
    equal fingerprints mean runs of the same matrix by the same lab."""
    from .. import __version__
    text = json.dumps({"cells": matrix_cells(matrix_dict), "repeat": repeat, "overlaylab": __version__},
                      separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def split(matrix_dict: Dict, n: int) -> List[List[Unit]]:
    """The matrix's units dealt into ``n`` shards, each listing its units in matrix order.

    First longest-processing-time-first over *items*: a VM kernel's units together (one boot),
    each host unit alone; costliest first (ties: matrix order), each to the least loaded shard
    (ties: the lowest). Then single units move from the costliest shard to the cheapest while
    that lowers the costliest (a VM unit moved pays a boot where its kernel is new): the split
    of a kernel across shards happens only where it pays."""
    all_units = units(matrix_dict)
    items: Dict[str, List[int]] = {}
    for i, unit in enumerate(all_units):
        items.setdefault(unit.kernel if is_vm(unit.kernel) else "%s#%d" % (unit.kernel, i), []).append(i)

    def cost(idx: Sequence[int]) -> int:
        return shard_cost([all_units[i] for i in idx])
    shards: List[List[int]] = [[] for _ in range(n)]
    for item in sorted(items.values(), key=lambda idx: (-cost(idx), idx[0])):
        best = min(range(n), key=lambda s: (cost(shards[s]), s))
        shards[best] += item
    for _ in range(4 * len(all_units)):
        loads = [cost(sh) for sh in shards]
        hi = min(range(n), key=lambda s: (-loads[s], s))
        lo = min(range(n), key=lambda s: (loads[s], s))
        moves = [(max(cost([j for j in shards[hi] if j != i]), cost(shards[lo] + [i])), i) for i in shards[hi]]
        if not moves or min(moves)[0] >= loads[hi]:
            break
        i = min(moves)[1]
        shards[hi].remove(i)
        shards[lo].append(i)
    return [[all_units[i] for i in sorted(sh)] for sh in shards]


def shard_cost(shard: Sequence[Unit]) -> int:
    """A shard's expected tenths of a second: its units and one boot per VM kernel."""
    return sum(u.cost for u in shard) + BOOT * len({u.kernel for u in shard if is_vm(u.kernel)})


def shard_cells(matrix_dict: Dict, k: int, n: int) -> List[CellKey]:
    """The cells of shard ``k`` of ``n`` (1-based), in matrix order."""
    return [c for u in split(matrix_dict, n)[k - 1] for c in u.cells]
