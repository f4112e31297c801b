"""Engines in the reports: the classic matrix keeps the port's own scenarios unchanged, the
engine scenarios get their own section per kernel (profile x scenario rows, one column per
engine, the port first), the rows where the port and the other engines disagree are listed,
and JUnit, summary.json and the run index tell the engines apart."""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from html import escape

import pytest

from overlaylab.agent.records import short_label
from overlaylab.lab.results import load_run
from overlaylab.lab.tables import render_report
from overlaylab.reports import RunReport, history, render
from overlaylab.reports.markdown import AGREE_TEXT, group_table

from .conftest import cli
from .engine_runs import (CELLS, DISAGREE, ENGINE_SCENARIOS, ENGINES, KERNELS, PROFILES, VERSIONS,
                          expected_outcome, make_engine_run)

COLUMNS = ["port", "docker-overlay2", "containers-storage"]   # the port first, then run.json's order
UNMET_ENGINE_CELLS = {"debian-6.1/tmpfs/engine-verdict", "debian-6.1/btrfs/engine-whiteouts/docker-overlay2"}


@pytest.fixture(scope="module")
def runs(lab, tmp_path_factory):
    """(classic run, the same with engine cells) as RunReports, and the engine run's dir."""
    reports = str(tmp_path_factory.mktemp("engines") / "reports")
    classic = make_engine_run(lab.plain, reports, "20990101-000000-clsc", cells={})
    engines = make_engine_run(lab.plain, reports, "20990101-000000-engn")
    return RunReport.from_run(load_run(classic)), RunReport.from_run(load_run(engines)), engines


def _blocks(text: str, start: str, stop: str) -> str:
    """``text`` from the line ``start`` up to the first later line that matches ``stop`` (a regex)."""
    lines = text.splitlines()
    i = lines.index(start)
    j = next(k for k in range(i + 1, len(lines)) if re.match(stop, lines[k]))
    return "\n".join(lines[i:j])


def _engine_rows(rep, kernel):
    """The (profile, scenario) rows a kernel's engine section must have, grouped by profile."""
    return [(p, s) for p in rep.profiles() if p in PROFILES for s in ENGINE_SCENARIOS]


def test_engine_cells_leave_the_classic_matrix_as_it_was(runs):
    classic, rep, _ = runs
    assert rep.groups() == classic.groups() and "engine" not in [g for g, _ in rep.groups()]
    # terminal: per kernel the classic matrix and counts, with the port's real outcomes
    before, after = render_report(classic), render_report(rep)
    for kernel in KERNELS:
        title = [line for line in before.splitlines() if line.startswith("== %s " % kernel)][0]
        block = _blocks(before, title, r"== |\d+ cells: ")
        assert _blocks(after, title, "-- %s:" % kernel) == block
        row = [line for line in block.splitlines() if line.startswith("driver-init ")][0]
        profiles = block.splitlines()[1].split()[1:]
        assert row.split()[1:] == [short_label(classic.get(kernel, p, "driver-init").outcome) for p in profiles]
    # markdown: one table per scenario group, identical
    for _, scenarios in classic.groups():
        assert group_table(rep, scenarios) == group_table(classic, scenarios)
    md_before, md_after = render(classic, "markdown"), render(rep, "markdown")
    first = "## %s" % classic.groups()[0][0]
    assert _blocks(md_after, first, "## engine") == _blocks(md_before, first, "## Not as expected")
    # HTML: the grids of the scenario groups, identical
    grids = re.compile(r'<div class="scroll"><table class="grid".*?</table></div>')
    assert grids.findall(render(rep, "html")) == grids.findall(render(classic, "html"))
    assert "engine-grid" not in render(classic, "html") and "## engine" not in md_before
    assert "disagree" not in before


def test_terminal_engine_section_has_profile_scenario_rows_and_an_engine_column_each(runs):
    _, rep, _ = runs
    assert rep.engine_columns() == COLUMNS
    text = render_report(rep)
    for kernel in KERNELS:
        lines = _blocks(text, "-- %s: engine scenarios, one column per engine" % kernel, "outcome ").splitlines()
        assert lines[1].split() == ["profile", "scenario"] + COLUMNS
        rows = [line.split() for line in lines[3:] if line.strip()]
        assert [(r[0], r[1]) for r in rows] == _engine_rows(rep, kernel)
        for r in rows:
            for engine, label in zip(COLUMNS, r[2:]):
                outcome = expected_outcome(kernel, r[0], r[1], engine)
                cv = rep.get(kernel, r[0], r[1], engine)
                assert label == ("-" if outcome is None else short_label(outcome, cv.met)), (kernel, r, engine)
    # the repeat that disagreed with itself is FLAKY, and not as expected (one attempt missed)
    host = _blocks(text, "-- host: engine scenarios, one column per engine", "outcome ")
    assert re.search(r"^tmpfs\s+engine-whiteouts\s+PASS\s+FLAKY!\s+PASS$", host, re.M)
    assert re.search(r"^btrfs\s+engine-verdict\s+REF\s+REF\s+PASS$", host, re.M)
    debian = _blocks(text, "-- debian-6.1: engine scenarios, one column per engine", "outcome ")
    assert re.search(r"^tmpfs\s+engine-whiteouts\s+PASS\s+PASS\s+-$", debian, re.M)   # not run on c-s
    # counts per engine under it, FLAKY counted
    counts = _blocks(text, [line for line in text.splitlines() if line.startswith("outcome ")
                            and "port" in line][0], "$")
    assert re.search(r"^FLAKY\s+0\s+1\s+0$", counts, re.M) and re.search(r"^unexpected\s+0\s+1\s+0$", counts, re.M)
    assert "host/tmpfs/engine-whiteouts/docker-overlay2  50%" in text


