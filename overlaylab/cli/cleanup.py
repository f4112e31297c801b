"""``overlaylab cleanup``: find and remove what dead lab runs left on this machine."""
from __future__ import annotations

from typing import Optional

import click


@click.command("cleanup")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--run", "run_id", default=None, metavar="RUN", help="Only the leftovers of this run id.")
def cleanup_cmd(dry_run: bool, run_id: Optional[str]) -> None:
    """Find what dead runs left here — mounts, loop devices, agent directories, qemu processes
    and their images, libvirt domains — by the markers the lab puts on everything it makes,
    list them, and remove them. Only leftovers whose owner process is gone are touched.

    Exit status 0 when nothing is left (or, with --dry-run, after listing), 1 when something
    could not be removed.
    """
    from ..agent.cleanup import cleanup
    found = cleanup(run_id, dry_run=dry_run)
    failed = False
    for entry in found:
        for item in entry["items"]:
            click.echo(("would remove " if dry_run else "removed ") + item)
        for problem in entry["problems"]:
            failed = True
            click.echo("could not remove: " + problem, err=True)
    if not found:
        click.echo("nothing left behind by dead runs")
    if failed:
        raise click.exceptions.Exit(1)
