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
def run_cmd(provider: str, kernels: Sequence[str], hosts: Sequence[str], inventory: Optional[str], allow_mkfs: bool,
            boxes: Sequence[str], profile_exprs: Sequence[str], scenario_exprs: Sequence[str],
            engine_exprs: Sequence[str], jobs: int, reports_dir: Optional[str], profiles_file: Optional[str], keep: bool,
            baseline_ref: Optional[str], repeat: int) -> None:
    """Run the matrix: kernels x filesystem profiles x scenarios (the engine scenarios once per
    storage engine); print the tables and write report.md, report.html, junit.xml and
    summary.json into the run directory.

    Exit status 0 when every cell met its expectation (a flaky cell that met it at least once
    counts as met); 1 when a cell is not as expected (with --baseline: regressed against BASE;
    known outcomes in BASE are fine); 2 for a usage error (nothing is run or recorded); 3 when
    the only problems are the lab's own (ERROR cells, cells with no result); 130 interrupted.
    """
    try:
        code = run_lab(RunRequest(provider=provider, kernels=list(kernels), boxes=list(boxes),
                                  profile_exprs=list(profile_exprs), scenario_exprs=list(scenario_exprs),
                                  engine_exprs=list(engine_exprs),
                                  jobs=jobs, reports_dir=reports_dir, profiles_file=profiles_file, keep=keep,
                                  baseline_ref=baseline_ref, repeat=repeat, argv=sys.argv[1:],
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


COMMANDS = [run_cmd, list_cmd, show_cmd]
