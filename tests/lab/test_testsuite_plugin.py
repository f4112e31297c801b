"""The scenario catalogue as a pytest suite against a testinfra host (``pytest --hosts=...``)."""
from __future__ import annotations

import subprocess
import sys


def test_catalogue_runs_as_pytest_suite_against_local_host(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "overlaylab.testsuite", "--hosts=local://",
         "--lab-profiles", "=tmpfs or =btrfs", "-k", "driver-init or whiteouts-through-diff",
         "-p", "no:cacheprovider", "-q", "-rA"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout
    for cell in ("tmpfs-driver-init", "btrfs-driver-init", "tmpfs-whiteouts-through-diff",
                 "btrfs-whiteouts-through-diff"):
        assert cell in res.stdout
