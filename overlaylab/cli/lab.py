"""``overlaylab run | list | show``: the lab's command line."""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Dict, Optional, Sequence

import click

from .. import exitcodes
from ..agent.cleanup import RUN_ENV
from .util import HintedChoice, did_you_mean, require_root
from ..agent.profiles import (ExpressionError, check_expression_words, default_profiles_path, load_profiles,
                           profile_matcher, select_profiles)
from ..lab.results import RunStore, incomplete_note, load_run, resolve_run_dir
from ..lab.runner import Matrix, Runner
from ..agent.scenario import all_scenarios
from ..lab.tables import render_report


def select_scenarios(patterns: Sequence[str]) -> Dict[str, Any]:
    """Scenarios matching any of the ``-k`` expressions (all if none), in catalogue order."""
    catalogue = all_scenarios()
    exprs = [p for p in patterns if p and p.strip()]
    if not exprs:
        return catalogue
    preds = [profile_matcher(e, "scenario") for e in exprs]
    return {sid: sc for sid, sc in catalogue.items() if any(f(sc) for f in preds)}


def check_expressions(option: str, exprs: Sequence[str], items: Dict[str, Any], what: str) -> None:
    """Usage errors for ``-p``/``-k``: a malformed expression, or a word naming no profile or
    scenario, in one line with the column of the bad token and the closest names."""
    for expr in exprs:
        if not expr or not expr.strip():
            continue
        try:
            profile_matcher(expr, what)
            check_expression_words(expr, items.values(), what)
        except ExpressionError as err:
            raise click.UsageError("%s %r: %s" % (option, expr, err.problem)) from None


def check_kernels(provider: str, kernels: Sequence[str]) -> None:
    """Usage errors for ``-K``: a name the catalogue does not have, or a VM kernel for the local
    provider. (Vagrant takes any box name, so its names are left to Vagrant.)"""
    if provider == "vagrant":
        return
    from .vm import catalogue_kernels
    known = catalogue_kernels()
    for kernel in kernels:
        if kernel not in known and kernel != "local":
            raise click.UsageError("-K %s: no such kernel in vms/kernels.toml%s; have: %s"
                                   % (kernel, did_you_mean(kernel, known), ", ".join(known)))
        if provider == "local" and kernel not in ("host", "local"):
            raise click.UsageError("-K %s: --provider local runs only the host kernel; "
                                   "use --provider auto or qemu for catalogue kernels" % kernel)


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


def make_provider(name: str):
    from ..providers import make_provider as make
    return make(name)


def _progress_printer(total: int, run_dir: Optional[str] = None, per_target: Optional[Dict[str, int]] = None):
    """A live bar per target on a terminal, plain lines otherwise; lasting lines per finished
    profile and target on both, and all of it timestamped in ``run.log`` (lab/progress.py)."""
    from ..lab.progress import ProgressDisplay
    return ProgressDisplay(total, run_dir, per_target)


@click.command("run")
@click.option("--provider", type=HintedChoice(["auto", "local", "qemu", "vagrant"]), default="auto",
              show_default=True, help="auto: the host kernel locally, other kernels under qemu.")
@click.option("-K", "--kernel", "kernels", multiple=True,
              help="Kernel catalogue entry (repeatable; `overlaylab list kernels`). Default: the host "
                   "kernel plus every catalogue kernel (the Debian kernels, under qemu); with "
                   "--provider local, the host kernel alone.")
@click.option("-B", "--box", "boxes", multiple=True,
              help="Vagrant box from vms/boxes.toml (repeatable; implies --provider vagrant).")
@click.option("-p", "--profile", "profile_exprs", multiple=True,
              help="Filesystem profiles, a -k style expression (e.g. 'ext4 and not small').")
@click.option("-k", "scenario_exprs", multiple=True, help="Scenarios, a -k style expression (e.g. 'diff or whiteout').")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Targets run in parallel.")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None,
              help="Where runs/<run-id>/ goes (default ./reports, env OVERLAYLAB_REPORTS).")
@click.option("--profiles-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Another filesystems.toml.")
@click.option("--keep", is_flag=True, help="Leave VMs up after the run (debugging).")
@click.option("--baseline", "baseline_ref", default=None, metavar="BASE",
              help="Compare with BASE (a run id/directory or a baseline file) and exit 1 on regressions.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run every cell N times; cells whose outcomes differ are FLAKY, with pass rates.")
