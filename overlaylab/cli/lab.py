"""``overlaylab run | list | show``: the lab's command line."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import click

from ..agent.profiles import load_profiles
from ..agent.scenario import all_scenarios
from ..lab.matrix import SelectionError
from ..lab.run import NoRoomError, RunRequest, run_lab
from ..lab.results import incomplete_note
from ..lab.tables import render_report
from .util import HintedChoice, load_run_checked, run_path


class JobsParam(click.ParamType):
    """``--jobs``: a count of at least 1, or ``auto`` (the CPU count)."""

    name = "N|auto"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        if isinstance(value, int) and value >= 1:
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return os.cpu_count() or 1
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail("%s is not in the range x>=1, nor 'auto'" % value, param, ctx)


@click.command("run")
@click.option("--provider", type=HintedChoice(["auto", "local", "qemu", "vagrant"]), default="auto",
              show_default=True, help="auto: the host kernel locally, other kernels under qemu.")
@click.option("-K", "--kernel", "kernels", multiple=True,
              help="Kernel catalogue entry (repeatable; `overlaylab list kernels`). Default: the host "
                   "kernel plus every catalogue kernel (the Debian kernels, under qemu); with "
                   "--provider local, the host kernel alone.")
@click.option("--hosts", "hosts", multiple=True, metavar="SPEC[,SPEC...]",
              help="Remote machines as targets, testinfra host specs: ssh://[USER@]HOST[:PORT]"
                   "[?ssh_config=FILE&ssh_identity_file=FILE], ansible://PATTERN[?ansible_inventory=FILE] "
                   "(repeatable). Each is named by its inventory name or HOST[:PORT].")
@click.option("--inventory", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="An Ansible inventory: every host in it (or those of --hosts ansible://PATTERN). "
                   "Needs the 'ansible' extra (ansible-core).")
@click.option("--allow-mkfs", is_flag=True,
              help="Format the disks the inventory names per profile (host variable overlaylab_disks: "
                   "{xfs: /dev/sdb}) instead of loop files; a disk that is mounted, in use or holds a "
                   "filesystem the lab did not make is refused (that profile's cells are ERROR).")
@click.option("-B", "--box", "boxes", multiple=True,
              help="Vagrant box from vms/boxes.toml (repeatable; implies --provider vagrant).")
@click.option("-p", "--profile", "profile_exprs", multiple=True,
              help="Filesystem profiles, a -k style expression (e.g. 'ext4 and not small').")
@click.option("-k", "scenario_exprs", multiple=True, help="Scenarios, a -k style expression (e.g. 'diff or whiteout').")
@click.option("--engine", "engine_exprs", multiple=True, metavar="ENGINE",
              help="Storage engines the engine scenarios run on (repeatable; `overlaylab list engines`): a "
                   "name, 'all', or a -k style expression over names and keywords (e.g. 'docker*', "
                   "'not fuse', daemon). Default: every engine; one not installed on a target gives "
                   "UNSUPPORTED cells there. Other scenarios run on the port alone.")
@click.option("-j", "--jobs", type=JobsParam(), default="auto", show_default=True,
              help="Targets booted and run in parallel (auto: one per CPU; a VM under TCG keeps about one "
                   "busy). The host's own target runs beside them, the longest targets go first.")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None,
              help="Where runs/<run-id>/ goes (default ./reports, env OVERLAYLAB_REPORTS).")
@click.option("--profiles-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Another filesystems.toml.")
@click.option("--keep", is_flag=True, help="Leave VMs up after the run (debugging).")
@click.option("--baseline", "baseline_ref", default=None, metavar="BASE",
              help="Compare with BASE (a run id/directory or a baseline file) and exit 1 on regressions.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run every cell N times; cells whose outcomes differ are FLAKY, with pass rates.")
@click.option("--shard", default=None, metavar="K/N",
              help="Run only the K-th of N shards of the matrix: the same split on any machine, balanced by "
                   "expected cost, a target's cells on one profile kept together (`overlaylab merge` joins them).")
@click.option("--resume", "resume", default=None, metavar="RUN",
              help="Finish RUN (a run id, directory or 'latest'; also a merged run) in its own directory: its "
                   "matrix, the cells it lacks; no selection options with it.")
@click.option("--rerun-errors", is_flag=True, help="With --resume: run RUN's ERROR cells again, replacing them.")
def run_cmd(provider: str, kernels: Sequence[str], hosts: Sequence[str], inventory: Optional[str], allow_mkfs: bool,
            boxes: Sequence[str], profile_exprs: Sequence[str], scenario_exprs: Sequence[str],
            engine_exprs: Sequence[str], jobs: int, reports_dir: Optional[str], profiles_file: Optional[str], keep: bool,
            baseline_ref: Optional[str], repeat: int, shard: Optional[str], resume: Optional[str],
            rerun_errors: bool) -> None:
    """Run the matrix: kernels x filesystem profiles x scenarios (the engine scenarios once per
    storage engine); print the tables and write report.md, report.html, junit.xml and
    summary.json into the run directory.

    Exit status 0 when every cell met its expectation (a flaky cell that met it at least once
    counts as met); 1 when a cell is not as expected (with --baseline: regressed against BASE;
    known outcomes in BASE are fine); 2 for a usage error (nothing is run or recorded); 3 when
    the only problems are the lab's own (ERROR cells, cells with no result); 130 interrupted.
    """
    if rerun_errors and not resume:
        raise click.UsageError("--rerun-errors goes with --resume RUN")
    if resume:
        ctx = click.get_current_context()
        flags = {"provider": "--provider", "kernels": "-K", "boxes": "-B", "profile_exprs": "-p",
                 "scenario_exprs": "-k", "engine_exprs": "--engine", "repeat": "--repeat", "shard": "--shard"}
        given = [flag for name, flag in flags.items()
                 if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError("--resume takes the matrix from the run: drop %s" % ", ".join(given))
    try:
        code = run_lab(RunRequest(provider=provider, kernels=list(kernels), boxes=list(boxes),
                                  profile_exprs=list(profile_exprs), scenario_exprs=list(scenario_exprs),
                                  engine_exprs=list(engine_exprs),
                                  jobs=jobs, reports_dir=reports_dir, profiles_file=profiles_file, keep=keep,
                                  baseline_ref=baseline_ref, repeat=repeat, argv=sys.argv[1:], shard=shard,
                                  resume=resume, rerun_errors=rerun_errors,
                                  hosts=list(hosts), inventory=inventory, allow_mkfs=allow_mkfs),
                       echo=click.echo)
    except SelectionError as err:
        raise click.UsageError(str(err)) from None
    except NoRoomError as err:
        click.echo("overlaylab run: %s" % err, err=True)
        raise click.exceptions.Exit(2)
    if code:
        raise click.exceptions.Exit(code)


def engine_rows() -> List[Dict[str, Any]]:
    """Each registered engine: name, description, version, and whether it can run here (or why not)."""
    from ..agent.engines import engine_names, get_engine
    rows = []
    for name in engine_names():
        row: Dict[str, Any] = {"name": name, "description": "", "version": "", "available": False}
        engine = get_engine(name)
        reason = engine.unavailable()
        row.update(description=engine.description, available=reason is None, unavailable=reason,
                   version=engine.version() if reason is None else "")
        rows.append(row)
    return rows


@click.command("list")
@click.argument("what", type=HintedChoice(["kernels", "profiles", "scenarios", "engines"]))
@click.option("--json", "as_json", is_flag=True, help="A JSON list (profiles and scenarios as the run records them).")
def list_cmd(what: str, as_json: bool) -> None:
    """List the kernel catalogue, the filesystem profiles, the scenario catalogue or the storage
    engines (with their versions, and whether each can run here)."""
    from tabulate import tabulate
    if what == "engines":
        rows = engine_rows()
        if as_json:
            click.echo(json.dumps(rows, indent=2, sort_keys=True))
        else:
            click.echo(tabulate([(r["name"], r["version"], "available here" if r["available"] else r["unavailable"],
                                  r["description"]) for r in rows],
                                headers=["engine", "version", "here", "description"]))
    elif as_json and what != "kernels":
        items = load_profiles().values() if what == "profiles" else all_scenarios().values()
        click.echo(json.dumps([item.to_dict() for item in items], indent=2, sort_keys=True))
    elif what == "profiles":
        rows = [(p.name, p.kind, p.fstype, p.size_mib, p.description) for p in load_profiles().values()]
        click.echo(tabulate(rows, headers=["profile", "kind", "fstype", "MiB", "description"]))
    elif what == "scenarios":
        rows = [(s.id, s.group, s.description, s.reference) for s in all_scenarios().values()]
        click.echo(tabulate(rows, headers=["scenario", "group", "description", "reference"]))
    else:
        from ..kernels.catalogue import render_catalogue
        click.echo(render_catalogue(as_json))


@click.command("show")
@click.argument("run_ref", default="latest")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True, help="The run's summary as JSON (what summary.json holds).")
def show_cmd(run_ref: str, reports_dir: Optional[str], as_json: bool) -> None:
    """Re-print a past run's tables (RUN: a run id, a run directory, or 'latest')."""
    from ..reports import RunReport
    run = load_run_checked(run_path(run_ref, reports_dir), warn=False)  # exit 2 naming a broken file
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


