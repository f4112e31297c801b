"""The HTML report in a real headless Chromium (Debian's package), driven over the DevTools
protocol: the grid's content, a real mouse click on a cell, the details it opens, a screenshot."""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from overlaylab.lab.results import load_run
from overlaylab.reports import RunReport, render

from tests.needs import need

from .cdp import Chromium, find_chromium
from .conftest import copy_run



@pytest.fixture(autouse=True)
def _chromium():
    """Skipped locally without Chromium, failed under CI (tests/needs.py); scripts/setup installs it."""
    need(find_chromium() is not None, "chromium is not installed (Debian package chromium)")


# WCAG contrast of every grid cell's computed colour on its computed background, in the page.
CONTRAST_JS = r"""
(function () {
  function lum(rgb) {
    var c = rgb.match(/\d+(\.\d+)?/g).slice(0, 3).map(function (v) {
      v = v / 255; return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  }
  return Array.from(document.querySelectorAll('td.cell, .pill, .legend .sw')).filter(function (e) {
    return getComputedStyle(e).backgroundImage === 'none';
  }).map(function (e) {
    var s = getComputedStyle(e), a = lum(s.color), b = lum(s.backgroundColor);
    return [e.dataset.cell || e.className, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  });
})()
"""


def _wait(browser, expression, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.evaluate(expression)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % expression)