def test_markdown_engine_section_per_kernel(runs):
    _, rep, _ = runs
    md = render(rep, "markdown")
    for kernel in KERNELS:
        heading = "### %s (%s)" % (kernel, rep.kernel_release(kernel))
        table = _blocks(md, heading, "##").splitlines()
        assert [c.strip() for c in table[2].strip("|").split("|")] == ["profile", "scenario"] + COLUMNS
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[4:] if line.startswith("|")]
        assert [(r[0], r[1]) for r in rows] == _engine_rows(rep, kernel)
        for r in rows:
            for engine, text in zip(COLUMNS, r[2:]):
                cv = rep.get(kernel, r[0], r[1], engine)
                assert text == ("·" if cv is None else cv.symbol(False) if cv.met else "**%s**" % cv.symbol())
    # the cells not as expected carry the engine, its version and verdict, and their bundle command
    block = _blocks(md, "### `debian-6.1/btrfs/engine-whiteouts/docker-overlay2` — ERROR, expected PASS", "##")
    assert "engine docker-overlay2 %s" % VERSIONS["docker-overlay2"] in block
    assert "verdict: accepted: docker-overlay2: the backing btrfs filesystem is fine" in block
    assert "overlaylab bundle %s debian-6.1/btrfs/engine-whiteouts/docker-overlay2" % rep.run_id in block
    assert "$ docker-overlay2 status    # exit 0" in block
    assert "overlaylab bundle %s debian-6.1/tmpfs/engine-verdict`" % rep.run_id in md   # the port: 3 parts
    assert {c.id for c in rep.unmet()} == UNMET_ENGINE_CELLS
    assert "| host/tmpfs/engine-whiteouts/docker-overlay2 | 50%" in md


def test_disagree_section_lists_exactly_the_rows_where_the_port_differs(runs):
    _, rep, _ = runs
    assert rep.disagreements() == [(k, p, s) for k in KERNELS for p, s in _engine_rows(rep, k) if (k, p, s) in DISAGREE]
    assert sorted(rep.disagreements()) == sorted(DISAGREE)
    rows = {"%s/%s/%s" % d for d in DISAGREE}
    # terminal: one line per engine of each row, with its outcome and error or verdict line
    text = render_report(rep)
    section = text.split("Where the port and the living drivers disagree:\n")[1].split("\n\n")[0].splitlines()[2:]
    assert {line.split()[0] for line in section} == rows
    assert len(section) == sum(1 for d in DISAGREE for e in ENGINES if CELLS[d][e])
    line = [line for line in section if line.startswith("host/btrfs/engine-verdict ") and " containers-storage " in line]
    assert re.search(r"containers-storage\s+PASS\s+accepted: containers-storage: the backing btrfs filesystem is fine",
                     line[0])
    assert any(re.search(r"docker-overlay2\s+ERR!\s+docker-overlay2: synthetic error on btrfs$", s) for s in section)
    # markdown
    md = render(rep, "markdown")
    assert "## Where the port and the living drivers disagree (4)" in md
    table = _blocks(md, "## Where the port and the living drivers disagree (4)", "## Not as")
    md_rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[4:] if line.startswith("|")]
    assert {r[0] for r in md_rows} == rows
    assert ["host/btrfs/engine-verdict", "port", "⛔ REFUSED",
            "`refused: port: the backing btrfs filesystem is not supported`"] in md_rows
    # summary.json
    data = json.loads(render(rep, "json"))
    assert [(d["kernel"], d["profile"], d["scenario"]) for d in data["disagreements"]] == rep.disagreements()
    assert data["disagreements"][0]["outcomes"] == {"port": "REFUSED", "docker-overlay2": "REFUSED",
                                                    "containers-storage": "PASS"}


