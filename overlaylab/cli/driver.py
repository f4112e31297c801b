"""``overlaylab driver``: the graph driver by hand, for people filing bug reports.

Each subcommand is one driver call on a home directory. Reference counts live in memory, so a
``mount`` in one process and an ``unmount`` in the next take the reference's "Put on a
non-mounted device" path, which unmounts the merged dir anyway — the same as a restarted daemon.

Human output quotes file names that hold control characters, undecodable bytes or quotes the
way Go's ``%q`` does (plain names stay as they are), and error and log lines escape such
characters, so no name can fake an output line or send escape sequences to the terminal;
``--json`` output keeps names exact. SIGTERM is handled like SIGINT (Ctrl-C): the running
call cleans up what it made and the command exits 130 (SIGINT) or 143 (SIGTERM).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import List, Optional

import click

from ..goerrors import quote_name, safe_text
from ..idtools import IDMap


def _parse_map(spec: str) -> IDMap:
    try:
        container_id, host_id, size = (int(x) for x in spec.split(":"))
    except ValueError:
        raise click.BadParameter("expected CONTAINER_ID:HOST_ID:SIZE, got %r" % spec) from None
    return IDMap(container_id, host_id, size)


class DriverContext:
    def __init__(self, home: str, uid_maps: Optional[List[IDMap]], gid_maps: Optional[List[IDMap]],
                 options: Optional[List[str]] = None):
        self.home = home
        self.uid_maps = uid_maps
        self.gid_maps = gid_maps
        self.options = list(options or ())
        self._driver = None

    @property
    def driver(self):
        if self._driver is None:
            from ..hints import DRIVER_ROOT_WHY
            from .util import require_root
            from ..graphdriver import overlay
            require_root("overlaylab driver", DRIVER_ROOT_WHY)
            # The daemon makes its root (the home's parent) before graphdriver.New; so do we.
            os.makedirs(os.path.dirname(self.home), 0o701, exist_ok=True)
            try:
                self._driver = overlay.init(self.home, self.options, self.uid_maps, self.gid_maps)
            except Exception as err:
                raise RuntimeError("init %s: %s" % (self.home, err)) from None
        return self._driver


def _fail(err: BaseException) -> "click.exceptions.Exit":
    # One line, and no raw control character of a file name reaches the terminal. An id the
    # driver refuses is the caller's mistake: a usage error (2); what the driver answered, 1.
    from ..graphdriver.overlay import InvalidLayerID
    click.echo("overlaylab: error: %s" % safe_text(str(err).rstrip("\n")), err=True)
    return click.exceptions.Exit(2 if isinstance(err, InvalidLayerID) else 1)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so the same clean-ups run."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _run(fn):
    try:
        return fn()
    except (click.exceptions.Exit, click.ClickException):
        raise
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM: the call has cleaned up on its way out
        term = isinstance(err, Terminated)
        click.echo("overlaylab: %s" % ("terminated" if term else "interrupted"), err=True)
        raise click.exceptions.Exit(143 if term else 130) from None
    except (OSError, ValueError, RuntimeError, Exception) as err:  # one line, never a traceback
        raise _fail(err) from None


class _SafeFormatter(logging.Formatter):
    """Log lines with control characters escaped; warnings as ``overlaylab: warning: …``."""

    def __init__(self, verbose: bool):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if not self.verbose and record.levelno >= logging.WARNING:
            return "overlaylab: %s: %s" % (record.levelname.lower(), safe_text(record.getMessage()))
        return safe_text(super().format(record))


def _log_to_stderr(ctx: click.Context, verbose: bool) -> None:
    """The driver's log lines on stderr for this command (undone when it ends)."""
    logger = logging.getLogger("overlaylab")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter(verbose))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    ctx.call_on_close(undo)


@click.group("driver")
@click.option("--home", envvar="OVERLAYLAB_HOME", required=True, type=click.Path(),
              help="Driver home (the reference's <root>/overlay). Env: OVERLAYLAB_HOME.")
@click.option("--uid-map", "uid_maps", multiple=True, help="CONTAINER_ID:HOST_ID:SIZE (repeatable).")
@click.option("--gid-map", "gid_maps", multiple=True, help="CONTAINER_ID:HOST_ID:SIZE (repeatable).")
@click.option("--storage-opt", "options", multiple=True, metavar="KEY=VALUE",
              help="Driver option (repeatable). The reference ignores all; the port knows "
                   "overlay.safe_apply=true (copy a file the parent shares before a hard-link "
                   "entry changes it; README: 'Where the port differs').")
@click.option("-v", "--verbose", is_flag=True, help="Show the driver's debug log lines.")
@click.pass_context
def driver(ctx: click.Context, home: str, uid_maps, gid_maps, options, verbose: bool) -> None:
    """Drive the overlay graph driver on HOME by hand."""
    _log_to_stderr(ctx, verbose)
    try:
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        pass
    else:
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, old))
    ctx.obj = DriverContext(
        os.path.abspath(home),
        [_parse_map(m) for m in uid_maps] or None,
        [_parse_map(m) for m in gid_maps] or None,
        list(options),
    )


@driver.command("create")
@click.argument("layer_id")
@click.option("--parent", default="", help="Parent layer id (none: a base layer).")
@click.option("--mount-label", default="")
@click.pass_obj
def create_cmd(dc: DriverContext, layer_id: str, parent: str, mount_label: str) -> None:
    """Create an empty layer LAYER_ID on top of --parent."""
    _run(lambda: dc.driver.create(layer_id, parent, mount_label))
    click.echo(quote_name(layer_id))


