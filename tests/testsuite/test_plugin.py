"""The scenario catalogue as a pytest suite against a testinfra host (``pytest --hosts=...``):
outcomes map as in ``overlaylab run``'s JUnit, its JUnit carries the same properties, and the
default profiles are the CLI's (all of them)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from overlaylab.agent.engines import engine_names
from overlaylab.agent.profiles import load_profiles
from overlaylab.lab.matrix import Matrix
from overlaylab.agent.scenario import all_scenarios
from overlaylab.testsuite.plugin import cell_properties, report_cell

from ..throwaway_engine import THROWAWAY, site_dir

RUN_JUNIT_PROPERTIES = ["kernel", "kernel_release", "profile", "scenario", "group", "outcome", "expected",
                        "expected_why", "met", "provider"]


def _pytest(tmp_path, *args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "overlaylab.testsuite", "--hosts=local://",
                           "-p", "no:cacheprovider", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(tmp_path), env=env)


def test_catalogue_outcomes_map_as_in_run_junit(tmp_path):
    junit = tmp_path / "junit.xml"
    res = _pytest(tmp_path, "--lab-profiles", "=tmpfs or =btrfs or =ext4-nofiletype",
                  "-k", "driver-init or whiteouts-through-diff", "-q", "-rA", "--junitxml", str(junit))
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^3 passed, 2 skipped, \d+ deselected, 1 xfailed in ", res.stdout, re.M), res.stdout
    assert "PytestWarning" not in res.stdout
    cases = {}
    for case in ET.parse(str(junit)).getroot().iter("testcase"):
        cell = case.get("name").split("[", 1)[1].rsplit("-local]", 1)[0]
        props = [(p.get("name"), p.get("value")) for p in case.iter("property")]
        cases[cell] = (case, dict(props), [n for n, _ in props])
    assert sorted(cases) == sorted("%s-%s" % (p, s) for p in ("tmpfs", "btrfs", "ext4-nofiletype")
                                   for s in ("driver-init", "whiteouts-through-diff"))
    for cell, (case, props, names) in cases.items():
        assert names == RUN_JUNIT_PROPERTIES, cell
        assert props["kernel"] == "local" and props["provider"] == "testinfra-local" and props["kernel_release"]
        assert props["met"] == "true" and cell == "%s-%s" % (props["profile"], props["scenario"])
        skipped = case.find("skipped")
        if props["outcome"] == "PASS":
            assert skipped is None and case.find("failure") is None, cell
        elif props["outcome"] == "REFUSED":     # btrfs: skipped with the reason
            assert skipped.get("type") == "pytest.skip", cell
            assert skipped.get("message").startswith("REFUSED as expected: Docker 1.10.3 refuses overlay over btrfs")
        else:                                   # ext4 without d_type: a known FAIL is an xfail
            assert (props["outcome"], props["profile"], props["scenario"]) == (
                "FAIL", "ext4-nofiletype", "whiteouts-through-diff")
            assert skipped.get("type") == "pytest.xfail"
            assert "known failure (FAIL as expected): no d_type" in skipped.get("message")


def test_unexpected_outcome_fails_and_met_outcomes_do_not():
    with pytest.raises(pytest.fail.Exception, match="got PASS, expected FAIL"):
        report_cell({"outcome": "PASS", "expected": "FAIL", "expected_why": "moby#21555"})
    with pytest.raises(pytest.fail.Exception, match="got ERROR, expected PASS"):
        report_cell({"outcome": "ERROR", "expected": "PASS", "error": "timeout"})
    with pytest.raises(pytest.skip.Exception, match="UNSUPPORTED as expected: no V4"):
        report_cell({"outcome": "UNSUPPORTED", "expected": "UNSUPPORTED", "expected_why": "no V4"})
    with pytest.raises(pytest.xfail.Exception, match=r"known failure \(FAIL as expected\): moby#21555"):
        report_cell({"outcome": "FAIL", "expected": "FAIL", "expected_why": "moby#21555"})
    assert report_cell({"outcome": "PASS", "expected": "PASS"}) is None
    assert dict(cell_properties({"outcome": "PASS", "expected": "FAIL"}))["met"] == "false"


def test_default_profiles_are_the_clis(tmp_path):
    res = _pytest(tmp_path, "--collect-only", "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    ids = [line for line in res.stdout.splitlines() if "::test_cell_meets_expectation[" in line]
    every = Matrix(["host"], load_profiles(), all_scenarios(), engines=engine_names())  # the CLI's default
    assert len(ids) == every.cell_count == len(load_profiles()) * len(every.runs_for("host"))
    for name in load_profiles():
        assert any("[%s-driver-init-local]" % name in i for i in ids), name


def test_engine_cells_get_their_own_test_ids(tmp_path):
    """An engine scenario is one test per engine (PROFILE-SCENARIO-ENGINE); the port's scenarios
    keep their ids; --lab-engines selects as run --engine, a typo in it is a usage error."""
    env = dict(os.environ, PYTHONPATH=site_dir(str(tmp_path)))
    res = _pytest(tmp_path, "--collect-only", "-q", "--lab-profiles", "=tmpfs", "--lab-engines", "docker*",
                  "-k", "driver-init or %s" % THROWAWAY, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    ids = sorted(re.findall(r"test_cell_meets_expectation\[(.*)-local\]", res.stdout))
    assert ids == ["tmpfs-driver-init", "tmpfs-%s-docker-overlay" % THROWAWAY, "tmpfs-%s-docker-overlay2" % THROWAWAY]
    bad = _pytest(tmp_path, "--collect-only", "-q", "--lab-engines", "dokcer", env=env)
    assert bad.returncode != 0 and "--lab-engines 'dokcer'" in bad.stdout + bad.stderr
    assert "did you mean docker?" in bad.stdout + bad.stderr
