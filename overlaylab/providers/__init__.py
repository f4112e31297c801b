"""Providers bring a target up (the host kernel, a qemu VM, a Vagrant box, a remote machine) as a
testinfra host.

Every provider has a ``name`` and ``up(kernel, disks, keep=False)``, a context manager yielding
a :class:`~overlaylab.providers.session.Session` (``.run(command, timeout)``,
``.agent_command(args)``, ``.kernel_release``, ``.disks``: profile -> block device in the
target, empty where the agent makes loop devices itself, ``.close()``, and the ``.provider``
that made it). ``PROVIDERS`` is the registry, name -> class; modules are imported lazily, as
testinfra does with its backends.
"""
from __future__ import annotations

import importlib
from typing import Any

PROVIDERS = {
    "auto": "overlaylab.providers.auto:AutoProvider",
    "local": "overlaylab.providers.local:LocalProvider",
    "qemu": "overlaylab.providers.qemu:QemuProvider",
    "ssh": "overlaylab.providers.ssh:SshProvider",  # made with the hosts of --hosts/--inventory
    "vagrant": "overlaylab.providers.vagrant:VagrantProvider",
}


def get_provider_class(name: str):
    try:
        module, _, cls = PROVIDERS[name].partition(":")
    except KeyError:
        raise ValueError("unknown provider %r (have: %s)" % (name, ", ".join(sorted(PROVIDERS)))) from None
    return getattr(importlib.import_module(module), cls)


def make_provider(name: str) -> Any:
    """A provider by its registry name."""
    provider = get_provider_class(name)()
    if not getattr(provider, "name", None):
        provider.name = name
    return provider


def provider_name(provider: Any, kernel: str) -> str:
    """Which provider runs (or was to run) ``kernel``: a provider that hands kernels on to
    others (``auto``) says so with ``provider_for(kernel)``; any other is its own ``name``."""
    provider_for = getattr(provider, "provider_for", None)
    if provider_for is not None:
        return provider_for(kernel)
    return getattr(provider, "name", "?")
