"""``overlaylab boxes build|list`` and ``overlaylab host-setup``: the Vagrant provider's commands."""
from __future__ import annotations

from typing import Sequence

import click


@click.group("boxes")
def boxes_group() -> None:
    """Vagrant boxes for `overlaylab run --provider vagrant -B NAME` (vms/boxes.toml)."""


@boxes_group.command("build")
@click.argument("names", nargs=-1)
@click.option("--all", "all_boxes", is_flag=True, help="Every debootstrap box of the catalogue.")
@click.option("--force", is_flag=True, help="Rebuild even if the cached box is current.")
@click.option("--no-add", is_flag=True, help="Build the .box only; do not `vagrant box add` it.")
@click.option("-q", "--quiet", is_flag=True, help="Do not stream the build's output.")
def build_cmd(names: Sequence[str], all_boxes: bool, force: bool, no_add: bool, quiet: bool) -> None:
    """Debootstrap each box's suite with its own kernel (from the system's Debian mirror), make a
    libvirt .box in the user cache and add it to Vagrant. Idempotent."""
    from ..providers.vagrant.boxes import BoxError, load_catalogue, build_box
    catalogue = load_catalogue()
    if all_boxes:
        names = [n for n, s in catalogue.boxes.items() if s.build == "debootstrap"]
    if not names:
        raise click.UsageError("name a box (%s) or give --all" % ", ".join(catalogue.boxes))
    for name in names:
        try:
            catalogue.get(name)
        except KeyError as err:
            raise click.UsageError(str(err.args[0])) from None
        try:
            res = build_box(name, catalogue, force=force, add=not no_add,
                            log=(lambda s: None) if quiet else (lambda s: click.echo(s, err=True)))
        except BoxError as err:
            if quiet and err.output:
                click.echo(err.output[-4000:], err=True)
            raise click.ClickException("box %s: %s" % (name, err)) from None
        state = "built" if res.built else "cached"
        state += ", added" if res.added else (", already in Vagrant" if not no_add else "")
        click.echo("%s: %s (%s) in %.1fs -> %s" % (name, res.vagrant_box, state, res.seconds, res.box_file))


@boxes_group.command("list")
def list_cmd() -> None:
    """The catalogue's boxes: cached .box, added to Vagrant, kernel, Python, build time."""
    from tabulate import tabulate
    from ..providers.vagrant.boxes import list_boxes
    rows = [(r["name"], r["vagrant_box"], r["suite"], "yes" if r["cached"] else "no",
             "yes" if r["added"] else "no", r["kernel"], r["python"],
             "" if r["build_seconds"] is None else "%.0f s" % r["build_seconds"], r["description"])
            for r in list_boxes()]
    click.echo(tabulate(rows, headers=["box", "vagrant box", "suite", "cached", "added", "kernel", "python",
                                       "build", "description"]))


@click.command("host-setup")
@click.option("--dry-run", is_flag=True, help="Only say what would be done.")
def host_setup_cmd(dry_run: bool) -> None:
    """Make this host able to run the Vagrant provider without systemd: install missing packages,
    fix /dev/kvm permissions, start virtlogd and libvirtd. Idempotent; safe where they run."""
    from ..providers.vagrant.hostsetup import host_setup
    try:
        host_setup(dry_run=dry_run, echo=click.echo)
    except (RuntimeError, PermissionError) as err:
        raise click.ClickException(str(err)) from None


COMMANDS = [boxes_group, host_setup_cmd]
