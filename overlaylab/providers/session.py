"""What a provider's ``up()`` yields: a :class:`Session` on one target.

The runner talks to every target through this protocol only (testinfra-backend style: the
local host, a qemu guest, a Vagrant box), and the agent's command line is built once, by
:func:`agent_command`.
"""
from __future__ import annotations

import shlex
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, runtime_checkable

#: the module a target runs: ``python -m overlaylab.agent ARGS``
AGENT_MODULE = "overlaylab.agent"


def agent_command(args: Sequence[str], python: str = "python3", env: Optional[Mapping[str, str]] = None,
                  sudo: bool = False) -> str:
    """The shell command that runs the agent with ``args`` on a target: ``[sudo -n] [env K=V ...]
    PYTHON -m overlaylab.agent ARGS``, every word quoted."""
    words = ["sudo -n"] if sudo else []
    if env:
        words.append("env " + " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in env.items()))
    words.append("%s -m %s" % (shlex.quote(python), AGENT_MODULE))
    return " ".join(words) + " " + " ".join(shlex.quote(a) for a in args)


@runtime_checkable
class Session(Protocol):
    """One target, up. ``disks`` maps a profile to the block device made for it in the target
    (empty where the agent makes loop devices itself); ``host`` is the testinfra host (None for
    a session that cannot stream output); ``provider`` names the provider that made the session
    ("" lets the runner use the provider's own name)."""

    provider: str
    host: Any
    kernel_release: str
    disks: Dict[str, str]
    accel: Optional[str]
    boot_seconds: float
    boot_retries: List[str]
    console_log: Optional[str]

    def run(self, command: str, timeout: float = 300.0) -> Any:
        """Run a shell command on the target (``.rc``, ``.stdout``, ``.stderr``), killed at ``timeout``."""

    def agent_command(self, args: Sequence[str]) -> str:
        """The shell command that runs the agent with ``args`` on this target."""

    def close(self) -> None:
        """Release what the session holds; the provider's ``up()`` calls it on the way out
        (calling it again does nothing)."""

    #: the booted kernel image (``to_json()``: its Debian package, version, config), or None
    kernel_image: Any
    #: whether :meth:`restart` can boot the target again after its kernel died (a VM)
    restartable: bool

    def restart(self) -> float:
        """Boot the target again (seconds to ready); only where ``restartable``."""

    def exited(self, timeout: float) -> bool:
        """Whether the target's machine is gone (a VM whose process exited), waiting up to ``timeout``."""


class SessionMethods:
    """The methods of :class:`Session` most targets share (the dataclass sessions declare the
    attributes themselves): the agent with ``agent_python`` and ``agent_env``; nothing to close."""

    def agent_command(self, args: Sequence[str]) -> str:
        return agent_command(args, getattr(self, "agent_python", "python3"), getattr(self, "agent_env", None))

    def close(self) -> None:
        pass

    kernel_image: Any = None
    restartable = False

    def restart(self) -> float:
        raise NotImplementedError("this target cannot be booted again")

    def exited(self, timeout: float) -> bool:
        return False


class SessionBase(SessionMethods):
    """A :class:`Session` with defaults for the parts a target may not have (no VM, no console):
    what a session that is not a dataclass (a stub, a plain object) starts from."""

    provider: str = ""
    host: Any = None
    accel: Optional[str] = None
    boot_seconds: float = 0.0
    boot_retries: List[str] = []
    console_log: Optional[str] = None
    agent_python: str = "python3"
    agent_env: Dict[str, str] = {}
