"""``overlaylab kernels fetch|list`` and ``overlaylab vm up|list|down|shell``: kernels and VMs by hand."""
from __future__ import annotations

import contextlib
import subprocess
import time
from typing import Sequence

import click

from ..kernels.catalogue import render_catalogue
from ..kernels.prefetch import prefetch
from ..lab.matrix import catalogue_kernels


@click.group("kernels")
def kernels_group() -> None:
    """The kernel catalogue (vms/kernels.toml)."""


@kernels_group.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--refresh", is_flag=True, help="Ask apt for newer builds instead of using the cache.")
def kernels_fetch_cmd(names: Sequence[str], refresh: bool) -> None:
    """Download and cache Debian kernels (default: every catalogue entry) for offline runs."""
    wanted = list(names) or [n for n in catalogue_kernels() if n != "host"]
    missing = prefetch(wanted, echo=click.echo, refresh=refresh)
    if missing:
        raise click.exceptions.Exit(1)


@kernels_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list: name, kind, suite, description, cached.")
def kernels_list_cmd(as_json: bool = False) -> None:
    """The catalogue, with what is in the cache (nothing is downloaded)."""
    click.echo(render_catalogue(as_json))


@click.group("vm")
def vm_group() -> None:
    """Boot catalogue kernels under qemu by hand: VMs that stay up in the background."""


def _profile_disks(profile_exprs: Sequence[str]):
    from ..agent.profiles import load_profiles
    from ..lab.matrix import select_profiles
    profiles = select_profiles(load_profiles(), list(profile_exprs) or None)
    if not profiles:
        raise click.UsageError("no profile matches %s" % " / ".join(profile_exprs))
    return [(p.name, p.size_mib) for p in profiles.values() if p.kind != "tmpfs"]


def _check_kernel(kernel: str) -> None:
    from ..hints import close_matches
    from ..kernels.catalogue import load_catalogue
    names = [n for n in load_catalogue() if n != "host"]
    if kernel not in names:
        close = close_matches(kernel, names, n=1)
        raise click.UsageError("unknown kernel %r%s (the catalogue has: %s)" % (
            kernel, "; did you mean %s?" % close[0] if close else "", ", ".join(names)))


def _describe(state) -> str:
    disks = ", ".join("%s=%s" % kv for kv in sorted((state.get("disks") or {}).items())) or "none"
    return "%s up: kernel %s (%s, booted in %.1fs), pid %s; disks: %s" % (
        state.get("kernel"), state.get("kernel_release"), state.get("accel"), state.get("boot_seconds") or 0.0,
        state.get("pid"), disks)


def _start(kernel: str, profile_exprs: Sequence[str], hard_timeout: float):
    from ..vm.state import VMStateError, start_vm
    _check_kernel(kernel)
    disks = _profile_disks(profile_exprs)
    click.echo("booting %s with disks %s ..." % (kernel, ", ".join(n for n, _ in disks) or "none"), err=True)
    try:
        return start_vm(kernel, disks, hard_timeout=hard_timeout,
                        on_line=lambda line: click.echo("  " + line.split(" ", 1)[-1], err=True))
    except VMStateError as err:
        raise click.ClickException(str(err)) from None


_PROFILE_OPT = click.option("-p", "--profile", "profile_exprs", multiple=True,
                            help="Attach a disk per matching filesystem profile (-k style; default: all block profiles).")
_TIMEOUT_OPT = click.option("--hard-timeout", type=click.FloatRange(min=1), default=4 * 3600.0, show_default=True,
                            help="Seconds after which the VM is killed even if nobody stopped it.")


