"""The HTML report's history view: each cell's outcome across the indexed runs up to this one,
and "last worked in" / "first failed in" for the cells that stopped passing, in a real Chromium.

Three runs are copies of the real ``lab`` run (``--provider local``) started a day apart and
indexed: tmpfs/create-empty is PASS, PASS, then FAIL.
"""
from __future__ import annotations

import os
import time

import pytest

from overlaylab.lab.results import load_run
from overlaylab.reports import RunReport, render
from overlaylab.reports.history import index_run, regression

from tests.needs import need

from .cdp import Chromium, find_chromium
from .conftest import copy_run

RUNS = ("20990101-000000-hist", "20990102-000000-hist", "20990103-000000-hist")
CELL = "host/tmpfs/create-empty"


def _three_runs(lab, reports: str):
    def fail_create_empty(rec):
        if rec["profile"] == "tmpfs" and rec["scenario"] == "create-empty":
            rec.update(outcome="FAIL", met=False, error="synthetic: Create failed")
        return rec
    dirs = []
    for i, run_id in enumerate(RUNS):
        dirs.append(copy_run(lab.plain, reports, run_id, fail_create_empty if i == 2 else None,
                             started="2099-01-0%dT00:00:00+00:00" % (i + 1)))
        index_run(reports, dirs[-1])
    return dirs


def _page(run_dir: str) -> str:
    path = os.path.join(run_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(RunReport.from_run(load_run(run_dir)), "html"))
    return path


def test_regression_names_the_last_pass_and_the_first_run_after_it():
    assert regression([("r1", "PASS"), ("r2", "PASS"), ("r3", "FAIL")]) == ("r2", "r3")
    assert regression([("r1", "PASS"), ("r2", "FAIL"), ("r3", "PASS"), ("r4", "ERROR"), ("r5", "FAIL")]) == ("r3", "r4")
    assert regression([("r1", "FAIL"), ("r2", "PASS")]) == (None, None)           # passes now
    assert regression([("r1", "FAIL"), ("r2", "FAIL")]) == (None, None)           # never passed
    assert regression([]) == (None, None)


def test_html_history_names_last_worked_and_first_failed_in_chromium(lab, tmp_path):
    need(find_chromium() is not None, "chromium is not installed (Debian package chromium)")
    reports = str(tmp_path / "reports")
    dirs = _three_runs(lab, reports)
    third, second = _page(dirs[2]), _page(dirs[1])
    with open(third, encoding="utf-8") as f:
        assert "<script src" not in f.read()
    browser = Chromium(str(tmp_path / "chromium-profile"))
    try:
        browser.navigate("file://" + third)
        assert browser.evaluate("performance.getEntriesByType('resource').length") == 0
        runs = browser.evaluate("Array.from(document.querySelectorAll('#history-table thead th[data-run]'))"
                                ".map(function(th){return th.dataset.run})")
        assert runs == list(RUNS)
        rows = browser.evaluate(
            "Array.from(document.querySelectorAll('#history-table tbody tr')).map(function(tr){"
            "return [tr.dataset.history, Array.from(tr.querySelectorAll('td[data-run]')).map(function(td){"
            "return td.dataset.outcome || ''}), tr.querySelector('.last-worked').innerText,"
            " tr.querySelector('.first-failed').innerText]})")
        assert rows[0] == [CELL, ["PASS", "PASS", "FAIL"], RUNS[1], "%s (FAIL)" % RUNS[2]]   # regressions first
        by_cell = {r[0]: r for r in rows}
        assert len(by_cell) == 6
        assert by_cell["host/tmpfs/driver-init"][1:] == [["PASS"] * 3, "", ""]
        assert by_cell["host/btrfs/driver-init"][1:] == [["REFUSED"] * 3, "never passed in these runs", ""]
        summary = browser.evaluate("document.getElementById('history-summary').innerText")
        assert summary == "3 runs up to this one; 1 of 6 cells stopped passing since an earlier run"
        # the unmet FAIL of run 3 is marked like the matrix marks it; the link opens the cell
        pill = browser.evaluate("document.querySelector('#history-table tr[data-history=\"%s\"] "
                                "td[data-run=\"%s\"] .pill').textContent" % (CELL, RUNS[2]))
        assert pill == "! FAIL"
        browser.click_selector('#history-table a[data-cell="%s"]' % CELL)
        deadline = time.monotonic() + 10
        while browser.evaluate("document.getElementById('details').hidden") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert browser.evaluate("document.getElementById('details-title').textContent") == CELL
        browser.screenshot(str(tmp_path / "history.png"))
        # run 2's page: only the runs up to it, nothing regressed yet
        browser.navigate("file://" + second)
        runs = browser.evaluate("Array.from(document.querySelectorAll('#history-table thead th[data-run]'))"
                                ".map(function(th){return th.dataset.run})")
        assert runs == list(RUNS[:2])
        assert browser.evaluate("document.querySelectorAll('#history-table .last-worked:not(.muted)').length") == 0
    finally:
        browser.close()
    with open(str(tmp_path / "history.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("indexed", [0, 1])
def test_html_history_says_when_there_is_no_history(lab, tmp_path, indexed):
    reports = str(tmp_path / "reports")
    run_dir = copy_run(lab.plain, reports, RUNS[0])
    if indexed:
        index_run(reports, run_dir)
    with open(_page(run_dir), encoding="utf-8") as f:
        text = f.read()
    assert 'id="history-table"' not in text
    assert ("the run index holds no other run up to this one: no history yet" if indexed else
            "no run index next to this run (index.sqlite in its reports directory): no history to show") in text
    assert not os.path.exists(os.path.join(reports, "index.sqlite")) or indexed   # rendering makes no index


def test_html_history_of_a_damaged_index_says_so_and_the_report_renders(lab, tmp_path):
    reports = str(tmp_path / "reports")
    run_dir = copy_run(lab.plain, reports, RUNS[0])
    with open(os.path.join(reports, "index.sqlite"), "wb") as f:
        f.write(b"not a database, " * 512)
    with open(_page(run_dir), encoding="utf-8") as f:
        text = f.read()
    assert "the run index cannot be read (file is not a database): no history to show" in text
    assert 'id="history-table"' not in text and 'id="report-data"' in text


def test_html_history_keeps_engine_cells_apart(lab, tmp_path):
    import json
    import re

    from .engine_runs import make_engine_run
    reports = str(tmp_path / "reports")
    dirs = []
    for i, run_id in enumerate(("20990101-000000-engn", "20990102-000000-engn")):
        dirs.append(make_engine_run(lab.plain, reports, run_id))
        with open(os.path.join(dirs[-1], "run.json")) as f:
            meta = json.load(f)
        meta["started"] = "2099-01-0%dT00:00:00+00:00" % (i + 1)
        with open(os.path.join(dirs[-1], "run.json"), "w") as f:
            json.dump(meta, f)
        index_run(reports, dirs[-1])
    with open(_page(dirs[1]), encoding="utf-8") as f:
        text = f.read()
    rows = dict(re.findall(r'<tr data-history="([^"]+)">(.*?)</tr>', text))
    rep = RunReport.from_run(load_run(dirs[1]))
    assert sorted(rows) == sorted(cv.id for cv in rep.cells.values())
    for engine, outcome in (("", "PASS"), ("/containers-storage", "PASS"), ("/docker-overlay2", "FLAKY")):
        row = rows["host/tmpfs/engine-whiteouts" + engine]
        assert re.findall(r'data-outcome="(\w+)"', row) == [outcome, outcome]
