"""The qemu provider's per-run files and the command timeout wrapper (no VM needed)."""
from __future__ import annotations

import time

import pytest

from tests.needs import need_module

from overlaylab.providers import qemu as P
from overlaylab.providers import transport as T


def test_guest_environment_puts_the_hosts_python_first():
    env = P.guest_environment("/root/.pyenv/versions/3.11.7/bin/python3", "/work/main")
    assert env["PATH"].split(":")[0] == "/root/.pyenv/versions/3.11.7/bin"
    assert env["PYTHONPATH"] == "/work/main"
    assert env["MODPROBE_OPTIONS"] == "-d /run/overlaylab/modroot"
    assert P.guest_environment("/usr/bin/python3")["PATH"] == P.DEFAULT_PATH


def test_sshd_config_is_key_only_and_sets_the_environment():
    text = P.sshd_config_text({"PATH": "/a:/b", "MODPROBE_OPTIONS": "-d /x"})
    lines = text.splitlines()
    assert "PasswordAuthentication no" in lines and "PermitRootLogin prohibit-password" in lines
    assert "AuthorizedKeysFile /run/overlaylab/authorized_keys" in lines
    assert "HostKey /run/overlaylab/ssh_host_ed25519_key" in lines
    assert 'SetEnv "PATH=/a:/b" "MODPROBE_OPTIONS=-d /x"' in lines
    assert "UsePAM yes" in P.sshd_config_text({}, use_pam=True)


def test_ssh_client_config_trusts_the_per_run_key_only():
    text = P.ssh_client_config_text(40022, "/w/id_ed25519", "/w/cm-%C")
    assert "Port 40022" in text and "IdentityFile /w/id_ed25519" in text
    assert "StrictHostKeyChecking no" in text and "UserKnownHostsFile /dev/null" in text
    assert "IdentitiesOnly yes" in text and "HostName 127.0.0.1" in text


def test_lab_env_is_shell_quoted():
    text = P.lab_env_text({"A": "x y", "B": "it's"})
    assert text == "A='x y'\nB='it'\"'\"'s'\n"


def test_paths_a_guest_tmpfs_would_hide():
    got = P.hidden_host_paths(["/root/.pyenv/versions/3.11.7", "/usr", "/tmp/ci/clone", "/tmp", "/work/main"])
    assert got == ["/root/.pyenv/versions/3.11.7", "/tmp/ci/clone"]


def test_disk_names_are_checked():
    assert P.validate_disks([("ext4", 256), ("xfs-v4", "512")]) == [("ext4", 256), ("xfs-v4", 512)]
    for bad in ([("a b", 1)], [("x", 1), ("x", 2)], [("x", 0)], [("n" * 21, 1)]):
        with pytest.raises(ValueError):
            P.validate_disks(bad)


@pytest.fixture
def local_host():
    testinfra = need_module("testinfra", "pytest-testinfra")
    return testinfra.get_host("local://")


def test_run_with_timeout_returns_normal_results(local_host):
    r = T.run_with_timeout(local_host, "echo hi; echo err >&2; exit 3", 10)
    assert (r.rc, r.stdout, r.stderr) == (3, "hi\n", "err\n")


def test_run_with_timeout_stops_a_stuck_command(local_host):
    t0 = time.monotonic()
    r = T.run_with_timeout(local_host, "sleep 30", 1)
    assert r.rc in (124, 137)
    assert time.monotonic() - t0 < 10


def test_tcg_boot_failures_that_boot_on_the_next_try_are_named_and_others_are_not():
    from overlaylab.providers.qemu import transient_boot_failure
    oops = "[    0.922513] Oops: int3: 0000 [#2] SMP NOPTI\n[    0.922740] Kernel panic - not syncing: Fatal exception"
    assert transient_boot_failure(oops) == "Oops: int3"
    assert transient_boot_failure("Initramfs unpacking failed: junk in compressed archive") == "Initramfs unpacking failed"
    # a kernel that really cannot boot is not retried into silence
    assert transient_boot_failure("Kernel panic - not syncing: VFS: Unable to mount root fs") is None