@vm_group.command("up")
@click.argument("kernel")
@_PROFILE_OPT
@_TIMEOUT_OPT
@click.option("--json", "as_json", is_flag=True, help="Print the VM's state as JSON.")
def vm_up_cmd(kernel: str, profile_exprs: Sequence[str], hard_timeout: float, as_json: bool) -> None:
    """Boot KERNEL with one disk per profile and leave it running in the background.

    Prints a testinfra host spec (`testinfra.get_host(SPEC)`, `pytest --hosts=SPEC`) and an ssh
    command. Inside, /dev/disk/by-profile/<profile> names each disk. `overlaylab vm list` shows
    it, `overlaylab vm down KERNEL` stops it (from any shell).
    """
    import json

    from ..vm.state import read_vm
    state = read_vm(kernel)
    if state is not None and state.get("status") == "up":
        click.echo("%s is already up" % kernel, err=True)
    else:
        state = _start(kernel, profile_exprs, hard_timeout)
    if as_json:
        click.echo(json.dumps(state, indent=1, sort_keys=True))
        return
    click.echo(_describe(state))
    click.echo("testinfra: %s" % state["spec"])
    click.echo("ssh:       %s" % state["ssh"])


@vm_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per running VM.")
def vm_list_cmd(as_json: bool) -> None:
    """The lab VMs running in the background (kernel, pid, port, host spec)."""
    import json

    from tabulate import tabulate

    from ..vm.state import list_vms
    vms = list_vms()
    if as_json:
        click.echo(json.dumps(vms, indent=1, sort_keys=True))
        return
    if not vms:
        click.echo("no lab VM is up")
        return
    rows = [(v.get("kernel"), v.get("kernel_release", ""), v.get("status"), v.get("pid"), v.get("port", ""),
             "%.0fs" % (time.time() - v["started_at"]) if v.get("started_at") else "", v.get("spec", ""))
            for v in vms]
    click.echo(tabulate(rows, headers=["kernel", "release", "status", "pid", "port", "up for", "testinfra spec"]))


@vm_group.command("down")
@click.argument("kernels", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Stop every lab VM.")
def vm_down_cmd(kernels: Sequence[str], all_: bool) -> None:
    """Stop the background VM of each KERNEL (or --all): qemu is killed, its files removed."""
    from ..vm.state import VMStateError, list_vms, stop_vm
    if all_ == bool(kernels):
        raise click.UsageError("name the kernels to stop, or give --all (not both)")
    names = [v["kernel"] for v in list_vms()] if all_ else list(kernels)
    failed = False
    for name in names:
        try:
            state = stop_vm(name)
            click.echo("%s down (pid %s)" % (name, state.get("pid")))
        except VMStateError as err:
            click.echo("error: %s" % err, err=True)
            failed = True
    if failed:
        raise click.exceptions.Exit(1)


@vm_group.command("shell")
@click.argument("kernel")
@_PROFILE_OPT
@_TIMEOUT_OPT
@click.option("--keep", is_flag=True, help="Leave the VM running after the shell exits (like `vm up`).")
def vm_shell_cmd(kernel: str, profile_exprs: Sequence[str], hard_timeout: float, keep: bool) -> None:
    """Open a root shell in KERNEL's VM, booting it first (as `vm up`) if it is not up.

    Inside, the project is at the same path as here and `python3 -m overlaylab.agent run
    --profile ext4 --device ext4=/dev/disk/by-profile/ext4` reproduces a cell. A VM this
    command booted is stopped when the shell exits, unless --keep; one that was already up
    stays up.
    """
    from ..vm.state import VMStateError, read_vm, stop_vm
    state = read_vm(kernel)
    booted = state is None or state.get("status") != "up"
    if booted:
        state = _start(kernel, profile_exprs, hard_timeout)
    click.echo(_describe(state), err=True)
    try:
        rc = subprocess.call(["ssh", "-F", state["ssh_config"], "-p", str(state["port"]), "-t", "root@127.0.0.1"])
    finally:
        if booted and not keep:
            with contextlib.suppress(VMStateError):
                stop_vm(kernel)
    if not booted or keep:
        click.echo("left running (overlaylab vm down %s):\n  testinfra: %s\n  ssh:       %s" % (
            kernel, state["spec"], state["ssh"]), err=True)
    raise click.exceptions.Exit(rc)


COMMANDS = [kernels_group, vm_group]
