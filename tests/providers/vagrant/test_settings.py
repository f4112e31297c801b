"""The Vagrantfile's settings are data: loopback only, TCG unless KVM works, one disk per profile."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.needs import missing, need_tool

from overlaylab.providers.vagrant import boxes as B
from overlaylab.providers import vagrant as V

ROOT = B.PROJECT_ROOT


@pytest.fixture(scope="module")
def catalogue():
    return B.load_catalogue()


def test_catalogue_has_the_three_debian_boxes_built_locally(catalogue):
    assert {"bullseye", "bookworm", "trixie"} <= set(catalogue.boxes)
    for name in ("bullseye", "bookworm", "trixie"):
        spec = catalogue.boxes[name]
        assert spec.build == "debootstrap" and spec.suite == name
        assert spec.vagrant_box == "overlaylab/" + name
        assert spec.kernel_package.startswith("linux-image-")
    packages = set(catalogue.build_packages)
    # what the agent needs in the box (mkfs of each profile, modprobe, sudo, Python)
    assert {"python3", "sudo", "e2fsprogs", "xfsprogs", "btrfs-progs", "kmod", "util-linux", "attr",
            "openssh-server", "dbus"} <= packages


def test_catalogue_names_no_mirror_host():
    text = (ROOT / "vms" / "boxes.toml").read_text()
    assert not re.search(r"https?://", text)
    assert not re.search(r"https?://|deb\.debian|ftp\.", (ROOT / "vms" / "boxes" / "build-box.sh").read_text())


def test_catalogue_lookup_by_vagrant_box_name(catalogue):
    assert catalogue.get("overlaylab/bookworm").name == "bookworm"
    with pytest.raises(KeyError):
        catalogue.get("nonesuch")


def test_parse_catalogue_rejects_debootstrap_box_without_suite():
    with pytest.raises(ValueError):
        B.parse_catalogue('[box.x]\nbuild = "debootstrap"\n')


def test_user_mode_nic_is_restricted_and_forwards_ssh_on_loopback_only():
    args = B.loopback_qemuargs(2299)
    netdev = args[args.index("-netdev") + 1]
    assert netdev.startswith("user,")
    assert "restrict=on" in netdev.split(",")
    fwds = re.findall(r"hostfwd=tcp:([^:]*):(\d+)-:(\d+)", netdev)
    assert fwds == [("127.0.0.1", "2299", "22")]
    device = args[args.index("-device") + 1]
    assert "netdev=lab0" in device and "addr=0x1e" in device  # pitfall 10: an explicit PCI slot


def test_tcg_settings_name_a_cpu_model_and_driver_qemu():
    assert B.accel_settings("tcg") == {"driver": "qemu", "cpu_mode": "custom", "cpu_model": "qemu64"}
    assert B.accel_settings("kvm")["driver"] == "kvm"


def test_choose_accel_honours_the_override(monkeypatch):
    monkeypatch.setenv("OVERLAYLAB_ACCEL", "tcg")
    assert B.choose_accel()[0] == "tcg"
    monkeypatch.setenv("OVERLAYLAB_ACCEL", "kvm")
    assert B.choose_accel()[0] == "kvm"


def test_one_sparse_virtio_disk_per_profile_with_its_serial():
    disks = B.disk_settings([("ext4", 64), ("ext4-nofiletype", 64), ("xfs", 300), ("a-very-long-profile-name-x", 8)])
    assert [d["profile"] for d in disks] == ["ext4", "ext4-nofiletype", "xfs", "a-very-long-profile-name-x"]
    assert all(d["type"] == "qcow2" and d["bus"] == "virtio" for d in disks)
    assert [d["size"] for d in disks] == ["64M", "64M", "300M", "16M"]
    serials = [d["serial"] for d in disks]
    assert serials[:3] == ["ext4", "ext4-nofiletype", "xfs"]
    assert len(set(serials)) == 4 and all(len(s) <= 20 for s in serials)


def test_disk_serials_stay_unique_when_truncation_collides():
    serials = B.disk_serials(["x" * 25 + "a", "x" * 25 + "b"])
    assert len(set(serials)) == 2


def test_machine_settings_for_a_run(catalogue):
    m = B.machine_settings(catalogue.get("bookworm"), 2301, [("ext4", 64), ("btrfs", 256)],
                           accel="tcg", domain_prefix="overlaylab-abc-", console_log="/tmp/c.log")
    assert m["ssh_host"] == "127.0.0.1" and m["ssh_port"] == 2301
    assert m["driver"] == "qemu" and m["cpu_model"] == "qemu64"
    assert m["domain_prefix"] == "overlaylab-abc-" and m["box"] == "overlaylab/bookworm"
    assert len(m["disks"]) == 2
    assert "hostfwd=tcp:127.0.0.1:2301-:22" in " ".join(m["qemuargs"])


def test_hand_run_settings_give_each_machine_its_own_port(catalogue):
    s = B.catalogue_settings(catalogue, profiles=[("ext4", 64), ("xfs", 300)], accel="tcg")
    ports = [m["ssh_port"] for m in s["machines"]]
    assert len(set(ports)) == len(ports) == len(catalogue.boxes)
    assert all(len(m["disks"]) == 2 for m in s["machines"])
    assert s["network"] == "loopback"


def test_vagrant_config_entry_point_prints_json_with_stdlib_python():
    """The Vagrantfile runs this with the host's python3, no virtualenv."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OVERLAYLAB_ACCEL="tcg")
    out = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, %r); "
                          "from overlaylab.providers.vagrant.boxes import main; main(['vagrant-config'])" % str(ROOT)],
                         stdout=subprocess.PIPE, check=True, env=env, timeout=60).stdout
    data = json.loads(out)
    names = [m["name"] for m in data["machines"]]
    assert {"bullseye", "bookworm", "trixie"} <= set(names)
    assert all(m["driver"] == "qemu" for m in data["machines"])
    # one disk per block profile of vms/filesystems.toml; tmpfs needs none
    from overlaylab.agent.profiles import load_profiles
    blocks = [p.name for p in load_profiles().values() if p.kind == "block"]
    assert [d["profile"] for d in data["machines"][0]["disks"]] == blocks


