"""Which cell a guest was running when it died: a mark per cell on the kernel's console.

The agent's ``start`` record travels over ssh. A guest that panics a moment later (sysrq
``c``, a BUG in the cell's first system call) can go down with those bytes still unsent in
sshd's socket, and the runner would then blame the profile's set-up. The kernel's console,
a serial port that the host logs to a file, is flushed on panic (kernel/panic.c, ``panic()``
calls ``console_flush_on_panic()``). So an agent the runner asks to (``run --console-marks``,
for targets whose console it reads) also logs each cell's start to ``/dev/kmsg`` at
KERN_NOTICE. The lab's guests show that level on the console (``loglevel=6``,
:data:`overlaylab.vm.qemu.DEFAULT_APPEND`). After a crash, the runner takes the last mark
from the console (:func:`last_mark`). The agent's own kernel-log reader leaves these lines
out of every cell's evidence (:func:`is_mark`): they are not the kernel's.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Tuple

PREFIX = "overlaylab-cell:"
#: a console line: optional "[    7.029343] " timestamp, then the mark; profile, scenario and
#: engine names have no spaces
_MARK_RE = re.compile(r"overlaylab-cell: (\S+) (\S+) (\S+)\s*$")


def message(profile: str, scenario: str, engine: str) -> str:
    return "%s %s %s %s" % (PREFIX, profile, scenario, engine)


def write(profile: str, scenario: str, engine: str) -> None:
    """Log the mark, or nothing where ``/dev/kmsg`` cannot be written (then the stream's
    ``start`` record is all the runner has).

    Opened per mark: each open of /dev/kmsg gets its own rate limit, 10 lines per 5 s unless
    ``printk.devkmsg=on`` (kernel/printk/printk.c, ``devkmsg_open()`` and
    ``devkmsg_write()``). One descriptor kept open for a whole run would lose marks."""
    try:
        fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, ("<5>%s\n" % message(profile, scenario, engine)).encode("utf-8", "replace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def is_mark(line: str) -> bool:
    """A kernel log line (with or without its timestamp) that is one of these marks."""
    return PREFIX in line and _MARK_RE.search(line) is not None


def last_mark(console: Iterable[str]) -> Optional[Tuple[str, str, str]]:
    """(profile, scenario, engine) of the last mark on a console, or None."""
    found = None
    for line in console:
        if PREFIX in line:
            m = _MARK_RE.search(line)
            if m:
                found = (m.group(1), m.group(2), m.group(3))
    return found
