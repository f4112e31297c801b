"""The ``overlaylab`` command line. Each group lives in the module of its concept."""
from __future__ import annotations

import click

from .. import __version__
from .cleanup import cleanup_cmd
from .util import run_main
from .driver import driver
from ..exitcodes import epilog
from .lab import COMMANDS as LAB_COMMANDS
from .reports import COMMANDS as REPORT_COMMANDS
from .vagrant import COMMANDS as VAGRANT_COMMANDS
from .vm import COMMANDS as VM_COMMANDS


class _Main(click.Group):
    """The top-level group: one-line errors and the documented exit codes (:mod:`.cliutil`)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        run_main(self, args, prog_name, complete_var=complete_var, **extra)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]}, epilog=epilog())
@click.version_option(__version__, prog_name="overlaylab")
def main() -> None:
    """overlaylab: Docker 1.10.3's overlay graph driver in Python, and a lab that runs it on
    many kernels and backing filesystems.

    Errors are one line; OVERLAYLAB_DEBUG=1 adds the traceback of an unexpected one.
    """


main.add_command(driver)
main.add_command(cleanup_cmd)
for _command in LAB_COMMANDS + REPORT_COMMANDS + VM_COMMANDS + VAGRANT_COMMANDS:
    main.add_command(_command)



if __name__ == "__main__":  # pragma: no cover
    main()