def test_vagrantfile_reads_the_settings_and_never_makes_a_network():
    text = (ROOT / "Vagrantfile").read_text()
    assert "OVERLAYLAB_VAGRANT_CONFIG" in text and "overlaylab.providers.vagrant.boxes" in text
    assert "mgmt_attach = false" in text
    assert "private_network" not in text and "public_network" not in text
    assert not re.search(r"\b(10|192\.168|172\.(1[6-9]|2\d|3[01]))\.\d+\.\d+", text)
    assert 'host_ip: "127.0.0.1"' in text
    assert "libvirt.storage :file" in text


def test_vagrant_parses_the_vagrantfile_with_run_settings(tmp_path, catalogue):
    need_tool("vagrant")
    settings = B.vagrant_settings([B.machine_settings(catalogue.get("bookworm"), 2302, [("ext4", 64)],
                                                      domain_prefix="overlaylab-unit-")])
    path = tmp_path / "s.json"
    path.write_text(json.dumps(settings))
    env = dict(os.environ, OVERLAYLAB_VAGRANT_CONFIG=str(path), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    res = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=str(ROOT), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert res.returncode == 0, res.stdout
    assert ",bookworm,state,not_created" in res.stdout


def test_disk_serials_map_to_guest_devices():
    text = "/sys/block/vda \n/sys/block/vdb ext4\n/sys/block/vdc ext4-nofiletype\n"
    assert V.parse_disk_serials(text) == {"ext4": "/dev/vdb", "ext4-nofiletype": "/dev/vdc"}


def test_agent_command_runs_the_shipped_zipapp_as_root():
    cmd = V.agent_command(["run", "--profile", "ext4"], "/var/tmp/overlaylab.pyz")
    assert cmd.startswith("sudo -n env ")
    assert "PYTHONPATH=/var/tmp/overlaylab.pyz" in cmd
    assert cmd.endswith("python3 -m overlaylab.agent run --profile ext4")


def test_zipapp_holds_the_working_tree_package_and_runs_the_agent(tmp_path):
    pyz = tmp_path / "overlaylab.pyz"
    V.build_agent_zipapp(pyz)
    import zipfile
    names = zipfile.ZipFile(pyz).namelist()
    assert "overlaylab/agent/main.py" in names and "__main__.py" in names and "tomli.py" in names
    assert not any("__pycache__" in n for n in names)
    res = subprocess.run([sys.executable, "-I", "-m", "overlaylab.agent", "--help"], env={"PYTHONPATH": str(pyz)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, cwd=str(tmp_path))
    # -I ignores PYTHONPATH; run once more without it to prove the zip is self-contained
    res = subprocess.run([sys.executable, "-S", "-m", "overlaylab.agent", "--help"],
                         env={"PYTHONPATH": str(pyz), "PATH": os.environ["PATH"]},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, cwd=str(tmp_path))
    assert res.returncode == 0, res.stdout
    assert "probe-target" in res.stdout


def test_tomli_shim_parses_profiles_with_python3_toml(tmp_path):
    """Python 3.9 guests (bullseye) have no tomllib: the shim falls back on python3-toml."""
    if subprocess.run(["/usr/bin/python3", "-c", "import toml"], timeout=60).returncode != 0:
        missing("/usr/bin/python3 has no toml module (python3-toml)")
    shim = tmp_path / "tomli.py"
    shim.write_text(V.TOMLI_SHIM)
    code = ("import sys; sys.path.insert(0, %r); import tomli; "
            "print(tomli.loads(open(%r).read())['profile']['ext4']['fstype'])"
            % (str(tmp_path), str(ROOT / "vms" / "filesystems.toml")))
    res = subprocess.run(["/usr/bin/python3", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout
    assert res.stdout.strip() == "ext4"


def test_timed_vagrant_kills_a_hanging_command(tmp_path, monkeypatch):
    fake = tmp_path / "vagrant"
    fake.write_text("#!/bin/sh\necho starting >&2\nsleep 60\n")
    fake.chmod(0o755)
    v = V.TimedVagrant(str(tmp_path), dict(os.environ), str(tmp_path / "log"), timeout=1.5)
    v._vagrant_exe = str(fake)
    import time
    t0 = time.monotonic()
    with pytest.raises(V.VagrantTimeout) as err:
        v.up(vm_name="x")
    assert time.monotonic() - t0 < 15
    assert "starting" in err.value.output


def test_timed_vagrant_failure_carries_vagrants_output(tmp_path):
    fake = tmp_path / "vagrant"
    fake.write_text("#!/bin/sh\necho 'The box overlaylab/nonesuch could not be found' >&2\nexit 1\n")
    fake.chmod(0o755)
    v = V.TimedVagrant(str(tmp_path), dict(os.environ), str(tmp_path / "log"), timeout=30)
    v._vagrant_exe = str(fake)
    with pytest.raises(V.VagrantError) as err:
        v.up(vm_name="x")
    assert "could not be found" in err.value.output


def test_spec_for_a_box_from_elsewhere(catalogue):
    spec = V.spec_for(catalogue, "generic/debian12")
    assert spec.vagrant_box == "generic/debian12" and spec.build == "none" and spec.name == "debian12"
    with pytest.raises(KeyError):
        V.spec_for(catalogue, "nonesuch")


def test_recipe_hash_changes_with_packages_and_nothing_else(catalogue):
    spec = catalogue.get("bookworm")
    r1 = B.recipe(catalogue, spec)
    assert B.recipe_hash(r1) == B.recipe_hash(B.recipe(catalogue, spec))
    import dataclasses
    other = dataclasses.replace(spec, packages=spec.packages + ("strace",))
    assert B.recipe_hash(B.recipe(catalogue, other)) != B.recipe_hash(r1)
    assert "mirror" not in r1  # another mirror serves the same packages: no rebuild


def _fake_cached_box(tmp_path, monkeypatch, catalogue, added_hash):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(B.os, "geteuid", lambda: 0)
    monkeypatch.setattr(B.shutil, "which", lambda tool: "/usr/bin/" + tool)
    spec = catalogue.get("bookworm")
    rhash = B.recipe_hash(B.recipe(catalogue, spec))
    B.box_cache_dir("bookworm").mkdir(parents=True)
    B.box_file("bookworm").write_bytes(b"box")
    (B.box_cache_dir("bookworm") / "box.json").write_text(json.dumps({"recipe_hash": rhash, "added_hash": added_hash}))
    calls = []
    monkeypatch.setattr(B, "run_tool", lambda argv, timeout, env=None, log=None: calls.append(list(argv)) or "")
    monkeypatch.setattr(B, "vagrant_box_list", lambda timeout=60: [("overlaylab/bookworm", "libvirt", "0")])
    return rhash, calls


def test_build_box_is_idempotent_when_cached_and_added(tmp_path, monkeypatch, catalogue):
    rhash, calls = _fake_cached_box(tmp_path, monkeypatch, catalogue, added_hash=None)
    calls.clear()
    res = B.build_box("bookworm", catalogue)
    assert not res.built and res.added  # cached .box, but this .box was never added: add it
    assert any(c[:3] == ["vagrant", "box", "add"] for c in calls)
    assert not any("build-box.sh" in " ".join(c) for c in calls)
    calls.clear()
    res = B.build_box("bookworm", catalogue)
    assert not res.built and not res.added and calls == []  # second time: nothing at all
