"""Bug bundles: written from a real run, unpacked, and their repro command really run."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile

from overlaylab.lab.results import load_run
from overlaylab.reports import RunReport

from .conftest import cli, run_dir_of
from .engine_runs import ENGINE, with_engine_cells

CELL = "host/tmpfs/mount-label"   # FAIL as expected here: no SELinux, the kernel rejects context=


def test_bundle_holds_everything_and_its_repro_reproduces(lab, tmp_path):
    res = cli(["bundle", lab.plain, CELL, "-o", str(tmp_path)])
    assert res.returncode == 0, res.stderr
    path = res.stdout.strip()
    run_id = os.path.basename(lab.plain)
    assert path == str(tmp_path / ("overlaylab-bundle-%s-host-tmpfs-mount-label.tar.gz" % run_id))
    with tarfile.open(path) as tar:
        names = tar.getnames()
        tar.extractall(str(tmp_path / "x"))
    top = "overlaylab-bundle-%s-host-tmpfs-mount-label" % run_id
    for name in ("README.txt", "repro", "repro.json", "cell.json", "dmesg.txt", "kernel.txt", "probes.txt",
                 "versions.txt", "target.json", "run.json", "scenario/log.txt", "scenario/evidence.txt",
                 "scenario/driver-status.txt", "filesystem/recipe.sh", "filesystem/info.txt",
                 "filesystem/profile.json", "filesystem/remake.sh"):
        assert "%s/%s" % (top, name) in names, name
    d = tmp_path / "x" / top
    rep = RunReport.from_run(load_run(lab.plain))
    cv = rep.get("host", "tmpfs", "mount-label")
    readme = (d / "README.txt").read_text()
    assert "cell      %s" % CELL in readme and "outcome   %s" % cv.outcome in readme
    assert "overlaylab repro %s.tar.gz" % top in readme and "filesystem/info.txt" in readme
    assert cv.expected_why in readme
    repro = (d / "repro").read_text()
    assert "exec overlaylab run --provider local -K host -p =tmpfs -k =mount-label \"$@\"" in repro
    assert os.access(str(d / "repro"), os.X_OK)
    kernel = (d / "kernel.txt").read_text()
    assert "kernel release: %s" % os.uname().release in kernel and "CONFIG_OVERLAY_FS=" in kernel
    info = (d / "filesystem" / "info.txt").read_text()
    assert "mount -t tmpfs -o size=64m,mode=0755 tmpfs" in info and "== mountinfo" in info
    assert "mount options" in info
    remake = (d / "filesystem" / "remake.sh").read_text()
    assert 'mount -t tmpfs -o size=64m,mode=0755 tmpfs "$MNT"' in remake
    assert "d_type = true" in (d / "probes.txt").read_text()
    assert (d / "scenario" / "driver-status.txt").read_text().strip() == "Backing Filesystem | tmpfs"
    assert json.loads((d / "cell.json").read_text())["scenario"] == "mount-label"
    assert "during the backing filesystem's set-up" in (d / "dmesg.txt").read_text()
    assert "overlaylab 0.1.0" in (d / "versions.txt").read_text() or "overlaylab " in (d / "versions.txt").read_text()

    # The unpacked repro script re-runs exactly that cell; the outcome reproduces.
    reports = str(tmp_path / "repro-reports")
    env = dict(os.environ, TMPDIR=lab.agent_tmp, PATH=os.path.dirname(sys.executable) + ":" + os.environ["PATH"])
    out = subprocess.run(["sh", str(d / "repro"), "--reports-dir", reports], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    again = RunReport.from_run(load_run(run_dir_of(out.stdout)))
    assert list(again.cells) == [("host", "tmpfs", "mount-label", "port")]
    assert again.get("host", "tmpfs", "mount-label").outcome == cv.outcome

    # `overlaylab repro BUNDLE` does the same and says so
    res = cli(["repro", path, "--reports-dir", reports], env=lab.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "REPRODUCED: %s is %s again" % (CELL, cv.outcome) in res.stdout
    # --dry-run prints exactly the command that ran: the one the re-run recorded as its argv
    dry = cli(["repro", path, "--dry-run", "--reports-dir", reports])
    assert dry.returncode == 0 and dry.stderr == "", dry.stderr
    assert dry.stdout.strip() == "%s -m overlaylab run --provider local -K host -p =tmpfs -k =mount-label --reports-dir %s" % (
        sys.executable, reports)
    assert "$ " + dry.stdout.strip() in res.stderr.splitlines()
    ran = load_run(run_dir_of(res.stdout)).meta["argv"]
    assert shlex.split(dry.stdout) == [sys.executable, "-m", "overlaylab"] + ran


def test_repro_says_when_an_outcome_did_not_reproduce(lab, tmp_path):
    # A bundle whose recorded outcome differs from what this machine gives: NOT REPRODUCED, exit 1.
    res = cli(["bundle", lab.plain, "host/btrfs/driver-init", "-o", str(tmp_path / "b.tar.gz")])
    assert res.returncode == 0, res.stderr
    with tarfile.open(str(tmp_path / "b.tar.gz")) as tar:
        tar.extractall(str(tmp_path / "x"))
    (top,) = os.listdir(str(tmp_path / "x"))
    spec_path = tmp_path / "x" / top / "repro.json"
    spec = json.loads(spec_path.read_text())
    assert spec["outcome"] == "REFUSED"
    spec["outcome"] = "PASS"   # as if a kernel once accepted btrfs
    spec_path.write_text(json.dumps(spec))
    res = cli(["repro", str(tmp_path / "x"), "--reports-dir", str(tmp_path / "r")], env=lab.env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "NOT REPRODUCED: host/btrfs/driver-init is now REFUSED (bundled: PASS" in res.stdout


def test_bundle_of_an_unknown_cell_is_a_clear_error(lab, tmp_path):
    # a usage error: exit 2, one line
    res = cli(["bundle", lab.plain, "host/ext4/driver-init", "-o", str(tmp_path)])
    assert res.returncode == 2 and "has no cell host/ext4/driver-init" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = cli(["bundle", lab.plain, "host/driver-init"])
    assert res.returncode == 2 and "KERNEL/PROFILE/SCENARIO" in res.stderr


def test_bundle_of_an_engine_cell_holds_its_engine_and_reruns_only_it(lab, tmp_path):
    run = with_engine_cells(lab.plain, str(tmp_path / "reports"), "20260101-000000-eng3")
    cell = "host/tmpfs/driver-init/" + ENGINE
    res = cli(["bundle", run, cell, "-o", str(tmp_path)])
    assert res.returncode == 0, res.stderr
    top = "overlaylab-bundle-20260101-000000-eng3-host-tmpfs-driver-init-" + ENGINE
    assert res.stdout.strip() == str(tmp_path / (top + ".tar.gz"))
    with tarfile.open(res.stdout.strip()) as tar:
        tar.extractall(str(tmp_path / "x"))
    d = tmp_path / "x" / top
    spec = json.loads((d / "repro.json").read_text())
    assert spec["engine"] == ENGINE and spec["cell"] == cell
    version = (d / "engine" / "version.txt").read_text()
    assert "engine: %s" % ENGINE in version and "version: 20.10.24+dfsg1" in version and "verdict: accepted" in version
    commands = (d / "engine" / "commands.txt").read_text()
    assert "$ docker -H unix:///x/docker.sock create img   # rc 0, 0.2 s" in commands and "a warning of dockerd" in commands
    readme = (d / "README.txt").read_text()
    assert "engine    %s" % ENGINE in readme and "engine/commands.txt" in readme
    assert "-k =driver-init --engine %s \"$@\"" % ENGINE in (d / "repro").read_text()
    dry = cli(["repro", str(d), "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    assert shlex.split(dry.stdout)[3:] == ["run", "--provider", "local", "-K", "host", "-p", "=tmpfs",
                                           "-k", "=driver-init", "--engine", ENGINE]
    # the port's twin of that cell: no engine files, no --engine (old bundles read the same)
    port = cli(["bundle", run, "host/tmpfs/driver-init", "-o", str(tmp_path / "port.tar.gz")])
    with tarfile.open(port.stdout.strip()) as tar:
        names = tar.getnames()
    assert not [n for n in names if "/engine/" in n]
    assert shlex.split(cli(["repro", port.stdout.strip(), "--dry-run"]).stdout)[-1] == "=driver-init"