@click.command("bisect")
@click.argument("cell", metavar="PROFILE/SCENARIO[/ENGINE]")
@click.option("--good", required=True, metavar="K1", help="A kernel on which the cell behaves as it used to.")
@click.option("--bad", required=True, metavar="K2", help="A newer kernel on which it does not.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the cell N times per kernel; repeats that disagree stop the bisection.")
@click.option("--kernels-dir", type=click.Path(), default=None, metavar="DIR",
              help="Bisect over the kernel builds in DIR (one per subdirectory: .deb files, or a "
                   "bzImage/vmlinuz plus lib/modules/<release>) instead of vms/kernels.toml.")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None,
              help="Where runs/ and bisect/ go (default ./reports, env OVERLAYLAB_REPORTS).")
@click.option("--assume-ends", is_flag=True,
              help="Do not boot K1 and K2: take K1 to give --good-outcome (default PASS) and K2 not.")
@click.option("--good-outcome", default=None, metavar="OUTCOME",
              help="The outcome that counts as good (default: whatever K1 gives).")
def bisect_cmd(cell: str, good: str, bad: str, repeat: int, kernels_dir: Optional[str], reports_dir: Optional[str],
               assume_ends: bool, good_outcome: Optional[str]) -> None:
    """Find the first kernel between K1 and K2 on which CELL behaves differently from K1,
    booting (under qemu) only the kernels a binary search needs; each step is a normal run,
    the log goes to REPORTS/bisect/<id>/bisect.json.

    Exit status 0 when the first bad kernel is named; 1 when K1 is not good, K2 is not bad,
    or a step's repeats disagree (flaky: it never guesses); 2 usage error (nothing booted);
    3 when the lab could not run the cell on a kernel; 130 interrupted.
    """
    from ..lab.bisect import BisectRequest, run_bisect
    try:
        code = run_bisect(BisectRequest(cell, good, bad, repeat, kernels_dir, reports_dir, assume_ends, good_outcome),
                          echo=click.echo)
    except SelectionError as err:
        raise click.UsageError(str(err)) from None
    if code:
        raise click.exceptions.Exit(code)


