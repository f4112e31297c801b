"""Markdown, JUnit XML and JSON reports of real runs, written at the end of every run and by
``overlaylab report``; ``--repeat`` pass rates and flaky cells."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

from overlaylab.lab.results import load_run
from overlaylab.reports import FILES, RunReport, render
from overlaylab.reports.model import SYMBOLS, UNMET_MARK

from .conftest import cli, copy_run

EXPECTED_CELLS = {("host", p, s, "port") for p in ("tmpfs", "btrfs") for s in ("driver-init", "create-empty", "mount-label")}


def _report(run_dir):
    return RunReport.from_run(load_run(run_dir))


def test_run_writes_every_report_and_passes_the_checked_in_baseline(lab):
    out = lab.plain_out
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no regressions" in out.stdout and "Compared with host kernel, local provider" in out.stdout
    assert "reports: report.md, report.html, junit.xml, summary.json" in out.stdout
    for name in FILES.values():
        assert os.path.getsize(os.path.join(lab.plain, name)) > 0, name
    rep = _report(lab.plain)
    assert set(rep.cells) == EXPECTED_CELLS
    # The facts this machine gives: btrfs is refused, driver-init passes on tmpfs, no SELinux.
    assert rep.get("host", "btrfs", "driver-init").outcome == "REFUSED"
    assert rep.get("host", "tmpfs", "driver-init").outcome == "PASS"
    assert rep.get("host", "tmpfs", "mount-label").outcome == "FAIL"
    assert all(c.met for c in rep.cells.values())


def test_markdown_matrix_legend_and_non_passing_evidence(lab):
    rep = _report(lab.plain)
    with open(os.path.join(lab.plain, "report.md"), encoding="utf-8") as f:
        md = f.read()
    assert md == render(rep, "markdown")
    assert md.startswith("# overlaylab run %s" % rep.run_id)
    assert "**Legend:**" in md and all(SYMBOLS[o] + " " + o in md for o in SYMBOLS)
    # one matrix per scenario group, profiles across, one symbol per outcome
    for group in ("## lifecycle", "## diff", "## failure-class"):
        assert group in md
    profiles = rep.profiles()
    header = "| scenario " 
    assert any(line.startswith(header) and all(p in line for p in profiles) for line in md.splitlines())
    for sid in ("driver-init", "create-empty", "mount-label"):
        row = [line for line in md.splitlines() if line.startswith("| %s " % sid)]
        assert len(row) == 1, sid
        symbols = [c.strip() for c in row[0].strip("|").split("|")[1:]]
        assert symbols == [rep.get("host", p, sid).symbol(False) for p in profiles]
    # kernel x profile overview with counts
    assert "## Kernel × profile" in md and "%s3" % SYMBOLS["REFUSED"] in md
    # non-passing cells, as expected, grouped by cause with their evidence
    assert "## Not as expected (0)" in md
    assert "Docker 1.10.3 refuses overlay over btrfs" in md
    assert "'overlay' is not supported over btrfs." in md       # driver log evidence of the REFUSED cells
    assert "mount-label on" in md or "**tmpfs**: mount-label" in md


def test_markdown_shows_unmet_cells_with_their_evidence(lab, tmp_path):
    def break_cell(rec):
        if rec["profile"] == "tmpfs" and rec["scenario"] == "driver-init":
            rec.update(outcome="FAIL", met=False, error="synthetic: Init failed",
                       evidence={"dmesg": ["[ 1.0] overlayfs: synthetic kernel complaint"],
                                 "driver_status": [["Backing Filesystem", "tmpfs"]]})
        return rec
    run_dir = copy_run(lab.plain, str(tmp_path / "reports"), "20990101-000000-unmt", break_cell)
    rep = _report(run_dir)
    md = render(rep, "markdown")
    assert "## Not as expected (1)" in md
    assert "`host/tmpfs/driver-init` — FAIL, expected PASS" in md
    assert "overlayfs: synthetic kernel complaint" in md
    assert "**%s%s**" % (SYMBOLS["FAIL"], UNMET_MARK) in md
    assert "overlaylab bundle 20990101-000000-unmt host/tmpfs/driver-init" in md
    assert "mount -t tmpfs" in md                    # the backing filesystem's real recipe
    data = json.loads(render(rep, "json"))
    assert data["ok"] is False and [c["cell"] for c in data["unmet"]] == ["host/tmpfs/driver-init"]
    root = ET.fromstring(render(rep, "junit"))
    failed = [tc for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert [(tc.get("classname"), tc.get("name")) for tc in failed] == [("overlaylab.host.tmpfs", "driver-init")]
    assert "synthetic kernel complaint" in failed[0].find("failure").text
    assert root.get("failures") == "1"


def test_junit_one_testcase_per_cell_with_properties(lab):
    rep = _report(lab.plain)
    root = ET.parse(os.path.join(lab.plain, "junit.xml")).getroot()
    assert root.tag == "testsuites"
    cases = list(root.iter("testcase"))
    assert len(cases) == len(rep.cells) == int(root.get("tests"))
    seen = set()
    for tc in cases:
        props = {p.get("name"): p.get("value") for p in tc.find("properties").iter("property")}
        key = (props["kernel"], props["profile"], props["scenario"], props.get("engine", "port"))
        seen.add(key)
        cv = rep.cells[key]
        assert tc.get("classname") == "overlaylab.host.%s" % props["profile"] and tc.get("name") == props["scenario"]
        assert props["outcome"] == cv.outcome and props["expected"] == cv.expected
        assert props["kernel_release"] == os.uname().release
        skipped = tc.find("skipped")
        if cv.outcome == "REFUSED":
            assert skipped is not None and skipped.get("type") == "REFUSED"
        elif cv.outcome == "FAIL":
            assert skipped is not None and skipped.get("type") == "xfail"  # a known failure
        else:
            assert skipped is None and tc.find("failure") is None
    assert seen == set(rep.cells)
    assert root.get("failures") == "0" and int(root.get("skipped")) == sum(1 for c in rep.cells.values() if c.outcome != "PASS")
    suites = {s.get("name") for s in root.iter("testsuite")}
    assert suites == {"host.tmpfs", "host.btrfs"}


def test_json_summary(lab):
    rep = _report(lab.plain)
    with open(os.path.join(lab.plain, "summary.json")) as f:
        data = json.load(f)
    assert data["run_id"] == rep.run_id and data["status"] == "finished" and data["ok"] is True
    assert data["cells"] == 6 and sum(data["counts"].values()) == 6
    assert data["counts"]["REFUSED"] == 3 and data["unmet"] == [] and data["repeat"] == 1
    assert data["matrix"]["host"]["btrfs"]["driver-init"] == "REFUSED"
    (target,) = data["targets"]
    assert target["kernel"] == "host" and target["kernel_release"] == os.uname().release
    assert target["kernel_config_overlay"]["CONFIG_OVERLAY_FS"] in ("y", "m")
    btrfs = [p for p in data["profiles"] if p["profile"] == "btrfs"][0]
    assert any(line.startswith("mkfs.btrfs") for line in btrfs["recipe"]) and btrfs["driver_init"] == "REFUSED"


def test_report_command_formats(lab, tmp_path):
    res = cli(["report", lab.plain, "--format", "junit", "-o", str(tmp_path / "j.xml")])
    assert res.returncode == 0, res.stderr
    ET.parse(str(tmp_path / "j.xml"))
    res = cli(["report", lab.plain, "--format", "json"])
    assert res.returncode == 0 and json.loads(res.stdout)["cells"] == 6
    res = cli(["report", lab.plain, "--format", "markdown"])
    assert res.returncode == 0 and res.stdout.startswith("# overlaylab run ")
    out = tmp_path / "all"
    out.mkdir()
    res = cli(["report", os.path.basename(lab.plain), "--reports-dir", lab.reports, "-o", str(out)])
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(str(out))) == sorted(FILES.values())
    res = cli(["report", "no-such-run", "--reports-dir", lab.reports])
    assert res.returncode != 0 and "no run" in res.stderr


def test_repeat_stores_attempts_and_reports_pass_rates(lab):
    out = lab.repeat_out
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Repeated 2 times: 0 of 6 cells flaky" in out.stdout
    run = load_run(lab.repeat)
    assert run.meta["repeat"] == 2
    assert sorted({c.get("attempt") for c in run.cells}) == [1, 2] and len(run.cells) == 12
    rep = RunReport.from_run(run)
    assert len(rep.cells) == 6 and rep.repeat == 2 and not rep.flaky()
    assert rep.get("host", "tmpfs", "driver-init").pass_rate == 1.0
    assert rep.get("host", "btrfs", "driver-init").pass_rate == 0.0
    with open(os.path.join(lab.repeat, "summary.json")) as f:
        data = json.load(f)
    assert data["repeat"] == 2 and data["flaky"] == [] and data["cells"] == 6
    with open(os.path.join(lab.repeat, "report.md"), encoding="utf-8") as f:
        assert "## Flaky (0 of 6 cells over 2 repeats)" in f.read()
    props = {p.get("name"): p.get("value")
             for p in ET.parse(os.path.join(lab.repeat, "junit.xml")).getroot().iter("property")}
    assert props["attempts"] == "2"


def test_a_cell_whose_repeats_differ_is_flaky(lab, tmp_path):
    def flip(rec):
        if rec["profile"] == "tmpfs" and rec["scenario"] == "create-empty" and rec.get("attempt") == 2:
            rec.update(outcome="ERROR", met=False, error="synthetic: the agent hung")
        return rec
    run_dir = copy_run(lab.repeat, str(tmp_path / "reports"), "20990101-000000-flky", flip)
    rep = _report(run_dir)
    cv = rep.get("host", "tmpfs", "create-empty")
    assert cv.flaky and cv.outcome == "FLAKY" and cv.pass_rate == 0.5 and cv.outcomes == ["PASS", "ERROR"]
    assert not cv.gate_failed and rep.unmet() == [] and rep.flaky() == [cv] and not rep.gate_failures()
    md = render(rep, "markdown")
    assert "## Flaky (1 of 6 cells over 2 repeats)" in md and "| host/tmpfs/create-empty | 50%" in md
    data = json.loads(render(rep, "json"))
    assert data["ok"] is True and data["flaky"][0]["outcomes"] == ["PASS", "ERROR"]
    root = ET.fromstring(render(rep, "junit"))
    (case,) = [tc for tc in root.iter("testcase") if tc.get("name") == "create-empty"
               and tc.get("classname").endswith(".tmpfs")]
    assert case.find("flakyFailure") is not None and case.find("failure") is None
    assert "synthetic: the agent hung" in case.find("flakyFailure").text
    # compared with the real run it came from, a flaky cell is named flaky, not a regression
    res = cli(["compare", lab.repeat, run_dir])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "host/tmpfs/create-empty" in res.stdout and "flaky" in res.stdout and "no regressions" in res.stdout


def test_several_kernels_share_one_matrix(lab, tmp_path):
    """Kernels side by side: a kernel column in markdown, a column group per kernel in HTML,
    a testsuite per kernel x profile in JUnit (the second kernel is a relabelled copy)."""
    run_dir = copy_run(lab.plain, str(tmp_path / "reports"), "20990101-000000-twok")
    with open(os.path.join(run_dir, "results.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(run_dir, "results.jsonl"), "a") as f:
        for rec in records:
            if rec.get("target") == "host":
                other = dict(rec, target="debian-6.1", kernel_release="6.1.0-99-amd64", provider="qemu")
                if other.get("record") == "cell" and other["profile"] == "tmpfs" and other["scenario"] == "driver-init":
                    other.update(outcome="ERROR", met=False, error="the agent ran past 120 s and was killed")
                f.write(json.dumps(other) + "\n")
    rep = _report(run_dir)
    assert rep.targets() == ["host", "debian-6.1"] and len(rep.cells) == 12
    md = render(rep, "markdown")
    assert any(l.startswith("| scenario ") and "| kernel " in l for l in md.splitlines())
    rows = [l for l in md.splitlines() if l.startswith("| driver-init ")]
    assert len(rows) == 2 and "debian-6.1" in rows[1] and SYMBOLS["ERROR"] + UNMET_MARK in rows[1]
    assert "debian-6.1 (6.1.0-99-amd64)" in md
    html = render(rep, "html")
    assert html.count('class="kernel" colspan="2"') == 2 * len(rep.groups())
    root = ET.fromstring(render(rep, "junit"))
    assert {s.get("name") for s in root.iter("testsuite")} == {"host.tmpfs", "host.btrfs", "debian-6.1.tmpfs",
                                                               "debian-6.1.btrfs"}
    errors = [tc for tc in root.iter("testcase") if tc.find("error") is not None]
    assert [(tc.get("classname"), tc.get("name")) for tc in errors] == [("overlaylab.debian-6_1.tmpfs", "driver-init")]
