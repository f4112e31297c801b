"""One lab run from start to exit code: ``run_lab`` is what ``overlaylab run`` calls.

Plan (the matrix, the baseline, room for the results), clean up after dead runs, fetch the VM
kernels, run every target with signals turned into an orderly stop, then the one fold
(:class:`~overlaylab.reports.RunReport`) for the tables, every report, the run index and the
baseline comparison, and the exit code of :mod:`overlaylab.exitcodes`.
"""
from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set

from .. import exitcodes
from ..agent.cleanup import RUN_ENV
from ..agent.profiles import default_profiles_path, load_profiles
from ..hints import root_problem
from .matrix import SelectionError, matrix_from_dict, plan_matrix
from .results import (RunFileError, RunStore, default_reports_dir, drop_cells, incomplete_note, load_run,
                      record_attempt, resolve_run_dir)
from .shard import ShardError, fingerprint, parse_shard, shard_cells
from .runner import Runner
from .tables import render_report

#: where ``--resume --rerun-errors`` keeps the ERROR records it replaced, in the run directory
REPLACED_FILE = "replaced.jsonl"
#: what a run needs free in its reports directory: run.json, results and reports per cell
SPACE_BASE_BYTES = 1 << 20
SPACE_PER_CELL_BYTES = 16 << 10

Echo = Callable[..., None]  # echo(text, err=False), as click.echo


class NoRoomError(Exception):
    """The reports directory cannot hold the run's results: refused before anything runs
    (exit 2, one line naming the directory and what is needed)."""


@dataclass
class RunRequest:
    """``overlaylab run``'s options, parsed."""

    provider: str = "auto"
    kernels: List[str] = field(default_factory=list)
    boxes: List[str] = field(default_factory=list)
    profile_exprs: List[str] = field(default_factory=list)
    scenario_exprs: List[str] = field(default_factory=list)
    engine_exprs: List[str] = field(default_factory=list)
    jobs: int = 1
    reports_dir: Optional[str] = None
    profiles_file: Optional[str] = None
    keep: bool = False
    baseline_ref: Optional[str] = None
    repeat: int = 1
    argv: List[str] = field(default_factory=list)
    #: the run's id (default: a new one); lets a caller such as ``bisect`` name the run it asked for
    run_id: Optional[str] = None
    shard: Optional[str] = None  # "K/N"
    resume: Optional[str] = None  # a run id, directory or 'latest'
    rerun_errors: bool = False
    hosts: List[str] = field(default_factory=list)  # --hosts specs
    inventory: Optional[str] = None
    allow_mkfs: bool = False


def exit_status(rep: Any, expected_cells: int, comparison: Any = None) -> int:
    """The exit code of a finished run (see :mod:`overlaylab.exitcodes`): 1 when a cell that
    ran is not as expected (or, with a baseline, regressed), else 3 when the lab's own
    infrastructure failed (ERROR cells, cells with no result), else 0."""
    missing = len(rep.cells) < expected_cells
    if comparison is not None:
        regressions = comparison.regressions
        if any(c.new is not None and c.new.outcome != "ERROR" for c in regressions):
            return exitcodes.NOT_AS_EXPECTED
        return exitcodes.INFRASTRUCTURE if regressions or missing else exitcodes.OK
    failures = rep.gate_failures()
    if any(c.outcome != "ERROR" for c in failures):
        return exitcodes.NOT_AS_EXPECTED
    return exitcodes.INFRASTRUCTURE if failures or missing else exitcodes.OK


def check_reports_space(reports_dir: Optional[str], cells: int) -> None:
    """:class:`NoRoomError` for a run whose results would not fit in the reports directory."""
    path = os.path.abspath(reports_dir or default_reports_dir())
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except OSError as err:
        raise SelectionError("--reports-dir %s: %s" % (path, err.strerror)) from None
    free = st.f_bavail * st.f_frsize
    need = SPACE_BASE_BYTES + cells * SPACE_PER_CELL_BYTES
    if free < need:
        raise NoRoomError("--reports-dir %s: only %d KiB free on its filesystem, a run of %d cells "
                          "needs about %d KiB; free some space or choose another --reports-dir"
                          % (path, free >> 10, cells, need >> 10))


