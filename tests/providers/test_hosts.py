"""--hosts specs and --inventory files resolved into targets (Ansible's own ansible-inventory
reads the inventory; nothing is connected to), and the usage errors of bad ones."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from overlaylab.providers.hosts import HostSpecError, resolve_hosts, split_specs
from overlaylab.providers.ssh import RemoteHostError, parse_facts

INVENTORY = """\
all:
  children:
    lab:
      hosts:
        vm61:
          ansible_host: 127.0.0.1
          ansible_port: 2201
          ansible_user: root
          ansible_ssh_private_key_file: {key}
          overlaylab_disks: {{xfs: /dev/vdb}}
        vm510:
          ansible_host: 127.0.0.1
          ansible_port: 2202
          ansible_user: root
    other:
      hosts:
        box:
          ansible_host: 10.0.0.9
"""


@pytest.fixture
def inventory(tmp_path):
    key = tmp_path / "id"
    key.write_text("not a key\n")
    path = tmp_path / "inv.yml"
    path.write_text(INVENTORY.format(key=key))
    return str(path)


def test_ssh_specs_are_named_host_and_port():
    hosts = resolve_hosts(split_specs(["ssh://root@127.0.0.1:2222,ssh://db.example"]))
    assert [(h.name, h.provider) for h in hosts] == [("127.0.0.1:2222", "ssh"), ("db.example", "ssh")]
    assert hosts[0].host.backend.NAME == "ssh" and hosts[0].host.backend.host.user == "root"


def test_inventory_hosts_come_from_ansible_with_their_disks_and_connection(inventory):
    hosts = {h.name: h for h in resolve_hosts([], inventory)}
    assert sorted(hosts) == ["box", "vm510", "vm61"]
    vm61 = hosts["vm61"]
    assert vm61.provider == "ansible" and vm61.disks == {"xfs": "/dev/vdb"} and hosts["vm510"].disks == {}
    backend = vm61.host.backend
    assert (backend.host.name, backend.host.port, backend.host.user) == ("127.0.0.1", "2201", "root")
    assert backend.ssh_identity_file.endswith("/id")
    group = resolve_hosts(["ansible://lab"], inventory)
    assert sorted(h.name for h in group) == ["vm510", "vm61"]
    spelled = resolve_hosts(["ansible://other?ansible_inventory=%s" % inventory])
    assert [h.name for h in spelled] == ["box"]


@pytest.mark.parametrize("specs, inventory_name, words", [
    (["foo://x"], None, "use ssh://"),
    (["ssh://h?ssh_config=/nonexistent/cfg"], None, "ssh_config=/nonexistent/cfg: no such file"),
    (["ansible://lab"], None, "which inventory?"),
    (["ansible://nosuchgroup"], "inv", "matches no host"),
    (["ssh://127.0.0.1:22", "ssh://127.0.0.1:22"], None, "named twice"),
    ([], "/nonexistent/inv.yml", "no such file"),
])
def test_bad_specs_are_one_line(specs, inventory_name, words, inventory):
    inv = inventory if inventory_name == "inv" else inventory_name
    with pytest.raises(HostSpecError) as err:
        resolve_hosts(specs, inv)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bad_overlaylab_disks_is_refused(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text("all:\n  hosts:\n    h:\n      overlaylab_disks: /dev/sdb\n")
    with pytest.raises(HostSpecError, match="must map profiles to devices"):
        resolve_hosts([], str(path))


def test_old_or_missing_python_is_refused_with_the_reason():
    assert parse_facts("h", "6.1.0\n0\nroot\n/usr/bin/python3\n3.11.2\n") == ("6.1.0", False, "/usr/bin/python3", "3.11.2")
    assert parse_facts("h", "6.1.0\n1000\nme\n/usr/bin/python3\n3.9.2\n")[1] is True
    with pytest.raises(RemoteHostError, match=r"host h has Python 3\.7\.3 \(/usr/bin/python3\); the agent needs 3\.9"):
        parse_facts("h", "4.19.0\n0\nroot\n/usr/bin/python3\n3.7.3\n")
    with pytest.raises(RemoteHostError, match="has no python3"):
        parse_facts("h", "4.19.0\n0\nroot\n")


@pytest.mark.parametrize("args, words", [
    (["--hosts", "foo://x"], "use ssh://"),
    (["--hosts", "ssh://127.0.0.1:2222", "-K", "debian-6.1"], "drop -K"),
    (["--hosts", "ssh://127.0.0.1:2222", "--allow-mkfs"], "no host names a disk"),
    (["--allow-mkfs"], "--allow-mkfs goes with --inventory"),
])
def test_run_refuses_bad_host_options_before_anything_runs(args, words, tmp_path):
    r = subprocess.run([sys.executable, "-m", "overlaylab", "run", "--reports-dir", str(tmp_path)] + args +
                       ["-p", "=ext4", "-k", "=create-empty"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "runs")


def test_run_refuses_an_inventory_disk_for_an_unknown_profile(tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text("all:\n  hosts:\n    h:\n      ansible_host: 127.0.0.1\n      overlaylab_disks: {xfz: /dev/vdb}\n")
    r = subprocess.run([sys.executable, "-m", "overlaylab", "run", "--reports-dir", str(tmp_path), "--inventory",
                        str(path), "--allow-mkfs"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "overlaylab_disks names no profile xfz" in r.stderr, r.stderr
