"""The exit codes of every ``overlaylab`` command, in one place (like pytest's ``ExitCode``).

| code | name               | meaning                                                                |
|------|--------------------|------------------------------------------------------------------------|
| 0    | OK                 | every cell as expected (or: reproduced, no regression)                 |
| 1    | NOT_AS_EXPECTED    | a cell that ran is not as expected, or a regression against a baseline |
| 2    | USAGE              | bad command line or input: nothing was run, no run recorded            |
| 3    | INFRASTRUCTURE     | the lab's own infrastructure failed (ERROR cells, missing cells)       |
| 130  | INTERRUPTED        | Ctrl-C / SIGTERM: torn down, the run is marked interrupted             |

When a run has both, 1 wins over 3: a cell that ran and misbehaved is news whatever else
broke, while 3 alone means "nothing is known to be wrong, but the lab could not find out".
"""
from __future__ import annotations

import enum
from typing import List, Tuple


class ExitCode(enum.IntEnum):
    OK = 0
    NOT_AS_EXPECTED = 1
    USAGE = 2
    INFRASTRUCTURE = 3
    INTERRUPTED = 130


OK = ExitCode.OK
NOT_AS_EXPECTED = ExitCode.NOT_AS_EXPECTED
USAGE = ExitCode.USAGE
INFRASTRUCTURE = ExitCode.INFRASTRUCTURE
INTERRUPTED = ExitCode.INTERRUPTED

MEANINGS: List[Tuple[ExitCode, str]] = [
    (OK, "every cell as expected (compare: no regression; repro: reproduced)"),
    (NOT_AS_EXPECTED, "a cell not as expected, or a regression against the baseline"),
    (USAGE, "usage error: bad option, expression, kernel, profile or scenario; nothing was run"),
    (INFRASTRUCTURE, "the lab's own infrastructure failed (ERROR cells: timeout, crash, a target that did not come up)"),
    (INTERRUPTED, "interrupted (Ctrl-C, SIGTERM); everything torn down, the run marked interrupted"),
]


def epilog() -> str:
    """The table as plain text, for ``--help`` epilogs (click keeps lines after ``\\b``)."""
    lines = ["\b", "Exit status:"]
    lines += ["  %-4d %s" % (int(code), text) for code, text in MEANINGS]
    lines.append("1 wins over 3 when both apply.")
    return "\n".join(lines)
