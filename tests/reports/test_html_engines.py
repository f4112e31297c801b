"""The HTML report's engine section in a real headless Chromium: kernel x engine columns over
profile x scenario rows, the classic colours and contrast, the details of an engine cell (its
engine, version and verdict) opened by a real click, and the rows where the engines disagree."""
from __future__ import annotations

import os

from overlaylab.lab.results import load_run
from overlaylab.reports import RunReport, render

from tests.needs import need

from .cdp import Chromium, find_chromium
from .engine_runs import DISAGREE, ENGINES, KERNELS, VERSIONS, expected_outcome, make_engine_run
from .test_html import CONTRAST_JS, _wait

COLUMNS = ["port", "docker-overlay2", "containers-storage"]


def test_engine_grid_disagreements_and_engine_details_in_chromium(lab, tmp_path):
    need(find_chromium() is not None, "chromium is not installed (Debian package chromium)")
    run_dir = make_engine_run(lab.plain, str(tmp_path / "reports"))
    rep = RunReport.from_run(load_run(run_dir))
    page = os.path.join(run_dir, "report.html")
    with open(page, "w", encoding="utf-8") as f:
        f.write(render(rep, "html"))

    browser = Chromium(str(tmp_path / "chromium-profile"))
    try:
        browser.navigate("file://" + page)
        # the scenario groups' grids hold the classic cells, the engine grid the engine cells
        classic = browser.evaluate("Array.from(document.querySelectorAll('table.grid td.cell'))"
                                   ".map(function(td){return td.dataset.cell})")
        assert sorted(classic) == sorted(cv.id for cv in rep.classic_cells())
        heads = browser.evaluate(
            "Array.from(document.querySelectorAll('#engine-grid thead tr')).map(function(tr){"
            "return Array.from(tr.children).map(function(th){return [th.textContent, th.colSpan]})})")
        assert heads[0][:2] == [["profile", 1], ["scenario", 1]]
        assert [h[0] for h in heads[0][2:]] == ["%s %s" % (k, rep.kernel_release(k)) for k in KERNELS]
        assert [h[1] for h in heads[0][2:]] == [len(COLUMNS)] * len(KERNELS)       # kernel x engine
        assert [h[0] for h in heads[1]] == COLUMNS * len(KERNELS)
        body = browser.evaluate(
            "Array.from(document.querySelectorAll('#engine-grid tbody tr')).map(function(tr){"
            "return Array.from(tr.children).map(function(td){return [td.className, td.textContent, "
            "td.dataset.cell || '', getComputedStyle(td).backgroundColor]})})")
        rows, profile = [], None
        for tr in body:
            if tr[0][0] == "profile":          # the profile cell spans its scenarios' rows
                profile = tr.pop(0)[1]
            rows.append((profile, tr[0][1]))
            cells = tr[1:]
            assert len(cells) == len(KERNELS) * len(COLUMNS)
            for i, (cls, text, cell_id, _bg) in enumerate(cells):
                kernel, engine = KERNELS[i // len(COLUMNS)], COLUMNS[i % len(COLUMNS)]
                cv = rep.get(kernel, profile, tr[0][1], engine)
                if expected_outcome(kernel, profile, tr[0][1], engine) is None:
                    assert cv is None and cls == "none" and text == "·"
                    continue
                assert cell_id == cv.id and cv.outcome == expected_outcome(kernel, profile, tr[0][1], engine)
                assert ("o-%s" % cv.outcome) in cls and (("unmet" in cls) == (not cv.met))
        assert rows == rep.engine_rows()
        # the colours of the classic cells, and WCAG AA for every cell on the page
        pass_bg = browser.evaluate("getComputedStyle(document.querySelector('td.cell[data-cell=\"host/tmpfs/driver-init\"]'))"
                                   ".backgroundColor")
        engine_pass = browser.evaluate("getComputedStyle(document.querySelector("
                                       "'td.cell[data-cell=\"host/tmpfs/engine-verdict/containers-storage\"]')).backgroundColor")
        assert engine_pass == pass_bg == "rgb(220, 242, 226)"
        for cell_id, ratio in browser.evaluate(CONTRAST_JS):
            assert ratio >= 4.5, (cell_id, ratio)
        flaky = browser.evaluate("(function(td){return [td.textContent, getComputedStyle(td).backgroundImage]})"
                                 "(document.querySelector('td.cell[data-cell=\"host/tmpfs/engine-whiteouts/docker-overlay2\"]'))")
        assert flaky[0] == "! FLAKY" and "repeating-linear-gradient" in flaky[1]

        # where they disagree: exactly the rows of DISAGREE, one line per engine that ran
        heading = browser.evaluate("document.getElementById('disagree-heading').textContent")
        assert heading == "Where the port and the living drivers disagree (%d)" % len(DISAGREE)
        listed = browser.evaluate("Array.from(document.querySelectorAll('#disagree-table tbody tr'))"
                                  ".map(function(tr){return tr.dataset.row})")
        assert sorted(set(listed)) == sorted("%s/%s/%s" % d for d in DISAGREE)
        assert len(listed) == sum(1 for d in DISAGREE for e in ENGINES if rep.get(*d, e) is not None)
        table = browser.evaluate("document.getElementById('disagree-table').innerText")
        assert "accepted: containers-storage: the backing btrfs filesystem is fine" in table
        assert "docker-overlay2: synthetic error on btrfs" in table

        # a real click on an engine cell opens its details: engine, version, verdict, commands
        target = "debian-6.1/btrfs/engine-verdict/containers-storage"
        browser.click_selector('td.cell[data-cell="%s"]' % target)
        _wait(browser, "!document.getElementById('details').hidden")
        assert browser.evaluate("document.getElementById('details-title').textContent") == target
        facts = browser.evaluate("document.getElementById('details-facts').innerText")
        assert "containers-storage (%s)" % VERSIONS["containers-storage"] in facts
        assert "refused: containers-storage: the backing btrfs filesystem is not supported" in facts
        evidence = browser.evaluate("document.getElementById('details-evidence').innerText")
        assert "$ containers-storage status" in evidence and "Backing Filesystem: btrfs" in evidence
        assert "overlaylab bundle %s %s" % (rep.run_id, target) in facts
        assert browser.evaluate("location.hash") == "#cell=" + target
        browser.screenshot(str(tmp_path / "report-engines.png"))
        # a link in the disagree table opens the port's cell of that row
        browser.key("Escape")
        _wait(browser, "document.getElementById('details').hidden")
        browser.click_selector('#disagree-table a[data-cell="host/btrfs/engine-verdict"]')
        _wait(browser, "!document.getElementById('details').hidden")
        facts = browser.evaluate("document.getElementById('details-facts').innerText")
        assert "port (%s)" % VERSIONS["port"] in facts and "refused: port:" in facts
    finally:
        browser.close()
    assert browser.proc.poll() is not None
    with open(str(tmp_path / "report-engines.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("OVERLAYLAB_KEEP_SCREENSHOTS"):
        import shutil
        shutil.copy(str(tmp_path / "report-engines.png"), os.path.join(os.environ["OVERLAYLAB_KEEP_SCREENSHOTS"],
                                                                      "report-engines.png"))
