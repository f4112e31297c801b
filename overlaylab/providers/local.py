"""The local provider: the host's own kernel, no VM.

The agent runs through testinfra's ``local://`` backend with this interpreter and this
project on ``PYTHONPATH``; it makes each profile on a loop device itself.
"""
from __future__ import annotations

import contextlib
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Iterator, Optional, Sequence, Tuple

import testinfra

from ..agent.bytecode import precompile
from ..paths import PROJECT_ROOT as _ROOT
from .session import SessionMethods
from .transport import run_with_timeout

PROJECT_ROOT = str(_ROOT)


@dataclass
class LocalSession(SessionMethods):
    host: object
    kernel_release: str
    disks: Dict[str, str] = field(default_factory=dict)
    accel: str = "none"
    boot_seconds: float = 0.0
    console_log: Optional[str] = None
    agent_python: str = sys.executable
    agent_env: Dict[str, str] = field(default_factory=lambda: {"PYTHONPATH": PROJECT_ROOT})
    boot_retries: List[str] = field(default_factory=list)
    provider: str = "local"  # who ran it: what the runner records (the "auto" provider is shared)

    def run(self, command: str, timeout: float = 300.0):
        return run_with_timeout(self.host, command, timeout)


class LocalProvider:
    name = "local"

    @contextlib.contextmanager
    def up(self, kernel: str = "host", disks: Sequence[Tuple[str, int]] = (), keep: bool = False) -> Iterator[LocalSession]:
        if kernel not in ("host", "local"):
            raise ValueError("the local provider only runs the host kernel, not %r" % kernel)
        start = time.monotonic()
        precompile()  # the agent's bytecode: no agent process compiles it again
        session = LocalSession(host=testinfra.get_host("local://"), kernel_release=platform.release())
        session.boot_seconds = time.monotonic() - start
        yield session
