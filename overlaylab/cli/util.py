"""What every ``overlaylab`` command shares: one-line errors, "did you mean", the root check,
and the top-level handler that turns whatever escapes a command into one line and an exit code
from :mod:`overlaylab.exitcodes`."""
from __future__ import annotations

import errno
import os
import sys
from typing import Any, Optional

import click

from ..lab.results import Run, RunFileError, load_run, resolve_run_dir

from ..exitcodes import INFRASTRUCTURE, INTERRUPTED, USAGE
from ..goerrors import safe_text
from ..hints import ROOT_WHY, did_you_mean, root_problem

DEBUG_ENV = "OVERLAYLAB_DEBUG"


class HintedChoice(click.Choice):
    """A :class:`click.Choice` whose error names the closest choices."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail("%r is not one of %s%s" % (value, ", ".join(self.choices),
                                                 did_you_mean(str(value), self.choices)), param, ctx)


def require_root(command: str, why: str = ROOT_WHY) -> None:
    """Refuse up front, in one line, when not root (instead of a losetup error deep inside)."""
    problem = root_problem(command, why)
    if problem:
        raise click.UsageError(problem)


class BadInput(click.UsageError):
    """A usage error in one line (``overlaylab CMD: error: ...``), exit status 2."""

    def __init__(self, message: str) -> None:
        # one line, whatever the cause's text holds: the CLI's error guard escapes control
        # characters (a newline shows as \n), so a hostile name cannot fake a second line
        super().__init__(str(message).strip())


def run_path(run_ref: str, reports_dir: Optional[str]) -> str:
    try:
        return resolve_run_dir(run_ref, reports_dir)
    except FileNotFoundError as err:
        raise BadInput(str(err)) from None


def load_run_checked(path: str, warn: bool = True) -> Run:
    """:func:`load_run`, a broken ``run.json`` a usage error naming it, and a warning on
    stderr naming ``results.jsonl`` and how many of its lines were skipped."""
    try:
        run = load_run(path)
    except RunFileError as err:
        raise BadInput(str(err)) from None
    if warn and run.skipped_lines:
        click.echo("warning: " + run.damage_note(), err=True)
    return run


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line(text: str) -> str:
    """One terminal line: a newline or an escape sequence that a file name, a bundle or an
    argument smuggled in shows escaped (``\\n``, ``\\x1b``), never raw."""
    return safe_text(text.strip())


def _usage_line(err: click.UsageError) -> str:
    where = err.ctx.command_path if err.ctx is not None else "overlaylab"
    return "%s: error: %s" % (where, _one_line(err.format_message()))


def run_main(group: click.Group, args=None, prog_name: Optional[str] = None, **kwargs: Any) -> None:
    """Run ``group`` with one-line errors and the documented exit codes; never returns."""
    try:
        rv = click.Group.main(group, args, prog_name or "overlaylab", standalone_mode=False, **kwargs)
    except click.UsageError as err:
        click.echo(_usage_line(err), err=True)
        sys.exit(USAGE)
    except click.ClickException as err:
        click.echo("overlaylab: error: %s" % _one_line(err.format_message()), err=True)
        sys.exit(err.exit_code)
    except click.Abort as err:
        sys.exit(INTERRUPTED if isinstance(err.__cause__, KeyboardInterrupt) else 1)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except OSError as err:
        if err.errno == errno.EPIPE:  # `overlaylab ... | head`
            sys.exit(0)
        _uncaught(err)
    except Exception as err:
        _uncaught(err)
    sys.exit(rv if isinstance(rv, int) else 0)


def _uncaught(err: Exception) -> None:
    """Bad input that no command turned into a message (a malformed TOML file, a broken JSON
    record...) is exit 2; anything else is the lab's own failure, exit 3. Either way one line,
    the traceback only with OVERLAYLAB_DEBUG=1."""
    if _debug():
        raise err
    text = _one_line(str(err)) or "(no message)"
    code = USAGE if isinstance(err, ValueError) else INFRASTRUCTURE
    click.echo("overlaylab: error: %s: %s (%s=1 shows the traceback)" % (type(err).__name__, text, DEBUG_ENV),
               err=True)
    sys.exit(code)
