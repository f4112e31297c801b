"""``overlaylab report | compare | history | bundle | repro | known``: what a run hands its users."""
from __future__ import annotations

import json
import os
from typing import Optional

import click

from ..lab.results import default_reports_dir
from .util import BadInput, load_run_checked, run_path


@click.command("report")
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("-f", "--format", "fmt",
              type=click.Choice(["markdown", "html", "junit", "json", "baseline", "kcidb", "all"]), default="all", show_default=True,
              help="all: report.md, report.html, junit.xml and summary.json; baseline: a baseline file of this run; "
                   "kcidb: KernelCI's KCIDB I/O JSON, validated with kcidb-io (the 'kcidb' extra).")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="File to write (one format; '-' for stdout) or directory (all; default: the run directory).")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
@click.option("--name", default=None, help="(baseline) the baseline's name.")
def report_cmd(run_ref: str, fmt: str, output: Optional[str], reports_dir: Optional[str], name: Optional[str]) -> None:
    """Write a run's reports (RUN: a run id, a run directory, or 'latest').

    One format without -o prints to stdout (html goes to report.html in the run directory).
    """
    from ..reports import FILES, RunReport, render, write_all
    from ..reports.compare import render_baseline
    from ..reports.kcidb import KcidbError
    path = run_path(run_ref, reports_dir)
    run = load_run_checked(path)
    if fmt == "all":
        try:
            written_files = write_all(path, out_dir=output, run=run)
        except OSError as err:
            raise BadInput("cannot write the reports to %s: %s" % (err.filename or output or path, err.strerror or err)) from None
        for written in written_files:
            click.echo(written)
        return
    rep = RunReport.from_run(run)
    try:
        text = render_baseline(rep, name=name) if fmt == "baseline" else render(rep, fmt)
    except KcidbError as err:  # invalid KCIDB data is never written
        raise BadInput(str(err)) from None
    if output is None and fmt == "html":
        output = os.path.join(path, FILES["html"])
    if output is None or output == "-":
        click.echo(text, nl=False)
        return
    if os.path.isdir(output):
        output = os.path.join(output, FILES.get(fmt) or {"baseline": "baseline.toml", "kcidb": "kcidb.json"}[fmt])
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise BadInput("cannot write %s: %s" % (output, err.strerror or err)) from None
    click.echo(output)


@click.command("compare")
@click.argument("base")
@click.argument("new", default="latest")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Also list the cells that did not change.")
def compare_cmd(base: str, new: str, reports_dir: Optional[str], fmt: str, show_all: bool) -> None:
    """Compare run NEW (default: latest) with BASE: a run (id, directory, 'latest') or a
    baseline file (.toml/.json). Per cell: newly failing, fixed, changed, flaky, new, missing.

    Exit status 1 when a cell regressed, 0 otherwise, 2 when BASE or NEW cannot be read.
    """
    from ..reports import RunReport
    from ..reports.compare import BaselineError, baseline_from_report, compare, load_baseline, render_markdown, render_text
    try:
        if os.path.isfile(base):
            baseline = load_baseline(base, reports_dir)
        else:
            baseline = baseline_from_report(RunReport.from_run(load_run_checked(run_path(base, reports_dir))))
    except BadInput as err:
        raise BadInput("base %s: %s" % (base, err.message)) from None
    except (BaselineError, OSError, ValueError, TypeError) as err:
        text = str(getattr(err, "strerror", None) or err)
        raise BadInput(text if text.startswith(base) else "base %s: %s" % (base, text)) from None
    rep = RunReport.from_run(load_run_checked(run_path(new, reports_dir)))
    result = compare(baseline, rep)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    elif fmt == "markdown":
        click.echo(render_markdown(result))
    else:
        click.echo(render_text(result, show_same=show_all))
    if result.regressions:
        raise click.exceptions.Exit(1)


@click.command("history")
@click.option("--cell", "cell", default=None, metavar="KERNEL/PROFILE/SCENARIO",
              help="Show how this cell's outcome moved across runs (* and ? glob in any part).")
@click.option("--reindex", is_flag=True, help="Rebuild the index from every run directory first.")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True,
              help="JSON: {runs, moving} (the index's rows), or with --cell {cell, history}.")
