"""Remote machines as lab targets: ``--hosts`` specs and ``--inventory`` files, resolved.

The specs are pytest-testinfra's (``testinfra.get_host``): ``ssh://[USER@]HOST[:PORT]`` with
``?ssh_config=FILE&ssh_identity_file=FILE``, and ``ansible://PATTERN?ansible_inventory=FILE``
(a group, a host or a glob; ``--inventory FILE`` gives the file, and alone means
``ansible://all``). An Ansible inventory is read by Ansible itself — ``ansible-inventory
--list``, through testinfra's ``AnsibleRunner`` (``testinfra/utils/ansible_runner.py``), which
also turns each host's connection variables (``ansible_host``, ``ansible_port``,
``ansible_user``, ``ansible_ssh_private_key_file``, ``ansible_ssh_common_args``,
``ansible_become``) into a testinfra ssh host. The one variable of the lab's own is
``overlaylab_disks``: profile -> block device of that host the lab may format with
``--allow-mkfs``.

Each host becomes a :class:`RemoteHost` named by its inventory name, or ``HOST[:PORT]`` for an
ssh spec. Every mistake is a :class:`HostSpecError` of one line (a usage error).
"""
from __future__ import annotations

import os
import shutil
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

#: the inventory variable naming a host's disks per profile
DISKS_VAR = "overlaylab_disks"


class HostSpecError(ValueError):
    """A ``--hosts`` spec or ``--inventory`` the lab cannot use (one line)."""


@dataclass
class RemoteHost:
    """One remote target: its name in the run, the provider that reaches it (``ssh`` or
    ``ansible``), the testinfra host, and the disks the inventory names for it."""

    name: str
    provider: str
    host: Any
    disks: Dict[str, str] = field(default_factory=dict)
    spec: str = ""


def split_specs(values: Sequence[str]) -> List[str]:
    """``--hosts A,B --hosts C`` -> ``[A, B, C]``."""
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def resolve_hosts(specs: Sequence[str], inventory: Optional[str] = None) -> List[RemoteHost]:
    """The hosts that ``--hosts`` and ``--inventory`` name, in the order given."""
    if inventory is not None and not os.path.isfile(inventory):
        raise HostSpecError("--inventory %s: no such file" % inventory)
    specs = list(specs) or (["ansible://all"] if inventory else [])
    out: List[RemoteHost] = []
    for spec in specs:
        scheme = spec.split("://", 1)[0] if "://" in spec else ""
        if scheme == "ssh":
            out.append(_ssh_host(spec))
        elif scheme == "ansible":
            out.extend(_ansible_hosts(spec, inventory))
        else:
            raise HostSpecError("--hosts %r: use ssh://[USER@]HOST[:PORT][?ssh_config=FILE&ssh_identity_file=FILE] "
                                "or ansible://PATTERN[?ansible_inventory=FILE]" % spec)
    seen = set()
    for h in out:
        if h.name in seen:
            raise HostSpecError("--hosts: %s is named twice" % h.name)
        if h.name in ("host", "local"):
            raise HostSpecError("--hosts: %r is the lab's name for this machine; name the host otherwise" % h.name)
        seen.add(h.name)
    return out


def _check_files(spec: str, query: Dict[str, List[str]], keys: Sequence[str]) -> None:
    for key in keys:
        for value in query.get(key, []):
            if not os.path.isfile(os.path.expanduser(value)):
                raise HostSpecError("--hosts %r: %s=%s: no such file" % (spec, key, value))


def _ssh_host(spec: str) -> RemoteHost:
    import testinfra

    url = urllib.parse.urlparse(spec)
    if not url.hostname:
        raise HostSpecError("--hosts %r: no host name" % spec)
    _check_files(spec, urllib.parse.parse_qs(url.query), ("ssh_config", "ssh_identity_file"))
    try:
        port = url.port
    except ValueError:
        raise HostSpecError("--hosts %r: the port is not a number" % spec) from None
    host = testinfra.get_host(spec)
    name = url.hostname + (":%d" % port if port else "")
    return RemoteHost(name, "ssh", host, spec=spec)


def _ansible_bin() -> Optional[str]:
    """Where ``ansible-inventory`` is: on PATH, or beside this Python (an unactivated venv)."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("ansible-inventory") or shutil.which("ansible-inventory", path=here)
    return os.path.dirname(found) if found else None


def _ansible_hosts(spec: str, inventory: Optional[str]) -> List[RemoteHost]:
    from testinfra.utils.ansible_runner import AnsibleRunner

    url = urllib.parse.urlparse(spec)
    query = urllib.parse.parse_qs(url.query)
    pattern = url.netloc or "all"
    inv = query.get("ansible_inventory", [inventory])[0]
    if not inv:
        raise HostSpecError("--hosts %r: which inventory? add ?ansible_inventory=FILE or --inventory FILE" % spec)
    inv = os.path.expanduser(inv)
    if not os.path.isfile(inv):
        raise HostSpecError("--hosts %r: inventory %s: no such file" % (spec, inv))
    _check_files(spec, query, ("ssh_config", "ssh_identity_file"))
    bindir = _ansible_bin()
    if bindir is None:
        raise HostSpecError("--hosts %r: reading an Ansible inventory needs Ansible "
                            "(pip install 'overlaylab[ansible]', or apt-get install ansible-core)" % spec)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    runner = AnsibleRunner(inv)
    try:
        names = runner.get_hosts(pattern)
    except Exception as err:  # ansible-inventory failed: its own words, one line
        words = [line for line in str(err).splitlines() if line.strip()]
        raise HostSpecError("--inventory %s: Ansible could not read it: %s" % (
            inv, (words[-1] if words else type(err).__name__).strip()[:300])) from None
    if not names:
        raise HostSpecError("--hosts %r: %r matches no host of %s (groups: %s)" % (
            spec, pattern, inv, ", ".join(sorted(g for g in runner.inventory if g != "_meta"))))
    kwargs = {k: os.path.expanduser(query[k][0]) for k in ("ssh_config", "ssh_identity_file") if k in query}
    out = []
    for name in names:
        variables = runner.get_variables(name)
        host = runner.get_host(name, **kwargs)
        if host is None or getattr(host.backend, "NAME", "") not in ("ssh", "local", "paramiko"):
            raise HostSpecError("inventory %s: host %s: ansible_connection %r is not one the lab can use "
                                "(ssh or local)" % (inv, name, variables.get("ansible_connection")))
        out.append(RemoteHost(name, "ansible", host, _disks(inv, name, variables.get(DISKS_VAR)), spec=spec))
    return out


def _disks(inv: str, name: str, value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.startswith("/dev/")
                                              for k, v in value.items()):
        raise HostSpecError("inventory %s: host %s: %s must map profiles to devices, e.g. {xfs: /dev/sdb}; got %r"
                            % (inv, name, DISKS_VAR, value))
    return dict(value)
