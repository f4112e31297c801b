"""One fold of a run: ``show`` prints the tables ``run`` printed, also after ``--repeat``."""
from __future__ import annotations

from .conftest import cli


def _tables(stdout: str) -> str:
    """What run and show share: everything before run's own trailer (reports, run line)."""
    return stdout.split("\nreports: ")[0].rstrip()


def test_show_after_repeat_prints_the_tables_run_printed(lab):
    shown = cli(["show", lab.repeat], env=lab.env)
    assert shown.returncode == 0, shown.stderr
    assert "Repeated 2 times:" in shown.stdout
    assert _tables(shown.stdout) == _tables(lab.repeat_out.stdout)


def test_show_of_a_plain_run_prints_the_tables_run_printed(lab):
    shown = cli(["show", lab.plain], env=lab.env)
    assert shown.returncode == 0, shown.stderr
    assert "Repeated" not in shown.stdout
    assert _tables(shown.stdout) == _tables(lab.plain_out.stdout)