def clean_dead_runs(echo: Echo) -> None:
    """What dead runs left on this machine (their owners are gone) goes first."""
    from ..agent.cleanup import cleanup
    try:
        for entry in cleanup():
            for item in entry["items"]:
                echo("cleanup: removed %s" % item, err=True)
            for problem in entry["problems"]:
                echo("cleanup: could not remove %s" % problem, err=True)
    except OSError as err:
        echo("warning: cleaning up after dead runs failed: %s" % err, err=True)


def _report_disk_full(store: RunStore, echo: Echo) -> int:
    """The reports disk filled up: the table of everything that ran (kept in memory), exit 3."""
    from ..reports import RunReport
    run = store.memory_run()
    echo(render_report(RunReport.from_run(run)))
    echo("\nrun %s failed: reports disk full (%s); %d cells ran, %d records could not be written "
         "(shown above, not stored)" % (store.run_id, store.path, len(run.cells), len(store.unwritten)), err=True)
    echo(incomplete_note(run) or "failed", err=True)
    return exitcodes.INFRASTRUCTURE


def remote_provider(req: RunRequest, all_profiles: Any) -> Any:
    """The ssh provider of ``--hosts``/``--inventory`` (None without them), or
    :class:`SelectionError`: a bad spec or inventory, a profile the inventory's disks name that
    does not exist, ``--allow-mkfs`` with no disk named, or ``-K``/``-B``/``--provider`` too."""
    if not req.hosts and not req.inventory:
        if req.allow_mkfs:
            raise SelectionError("--allow-mkfs goes with --inventory (its hosts' overlaylab_disks)")
        return None
    from ..providers.hosts import DISKS_VAR, HostSpecError, resolve_hosts, split_specs
    from ..providers.ssh import SshProvider
    if req.kernels or req.boxes or req.provider != "auto":
        raise SelectionError("--hosts/--inventory choose the targets: drop -K, -B and --provider")
    try:
        hosts = resolve_hosts(split_specs(req.hosts), req.inventory)
    except HostSpecError as err:
        raise SelectionError(str(err)) from None
    for h in hosts:
        unknown = sorted(set(h.disks) - set(all_profiles))
        if unknown:
            raise SelectionError("inventory host %s: %s names no profile %s (have: %s)" % (
                h.name, DISKS_VAR, ", ".join(unknown), ", ".join(all_profiles)))
    if req.allow_mkfs and not any(h.disks for h in hosts):
        raise SelectionError("--allow-mkfs: no host names a disk (inventory variable %s, e.g. {xfs: /dev/sdb})"
                             % DISKS_VAR)
    return SshProvider(hosts, allow_mkfs=req.allow_mkfs)


def _load_profiles(path: str):
    try:
        return load_profiles(path)
    except (ValueError, OSError) as err:  # ProfileError, TOMLDecodeError, unreadable
        raise SelectionError("--profiles-file %s: %s" % (path, err)) from None