def history_cmd(cell: Optional[str], reindex: bool, reports_dir: Optional[str], as_json: bool) -> None:
    """Runs indexed under the reports directory (reports/index.sqlite), or one cell's history."""
    from ..reports import history
    reports = reports_dir or default_reports_dir()
    if not os.path.isdir(reports):
        raise click.UsageError("no reports directory %s (runs go there; --reports-dir or OVERLAYLAB_REPORTS "
                               "names another)" % reports)
    if reindex:
        n = history.reindex(reports, warn=lambda text: click.echo("warning: " + text, err=True))
        click.echo("indexed %d runs into %s" % (n, history.index_path(reports)), err=True)
    if as_json:
        if cell:
            data = {"cell": cell, "history": history.cell_history(reports, cell)}
        else:
            data = {"runs": history.list_runs(reports),
                    "moving": [{"cell": c, "runs": n, "outcomes": (o or "").split(",")}
                               for c, n, o in history.moving_cells(reports)]}
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    if cell:
        click.echo(history.render_cell_history(history.cell_history(reports, cell)))
    else:
        click.echo(history.render_runs(reports))


@click.command("bundle")
@click.argument("run_ref", metavar="RUN")
@click.argument("cell", metavar="KERNEL/PROFILE/SCENARIO[/ENGINE]")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Where to write the .tar.gz (a file or a directory; default RUN/bundles/).")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
def bundle_cmd(run_ref: str, cell: str, output: Optional[str], reports_dir: Optional[str]) -> None:
    """Write a bug bundle for one cell: kernel and config, filesystem recipe and real
    parameters, probes, dmesg, the scenario's log and evidence, versions (and for an engine's
    cell its version, verdict and command log), and a repro command."""
    from ..reports.bundle import BundleError, write_bundle
    path = run_path(run_ref, reports_dir)
    run = load_run_checked(path)
    try:
        click.echo(write_bundle(path, cell, output, run=run))
    except (BundleError, ValueError) as err:
        raise BadInput(str(err)) from None
    except OSError as err:
        raise BadInput("cannot write the bundle to %s: %s" % (err.filename or output, err.strerror or err)) from None


@click.command("repro")
@click.argument("bundle")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None,
              help="Where the re-run's run directory goes (default ./reports, env OVERLAYLAB_REPORTS).")
@click.option("--dry-run", is_flag=True, help="Only print the command that would run, exactly.")
@click.option("--profiles-file", type=click.Path(dir_okay=False), default=None,
              help="Your own filesystems.toml for the bundle's profile (instead of the project's).")
@click.option("--trust-bundle-profiles", is_flag=True,
              help="Use the profiles file the bundle brings (profiles.toml; its mkfs commands run as root).")
def repro_cmd(bundle: str, reports_dir: Optional[str], dry_run: bool, profiles_file: Optional[str],
              trust_bundle_profiles: bool) -> None:
    """Re-run a bundle's cell (same kernel, profile, scenario, engine, provider, repeat) and say whether
    the bundled outcome reproduced.

    The command is rebuilt from the bundle's fields, each checked against this machine's
    catalogues; no command from the bundle is executed. Exit status 0 when the outcome
    reproduced, 1 when it did not, 2 when BUNDLE is not a well-formed bundle of a known cell,
    3 when the re-run itself failed, 130 when it was interrupted.
    """
    from ..reports.bundle import BundleError, read_bundle, repro_command, run_repro
    from ..reports.model import shell_join
    try:
        spec = read_bundle(bundle, profiles_file=profiles_file, trust_bundle_profiles=trust_bundle_profiles,
                           reports_dir=reports_dir)
    except BundleError as err:
        raise BadInput(str(err)) from None
    if spec.get("trusted_profiles"):
        click.echo("using the bundle's own profiles (--trust-bundle-profiles), copied to %s" % spec["trusted_profiles"],
                   err=True)
    if dry_run:
        click.echo(shell_join(repro_command(spec, reports_dir)))
        return
    result = run_repro(spec, reports_dir, echo=lambda s: click.echo(s, err=True))
    if result["stdout"].strip():
        click.echo(result["stdout"].rstrip())
    if result.get("problem"):
        click.echo(result["stderr"][-3000:], err=True)
        click.echo("repro of %s: the re-run failed: %s" % (spec["cell"], result["problem"]))
        code = result.get("returncode")
        raise click.exceptions.Exit(code if code in (2, 130) else 3)
    if result["reproduced"]:
        click.echo("REPRODUCED: %s is %s again (bundled: %s, run %s; now run %s on kernel %s)" % (
            spec["cell"], result["outcome"], spec["outcome"], spec["run_id"], result["run_id"], result["kernel_release"]))
        return
    click.echo("NOT REPRODUCED: %s is now %s (bundled: %s from run %s; now run %s on kernel %s)%s" % (
        spec["cell"], result["outcome"], spec["outcome"], spec["run_id"], result["run_id"], result["kernel_release"],
        ": " + result["error"][:300] if result.get("error") else ""))
    raise click.exceptions.Exit(1)


