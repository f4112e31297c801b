"""``overlaylab kernels fetch|list`` and ``overlaylab vm shell``: kernels and VMs by hand."""
from __future__ import annotations

import os
import subprocess
import time
from typing import List, Sequence

import click


def catalogue_kernels() -> List[str]:
    """Every catalogue entry, ``host`` first (the default kernels of ``overlaylab run``)."""
    from .kernels.catalogue import load_catalogue
    names = list(load_catalogue())
    return (["host"] if "host" in names else []) + [n for n in names if n != "host"]


def prefetch(kernels: Sequence[str], echo=click.echo, refresh: bool = False) -> List[str]:
    """Fetch (or find in the cache) every VM kernel of ``kernels``, one at a time so the apt
    state is never shared between threads; returns the ones that cannot be had (their cells
    become ERROR with the reason when the run reaches them)."""
    from .kernels.fetch import KernelUnavailable, fetch_kernel
    missing = []
    for name in kernels:
        if name in ("host", "local"):
            continue
        start = time.monotonic()
        try:
            image = fetch_kernel(name, refresh=refresh)
            echo("kernel %s: %s (%s) ready in %.1fs" % (name, image.release, image.package,
                                                        time.monotonic() - start), err=True)
        except KernelUnavailable as err:
            echo("kernel %s: %s" % (name, err), err=True)
            missing.append(name)
    return missing


@click.group("kernels")
def kernels_group() -> None:
    """The kernel catalogue (vms/kernels.toml)."""


@kernels_group.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--refresh", is_flag=True, help="Ask apt for newer builds instead of using the cache.")
def kernels_fetch_cmd(names: Sequence[str], refresh: bool) -> None:
    """Download and cache Debian kernels (default: every catalogue entry) for offline runs."""
    wanted = list(names) or [n for n in catalogue_kernels() if n != "host"]
    missing = prefetch(wanted, refresh=refresh)
    if missing:
        raise click.exceptions.Exit(1)


@kernels_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list: name, kind, suite, description, cached.")
def kernels_list_cmd(as_json: bool = False) -> None:
    """The catalogue, with what is in the cache (nothing is downloaded)."""
    from tabulate import tabulate

    from .kernels.cache import kernels_dir, read_json
    from .kernels.catalogue import load_catalogue
    index = (read_json(kernels_dir() / "index.json", {}) or {}).get("entries", {})
    rows, items = [], []
    for entry in load_catalogue().values():
        cached = index.get(entry.name, {})
        state = "%s (%s)" % (cached["release"], cached.get("version", "")) if cached else (
            "running: %s" % os.uname().release if entry.kind == "host" else "not fetched")
        rows.append((entry.name, entry.kind, entry.suite or "", entry.description, state))
        items.append({"name": entry.name, "kind": entry.kind, "suite": entry.suite or None,
                      "description": entry.description, "cached": bool(cached) or entry.kind == "host",
                      "release": cached.get("release") or (os.uname().release if entry.kind == "host" else None),
                      "version": cached.get("version")})
    if as_json:
        import json
        click.echo(json.dumps(items, indent=2, sort_keys=True))
        return
    click.echo(tabulate(rows, headers=["kernel", "kind", "suite", "description", "cached"]))


@click.group("vm")
def vm_group() -> None:
    """Boot a catalogue kernel under qemu by hand."""


@vm_group.command("shell")
@click.argument("kernel")
@click.option("-p", "--profile", "profile_exprs", multiple=True,
              help="Attach a disk per matching filesystem profile (-k style; default: all block profiles).")
@click.option("--keep", is_flag=True, help="Leave the VM running after the shell exits.")
def vm_shell_cmd(kernel: str, profile_exprs: Sequence[str], keep: bool) -> None:
    """Boot KERNEL with one disk per profile and open a root shell in it.

    Inside, the project is at the same path as here and `python3 -m overlaylab.agent run
    --profile ext4 --device ext4=/dev/vdX` reproduces a cell; `lsblk -o NAME,SERIAL` shows which
    disk belongs to which profile. The VM is torn down when the shell exits.
    """
    from .lab.profiles import load_profiles, select_profiles
    from .providers.qemu import QemuProvider
    profiles = select_profiles(load_profiles(), list(profile_exprs) or None)
    disks = [(p.name, p.size_mib) for p in profiles.values() if p.kind != "tmpfs"]
    click.echo("booting %s with disks %s ..." % (kernel, ", ".join(n for n, _ in disks) or "none"), err=True)
    try:
        with QemuProvider().up(kernel, disks, keep=keep) as session:
            click.echo("kernel %s (%s, booted in %.1fs); disks: %s" % (
                session.kernel_release, session.accel, session.boot_seconds,
                ", ".join("%s=%s" % kv for kv in sorted(session.disks.items())) or "none"), err=True)
            rc = subprocess.call(["ssh", "-F", session.ssh_config, "-p", str(session.ssh_port),
                                  "-t", "root@127.0.0.1"])
            if keep:
                click.echo("left running: ssh -F %s -p %d root@127.0.0.1" % (session.ssh_config, session.ssh_port),
                           err=True)
    except Exception as err:  # a VM that does not boot: say why in one line, keep the console
        raise click.ClickException(str(err)) from None
    raise click.exceptions.Exit(rc)


COMMANDS = [kernels_group, vm_group]