def run_cmd(provider: str, kernels: Sequence[str], boxes: Sequence[str], profile_exprs: Sequence[str], scenario_exprs: Sequence[str],
            jobs: int, reports_dir: Optional[str], profiles_file: Optional[str], keep: bool,
            baseline_ref: Optional[str], repeat: int) -> None:
    """Run the matrix: kernels x filesystem profiles x scenarios; print the tables and write
    report.md, report.html, junit.xml and summary.json into the run directory.

    Exit status 0 when every cell met its expectation (a flaky cell that met it at least once
    counts as met); 1 when a cell is not as expected (with --baseline: regressed against BASE;
    known outcomes in BASE are fine); 2 for a usage error (nothing is run or recorded); 3 when
    the only problems are the lab's own (ERROR cells, cells with no result); 130 interrupted.
    """
    from ..reports import RunReport, write_all
    from ..reports.compare import BaselineError, compare, load_baseline, render_text
    from ..reports.history import index_run
    from ..reports.model import reports_dir_of
    baseline = None
    if baseline_ref:
        try:
            baseline = load_baseline(baseline_ref, reports_dir)
        except (BaselineError, OSError) as err:
            raise click.UsageError("--baseline: %s" % err)
    profiles_path = profiles_file or str(default_profiles_path())
    try:
        all_profiles = load_profiles(profiles_path)
    except (ValueError, OSError) as err:  # ProfileError, TOMLDecodeError, unreadable
        raise click.UsageError("--profiles-file %s: %s" % (profiles_path, err)) from None
    check_expressions("-p", profile_exprs, all_profiles, "profile")
    check_expressions("-k", scenario_exprs, all_scenarios(), "scenario")
    profiles = select_profiles(all_profiles, list(profile_exprs) or None)
    scenarios = select_scenarios(scenario_exprs)
    if not profiles:
        raise click.UsageError("-p %s: matches no profile (have: %s)" % (
            " / ".join(repr(e) for e in profile_exprs), ", ".join(all_profiles)))
    if not scenarios:
        raise click.UsageError("-k %s: matches no scenario (`overlaylab list scenarios`)" %
                               " / ".join(repr(e) for e in scenario_exprs))
    if boxes:
        if provider not in ("auto", "vagrant"):
            raise click.UsageError("--box goes with --provider vagrant")
        provider = "vagrant"
        kernels = list(kernels) + list(boxes)
    check_kernels(provider, kernels)
    require_root("overlaylab run")
    if kernels:
        kernel_list = list(kernels)
    elif provider == "local":
        kernel_list = ["host"]
    else:  # the lab's reason to exist: the host and every catalogue kernel
        from .vm import catalogue_kernels
        kernel_list = catalogue_kernels()
    vm_scenarios = None
    if not scenario_exprs:  # VM kernels skip the scale tier unless scenarios are chosen
        vm_scenarios = {sid: sc for sid, sc in scenarios.items() if "scale" not in sc.tags}
    matrix = Matrix(kernel_list, profiles, scenarios, all_profiles, vm_scenarios)
    _check_reports_space(reports_dir, matrix.cell_count * repeat)
    _clean_dead_runs()
    store = RunStore(reports_dir)
    os.environ[RUN_ENV] = store.run_id  # marked on every agent dir and VM this run makes
    store.start(matrix=matrix.to_dict(), provider=provider, argv=sys.argv[1:], jobs=jobs, repeat=repeat,
                cells_expected=matrix.cell_count * repeat)
    with open(profiles_path, "r", encoding="utf-8") as f:
        profiles_text = f.read()
    on_event = _progress_printer(matrix.cell_count * repeat, store.path, {
        k: len(profiles) * len(matrix.scenarios_for(k)) * repeat for k in kernel_list})
    if provider in ("auto", "qemu") and any(k not in ("host", "local") for k in kernel_list):
        from .vm import prefetch
        try:  # cached kernels are instant; a missing one turns into ERROR cells
            prefetch(kernel_list, echo=on_event.echo, progress=on_event, run_dir=store.path)
        except BaseException:
            on_event.stop()  # give the terminal back (cursor, live rows) before going
            raise
    from ..agent.procutil import become_subreaper
    become_subreaper()
    # Every agent gets the profiles' text, so --profiles-file holds on every provider.
    runner = Runner(make_provider(provider), store, matrix, jobs=jobs, progress=on_event, keep=keep,
                    profiles_text=profiles_text, repeat=repeat)
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
        on_event.stop()  # type: ignore[attr-defined]
        store.finish(status)
    if store.disk_full:
        _report_disk_full(store)
    run = load_run(store.path)
    rep = RunReport.from_run(run)  # the one fold: these tables, every report, the run index
    click.echo(render_report(rep))
    try:
        written = write_all(store.path, rep=rep)
        click.echo("\nreports: " + ", ".join(os.path.basename(p) for p in written))
    except Exception as err:  # a report bug must not hide the run's result
        click.echo("\nwarning: writing the reports failed: %s: %s" % (type(err).__name__, err), err=True)
    try:
        index_run(reports_dir_of(store.path), store.path, rep=rep)
    except Exception as err:
        click.echo("warning: updating the run index failed: %s" % err, err=True)
    comparison = None
    if baseline is not None:
        comparison = compare(baseline, rep)
        click.echo("\nCompared with %s:\n%s" % (baseline.name, render_text(comparison)))
    click.echo("\nrun %s (%s): %s" % (store.run_id, status, store.path))
    if status != "finished":
        click.echo(incomplete_note(run) or status, err=True)
        raise click.exceptions.Exit(exitcodes.INTERRUPTED)
    code = exit_status(rep, matrix.cell_count, comparison)
    if code:
        raise click.exceptions.Exit(code)