def run_lab(req: RunRequest, echo: Echo) -> int:
    """Run the matrix ``req`` selects (or, with ``req.resume``, what a run still lacks) and
    return the exit code; :class:`SelectionError` (a usage error: nothing ran or was recorded)
    and :class:`NoRoomError` before anything starts."""
    if req.resume:
        return resume_lab(req, echo)
    baseline = _baseline(req)
    profiles_path = os.path.abspath(req.profiles_file or str(default_profiles_path()))
    all_profiles = _load_profiles(profiles_path)
    remote = remote_provider(req, all_profiles)
    kernels = list(remote.hosts) if remote is not None else req.kernels
    provider, matrix = plan_matrix("ssh" if remote is not None else req.provider, kernels, req.boxes,
                                   req.profile_exprs, req.scenario_exprs, all_profiles, req.engine_exprs)
    full = matrix.to_dict()
    meta: Dict[str, Any] = {"matrix": full, "fingerprint": fingerprint(full, req.repeat),
                            "profiles_file": profiles_path}
    if req.shard:
        try:
            k, n = parse_shard(req.shard)
        except ShardError as err:
            raise SelectionError(str(err)) from None
        matrix.only = frozenset(shard_cells(full, k, n))
        meta["shard"] = {"k": k, "n": n, "cells": len(matrix.only) * req.repeat}
    problem = root_problem("overlaylab run")
    if problem:
        raise SelectionError(problem)
    check_reports_space(req.reports_dir, matrix.cell_count * req.repeat)
    clean_dead_runs(echo)
    store = RunStore(req.reports_dir, req.run_id)
    store.start(provider=provider, argv=list(req.argv), jobs=req.jobs, repeat=req.repeat,
                cells_expected=matrix.cell_count * req.repeat, **meta)
    return _execute(req, store, provider, matrix, profiles_path, set(), baseline, echo, remote)


def _baseline(req: RunRequest) -> Any:
    from ..reports.compare import BaselineError, load_baseline
    if not req.baseline_ref:
        return None
    try:
        return load_baseline(req.baseline_ref, req.reports_dir)
    except (BaselineError, OSError) as err:
        raise SelectionError("--baseline: %s" % err) from None


def resume_lab(req: RunRequest, echo: Echo) -> int:
    """``overlaylab run --resume RUN``: into RUN's own directory, the cells of its matrix (of its
    shard, for a shard) that it lacks, and with ``rerun_errors`` its ERROR cells again (the old
    records move to ``replaced.jsonl``). Refused (:class:`SelectionError`) while RUN's runner is
    alive, or when this catalogue no longer gives RUN's matrix fingerprint."""
    from ..agent.records import cell_key
    try:
        path = resolve_run_dir(req.resume, req.reports_dir)
        run = load_run(path)  # a run whose runner is gone is marked interrupted here
    except (FileNotFoundError, RunFileError) as err:
        raise SelectionError("--resume: %s" % err) from None
    meta = run.meta
    if meta.get("status") == "running":
        runner = meta.get("runner") or {}
        raise SelectionError("--resume %s: the run is still running (runner pid %s on %s); let it finish or "
                             "stop it first" % (run.run_id, runner.get("pid"), (meta.get("host") or {}).get("hostname")))
    if meta.get("provider") == "ssh":
        raise SelectionError("--resume %s: a run over --hosts/--inventory cannot be resumed (its hosts are not "
                             "recorded as a spec to reach again); run it again" % run.run_id)
    if not isinstance(meta.get("matrix"), dict) or not meta["matrix"].get("kernels"):
        raise SelectionError("--resume %s: its run.json records no matrix" % run.run_id)
    profiles_path = req.profiles_file or meta.get("profiles_file")
    if not profiles_path or not os.path.exists(profiles_path):
        profiles_path = str(default_profiles_path())
    matrix = matrix_from_dict(meta["matrix"], _load_profiles(profiles_path))
    repeat = int(meta.get("repeat") or 1)
    full = matrix.to_dict()
    if meta.get("fingerprint") not in (None, fingerprint(full, repeat)):
        raise SelectionError("--resume %s: its matrix fingerprint no longer matches (another overlaylab "
                             "version or scenario catalogue made it)" % run.run_id)
    shard = meta.get("shard")
    if isinstance(shard, dict):
        matrix.only = frozenset(shard_cells(full, int(shard["k"]), int(shard["n"])))
    wanted = {(c, a) for c in matrix.cells() for a in range(1, repeat + 1)}
    have = {(cell_key(c), record_attempt(c)): c for c in run.cells}
    errors = [k for k, c in have.items() if req.rerun_errors and c.get("outcome") == "ERROR" and k in wanted]
    problem = root_problem("overlaylab run")
    if problem:
        raise SelectionError(problem)
    replaced = drop_cells(path, errors, REPLACED_FILE)
    done = set(have) - set(errors)
    clean_dead_runs(echo)
    store = RunStore(path=path)
    store.reopen(meta, cells_before=len(done), to_run=len(wanted - done), rerun_errors=replaced,
                 argv=list(req.argv))
    req = dataclasses.replace(req, repeat=repeat)
    return _execute(req, store, meta.get("provider") or "auto", matrix, profiles_path, done, _baseline(req), echo)


