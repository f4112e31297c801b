"""``overlaylab cleanup``: find and remove what dead lab runs left on this machine, or on remote hosts."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import click


def _remote_cleanup(hosts: Sequence[str], inventory: Optional[str], run_id: Optional[str],
                    dry_run: bool) -> List[Dict[str, Any]]:
    """The agent's ``cleanup`` on every host (shipped and removed as in a run): one entry per
    leftover, with the host's name in its items; a host that cannot be reached is a problem."""
    from ..agent.records import parse_records
    from ..providers.hosts import HostSpecError, resolve_hosts, split_specs
    from ..providers.ssh import SshProvider
    try:
        remote = resolve_hosts(split_specs(hosts), inventory)
    except HostSpecError as err:
        raise click.UsageError(str(err)) from None
    provider = SshProvider(remote)
    args = ["cleanup"] + (["--run", run_id] if run_id else []) + (["--dry-run"] if dry_run else [])
    found: List[Dict[str, Any]] = []
    for host in remote:
        try:
            with provider.up(host.name) as session:
                res = session.run(session.agent_command(args), 600)
            records, _ = parse_records(res.stdout)
            for rec in records:
                if rec.get("record") == "cleanup":
                    found.append({"items": ["%s: %s" % (host.name, i) for i in rec.get("items", [])],
                                  "problems": ["%s: %s" % (host.name, p) for p in rec.get("problems", [])]})
            if res.rc != 0:
                found.append({"items": [], "problems": ["%s: the agent's cleanup exited with status %d: %s"
                                                        % (host.name, res.rc, res.stderr.strip()[-300:])]})
        except Exception as err:  # unreachable, no Python: say so, go on with the next host
            found.append({"items": [], "problems": ["%s: %s" % (host.name, err)]})
    return found


@click.command("cleanup")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--run", "run_id", default=None, metavar="RUN", help="Only the leftovers of this run id.")
@click.option("--hosts", "hosts", multiple=True, metavar="SPEC[,SPEC...]",
              help="Clean these remote hosts instead of this machine (specs as for `run --hosts`).")
@click.option("--inventory", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Clean the hosts of this Ansible inventory (as for `run --inventory`).")
def cleanup_cmd(dry_run: bool, run_id: Optional[str], hosts: Sequence[str], inventory: Optional[str]) -> None:
    """Find what dead runs left here — mounts, loop devices, agent directories, qemu processes
    and their images, libvirt domains — by the markers the lab puts on everything it makes,
    list them, and remove them. Only leftovers whose owner process is gone are touched.

    With --hosts or --inventory, the same is done on each remote host (the agent is shipped
    there for it and removed after): a run's per-run directory under /var/tmp whose holder
    died, with the mounts and loop devices below it.

    Exit status 0 when nothing is left (or, with --dry-run, after listing), 1 when something
    could not be removed or a host could not be reached.
    """
    if hosts or inventory:
        found = _remote_cleanup(hosts, inventory, run_id, dry_run)
    else:
        from ..agent.cleanup import cleanup
        found = cleanup(run_id, dry_run=dry_run)
    failed = False
    for entry in found:
        for item in entry["items"]:
            click.echo(("would remove " if dry_run else "removed ") + item)
        for problem in entry["problems"]:
            failed = True
            click.echo("could not remove: " + problem, err=True)
    if not any(entry["items"] for entry in found):
        click.echo("nothing left behind by dead runs")
    if failed:
        raise click.exceptions.Exit(1)
