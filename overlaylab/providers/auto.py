"""``--provider auto``: the host kernel locally, every other kernel under qemu."""
from __future__ import annotations

import contextlib
from typing import Any, Dict


class AutoProvider:
    """``--provider auto``: the host kernel locally, every other kernel under qemu.

    Targets run in parallel threads, so nothing here changes per call: the session that
    :meth:`up` yields carries the name of the provider that made it (``session.provider``),
    and :meth:`provider_for` says which one a kernel goes to (for a target that never came up).
    """

    name = "auto"

    def __init__(self) -> None:
        self._providers: Dict[str, Any] = {}

    @staticmethod
    def provider_for(kernel: str) -> str:
        return "local" if kernel in ("host", "local") else "qemu"

    def _get(self, name: str):
        if name not in self._providers:
            from . import get_provider_class
            self._providers[name] = get_provider_class(name)()
        return self._providers[name]

    @contextlib.contextmanager
    def up(self, kernel: str, disks=(), keep: bool = False):
        name = self.provider_for(kernel)
        with self._get(name).up(kernel, disks=disks, keep=keep) as session:
            if not session.provider:
                session.provider = name
            yield session