@driver.command("mount")
@click.argument("layer_id")
@click.option("--mount-label", default="")
@click.pass_obj
def mount_cmd(dc: DriverContext, layer_id: str, mount_label: str) -> None:
    """Get: mount the layer (Shape O) or resolve its root (Shape R); print the path."""
    click.echo(quote_name(_run(lambda: dc.driver.get(layer_id, mount_label))))


@driver.command("unmount")
@click.argument("layer_id")
@click.pass_obj
def unmount_cmd(dc: DriverContext, layer_id: str) -> None:
    """Put: release the layer (unmounts its merged dir)."""
    _run(lambda: dc.driver.put(layer_id))


@driver.command("remove")
@click.argument("layer_id")
@click.pass_obj
def remove_cmd(dc: DriverContext, layer_id: str) -> None:
    """Remove the layer's directory (fails with EBUSY while mounted)."""
    _run(lambda: dc.driver.remove(layer_id))


@driver.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_cmd(dc: DriverContext, as_json: bool) -> None:
    """List layers: id, shape (R = root layer, O = overlay layer), lower id, mount state."""
    from ..graphdriver import overlay
    # The layout alone, without Init: listing a home must not make it (nor need root).
    rows = [(layer.id, layer.shape, "?" if layer.lower_id is None else layer.lower_id,
             "mounted" if layer.mounted else "")
            for layer in _run(lambda: overlay.OverlayDriver(dc.home).layers())]
    if as_json:
        click.echo(json.dumps([dict(zip(("id", "shape", "lower_id", "state"), r)) for r in rows], indent=2))
        return
    from tabulate import tabulate
    shown = [(quote_name(name), shape, quote_name(lower), state) for name, shape, lower, state in rows]
    click.echo(tabulate(shown, headers=["layer", "shape", "lower-id", "state"], disable_numparse=True))


@driver.command("metadata")
@click.argument("layer_id")
@click.pass_obj
def metadata_cmd(dc: DriverContext, layer_id: str) -> None:
    """GetMetadata as JSON."""
    click.echo(json.dumps(_run(lambda: dc.driver.get_metadata(layer_id)), indent=2, sort_keys=True))


@driver.command("status")
@click.pass_obj
def status_cmd(dc: DriverContext) -> None:
    """Status rows, as `docker info` prints them."""
    for key, value in _run(lambda: dc.driver.status()):
        click.echo("%s: %s" % (key, safe_text(str(value))))


@driver.command("changes")
@click.argument("layer_id")
@click.option("--parent", default="")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {path, kind}: paths exact, unquoted.")
@click.pass_obj
def changes_cmd(dc: DriverContext, layer_id: str, parent: str, as_json: bool) -> None:
    """List changes (as `docker diff`: C/A/D and the path), sorted by path.

    A path with a newline, a control character, an undecodable byte or a quote is printed
    quoted and escaped as Go's %q does ("a\\nb"), so every line is one change."""
    changes = sorted(_run(lambda: dc.driver.changes(layer_id, parent)), key=lambda c: (c.path, int(c.kind)))
    if as_json:
        click.echo(json.dumps([{"path": c.path, "kind": c.kind.letter} for c in changes], indent=2))
        return
    for change in changes:
        click.echo("%s %s" % (change.kind.letter, quote_name(change.path)))


@driver.command("diff-size")
@click.argument("layer_id")
@click.option("--parent", default="")
@click.pass_obj
def diff_size_cmd(dc: DriverContext, layer_id: str, parent: str) -> None:
    """DiffSize in bytes."""
    click.echo(_run(lambda: dc.driver.diff_size(layer_id, parent)))


@driver.command("export")
@click.argument("layer_id")
@click.option("--parent", default="")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Tar file to write ('-': stdout).")
@click.pass_obj
def export_cmd(dc: DriverContext, layer_id: str, parent: str, output: str) -> None:
    """Diff: write the layer's changes against --parent as an uncompressed tar."""
    def go():
        stream = dc.driver.diff(layer_id, parent)
        try:
            out = sys.stdout.buffer if output == "-" else open(output, "wb")
            try:
                while True:
                    chunk = stream.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
            finally:
                if out is not sys.stdout.buffer:
                    out.close()
        finally:
            stream.close()
    _run(go)


@driver.command("apply")
@click.argument("layer_id")
@click.argument("tar_file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--parent", default="")
@click.pass_obj
def apply_cmd(dc: DriverContext, layer_id: str, tar_file: str, parent: str) -> None:
    """ApplyDiff: extract an uncompressed layer tar into LAYER_ID; print its size.

    Warns (on stderr) about entries the reference applies unsafely: a hard link to a file the
    parent layer shares (it changes the parent's file too; --storage-opt overlay.safe_apply=true
    avoids it) and a symlink that points above the layer root."""
    def go():
        if tar_file == "-":
            # Unbuffered: after an interruption the feeding thread may stay blocked in a read
            # of stdin, and a buffered reader's lock would then abort the interpreter's exit.
            try:
                fd = sys.stdin.fileno()
            except (OSError, ValueError):  # a replaced stdin (tests): use it as it is
                return dc.driver.apply_diff(layer_id, parent, sys.stdin.buffer)
            with open(fd, "rb", buffering=0, closefd=False) as f:
                return dc.driver.apply_diff(layer_id, parent, f)
        with open(tar_file, "rb") as f:
            return dc.driver.apply_diff(layer_id, parent, f)
    click.echo(_run(go))
