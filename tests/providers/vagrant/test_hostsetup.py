"""Host set-up is idempotent: it plans only what is missing, nothing on a ready host."""
from __future__ import annotations

import click
from click.testing import CliRunner

from overlaylab.providers.vagrant import hostsetup as H
from overlaylab.cli.vagrant import COMMANDS


def ready() -> H.HostState:
    return H.HostState(missing_packages=[], kvm_exists=True, kvm_gid=994, kvm_mode=0o660, kvm_group_gid=994,
                       qemu_user_in_kvm=True, running={"virtlogd": True, "libvirtd": True}, systemd=False)


def test_ready_host_needs_nothing():
    assert H.plan(ready()) == []


def test_fresh_host_without_systemd_gets_packages_kvm_fix_and_daemons_in_order():
    st = ready()
    st.missing_packages = ["vagrant", "vagrant-libvirt"]
    st.kvm_gid, st.kvm_mode = 0, 0o600
    st.running = {"virtlogd": False, "libvirtd": False}
    actions = H.plan(st)
    assert [a.what for a in actions] == ["install", "kvm-perms", "start", "start"]
    install = actions[0].argv[-1]
    assert "--no-install-recommends" in install and install[-2:] == ("vagrant", "vagrant-libvirt")
    assert actions[1].argv == (("chgrp", "kvm", "/dev/kvm"), ("chmod", "0660", "/dev/kvm"))
    assert actions[2].argv == (("/usr/sbin/virtlogd", "-d"),)  # virtlogd before libvirtd
    assert actions[3].argv == (("/usr/sbin/libvirtd", "-d"),)


def test_running_daemons_are_left_alone_and_systemd_hosts_use_systemctl():
    st = ready()
    st.running = {"virtlogd": True, "libvirtd": False}
    st.systemd = True
    assert [a.argv for a in H.plan(st)] == [(("systemctl", "start", "libvirtd"),)]


def test_no_kvm_device_means_no_kvm_fix():
    st = ready()
    st.kvm_exists, st.kvm_gid, st.kvm_mode = False, None, 0
    assert H.plan(st) == []


def test_libvirt_qemu_joins_group_kvm_if_needed():
    st = ready()
    st.qemu_user_in_kvm = False
    assert [a.what for a in H.plan(st)] == ["kvm-group"]


def test_running_daemons_read_exact_command_names(tmp_path):
    for pid, comm in (("1", "init"), ("42", "libvirtd"), ("43", "libvirtd-helper")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "comm").write_text(comm + "\n")
    assert H.running_daemons(["libvirtd", "virtlogd"], proc=str(tmp_path)) == {"libvirtd": True, "virtlogd": False}


def test_host_packages_cover_the_notes_list():
    assert set(H.HOST_PACKAGES) == {"vagrant", "vagrant-libvirt", "libvirt-daemon-system",
                                    "libvirt-daemon-driver-qemu", "libvirt-clients", "qemu-system-x86",
                                    "qemu-utils", "debootstrap", "openssh-client", "fdisk"}


def _cli():
    @click.group()
    def main():
        pass
    for c in COMMANDS:
        main.add_command(c)
    return main


def test_cli_exposes_boxes_and_host_setup():
    names = [c.name for c in COMMANDS]
    assert names == ["boxes", "host-setup"]
    res = CliRunner().invoke(_cli(), ["boxes", "--help"])
    assert res.exit_code == 0 and "build" in res.output and "list" in res.output


def test_host_setup_dry_run_on_this_host_is_harmless(monkeypatch):
    applied = []
    monkeypatch.setattr(H, "apply", lambda actions, echo=print, timeout=0: applied.append(actions))
    res = CliRunner().invoke(_cli(), ["host-setup", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert applied == []


def test_boxes_build_rejects_unknown_names():
    res = CliRunner().invoke(_cli(), ["boxes", "build", "nonesuch"])
    assert res.exit_code == 2 and "unknown box" in res.output
