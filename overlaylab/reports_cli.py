"""``overlaylab report | compare | history | bundle | repro``: what a run hands its users."""
from __future__ import annotations

import json
import os
from typing import Optional

import click

from .lab.results import default_reports_dir, load_run, resolve_run_dir


def _run_path(run_ref: str, reports_dir: Optional[str]) -> str:
    try:
        return resolve_run_dir(run_ref, reports_dir)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None


@click.command("report")
@click.argument("run_ref", metavar="RUN", default="latest")
@click.option("-f", "--format", "fmt", type=click.Choice(["markdown", "html", "junit", "json", "baseline", "all"]),
              default="all", show_default=True,
              help="all: report.md, report.html, junit.xml and summary.json; baseline: a baseline file of this run.")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="File to write (one format; '-' for stdout) or directory (all; default: the run directory).")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
@click.option("--name", default=None, help="(baseline) the baseline's name.")
def report_cmd(run_ref: str, fmt: str, output: Optional[str], reports_dir: Optional[str], name: Optional[str]) -> None:
    """Write a run's reports (RUN: a run id, a run directory, or 'latest').

    One format without -o prints to stdout (html goes to report.html in the run directory).
    """
    from .reports import FILES, RunReport, render, write_all
    from .reports.compare import render_baseline
    path = _run_path(run_ref, reports_dir)
    if fmt == "all":
        for written in write_all(path, out_dir=output):
            click.echo(written)
        return
    rep = RunReport.from_run(load_run(path))
    text = render_baseline(rep, name=name) if fmt == "baseline" else render(rep, fmt)
    if output is None and fmt == "html":
        output = os.path.join(path, FILES["html"])
    if output is None or output == "-":
        click.echo(text, nl=False)
        return
    if os.path.isdir(output):
        output = os.path.join(output, FILES.get(fmt, "baseline.toml"))
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
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

    Exit status 1 when a cell regressed, 0 otherwise.
    """
    from .reports import RunReport
    from .reports.compare import BaselineError, compare, load_baseline, render_markdown, render_text
    try:
        baseline = load_baseline(base, reports_dir)
    except (BaselineError, OSError) as err:
        raise click.ClickException(str(err)) from None
    rep = RunReport.from_run(load_run(_run_path(new, reports_dir)))
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
    from .reports import history
    reports = reports_dir or default_reports_dir()
    if not os.path.isdir(reports):
        raise click.UsageError("no reports directory %s (runs go there; --reports-dir or OVERLAYLAB_REPORTS "
                               "names another)" % reports)
    if reindex:
        n = history.reindex(reports)
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
@click.argument("cell", metavar="KERNEL/PROFILE/SCENARIO")
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Where to write the .tar.gz (a file or a directory; default RUN/bundles/).")
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None)
def bundle_cmd(run_ref: str, cell: str, output: Optional[str], reports_dir: Optional[str]) -> None:
    """Write a bug bundle for one cell: kernel and config, filesystem recipe and real
    parameters, probes, dmesg, the scenario's log and evidence, versions, and a repro command."""
    from .reports.bundle import BundleError, write_bundle
    path = _run_path(run_ref, reports_dir)
    try:
        click.echo(write_bundle(path, cell, output))
    except (BundleError, ValueError) as err:
        raise click.ClickException(str(err)) from None


@click.command("repro")
@click.argument("bundle", type=click.Path(exists=True))
@click.option("--reports-dir", type=click.Path(file_okay=False), default=None,
              help="Where the re-run's run directory goes (default ./reports, env OVERLAYLAB_REPORTS).")
@click.option("--dry-run", is_flag=True, help="Only print the command.")
def repro_cmd(bundle: str, reports_dir: Optional[str], dry_run: bool) -> None:
    """Re-run a bundle's cell (same kernel, profile, scenario) and say whether the bundled
    outcome reproduced. Exit status 0 when it did, 1 when it did not, 2 when the re-run failed."""
    from .reports.bundle import BundleError, read_bundle, run_repro
    try:
        spec = read_bundle(bundle)
    except BundleError as err:
        raise click.ClickException(str(err)) from None
    if dry_run:
        click.echo(spec["command"])
        return
    result = run_repro(spec, reports_dir, echo=lambda s: click.echo(s, err=True))
    click.echo(result["stdout"].rstrip())
    if result.get("problem"):
        click.echo(result["stderr"][-3000:], err=True)
        click.echo("repro of %s: the re-run failed: %s" % (spec["cell"], result["problem"]))
        raise click.exceptions.Exit(2)
    if result["reproduced"]:
        click.echo("REPRODUCED: %s is %s again (bundled: %s, run %s; now run %s on kernel %s)" % (
            spec["cell"], result["outcome"], spec["outcome"], spec["run_id"], result["run_id"], result["kernel_release"]))
        return
    click.echo("NOT REPRODUCED: %s is now %s (bundled: %s from run %s; now run %s on kernel %s)%s" % (
        spec["cell"], result["outcome"], spec["outcome"], spec["run_id"], result["run_id"], result["kernel_release"],
        ": " + result["error"][:300] if result.get("error") else ""))
    raise click.exceptions.Exit(1)


COMMANDS = [report_cmd, compare_cmd, history_cmd, bundle_cmd, repro_cmd]
