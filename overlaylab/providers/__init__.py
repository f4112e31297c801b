"""Providers bring a target up (the host kernel, a qemu VM, a Vagrant box) as a testinfra host.

Every provider has ``up(kernel, disks, keep=False)``, a context manager yielding a session with
``.host`` (testinfra), ``.run(command, timeout)``, ``.disks`` (profile -> block device in the
target, empty where the agent makes loop devices itself), ``.kernel_release`` and, where it
applies, ``.accel``, ``.boot_seconds`` and ``.console_log``. Modules are imported lazily, as
testinfra does with its backends.
"""
from __future__ import annotations

import importlib

PROVIDERS = {
    "local": "overlaylab.providers.local:LocalProvider",
    "qemu": "overlaylab.providers.qemu:QemuProvider",
    "vagrant": "overlaylab.providers.vagrant:VagrantProvider",
}


def get_provider_class(name: str):
    try:
        module, _, cls = PROVIDERS[name].partition(":")
    except KeyError:
        raise ValueError("unknown provider %r (have: %s)" % (name, ", ".join(sorted(PROVIDERS)))) from None
    return getattr(importlib.import_module(module), cls)