@click.command("merge")
@click.argument("run_refs", nargs=-1, required=True, metavar="RUN...")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None,
              help="Where the merged runs/<run-id>/ goes, and where RUN ids are looked up (default ./reports).")
@click.option("--allow-partial", is_flag=True,
              help="Merge even when cells of the matrix are in no RUN; the merged run is 'partial' "
                   "(`overlaylab run --resume` runs what it lacks).")
def merge_cmd(run_refs: Sequence[str], reports_dir: Optional[str], allow_partial: bool) -> None:
    """Merge runs of one matrix (the shards of `run --shard K/N`, or runs made on several
    machines) into one new run, with every report written as for a single run.

    Refused (exit 2, one line) when the runs differ in overlaylab version or matrix, when a cell
    is in two runs, or when a cell of the matrix is in none (unless --allow-partial). Otherwise
    the exit status is the merged run's, as `overlaylab run` gives it.
    """
    from ..lab.merge import MergeError, merge_runs
    from ..lab.run import exit_status, publish
    try:
        path = merge_runs([run_path(ref, reports_dir) for ref in run_refs], reports_dir, allow_partial,
                          argv=sys.argv[1:])
    except MergeError as err:
        raise click.UsageError(str(err)) from None
    rep = publish(path, click.echo)
    click.echo("\nrun %s (%s, merged from %d runs): %s" % (rep.run_id, rep.run.meta["status"], len(run_refs), path))
    code = exit_status(rep, int(rep.run.meta["cells_expected"]) // int(rep.run.meta.get("repeat") or 1))
    if code:
        raise click.exceptions.Exit(code)


COMMANDS = [run_cmd, list_cmd, show_cmd, merge_cmd, bisect_cmd]
