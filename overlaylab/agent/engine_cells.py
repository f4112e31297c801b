"""The ``engine`` scenarios of one profile on one storage engine: one cell record each.

The engine is opened once for the profile (a private daemon where it has one), its verdict on
the backing filesystem and its version join the profile's probed facts (``engine``,
``engine_version``, ``engine_verdict``), and each scenario runs through the session. What a
cell made is removed when it ends; an engine that still holds room after that is replaced by a
fresh one for the next cell (:class:`Room`), so no cell's outcome depends on the cells before. The
outcomes follow from the engine, never from the lab: an engine this target does not have is
UNSUPPORTED with the reason (expected so), one whose driver refused the filesystem is REFUSED
with its own verdict line, one that failed to start is FAIL with its message.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from .engines import get_engine
from .engines.base import EngineError, EngineSession, EngineUnavailable
from .records import CellRecord, Outcome
from .scenario import Expectation, Facts, Scenario, run_scenario


def engine_facts(facts: Mapping[str, Any], session: EngineSession) -> Facts:
    """``facts`` plus what the open session says: the engine, its version and its verdict
    (with ``mount_program``: the driver mounts through a user-space program, per its evidence,
    and ``footprint``: the inodes one container costs it, see :func:`probe_footprint`)."""
    verdict = session.verdict
    return Facts(dict(facts, engine=session.engine.name, engine_version=session.engine.version(),
                      engine_verdict={"accepted": verdict.accepted, "message": verdict.message,
                                      "mount_program": verdict.evidence.get("mount_program") is True,
                                      "footprint": verdict.evidence.get("footprint")}))


def probe_footprint(session: EngineSession, backing_dir: str, scratch: str) -> Dict[str, Any]:
    """How many inodes of the backing fs the started engine left free, and what one minimal
    container costs it (a one-file image pulled, a container made on it and mounted): Docker's
    layer database, init layer and container config take about 70 where the port takes 9, so
    an inode-starved filesystem that holds the port's cells may not hold one Docker container.
    Measured, not assumed; ``error`` where the minimal container did not fit at all."""
    free = os.statvfs(backing_dir).f_ffree
    out: Dict[str, Any] = {"free_inodes": free}
    layer = os.path.join(scratch, "footprint.tar")
    with tarfile.open(layer, "w") as tar:
        info = tarfile.TarInfo("footprint")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"1\n"))
    refs: List[str] = []
    try:
        refs.append(session.pull([layer]))
        refs.append(session.create(refs[0]))
        with session.rootfs(refs[1]):
            used = free - os.statvfs(backing_dir).f_ffree
        if used > 0:  # xfs and btrfs allocate inodes as they go: their free count says nothing here
            out["per_container"] = used
    except EngineError as err:
        out["error"] = str(err)
    finally:
        for ref in reversed(refs):
            with contextlib.suppress(EngineError):
                session.remove(ref)
        os.unlink(layer)
    return out


class Room:
    """What a backing filesystem has free, to tell whether an engine kept some of it after a
    cell removed everything it made. Docker keeps inodes after operations that failed with
    ENOSPC (partial layer dirs, layerdb temp files) that removing the image and container does
    not give back: on ext4-fewinodes, 78 free inodes became 28 over the engine group. The next
    cell would then run out where it would not on its own, and a cell's outcome would depend on
    the cells before it; so the next cell gets a fresh engine, and the record says what was kept."""

    #: free space lost below this is noise (the engine's own logs and databases growing)
    SPACE_SLACK = 1024 * 1024
    #: filesystems (by ``fs_magic`` name) whose inodes are a table made by mkfs or mount: their
    #: free count is exact. xfs allocates inodes in chunks as it goes and btrfs has no count.
    FIXED_INODES = ("extfs", "tmpfs")

    def __init__(self, free_inodes: int, free_bytes: int):
        self.free_inodes, self.free_bytes = free_inodes, free_bytes

    @classmethod
    def of(cls, path: str) -> "Room":
        st = os.statvfs(path)
        return cls(st.f_ffree, st.f_bavail * st.f_frsize)

    def kept(self, path: str, fixed_inodes: bool) -> Dict[str, int]:
        """``{"inodes": N, "bytes": B}`` the filesystem lost since this measure, each only where
        it counts: inodes on a fixed inode table (``fixed_inodes``: :data:`FIXED_INODES`), space
        beyond :data:`SPACE_SLACK` once written back (xfs and btrfs free it in the background)."""
        now = Room.of(path)
        out: Dict[str, int] = {}
        if fixed_inodes and now.free_inodes < self.free_inodes:
            out["inodes"] = self.free_inodes - now.free_inodes
        if self.free_bytes - now.free_bytes > self.SPACE_SLACK:
            from .scenarios.engine import settle  # here: the scenario catalogue is not a start-up import
            lost = self.free_bytes - settle(lambda: Room.of(path).free_bytes, self.free_bytes - self.SPACE_SLACK, 2.0)
            if lost > self.SPACE_SLACK:
                out["bytes"] = lost
        return out

    @staticmethod
    def describe(kept: Dict[str, int]) -> str:
        parts = []
        if "inodes" in kept:
            parts.append("%d inodes" % kept["inodes"])
        if "bytes" in kept:
            parts.append("%d KiB" % (kept["bytes"] // 1024))
        return " and ".join(parts)


class CellSession:
    """The session as one cell sees it: what the cell pulled or created and did not remove is
    removed when the cell ends (also when it failed half-way), so a failed cell leaves the next
    one neither its layers nor the inodes and space they hold."""

    def __init__(self, session: EngineSession):
        self._session = session
        self._refs: List[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def pull(self, layer_tars: Sequence[str]) -> str:
        ref = self._session.pull(layer_tars)
        self._refs.append(ref)
        return ref

    def create(self, image: str) -> str:
        ref = self._session.create(image)
        self._refs.append(ref)
        return ref

    def remove(self, ref: str) -> None:
        self._session.remove(ref)
        if ref in self._refs:
            self._refs.remove(ref)

    def close(self) -> List[str]:
        """Remove what the cell left, newest first (containers before their images)."""
        removed = []
        for ref in reversed(self._refs):
            with contextlib.suppress(EngineError):
                self._session.remove(ref)
                removed.append(ref)
        self._refs = []
        return removed


def run_engine_cells(engine_name: str, scenarios: Sequence[Scenario], backing_dir: str, facts: Mapping[str, Any],
                     scratch_root: Optional[str], kernel_log: Any = None,
                     on_start: Optional[Callable[[Scenario], None]] = None) -> Iterator[CellRecord]:
    """Run ``scenarios`` (group ``engine``) on engine ``engine_name`` over the mounted
    ``backing_dir``; yields each cell as soon as it is known (``record.engine`` set).
    ``on_start(scenario)`` is called just before each scenario runs."""
    engine = get_engine(engine_name)
    profile = str(facts.get("profile") or "")

    def cell(sc: Scenario, outcome: Outcome, expected: Expectation, error: str, evidence: dict) -> CellRecord:
        return CellRecord(profile, sc.id, outcome.value, group=sc.group, expected=expected.outcome.value,
                          expected_why=expected.why, met=outcome == expected.outcome, error=error,
                          evidence=evidence, engine=engine_name)

    def unsupported(sc: Scenario, why: str) -> CellRecord:
        return cell(sc, Outcome.UNSUPPORTED, Expectation(Outcome.UNSUPPORTED, "%s cannot run here" % engine_name),
                    why, {"engine": {"engine": engine_name, "unavailable": why}})

    why = engine.unavailable()
    if why:
        for sc in scenarios:
            yield unsupported(sc, why)
        return
    done = set()
    remaining = list(scenarios)
    fixed_inodes = Facts(facts).fs_name in Room.FIXED_INODES
    try:
        while remaining:  # one engine, or a fresh one after a cell that left it holding room
            workdir = tempfile.mkdtemp(prefix="engine-%s." % engine_name, dir=scratch_root)
            started = time.monotonic()
            try:
                with engine.open(backing_dir, workdir) as session:
                    opened = round(time.monotonic() - started, 3)
                    accepted = session.verdict.accepted
                    if accepted:
                        session.verdict.evidence["footprint"] = probe_footprint(session, backing_dir, workdir)
                    efacts = engine_facts(facts, session)
                    for i, sc in enumerate(remaining):  # where the engine refused the fs, each cell is its verdict
                        if on_start is not None:
                            on_start(sc)
                        before = Room.of(backing_dir) if accepted else None
                        cell_session = CellSession(session)
                        try:
                            rec = run_scenario(sc, backing_dir, efacts, scratch_root, kernel_log,
                                               engine=cell_session).to_record(profile, sc.id, sc.group)
                        finally:
                            left = cell_session.close() if accepted else []
                        if left:
                            rec.log.append("removed what the scenario left: %s" % ", ".join(r[:12] for r in left))
                        kept = before.kept(backing_dir, fixed_inodes) if before is not None else {}
                        fresh = bool(kept) and i + 1 < len(remaining)
                        if kept:
                            rec.log.append("the engine still held %s after the cell's images and containers were "
                                           "removed%s" % (Room.describe(kept), ": the next cell gets a fresh engine"
                                                          if fresh else ""))
                        rec.engine = engine_name
                        rec.evidence["engine"]["open_seconds"] = opened
                        if kept:
                            rec.evidence["engine"]["kept"] = kept
                        done.add(sc.id)
                        yield rec
                        if fresh:
                            break
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            remaining = [sc for sc in scenarios if sc.id not in done]
    except Exception as err:
        left = [sc for sc in scenarios if sc.id not in done]
        if not left:  # the engine failed to stop: not hidden behind cells that are all out
            raise
        unstarted = Facts(dict(facts, engine=engine_name))
        trace = traceback.format_exc(limit=8)
        for sc in left:
            if isinstance(err, EngineUnavailable):  # found out only when starting (no /dev/fuse, no cgroups)
                yield unsupported(sc, str(err))
            elif isinstance(err, EngineError):  # it would not start: the engine misbehaved
                yield cell(sc, Outcome.FAIL, sc.expect(unstarted), str(err),
                           {"engine": {"engine": engine_name, "version": engine.version(), "error": err.evidence}})
            else:  # the lab's own failure
                yield cell(sc, Outcome.ERROR, sc.expect(unstarted), "%s: %s" % (type(err).__name__, err),
                           {"engine": {"engine": engine_name}, "traceback": trace})
