"""What every ``overlaylab`` command shares: one-line errors, "did you mean", the root check,
and the top-level handler that turns whatever escapes a command into one line and an exit code
from :mod:`overlaylab.exitcodes`."""
from __future__ import annotations

import difflib
import errno
import os
import sys
from typing import Any, Iterable, List, Optional

import click

from ..exitcodes import INFRASTRUCTURE, INTERRUPTED, USAGE
from ..goerrors import safe_text

DEBUG_ENV = "OVERLAYLAB_DEBUG"


def _edits(a: str, b: str) -> int:
    """Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> List[str]:
    """The closest of ``candidates`` (difflib's pick, ranked by fewest edits, then by equal
    length: ``debian-6.2`` -> ``debian-6.1`` before ``debian-6.12``)."""
    close = difflib.get_close_matches(word, list(candidates), n=max(n, 6), cutoff=0.6)
    close.sort(key=lambda c: (_edits(word, c), abs(len(c) - len(word))))
    return close[:n]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean debian-6.1?)`` or ``""``."""
    close = close_matches(word, candidates)
    return " (did you mean %s?)" % " or ".join(close) if close else ""


class HintedChoice(click.Choice):
    """A :class:`click.Choice` whose error names the closest choices."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail("%r is not one of %s%s" % (value, ", ".join(self.choices),
                                                 did_you_mean(str(value), self.choices)), param, ctx)


ROOT_WHY = ("the lab makes real filesystems: it needs root to set up loop devices, run mkfs on them, "
            "mount them and overlay mounts on top (and to share / with qemu guests)")


DRIVER_ROOT_WHY = ("the driver mounts overlays, chowns layers to the mapped root ids and applies layers "
                   "chrooted, as dockerd does")


def require_root(command: str, why: str = ROOT_WHY) -> None:
    """Refuse up front, in one line, when not root (instead of a losetup error deep inside)."""
    if os.geteuid() != 0:
        raise click.UsageError("%s needs root (running as uid %d): %s; run it as root, e.g. with sudo"
                               % (command, os.geteuid(), why))


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
