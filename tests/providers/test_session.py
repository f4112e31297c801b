"""The Session protocol: every provider's session has it, the runner uses nothing else, and the
agent's command line is built in one place."""
from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from overlaylab.lab import runner
from overlaylab.paths import PACKAGE_DIR, PROJECT_ROOT
from overlaylab.providers import PROVIDERS, get_provider_class, make_provider, provider_name
from overlaylab.providers.session import Session, SessionBase, agent_command

PROTOCOL_ATTRS = [n for n in Session.__annotations__]
PROTOCOL_METHODS = ["run", "agent_command", "close", "restart", "exited"]


def _session_classes():
    from overlaylab.providers.local import LocalSession
    from overlaylab.providers.qemu import QemuSession
    from overlaylab.providers.vagrant import VagrantSession
    return [LocalSession, QemuSession, VagrantSession]


@pytest.mark.parametrize("cls", _session_classes(), ids=lambda c: c.__name__)
def test_every_session_has_the_protocol(cls):
    # a field of the dataclass, or a class-level default every session shares (SessionMethods)
    declared = {f.name for f in dataclasses.fields(cls)} | {n for n in PROTOCOL_ATTRS if hasattr(cls, n)}
    assert set(PROTOCOL_ATTRS) <= declared, set(PROTOCOL_ATTRS) - declared
    for name in PROTOCOL_METHODS:
        assert callable(getattr(cls, name)), name
    provider = {f.name: f.default for f in dataclasses.fields(cls)}["provider"]
    assert provider in PROVIDERS and provider != "auto"


def test_a_stub_session_from_the_base_is_a_session():
    class Stub(SessionBase):
        kernel_release, disks = "1.0", {}

        def run(self, command, timeout=300.0):
            return None
    assert isinstance(Stub(), Session)
    assert Stub().agent_command(["probe-target"]) == "python3 -m overlaylab.agent probe-target"


def test_the_agent_command_line():
    assert agent_command(["run", "--profile", "a b"], "/usr/bin/python3", {"PYTHONPATH": "/x y"}) == \
        "env PYTHONPATH='/x y' /usr/bin/python3 -m overlaylab.agent run --profile 'a b'"
    assert agent_command(["cleanup"], sudo=True, env={"LC_ALL": "C"}) == \
        "sudo -n env LC_ALL=C python3 -m overlaylab.agent cleanup"


def test_the_local_session_runs_the_agent_of_this_checkout():
    from overlaylab.providers.local import LocalSession
    s = LocalSession(host=None, kernel_release="x")
    assert s.agent_command(["probe-target"]).startswith("env PYTHONPATH=%s " % PROJECT_ROOT)
    assert PACKAGE_DIR == PROJECT_ROOT / "overlaylab" and (PACKAGE_DIR / "__init__.py").is_file()


def test_the_registry_names_every_provider():
    assert sorted(PROVIDERS) == ["auto", "local", "qemu", "ssh", "vagrant"]
    for name in PROVIDERS:
        assert get_provider_class(name).name == name
    auto = make_provider("auto")
    assert provider_name(auto, "host") == "local" and provider_name(auto, "debian-6.1") == "qemu"
    assert provider_name(make_provider("local"), "host") == "local"
    assert provider_name(make_provider("ssh"), "db1") == "ssh"  # a host it was not given
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        get_provider_class("nope")


def test_the_runner_does_not_probe_its_sessions():
    """No getattr/hasattr on a session: the protocol says what a session has."""
    tree = ast.parse(inspect.getsource(runner))
    probes = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and node.args
              and isinstance(node.args[0], ast.Name) and node.args[0].id == "session"]
    assert probes == []
