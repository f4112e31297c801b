"""Stand-ins for a target in the runner's tests: no machine, the agent's output canned."""
from __future__ import annotations

from overlaylab.providers.session import SessionBase


class AgentResult:
    """What ``Session.run`` answers: the exit status and the agent's output."""

    def __init__(self, rc: int, stdout: str = "", stderr: str = ""):
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


class FakeSession(SessionBase):
    """A target that is up; a test's subclass answers the agent's commands in ``run``."""

    kernel_release = "9.9-test"
    disks: dict = {}