def test_when_every_engine_agrees_the_section_says_so(lab, tmp_path):
    agree = {k: {e: (["REFUSED"] if k[1] == "btrfs" else ["PASS"]) for e in ENGINES} for k in CELLS}
    rep = RunReport.from_run(load_run(make_engine_run(lab.plain, str(tmp_path / "r"), cells=agree)))
    assert rep.disagreements() == [] and len(rep.engine_cells()) == len(agree) * len(ENGINES)
    assert "## Where the port and the living drivers disagree (0)\n\n%s" % AGREE_TEXT in render(rep, "markdown")
    assert "Where the port and the living drivers disagree:\nnone: on every engine scenario" in render_report(rep)
    html = render(rep, "html")
    assert '<p class="muted" id="disagree-none">%s</p>' % escape(AGREE_TEXT) in html and "disagree-table" not in html


def test_junit_names_each_engine_cell_once_with_an_engine_property(runs):
    _, rep, _ = runs
    root = ET.fromstring(render(rep, "junit"))
    cases = list(root.iter("testcase"))
    assert len(cases) == len(rep.cells) == int(root.get("tests"))
    names = [(tc.get("classname"), tc.get("name")) for tc in cases]
    assert len(set(names)) == len(names)
    seen = set()
    for tc in cases:
        props = {p.get("name"): p.get("value") for p in tc.find("properties").iter("property")}
        key = (props["kernel"], props["profile"], props["scenario"], props["engine"])
        seen.add(key)
        cv = rep.cells[key]
        assert tc.get("name") == (cv.scenario if cv.engine == "port" else "%s[%s]" % (cv.scenario, cv.engine))
        assert tc.get("classname") == "overlaylab.%s.%s" % (cv.target.replace(".", "_"), cv.profile)
        if cv.in_engine_section:
            assert props["engine_version"] == VERSIONS[cv.engine] and props["engine_verdict"] == cv.verdict_line
        else:
            assert "engine_version" not in props
    assert seen == set(rep.cells)
    # counts: the unmet port cell fails, the unmet ERROR is an error, the flaky one passes flagged
    assert root.get("failures") == "1" and root.get("errors") == "1"
    assert int(root.get("skipped")) == sum(1 for c in rep.cells.values() if c.met and c.outcome != "PASS")
    flaky = [tc for tc in cases if tc.get("name") == "engine-whiteouts[docker-overlay2]"
             and tc.get("classname") == "overlaylab.host.tmpfs"]
    assert len(flaky) == 1 and flaky[0].find("flakyFailure") is not None
    (error,) = [tc for tc in cases if tc.find("error") is not None]
    assert (error.get("classname"), error.get("name")) == ("overlaylab.debian-6_1.btrfs", "engine-whiteouts[docker-overlay2]")
    for suite in root.iter("testsuite"):
        assert int(suite.get("tests")) == len(suite.findall("testcase"))


def test_summary_json_counts_per_engine(runs):
    _, rep, _ = runs
    data = json.loads(render(rep, "json"))
    assert set(data["engines"]) == set(ENGINES)
    for engine in ENGINES:
        expected = {}
        for k in CELLS:
            outcome = expected_outcome(*k, engine)
            if outcome:
                expected[outcome] = expected.get(outcome, 0) + 1
        if engine == "port":   # plus the classic cells of both kernels
            for cv in rep.classic_cells():
                expected[cv.outcome] = expected.get(cv.outcome, 0) + 1
        assert {o: n for o, n in data["engines"][engine]["counts"].items() if n} == expected, engine
        assert data["engines"][engine]["cells"] == sum(expected.values())
    assert data["engines"]["docker-overlay2"]["unmet"] == 1 and data["engines"]["containers-storage"]["unmet"] == 0
    assert sum(e["cells"] for e in data["engines"].values()) == data["cells"] == len(rep.cells)
    # the port's matrix keeps its shape; the engine scenarios have one of their own
    assert data["matrix"]["host"]["btrfs"]["driver-init"] == "REFUSED"
    assert data["matrix"]["host"]["btrfs"]["engine-verdict"] == "REFUSED"       # the port's cell
    assert data["engine_matrix"]["host"]["btrfs"]["engine-verdict"] == {
        "port": "REFUSED", "docker-overlay2": "REFUSED", "containers-storage": "PASS"}
    assert data["engine_matrix"]["host"]["tmpfs"]["engine-whiteouts"]["docker-overlay2"] == "FLAKY"
    assert "containers-storage" not in data["engine_matrix"]["debian-6.1"]["tmpfs"]["engine-whiteouts"]
    assert {c["cell"]: c["engine"] for c in data["unmet"]} == {
        "debian-6.1/tmpfs/engine-verdict": "port", "debian-6.1/btrfs/engine-whiteouts/docker-overlay2": "docker-overlay2"}