def _execute(req: RunRequest, store: RunStore, provider: str, matrix: Any, profiles_path: str, done: Set[Any],
             baseline: Any, echo: Echo, remote: Any = None) -> int:
    """Run what ``store``'s run still lacks of ``matrix`` (all but ``done``), then report."""
    from ..providers import make_provider
    from .progress import ProgressDisplay
    os.environ[RUN_ENV] = store.run_id  # marked on every agent dir and VM this run makes
    repeat = req.repeat
    with open(profiles_path, "r", encoding="utf-8") as f:
        profiles_text = f.read()
    from ..agent.procutil import become_subreaper
    # Every agent gets the profiles' text, so --profiles-file holds on every provider.
    runner = Runner(remote or make_provider(provider), store, matrix, jobs=req.jobs, keep=req.keep,
                    profiles_text=profiles_text, repeat=repeat, done=done)
    kernels = runner.kernels()
    # A live bar per target on a terminal, plain lines otherwise; all of it in run.log.
    on_event = ProgressDisplay(sum(runner.cells_for(k) for k in kernels), store.path,
                               {k: runner.cells_for(k) for k in kernels})
    runner.progress = on_event
    if provider in ("auto", "qemu") and any(k not in ("host", "local") for k in kernels):
        from ..kernels.prefetch import prefetch
        try:  # cached kernels are instant; a missing one turns into ERROR cells
            prefetch(kernels, echo=on_event.echo, progress=on_event, run_dir=store.path)
        except BaseException:
            on_event.stop()  # give the terminal back (cursor, live rows) before going
            raise
    become_subreaper()
    status = "finished"
    # SIGTERM is turned into KeyboardInterrupt so every context manager tears its target down.
    old_term = signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        runner.run()
    except (KeyboardInterrupt, SystemExit):  # SystemExit: a VM's SIGTERM handler in this thread
        status = "interrupted"
        runner.stop()  # agents tear down first (unmount, detach), then ssh sessions and VMs
    finally:
        signal.signal(signal.SIGTERM, old_term)
        on_event.stop()
        store.finish(status)
    if store.disk_full:
        return _report_disk_full(store, echo)
    rep = publish(store.path, echo)
    comparison = None
    if baseline is not None:
        from ..reports.compare import compare, render_text
        comparison = compare(baseline, rep)
        echo("\nCompared with %s:\n%s" % (baseline.name, render_text(comparison)))
    echo("\nrun %s (%s): %s" % (store.run_id, status, store.path))
    if status != "finished":
        echo(incomplete_note(rep.run) or status, err=True)
        return exitcodes.INTERRUPTED
    return exit_status(rep, matrix.cell_count, comparison)


def publish(path: str, echo: Echo) -> Any:
    """A finished run directory's tables on the terminal, every report written into it, and
    its entry in the run index (what ``run``, ``run --resume`` and ``merge`` end with); returns
    the :class:`~overlaylab.reports.RunReport`."""
    from ..reports import RunReport, write_all
    from ..reports.history import index_run
    from ..reports.model import reports_dir_of
    rep = RunReport.from_run(load_run(path))  # the one fold: these tables, every report, the run index
    echo(render_report(rep))
    try:
        written = write_all(path, rep=rep)
        echo("\nreports: " + ", ".join(os.path.basename(p) for p in written))
    except Exception as err:  # a report bug must not hide the run's result
        echo("\nwarning: writing the reports failed: %s: %s" % (type(err).__name__, err), err=True)
    try:
        index_run(reports_dir_of(path), path, rep=rep)
    except Exception as err:
        echo("warning: updating the run index failed: %s" % err, err=True)
    return rep
