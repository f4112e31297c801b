"""Log records of a logger, kept as ``LEVEL logger: message`` lines: the driver's own words as
evidence for a probe or a scenario cell (the port logs as moby's logrus calls did)."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, List


class LogCapture(logging.Handler):
    """Collects log records as ``LEVEL logger: message`` lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append("%s %s: %s" % (record.levelname, record.name, record.getMessage()))


@contextlib.contextmanager
def capture_log(name: str) -> Iterator[LogCapture]:
    """``with capture_log("overlaylab.graphdriver") as cap:`` collects what that logger (and
    its children) log in the block, debug lines included: the logger is set to DEBUG for the
    block unless it already lets them through, and gets its own level back after."""
    logger = logging.getLogger(name)
    capture = LogCapture()
    old_level = logger.level
    logger.addHandler(capture)
    if logger.getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