def _known_issues(path: Optional[str]):
    from ..reports.known import KnownIssuesError, default_path, load
    try:
        return load(path or default_path())
    except KnownIssuesError as err:
        raise BadInput(str(err)) from None


_KNOWN_FILE = click.option("--file", "known_file", type=click.Path(dir_okay=False), default=None,
                           help="The known-issues file (default: $OVERLAYLAB_KNOWN_ISSUES, else "
                                "reports/known-issues.toml of the project).")


@click.group("known")
def known_group() -> None:
    """Known issues: failures the lab reproduces, each with its upstream report
    (reports/known-issues.toml). Every report marks the cells they match as KNOWN and lists
    the failures no entry accounts for as new, first."""


@known_group.command("list")
@_KNOWN_FILE
@click.option("--json", "as_json", is_flag=True, help="The entries as JSON.")
def known_list_cmd(known_file: Optional[str], as_json: bool) -> None:
    """List the entries of the known-issues file."""
    from tabulate import tabulate
    issues = _known_issues(known_file)
    if as_json:
        click.echo(json.dumps({"file": issues.source, "issues": [i.to_dict() for i in issues.issues]},
                              indent=2, sort_keys=True))
        return
    rows = [(i.id, i.status, i.range_text, ", ".join(i.outcomes), "\n".join(i.match), "%s\n%s" % (i.title, i.url))
            for i in issues.issues]
    click.echo("%s: %d entries" % (issues.source, len(issues.issues)))
    click.echo(tabulate(rows, headers=["id", "status", "applies to", "outcomes", "cells", "title and report"]))


@known_group.command("check")
@click.argument("run_ref", metavar="RUN", default="latest")
@_KNOWN_FILE
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True, help="{stale, not_run, still_failing, matched} as JSON.")
def known_check_cmd(run_ref: str, known_file: Optional[str], reports_dir: Optional[str], as_json: bool) -> None:
    """Check the known issues against a run (RUN: a run id, a run directory, or 'latest').

    Lists the entries whose cells ran but none failed so (stale: fixed, or a wrong pattern),
    the entries whose cells did not run here, and the entries whose `until` (or `fixed-in`)
    kernel, or a later one, still fails. Exit status 1 when an entry is stale or still failing,
    0 otherwise, 2 when the file or the run cannot be read.
    """
    from ..reports import RunReport
    from ..reports.known import check
    issues = _known_issues(known_file)
    rep = RunReport.from_run(load_run_checked(run_path(run_ref, reports_dir)), known=issues)
    result = check(rep.cells.values(), issues, rep.cell_release)
    if as_json:
        click.echo(json.dumps({
            "file": issues.source, "run_id": rep.run_id, "attention": result.attention,
            "stale": [i.id for i in result.stale], "not_run": [i.id for i in result.not_run],
            "still_failing": [{"issue": i.id, "fix": i.range_text, "cells": [
                {"cell": c.id, "kernel_release": rep.cell_release(c), "outcome": c.outcome} for c in cells]}
                for i, cells in result.still_failing],
            "matched": {k: [c.id for c in v] for k, v in result.matched.items()}}, indent=2, sort_keys=True))
    else:
        click.echo(_render_check(rep, issues, result))
    if result.attention:
        raise click.exceptions.Exit(1)


def _render_check(rep, issues, result) -> str:
    out = ["%s: %d entries, against run %s (%d cells)" % (issues.source, len(issues.issues), rep.run_id, len(rep.cells))]
    for issue in issues.issues:
        cells = result.matched.get(issue.id) or []
        if cells:
            out.append("  matched  %s: %d cell%s (%s)" % (issue.id, len(cells), "" if len(cells) == 1 else "s",
                                                       ", ".join(c.id for c in cells[:4]) + (", ..." if len(cells) > 4 else "")))
    for issue in result.stale:
        out.append("  STALE    %s: its cells ran and none failed so (%s): %s %s" % (
            issue.id, ", ".join(issue.outcomes), issue.title, issue.url))
    for issue, cells in result.still_failing:
        out.append("  STILL FAILING after its fix (%s): %s: %s" % (issue.range_text, issue.id, ", ".join(
            "%s on %s (%s)" % (c.id, rep.cell_release(c) or "?", c.outcome) for c in cells[:6])))
    if result.not_run:
        out.append("  not run here: %s" % ", ".join(i.id for i in result.not_run))
    out.append("%d stale, %d still failing after their fix" % (len(result.stale), len(result.still_failing)))
    return "\n".join(out)


COMMANDS = [report_cmd, compare_cmd, history_cmd, bundle_cmd, repro_cmd, known_group]
