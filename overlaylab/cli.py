"""The ``overlaylab`` command line. Each group lives in the module of its concept."""
from __future__ import annotations

import click

from . import __version__
from .cleanup_cli import cleanup_cmd
from .driver_cli import driver
from .goerrors import safe_text
from .lab_cli import COMMANDS as LAB_COMMANDS
from .reports_cli import COMMANDS as REPORT_COMMANDS
from .vagrant_cli import COMMANDS as VAGRANT_COMMANDS
from .vm_cli import COMMANDS as VM_COMMANDS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="overlaylab")
def main() -> None:
    """overlaylab: Docker 1.10.3's overlay graph driver in Python, and a lab that runs it on
    many kernels and backing filesystems."""


main.add_command(driver)
main.add_command(cleanup_cmd)
for _command in LAB_COMMANDS + REPORT_COMMANDS + VM_COMMANDS + VAGRANT_COMMANDS:
    main.add_command(_command)


def _escape_error_lines(group: click.Group) -> None:
    """Error lines (``Error: …``) with control characters escaped: a file name or a bundle's
    text must not fake lines or send escape sequences to the terminal."""
    invoke = group.invoke

    def guarded(ctx: click.Context):
        try:
            return invoke(ctx)
        except click.ClickException as err:
            err.message = safe_text(str(err.message))
            raise
    group.invoke = guarded  # type: ignore[method-assign]


_escape_error_lines(main)


if __name__ == "__main__":  # pragma: no cover
    main()