def test_html_grid_and_cell_details_in_chromium(lab, tmp_path):
    def break_cell(rec):
        if rec["profile"] == "tmpfs" and rec["scenario"] == "create-empty":
            rec.update(outcome="FAIL", met=False, error="synthetic: Create failed",
                       evidence=dict(rec.get("evidence") or {}, dmesg=["[ 9.9] overlayfs: synthetic complaint"]))
        return rec
    # The real run's page, plus a copy with one cell not as expected (to see it marked).
    page = os.path.join(lab.plain, "report.html")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text)   # everything inline
    assert "url(" not in text[:text.index("</style>")] and "@import" not in text
    broken = copy_run(lab.plain, str(tmp_path / "reports"), "20990101-000000-html", break_cell)
    broken_page = os.path.join(broken, "report.html")
    with open(broken_page, "w", encoding="utf-8") as f:
        f.write(render(RunReport.from_run(load_run(broken)), "html"))
    rep = RunReport.from_run(load_run(lab.plain))

    browser = Chromium(str(tmp_path / "chromium-profile"))
    try:
        browser.navigate("file://" + page)
        assert browser.evaluate("performance.getEntriesByType('resource').length") == 0   # fetched nothing
        grid = browser.evaluate(
            "Array.from(document.querySelectorAll('td.cell')).map(function(td){"
            "return [td.dataset.cell, td.dataset.outcome, td.textContent, getComputedStyle(td).backgroundColor]})")
        assert sorted(c[0] for c in grid) == sorted(cv.id for cv in rep.cells.values())
        by_id = {c[0]: c for c in grid}
        assert by_id["host/btrfs/driver-init"][1:3] == ["REFUSED", "REF"]
        assert by_id["host/tmpfs/driver-init"][1:3] == ["PASS", "PASS"]
        assert by_id["host/tmpfs/mount-label"][1:3] == ["FAIL", "FAIL"]
        colours = {c[1]: c[3] for c in grid}
        assert len(set(colours.values())) == len(colours)           # one colour per outcome
        assert colours["PASS"] == "rgb(220, 242, 226)"              # as expected: pale tints
        assert colours["FAIL"] == "rgb(251, 224, 224)"              # a known FAIL is pink, not red
        # every cell's real computed text/background pair meets WCAG AA
        for cell_id, ratio in browser.evaluate(CONTRAST_JS):
            assert ratio >= 4.5, (cell_id, ratio)
        # the "as expected, and why" table, as in report.md, with links into the details
        why = browser.evaluate("document.getElementById('expected-table').innerText")
        for cv in rep.cells.values():
            if cv.outcome != "PASS" and cv.met:
                assert cv.expected_why in why and cv.profile in why
        assert "REFUSED" in why and "FAIL" in why
        heading = browser.evaluate("document.getElementById('expected-heading').textContent")
        assert heading == "Other non-passing cells, as expected (%d)" % sum(
            1 for cv in rep.cells.values() if cv.outcome != "PASS" and cv.met and not cv.flaky)
        legend = browser.evaluate("document.getElementById('legend').innerText")
        assert "As expected" in legend and "Not as expected" in legend and "! FAIL" in legend
        groups = browser.evaluate("Array.from(document.querySelectorAll('table.grid')).map(function(t){return t.dataset.group})")
        assert groups == [g for g, _ in rep.groups()]
        assert browser.evaluate("document.getElementById('details').hidden") is True
        summary = browser.evaluate("document.getElementById('summary').textContent")
        assert summary == rep.summary_line()

        # a real click on the tmpfs/mount-label cell opens its details
        browser.click_selector('td.cell[data-cell="host/tmpfs/mount-label"]')
        _wait(browser, "!document.getElementById('details').hidden")
        assert browser.evaluate("document.getElementById('details-title').textContent") == "host/tmpfs/mount-label"
        facts = browser.evaluate("document.getElementById('details-facts').innerText")
        cv = rep.get("host", "tmpfs", "mount-label")
        assert "FAIL" in facts and cv.expected_why in facts and "mount-label (diff)" in facts
        assert "%.3f s" % cv.duration in facts and os.uname().release in facts
        evidence = browser.evaluate("document.getElementById('details-evidence').innerText")
        assert cv.error[:60] in evidence and "driver_status" in evidence
        fs = browser.evaluate("document.getElementById('details-fs').innerText")
        assert "mount -t tmpfs -o size=64m,mode=0755 tmpfs" in fs and "mountinfo" in fs
        probes = browser.evaluate("document.getElementById('details-probes').innerText")
        assert "d_type" in probes and "kernel_release" in probes
        assert browser.evaluate("location.hash") == "#cell=host/tmpfs/mount-label"
        browser.screenshot(str(tmp_path / "report-details.png"))
        browser.key("Escape")
        _wait(browser, "document.getElementById('details').hidden")

        # the copy with a cell not as expected: marked in the grid, listed, and opened by URL
        browser.navigate("file://" + broken_page + "#cell=host/tmpfs/create-empty")
        _wait(browser, "!document.getElementById('details').hidden")
        assert browser.evaluate("document.querySelector('td.cell[data-cell=\"host/tmpfs/create-empty\"]')"
                                ".classList.contains('unmet')") is True
        unmet = browser.evaluate("(function(td){var s = getComputedStyle(td); return [td.textContent, "
                                 "s.backgroundColor, s.color, s.boxShadow]})"
                                 "(document.querySelector('td.cell[data-cell=\"host/tmpfs/create-empty\"]'))")
        known = browser.evaluate("getComputedStyle(document.querySelector("
                                 "'td.cell[data-cell=\"host/tmpfs/mount-label\"]')).backgroundColor")
        assert unmet[0] == "! FAIL"                                  # a text marker, not only colour
        assert unmet[1] == "rgb(198, 40, 40)" != known               # solid red vs the known FAIL's pink
        assert unmet[2] == "rgb(255, 255, 255)" and "inset" in unmet[3]
        for cell_id, ratio in browser.evaluate(CONTRAST_JS):
            assert ratio >= 4.5, (cell_id, ratio)
        assert "synthetic: Create failed" in browser.evaluate("document.getElementById('unmet-list').innerText")
        details = browser.evaluate("document.getElementById('details').innerText")
        assert "NOT as expected (expected PASS)" in details and "overlayfs: synthetic complaint" in details
        browser.evaluate("window.scrollTo(0, 0)")
        browser.screenshot(str(tmp_path / "report-unmet.png"))
    finally:
        browser.close()
    assert browser.proc.poll() is not None
    for name in ("report-details.png", "report-unmet.png"):
        with open(str(tmp_path / name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("OVERLAYLAB_KEEP_SCREENSHOTS"):
        import shutil
        for name in ("report-details.png", "report-unmet.png"):
            shutil.copy(str(tmp_path / name), os.path.join(os.environ["OVERLAYLAB_KEEP_SCREENSHOTS"], name))
    json.dumps(grid)  # the grid data is plain JSON (nothing else leaked in)