# The index as schema 1 wrote it (before engines).
SCHEMA_1_CELLS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, path TEXT, started TEXT, ended TEXT, status TEXT, provider TEXT,
    host_kernel TEXT, kernels TEXT, argv TEXT, repeat INTEGER, cells INTEGER,
    pass INTEGER, fail INTEGER, refused INTEGER, unsupported INTEGER, error INTEGER, flaky INTEGER,
    unmet INTEGER, indexed TEXT);
CREATE TABLE cells (
    run_id TEXT, kernel TEXT, profile TEXT, scenario TEXT, grp TEXT, kernel_release TEXT,
    outcome TEXT, outcomes TEXT, expected TEXT, met INTEGER, attempts INTEGER, pass_rate REAL,
    duration REAL, error TEXT,
    PRIMARY KEY (run_id, kernel, profile, scenario));
CREATE INDEX cells_by_cell ON cells (kernel, profile, scenario);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO runs (run_id, started, status, cells) VALUES ('20200101-000000-old1', '2020-01-01T00:00:00+00:00', 'finished', 2);
INSERT INTO cells VALUES ('20200101-000000-old1', 'host', 'btrfs', 'engine-verdict', 'engine', '5.10', 'PASS', 'PASS',
                          'PASS', 1, 1, 1.0, 0.5, '');
INSERT INTO cells VALUES ('20200101-000000-old1', 'host', 'btrfs', 'driver-init', 'failure-class', '5.10', 'REFUSED',
                          'REFUSED', 'REFUSED', 1, 1, 0.0, 0.1, '');
"""


def test_history_migrates_an_old_index_and_tells_engines_apart(runs, tmp_path):
    _, rep, run_dir = runs
    reports = str(tmp_path / "reports")
    os.makedirs(os.path.join(reports, "runs"))
    shutil.copytree(run_dir, os.path.join(reports, "runs", os.path.basename(run_dir)))
    conn = sqlite3.connect(history.index_path(reports))
    conn.executescript(SCHEMA_1_CELLS)
    conn.close()

    history.index_run(reports, os.path.join(reports, "runs", os.path.basename(run_dir)))
    conn = sqlite3.connect(history.index_path(reports))
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)
        assert conn.execute("SELECT engine, outcome FROM cells WHERE run_id = '20200101-000000-old1' ORDER BY scenario"
                            ).fetchall() == [("port", "REFUSED"), ("port", "PASS")]
        pk = [r[1] for r in sorted(conn.execute("PRAGMA table_info(cells)"), key=lambda r: r[5]) if r[5]]
        assert pk == ["run_id", "kernel", "profile", "scenario", "engine"]
        assert conn.execute("SELECT COUNT(*) FROM cells WHERE run_id = ?", (rep.run_id,)).fetchone() == (len(rep.cells),)
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name = 'cells_schema1'").fetchall()
    finally:
        conn.close()
    history.index_run(reports, run_dir, rep)     # opening a migrated index again changes nothing
    assert len(history.cell_history(reports, "*")) == len(rep.cells) + 2

    # a 3-part id is the port's cell (also spelled with /port); a 4th part names another engine
    port = history.cell_history(reports, "host/btrfs/engine-verdict")
    assert [(r["run_id"], r["engine"], r["outcome"]) for r in port] == [
        ("20200101-000000-old1", "port", "PASS"), (rep.run_id, "port", "REFUSED")]
    assert history.cell_history(reports, "host/btrfs/engine-verdict/port") == port
    cs = history.cell_history(reports, "host/btrfs/engine-verdict/containers-storage")
    assert [(r["cell"], r["outcome"]) for r in cs] == [("host/btrfs/engine-verdict/containers-storage", "PASS")]
    # globs: * spans parts, so a scenario glob takes in every engine
    every = history.cell_history(reports, "host/btrfs/engine-verdict*")
    assert [r["engine"] for r in every] == ["port", "port", "containers-storage", "docker-overlay2"]
    one_engine = history.cell_history(reports, "*/*/*/docker-overlay2")
    assert {r["cell"] for r in one_engine} == {c.id for c in rep.cells.values() if c.engine == "docker-overlay2"}
    # the cell that moved is the port's (PASS in the old run, REFUSED now), named by its id
    moved = {cell: (n, set(outcomes.split(","))) for cell, n, outcomes in history.moving_cells(reports)}
    assert moved == {"host/btrfs/engine-verdict": (2, {"PASS", "REFUSED"})}
    text = history.render_cell_history(every)
    assert "== host/btrfs/engine-verdict: 2 runs, outcome changed 1 times; now REFUSED" in text
    assert "== host/btrfs/engine-verdict/containers-storage: 1 runs" in text
    res = cli(["history", "--cell", "debian-6.1/*/*/docker-overlay2", "--reports-dir", reports])
    assert res.returncode == 0, res.stderr
    assert "== debian-6.1/btrfs/engine-whiteouts/docker-overlay2: 1 runs" in res.stdout and "ERROR!" in res.stdout
