"""The local provider: the host's own kernel, no VM.

The agent runs through testinfra's ``local://`` backend with this interpreter and this
project on ``PYTHONPATH``; it makes each profile on a loop device itself.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple

import testinfra

from .transport import run_with_timeout

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class LocalSession:
    host: object
    kernel_release: str
    disks: Dict[str, str] = field(default_factory=dict)
    accel: str = "none"
    boot_seconds: float = 0.0
    console_log: Optional[str] = None
    agent_python: str = sys.executable
    agent_env: Dict[str, str] = field(default_factory=lambda: {"PYTHONPATH": PROJECT_ROOT})
    provider: str = "local"  # who ran it: what the runner records (the "auto" provider is shared)

    def run(self, command: str, timeout: float = 300.0):
        return run_with_timeout(self.host, command, timeout)

    def agent_command(self, args: Sequence[str]) -> str:
        env = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in self.agent_env.items())
        return "env %s %s -m overlaylab.agent %s" % (env, shlex.quote(self.agent_python),
                                                      " ".join(shlex.quote(a) for a in args))


class LocalProvider:
    name = "local"

    @contextlib.contextmanager
    def up(self, kernel: str = "host", disks: Sequence[Tuple[str, int]] = (), keep: bool = False) -> Iterator[LocalSession]:
        if kernel not in ("host", "local"):
            raise ValueError("the local provider only runs the host kernel, not %r" % kernel)
        start = time.monotonic()
        session = LocalSession(host=testinfra.get_host("local://"), kernel_release=platform.release())
        session.boot_seconds = time.monotonic() - start
        yield session