#: what a run needs free in its reports directory: run.json, results and reports per cell
SPACE_BASE_BYTES = 1 << 20
SPACE_PER_CELL_BYTES = 16 << 10


def _check_reports_space(reports_dir: Optional[str], cells: int) -> None:
    """Refuse (exit 2) to start a run whose results would not fit in the reports directory."""
    from ..lab.results import default_reports_dir
    path = os.path.abspath(reports_dir or default_reports_dir())
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except OSError as err:
        raise click.UsageError("--reports-dir %s: %s" % (path, err.strerror))
    free = st.f_bavail * st.f_frsize
    need = SPACE_BASE_BYTES + cells * SPACE_PER_CELL_BYTES
    if free < need:
        click.echo("overlaylab run: --reports-dir %s: only %d KiB free on its filesystem, a run of %d cells "
                   "needs about %d KiB; free some space or choose another --reports-dir"
                   % (path, free >> 10, cells, need >> 10), err=True)
        raise click.exceptions.Exit(2)


def _clean_dead_runs() -> None:
    """What dead runs left on this machine (their owners are gone) goes first."""
    from ..agent.cleanup import cleanup
    try:
        for entry in cleanup():
            for item in entry["items"]:
                click.echo("cleanup: removed %s" % item, err=True)
            for problem in entry["problems"]:
                click.echo("cleanup: could not remove %s" % problem, err=True)
    except OSError as err:
        click.echo("warning: cleaning up after dead runs failed: %s" % err, err=True)


def _report_disk_full(store: RunStore) -> None:
    """The reports disk filled up: the table of everything that ran (kept in memory), exit 3."""
    from ..reports import RunReport
    run = store.memory_run()
    click.echo(render_report(RunReport.from_run(run)))
    click.echo("\nrun %s failed: reports disk full (%s); %d cells ran, %d records could not be written "
               "(shown above, not stored)" % (store.run_id, store.path, len(run.cells), len(store.unwritten)),
               err=True)
    click.echo(incomplete_note(run) or "failed", err=True)
    raise click.exceptions.Exit(3)


@click.command("list")
@click.argument("what", type=HintedChoice(["kernels", "profiles", "scenarios"]))
@click.option("--json", "as_json", is_flag=True, help="A JSON list (profiles and scenarios as the run records them).")
def list_cmd(what: str, as_json: bool) -> None:
    """List the kernel catalogue, the filesystem profiles or the scenario catalogue."""
    from tabulate import tabulate
    if as_json and what != "kernels":
        items = load_profiles().values() if what == "profiles" else all_scenarios().values()
        click.echo(json.dumps([item.to_dict() for item in items], indent=2, sort_keys=True))
    elif what == "profiles":
        rows = [(p.name, p.kind, p.fstype, p.size_mib, p.description) for p in load_profiles().values()]
        click.echo(tabulate(rows, headers=["profile", "kind", "fstype", "MiB", "description"]))
    elif what == "scenarios":
        rows = [(s.id, s.group, s.description, s.reference) for s in all_scenarios().values()]
        click.echo(tabulate(rows, headers=["scenario", "group", "description", "reference"]))
    else:
        from .vm import kernels_list_cmd
        kernels_list_cmd.callback(as_json=as_json)


@click.command("show")
@click.argument("run_ref", default="latest")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True, help="The run's summary as JSON (what summary.json holds).")
def show_cmd(run_ref: str, reports_dir: Optional[str], as_json: bool) -> None:
    """Re-print a past run's tables (RUN: a run id, a run directory, or 'latest')."""
    from .reports import _run_path, load_run_checked
    from ..reports import RunReport
    run = load_run_checked(_run_path(run_ref, reports_dir), warn=False)  # exit 2 naming a broken file
    rep = RunReport.from_run(run)  # the fold `run` printed its tables from
    if as_json:
        from ..reports.summary_json import render as render_summary
        click.echo(render_summary(rep), nl=False)
        return
    click.echo(render_report(rep))
    if run.skipped_lines:
        click.echo("\n(%s)" % run.damage_note())
    note = incomplete_note(run)
    if note:
        click.echo("\n" + note)


COMMANDS = [run_cmd, list_cmd, show_cmd]
