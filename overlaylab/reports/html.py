"""The HTML report: one static, self-contained page (inline CSS and JS, no network).

The overlayfs features come first (kernel x feature, a tooltip per cell with each backing fs's
answer). The matrix is rendered as coloured tables (one per scenario group; scenarios down, kernel x
profile across; the engine scenarios in one more, profile x scenario down, kernel x engine
across, followed by the rows where the port and the other engines disagree) that read without
JavaScript; the cells' details (evidence, dmesg, the engine's version and verdict, the backing
filesystem's recipe and real parameters, probes, duration, expectation and why) are embedded as
JSON and shown in a side panel when a cell is clicked (or named in the URL as
``#cell=KERNEL/PROFILE/SCENARIO[/ENGINE]``). Above all that, the new failures and the known
issues that matched, with links to their upstream reports (:mod:`.known`); a KNOWN cell is
underlined (dotted) in the matrix and its panel links its report.
"""
from __future__ import annotations

import html
import json
import re
from typing import Any, Dict, List, Optional

from ..agent.features import word
from ..agent.records import SHORT
from ..lab.tables import feature_matrix, feature_states
from .model import (ALL_OUTCOMES, FLAKY, MEANING, NOT_RUN, UNMET_MARK, CellView, RunReport,
                    evidence_sections, fs_sections, probe_rows)


CSS = """
:root { --pass:#1a7f37; --fail:#c62828; --refused:#a14a00; --unsupported:#555f6a; --error:#6b2fa8;
        --pass-bg:#dcf2e2; --pass-fg:#14532d; --fail-bg:#fbe0e0; --fail-fg:#8b1a1a;
        --refused-bg:#fde9d0; --refused-fg:#7a3800; --unsupported-bg:#eceff2; --unsupported-fg:#3b444d;
        --error-bg:#eee2fa; --error-fg:#4b1f7a;
        --flaky:#e8c320; --bg:#fafbfc; --fg:#1d232a; --muted:#5b6570; --line:#d8dde3; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { padding:16px 24px 8px; border-bottom:1px solid var(--line); background:#fff; }
h1 { font-size:20px; margin:0 0 4px; }
h2 { font-size:16px; margin:24px 0 8px; }
main { padding:0 24px 40px; }
body.with-details main { margin-right:min(46vw,720px); }
.muted { color:var(--muted); }
.summary { margin:4px 0; font-weight:600; }
.badges span { display:inline-block; margin:2px 6px 2px 0; padding:1px 8px; border-radius:10px; font-size:12px; }
table { border-collapse:collapse; background:#fff; }
th, td { border:1px solid var(--line); padding:3px 6px; }
th { background:#eef1f4; font-weight:600; font-size:12px; white-space:nowrap; }
th.kernel { background:#dfe5eb; }
td.sid { white-space:nowrap; font-family:ui-monospace,monospace; font-size:12px; }
td.profile { font-weight:600; font-size:12px; white-space:nowrap; vertical-align:top; }
td.cell { text-align:center; font-size:11px; font-weight:700; cursor:pointer; min-width:52px; }
td.cell:hover, td.cell:focus { outline:3px solid #1d232a; outline-offset:-3px; }
td.cell.selected { outline:3px solid #0a58ca; outline-offset:-3px; }
td.none { background:#f2f4f6; color:#5b6570; text-align:center; }
/* As expected: a pale tint of the outcome with dark text (a known FAIL is pink, not red). */
.o-PASS { background:var(--pass-bg); color:var(--pass-fg); } .o-FAIL { background:var(--fail-bg); color:var(--fail-fg); }
.o-REFUSED { background:var(--refused-bg); color:var(--refused-fg); }
.o-UNSUPPORTED { background:var(--unsupported-bg); color:var(--unsupported-fg); }
.o-ERROR { background:var(--error-bg); color:var(--error-fg); }
/* Not as expected: the solid outcome colour, white text, a black frame and a "!" in the text. */
.unmet.o-PASS { background:var(--pass); color:#fff; } .unmet.o-FAIL { background:var(--fail); color:#fff; }
.unmet.o-REFUSED { background:var(--refused); color:#fff; } .unmet.o-UNSUPPORTED { background:var(--unsupported); color:#fff; }
.unmet.o-ERROR { background:var(--error); color:#fff; }
td.cell.unmet { box-shadow: inset 0 0 0 3px #000; }
.o-FLAKY { background:repeating-linear-gradient(45deg,var(--flaky),var(--flaky) 6px,#c9a400 6px,#c9a400 12px); color:#1d232a !important; }
.legend { margin:12px 0; display:flex; flex-wrap:wrap; gap:6px 16px; font-size:12px; }
.legend .sw { display:inline-block; min-width:44px; padding:0 4px; border-radius:3px; margin-right:4px; font-size:11px; font-weight:700; text-align:center; }
.legend .sw.unmet { box-shadow: inset 0 0 0 2px #000; }
.legend .row { flex-basis:100%; }
.overview td { text-align:left; font-size:12px; white-space:nowrap; }
.scroll { overflow-x:auto; }
#details { position:fixed; top:0; right:0; bottom:0; width:min(46vw,720px); background:#fff; border-left:1px solid var(--line);
           box-shadow:-4px 0 12px rgba(0,0,0,.08); overflow-y:auto; padding:16px 20px 40px; }
#details[hidden] { display:none; }
#details h2 { margin:0 0 6px; font-size:16px; font-family:ui-monospace,monospace; word-break:break-all; }
#details .close { float:right; border:1px solid var(--line); background:#fff; border-radius:4px; cursor:pointer; font-size:16px; }
#details dl { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; margin:8px 0; }
#details dt { color:var(--muted); } #details dd { margin:0; word-break:break-word; }
#details h3 { font-size:14px; margin:16px 0 4px; border-bottom:1px solid var(--line); }
#details details { margin:4px 0; } #details summary { cursor:pointer; font-weight:600; }
pre { margin:4px 0; padding:6px 8px; background:#f4f6f8; border:1px solid var(--line); border-radius:4px;
      font:12px/1.35 ui-monospace,SFMono-Regular,Menlo,monospace; white-space:pre-wrap; word-break:break-all; max-height:420px; overflow:auto; }
.pill { display:inline-block; padding:1px 8px; border-radius:10px; font-weight:700; font-size:12px; }
ul.unmet li { margin:2px 0; } a.open { cursor:pointer; color:#0a58ca; text-decoration:underline; }
a.pill[data-cell] { cursor:pointer; }
table.why td { font-size:12px; vertical-align:top; } table.why td.n { text-align:right; }
code { font-family:ui-monospace,monospace; font-size:12px; background:#f0f2f4; padding:0 3px; border-radius:3px; }
td.cell.known { text-decoration:underline dotted; text-underline-offset:3px; }
"""

JS = r"""
(function () {
  var DATA = JSON.parse(document.getElementById('report-data').textContent);
  var panel = document.getElementById('details');
  var UNMET = DATA.unmet_mark;
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function section(parent, title, text, open) {
    var d = el('details'); if (open) d.open = true;
    d.appendChild(el('summary', null, title));
    d.appendChild(el('pre', null, text));
    parent.appendChild(d);
  }
  function pill(outcome, met) {
    var p = el('span', {'class': 'pill o-' + outcome + (met === false ? ' unmet' : '')},
               (met === false ? UNMET + ' ' : '') + outcome); return p;
  }
  function show(id) {
    var c = DATA.cells[id];
    if (!c) return;
    document.querySelectorAll('td.cell.selected').forEach(function (t) { t.classList.remove('selected'); });
    var td = document.querySelector('td.cell[data-cell="' + id.replace(/"/g, '\\"') + '"]');
    if (td) td.classList.add('selected');
    panel.innerHTML = '';
    var close = el('button', {'class': 'close', 'title': 'close (Esc)', 'id': 'details-close'}, '\u00d7');
    close.onclick = hide;
    panel.appendChild(close);
    panel.appendChild(el('h2', {'id': 'details-title'}, id));
    var head = el('div'); head.appendChild(pill(c.outcome, c.met));
    head.appendChild(document.createTextNode(c.met ? '  as expected' : '  NOT as expected (expected ' + c.expected + ')'));
    panel.appendChild(head);
    var dl = el('dl', {'id': 'details-facts'});
    var facts = [['kernel', c.target + (c.kernel_release ? ' (' + c.kernel_release + ')' : '')],
                 ['profile', c.profile], ['scenario', c.scenario + ' (' + c.group + ')'],
                 ['engine', c.engine + (c.engine_version ? ' (' + c.engine_version + ')' : '')]];
    if (c.verdict) facts.push(['engine verdict', c.verdict]);
    facts = facts.concat([['description', c.description], ['outcome', c.outcome], ['expected', c.expected],
                          ['why expected', c.why || '-'], ['duration', c.duration.toFixed(3) + ' s']]);
    if (c.attempts.length > 1) facts.push(['attempts', c.rate]);
    facts.push(['bug bundle', c.bundle]);
    facts.forEach(function (f) { dl.appendChild(el('dt', null, f[0])); dl.appendChild(el('dd', null, f[1])); });
    panel.appendChild(dl);
    if (c.known.length) {
      panel.appendChild(el('h3', null, c.is_known ? 'Known issue' : 'Resembles a known issue'));
      var kl = el('ul', {'id': 'details-known'});
      c.known.forEach(function (k) {
        var li = el('li'); var a = el('a', {'href': k.url, 'target': '_blank', 'rel': 'noopener noreferrer'}, k.title);
        li.appendChild(a); li.appendChild(document.createTextNode(' (' + k.status + ')')); kl.appendChild(li);
      });
      panel.appendChild(kl);
    }
    panel.appendChild(el('h3', null, 'Evidence'));
    var ev = el('div', {'id': 'details-evidence'});
    if (!c.sections.length) ev.appendChild(el('p', {'class': 'muted'}, 'no evidence recorded (the scenario passed cleanly)'));
    c.sections.forEach(function (s) { section(ev, s[0], s[1], true); });
    panel.appendChild(ev);
    if (c.attempts.length > 1) {
      panel.appendChild(el('h3', null, 'Attempts'));
      var tb = el('table');
      c.attempts.forEach(function (a) {
        var tr = el('tr'); tr.appendChild(el('td', null, '#' + a.attempt));
        var td2 = el('td'); td2.appendChild(pill(a.outcome, a.met)); tr.appendChild(td2);
        tr.appendChild(el('td', null, a.met ? 'as expected' : 'not as expected'));
        tr.appendChild(el('td', null, a.duration.toFixed(3) + ' s'));
        tr.appendChild(el('td', null, a.error || '')); tb.appendChild(tr);
      });
      panel.appendChild(tb);
    }
    var key = c.target + '/' + c.profile;
    panel.appendChild(el('h3', null, 'Backing filesystem ' + c.profile));
    var fs = el('div', {'id': 'details-fs'});
    (DATA.fs[key] || []).forEach(function (s, i) { section(fs, s[0], s[1], i < 6); });
    if (!(DATA.fs[key] || []).length) fs.appendChild(el('p', {'class': 'muted'}, 'no profile record'));
    panel.appendChild(fs);
    panel.appendChild(el('h3', null, 'Probes'));
    var pt = el('table', {'id': 'details-probes'});
    (DATA.probes[key] || []).forEach(function (p) {
      var tr = el('tr'); tr.appendChild(el('td', null, p[0])); tr.appendChild(el('td', null, p[1]));
      var td3 = el('td'); var d = el('details'); d.appendChild(el('summary', null, 'evidence'));
      d.appendChild(el('pre', null, p[2])); td3.appendChild(d); tr.appendChild(td3); pt.appendChild(tr);
    });
    panel.appendChild(pt);
    panel.hidden = false;
    document.body.classList.add('with-details');
    panel.scrollTop = 0;
    if (location.hash !== '#cell=' + id) history.replaceState(null, '', '#cell=' + id);
  }
  function hide() {
    panel.hidden = true;
    document.body.classList.remove('with-details');
    document.querySelectorAll('td.cell.selected').forEach(function (t) { t.classList.remove('selected'); });
    history.replaceState(null, '', location.pathname + location.search);
  }
  document.addEventListener('click', function (e) {
    var t = e.target.closest('[data-cell]');
    if (t) { e.preventDefault(); show(t.getAttribute('data-cell')); }
  });
  document.addEventListener('keydown', function (e) {
    if (e.key === 'Escape') hide();
    if (e.key === 'Enter' && e.target.matches && e.target.matches('td.cell')) show(e.target.getAttribute('data-cell'));
  });
  var m = /^#cell=(.+)$/.exec(location.hash);
  if (m) show(decodeURIComponent(m[1]));
  window.overlaylabShow = show;
})();
"""

COLOURS = {"PASS": "var(--pass)", "FAIL": "var(--fail)", "REFUSED": "var(--refused)",
           "UNSUPPORTED": "var(--unsupported)", "ERROR": "var(--error)", FLAKY: "var(--flaky)"}


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cell_data(rep: RunReport, cv: CellView, descriptions: Dict[str, str]) -> Dict[str, Any]:
    return {"target": cv.target, "profile": cv.profile, "scenario": cv.scenario, "group": cv.group,
            "engine": cv.engine, "engine_version": cv.engine_version, "verdict": cv.verdict_line,
            "description": descriptions.get(cv.scenario, ""),
            "outcome": cv.outcome, "expected": cv.expected, "why": cv.expected_why, "met": cv.met,
            "duration": cv.duration, "kernel_release": cv.kernel_release or rep.kernel_release(cv.target),
            "rate": cv.rate_text(), "sections": evidence_sections(cv.record),
            "attempts": [{"attempt": int(a.get("attempt") or i + 1), "outcome": a.get("outcome"),
                          "met": bool(a.get("met")), "duration": float(a.get("duration") or 0.0),
                          "error": (a.get("error") or "")[:300]} for i, a in enumerate(cv.attempts)],
            "bundle": "overlaylab bundle %s %s" % (rep.run_id, cv.id),
            "known": [{"id": k.id, "title": k.title, "url": k.url, "status": k.status} for k in cv.known],
            "is_known": cv.is_known, "is_new": cv.is_new}


def _descriptions() -> Dict[str, str]:
    try:
        from ..agent.scenario import all_scenarios
        return {sid: sc.description for sid, sc in all_scenarios().items()}
    except Exception:  # a report must not fail because the catalogue changed
        return {}


def _json_for_script(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _kernel_th(rep: RunReport, target: str, colspan: int) -> str:
    release = rep.kernel_release(target)
    return '<th class="kernel" colspan="%d">%s%s</th>' % (
        colspan, _e(target), (' <span class="muted">%s</span>' % _e(release)) if release and release != target else "")


def _cell_td(cv: Optional[CellView]) -> str:
    """One matrix cell: its outcome's colours, the short label, ``!`` when not as expected."""
    if cv is None:
        return '<td class="none" title="not run">%s</td>' % NOT_RUN
    cls = "cell o-%s%s%s" % (cv.outcome, "" if cv.met else " unmet", " known" if cv.is_known else "")
    title = "%s: %s%s" % (cv.id, cv.outcome, "" if cv.met else " (expected %s)" % cv.expected)
    if cv.is_known:
        title += " — known issue: %s" % cv.known[0].title
    if len(cv.attempts) > 1:
        title += " — " + cv.rate_text()
    text = SHORT.get(cv.outcome, cv.outcome)
    if not cv.met:
        text = "%s %s" % (UNMET_MARK, text)
    return '<td class="%s" data-cell="%s" data-outcome="%s" data-met="%s" tabindex="0" title="%s">%s</td>' % (
        cls, _e(cv.id), _e(cv.outcome), str(cv.met).lower(), _e(title), _e(text))


def _grid(rep: RunReport, group: str, scenarios: List[str]) -> str:
    targets, profiles = rep.targets(), rep.profiles()
    out = ['<div class="scroll"><table class="grid" data-group="%s">' % _e(group), "<thead><tr>",
           '<th rowspan="2">scenario</th>']
    for t in targets:
        out.append(_kernel_th(rep, t, len(profiles)))
    out.append("</tr><tr>")
    for _t in targets:
        for p in profiles:
            out.append("<th>%s</th>" % _e(p))
    out.append("</tr></thead><tbody>")
    for sid in scenarios:
        out.append('<tr><td class="sid">%s</td>' % _e(sid))
        for t in targets:
            for p in profiles:
                out.append(_cell_td(rep.get(t, p, sid)))
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _engine_grid(rep: RunReport) -> str:
    """The engine scenarios: profile x scenario down (grouped by profile), kernel x engine
    across, the port first under every kernel."""
    targets, engines, rows = rep.targets(), rep.engine_columns(), rep.engine_rows()
    out = ['<div class="scroll"><table class="engine-grid" id="engine-grid"><thead><tr>',
           '<th rowspan="2">profile</th><th rowspan="2">scenario</th>']
    for t in targets:
        out.append(_kernel_th(rep, t, len(engines)))
    out.append("</tr><tr>")
    for _t in targets:
        for e in engines:
            out.append('<th class="engine">%s</th>' % _e(e))
    out.append("</tr></thead><tbody>")
    for i, (p, sid) in enumerate(rows):
        out.append("<tr>")
        if i == 0 or rows[i - 1][0] != p:
            span = sum(1 for q, _ in rows if q == p)
            out.append('<td class="profile" rowspan="%d">%s</td>' % (span, _e(p)))
        out.append('<td class="sid">%s</td>' % _e(sid))
        for t in targets:
            for e in engines:
                out.append(_cell_td(rep.get(t, p, sid, e)))
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _disagree_table(rep: RunReport) -> str:
    """The markdown report's "where the port and the living drivers disagree": per row each
    engine's outcome and its error or verdict line, each a link to the cell's details."""
    from .markdown import AGREE_TEXT, DISAGREE_TITLE
    rows = rep.disagreements()
    out = ['<h2 id="disagree-heading">%s (%d)</h2>' % (_e(DISAGREE_TITLE), len(rows))]
    if not rows:
        out.append('<p class="muted" id="disagree-none">%s</p>' % _e(AGREE_TEXT))
        return "".join(out)
    out.append('<div class="scroll"><table class="why" id="disagree-table"><thead><tr><th>kernel</th><th>profile</th>'
               '<th>scenario</th><th>engine</th><th>outcome</th><th>error or verdict</th></tr></thead><tbody>')
    for t, p, sid in rows:
        cells = [cv for cv in (rep.get(t, p, sid, e) for e in rep.engine_columns()) if cv is not None]
        for i, cv in enumerate(cells):
            out.append('<tr data-row="%s">' % _e("%s/%s/%s" % (t, p, sid)))
            if i == 0:
                out.append('<td rowspan="%d">%s</td><td rowspan="%d">%s</td><td rowspan="%d">%s</td>' % (
                    len(cells), _e(t), len(cells), _e(p), len(cells), _e(sid)))
            out.append('<td>%s</td><td><a class="pill o-%s%s" data-cell="%s">%s%s</a></td><td>%s</td></tr>' % (
                _e(cv.engine), _e(cv.outcome), "" if cv.met else " unmet", _e(cv.id),
                "" if cv.met else UNMET_MARK + " ", _e(cv.outcome), _e(cv.reason_line[:300])))
    out.append("</tbody></table></div>")
    return "".join(out)


def _expected_table(rep: RunReport) -> str:
    """The markdown report's "Other non-passing cells, as expected" table: kernel, outcome,
    how many, which cells and why, each group's first cell a link to its details."""
    from .markdown import _expected_groups, _where
    groups = _expected_groups(rep)
    out = ['<h2 id="expected-heading">Other non-passing cells, as expected (%d)</h2>' % sum(len(g) for _, g in groups)]
    if not groups:
        out.append('<p class="muted" id="expected-none">every cell that ran passed</p>')
        return "".join(out)
    out.append('<div class="scroll"><table class="why" id="expected-table"><thead><tr><th>outcome</th><th>kernel</th>'
               '<th>n</th><th>cells</th><th>why</th></tr></thead><tbody>')
    for (t, outcome, why), cells in groups:
        where = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", _e(_where(rep, cells)))
        out.append('<tr><td><span class="pill o-%s">%s</span></td><td>%s</td><td class="n">%d</td>'
                   '<td>%s <a class="open" data-cell="%s">details</a></td><td>%s</td></tr>' % (
                       _e(outcome), _e(outcome), _e(t), len(cells), where, _e(cells[0].id), _e(why[:300])))
    out.append("</tbody></table></div>")
    return "".join(out)


#: how many runs the history view shows as columns (the latest; regressions look at all)
HISTORY_RUNS = 20


def _history_section(rep: RunReport) -> str:
    """Each cell's outcome across the indexed runs up to this one (:func:`.history.history_until`,
    from ``<reports>/index.sqlite``), the cells that stopped passing first with the run where
    they last worked and the one where they first failed (:func:`.history.regression`)."""
    import os
    import sqlite3
    from .history import INDEX_FILE, history_until, regression
    from .model import reports_dir_of
    out = ['<h2 id="history-heading">History across indexed runs</h2>']
    in_reports = os.path.basename(os.path.dirname(os.path.abspath(rep.run.path))) == "runs"
    try:
        found = history_until(reports_dir_of(rep.run.path), rep) if in_reports else None
    except sqlite3.Error as err:  # a damaged index costs the history view, not the report
        out.append('<p class="muted" id="history-none">the run index cannot be read (%s): no history to show; '
                   '<code>overlaylab history --reindex</code> rebuilds it</p>' % _e(err))
        return "".join(out)
    if found is None:
        out.append('<p class="muted" id="history-none">no run index next to this run (%s in its reports directory): '
                   'no history to show</p>' % _e(INDEX_FILE))
        return "".join(out)
    runs, outcomes = found
    if len(runs) == 1:
        out.append('<p class="muted" id="history-none">the run index holds no other run up to this one: '
                   'no history yet</p>')
        return "".join(out)
    rows = []
    for key, cv in rep.cells.items():
        timeline = [(run_id, outcomes[key][run_id][0]) for run_id, _ in runs if run_id in outcomes[key]]
        worked, failed = regression(timeline)
        rows.append((worked is None, cv.id, cv, timeline, worked, failed))
    rows.sort(key=lambda r: r[0])   # the cells that stopped passing first, then the matrix's order
    regressed = sum(1 for r in rows if not r[0])
    shown = runs[-HISTORY_RUNS:]
    out.append('<p id="history-summary">%d runs up to this one; %d of %d cells stopped passing since an earlier run%s</p>'
               % (len(runs), regressed, len(rows),
                  "" if len(shown) == len(runs) else " (the latest %d runs shown)" % len(shown)))
    out.append('<div class="scroll"><table class="why" id="history-table"><thead><tr><th>cell</th>')
    for run_id, started in shown:
        out.append('<th data-run="%s" title="started %s">%s%s</th>' % (
            _e(run_id), _e(started or "?"), _e(run_id), "<br>(this run)" if run_id == rep.run_id else ""))
    out.append("<th>last worked in</th><th>first failed in</th></tr></thead><tbody>")
    for _ok, cid, cv, timeline, worked, failed in rows:
        out.append('<tr data-history="%s"><td><a class="open" data-cell="%s">%s</a></td>' % (_e(cid), _e(cid), _e(cid)))
        for run_id, _ in shown:
            got = outcomes[cv.key].get(run_id)
            if got is None:
                out.append('<td class="none" data-run="%s" title="not run">%s</td>' % (_e(run_id), NOT_RUN))
                continue
            outcome, met = got
            out.append('<td data-run="%s" data-outcome="%s"><span class="pill o-%s%s">%s%s</span></td>' % (
                _e(run_id), _e(outcome), _e(outcome), "" if met else " unmet", "" if met else UNMET_MARK + " ",
                _e(SHORT.get(outcome, outcome))))
        if worked:
            out.append('<td class="last-worked">%s</td><td class="first-failed">%s (%s)</td>' % (
                _e(worked), _e(failed), _e(dict(timeline)[failed])))
        else:
            out.append('<td class="last-worked muted">%s</td><td class="first-failed"></td>' % (
                "never passed in these runs" if timeline[-1][1] != "PASS" else ""))
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _known_sections(rep: RunReport) -> str:
    """First in the page: the new failures (each a link to its details), then the known issues
    that matched, each with its upstream report and its cells."""
    new = rep.new_failures()
    out = ['<h2 id="new-heading">New failures (%d)</h2><ul class="unmet" id="new-list">' % len(new)]
    for cv in new:
        out.append('<li><a class="open" data-cell="%s">%s</a>: %s, expected %s — %s%s</li>' % (
            _e(cv.id), _e(cv.id), _e(cv.outcome), _e(cv.expected), _e(cv.reason_line[:200]),
            " (resembles %s)" % _e(cv.known[0].id) if cv.known else ""))
    if not new:
        out.append('<li class="muted">none: every failing cell is a known issue</li>')
    out.append("</ul>")
    groups = rep.known_groups()
    out.append('<h2 id="known-heading">Known issues (%d cells)</h2>' % sum(len(c) for _, c in groups))
    if not groups:
        out.append('<p class="muted" id="known-none">no cell matched an entry of %s</p>' % _e(rep.known_issues.source))
        return "".join(out)
    out.append('<div class="scroll"><table class="why" id="known-table"><thead><tr><th>known issue</th><th>status</th>'
               '<th>applies to</th><th>n</th><th>cells</th></tr></thead><tbody>')
    for issue, cells in groups:
        links = " ".join('<a class="open" data-cell="%s">%s</a>' % (_e(cv.id), _e(cv.id)) for cv in cells)
        out.append('<tr data-issue="%s"><td><a href="%s" target="_blank" rel="noopener noreferrer">%s</a></td>'
                   '<td>%s</td><td>%s</td><td class="n">%d</td><td>%s</td></tr>' % (
                       _e(issue.id), _e(issue.url), _e(issue.title), _e(issue.status), _e(issue.range_text),
                       len(cells), links))
    out.append("</tbody></table></div>")
    return "".join(out)


def _features_table(rep: RunReport) -> str:
    """Kernel x overlayfs feature ("" when no profile probed them); each cell's tooltip says,
    per backing fs, the probe's answer and why."""
    columns, rows = feature_matrix(rep)
    if not rows:
        return ""
    out = ['<h2 id="features">Overlay features</h2><p class="muted">each probed with a real mount on the '
           'kernel and backing fs</p><div class="scroll"><table class="overview" id="features-table"><tr>'
           '<th>kernel</th>']
    out.extend("<th>%s</th>" % _e(f) for f in columns)
    out.append("</tr>")
    for target, cells in rows:
        states = feature_states(rep, target)
        out.append("<tr><td>%s</td>" % _e(target))
        for f in columns:
            text = cells.get(f, NOT_RUN)
            tip = "\n".join("%s: %s — %s" % (p, word(s.get("supported")), s.get("reason", ""))
                             for p, s in states.get(f, {}).items())
            cls = {"yes": "PASS", "no": "UNSUPPORTED"}.get(text, "REFUSED")
            out.append('<td title="%s"><span class="pill o-%s">%s</span></td>' % (_e(tip), cls, _e(text)))
        out.append("</tr>")
    out.append("</table></div>")
    return "".join(out)


def render(rep: RunReport) -> str:
    meta = rep.run.meta
    host = meta.get("host") or {}
    descriptions = _descriptions()
    data = {
        "run_id": rep.run_id,
        "cells": {cv.id: _cell_data(rep, cv, descriptions) for cv in rep.cells.values()},
        "fs": {}, "probes": {}, "unmet_mark": UNMET_MARK,
    }
    for t in rep.targets():
        trec = rep.target_record(t)
        for p in rep.profiles():
            prec = rep.profile_record(t, p)
            data["fs"]["%s/%s" % (t, p)] = fs_sections(prec)
            data["probes"]["%s/%s" % (t, p)] = probe_rows(trec, prec)
    counts = rep.counts()
    parts: List[str] = []
    parts.append("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">")
    parts.append('<meta name="viewport" content="width=device-width, initial-scale=1">')
    parts.append("<title>overlaylab run %s</title><style>%s</style></head><body>" % (_e(rep.run_id), CSS))
    parts.append("<header><h1>overlaylab run %s</h1>" % _e(rep.run_id))
    parts.append('<div class="summary" id="summary">%s</div>' % _e(rep.summary_line()))
    if rep.run.skipped_lines:
        parts.append('<div class="summary" id="damaged">Damaged run directory: %s.</div>' % _e(rep.run.damage_note()))
    parts.append('<div class="muted">status %s · provider %s · started %s · ended %s · host %s · overlaylab %s%s</div>' % (
        _e(meta.get("status", "?")), _e(meta.get("provider", "?")), _e(meta.get("started", "?")),
        _e(meta.get("ended", "?")), _e(host.get("hostname", "?")), _e(host.get("overlaylab", "?")),
        "" if rep.repeat == 1 else " · each cell run %d times" % rep.repeat))
    parts.append('<div class="badges">')
    for o in ALL_OUTCOMES:
        if counts.get(o):
            parts.append('<span class="o-%s">%s %d</span>' % (o, o, counts[o]))
    parts.append("</div></header><main>")
    parts.append(_known_sections(rep))
    # legend
    parts.append('<div class="legend" id="legend">')
    parts.append('<span class="row"><b>As expected</b> (pale):</span>')
    for o in ALL_OUTCOMES:
        if o != FLAKY:
            parts.append('<span title="%s"><span class="sw o-%s">%s</span>%s</span>' % (
                _e(MEANING[o]), o, SHORT[o], _e(MEANING[o])))
    parts.append('<span class="row"><span class="sw o-%s">%s</span>%s</span>' % (FLAKY, SHORT[FLAKY], _e(MEANING[FLAKY])))
    parts.append('<span class="row" id="legend-unmet"><b>Not as expected</b> (solid, black frame, %s): '
                 % _e(UNMET_MARK))
    for o in ("FAIL", "PASS", "ERROR"):
        parts.append('<span class="sw o-%s unmet">%s %s</span>' % (o, _e(UNMET_MARK), SHORT[o]))
    parts.append(" the outcome differs from what the probed facts predict: a regression or a wrong "
                 "expectation</span>")
    parts.append('<span class="row muted">click a cell for its details</span></div>')
    # targets and overview
    parts.append("<h2>Kernel × profile</h2><div class=\"scroll\"><table class=\"overview\"><tr><th>kernel</th>")
    parts.extend("<th>%s</th>" % _e(p) for p in rep.profiles())
    parts.append("</tr>")
    for t in rep.targets():
        trec = rep.target_record(t)
        label = _e(t)
        if rep.kernel_release(t):
            label += '<br><span class="muted">%s · %s</span>' % (_e(rep.kernel_release(t)), _e(trec.get("provider", "")))
        if trec.get("error"):
            label += '<br><b>did not come up:</b> %s' % _e(trec["error"][:200])
        warned = rep.warned(t)
        if warned:
            label += '<br><b class="kernel-warnings">%d cells with kernel warnings</b>' % len(warned)
        parts.append("<tr><td>%s</td>" % label)
        for p in rep.profiles():
            cells = rep.cells_of(t, p)
            if not cells:
                parts.append('<td class="none">%s</td>' % NOT_RUN)
                continue
            pc = rep.counts(cells)
            text = " ".join('<span class="pill o-%s">%s %d</span>' % (o, SHORT[o], n) for o, n in pc.items() if n)
            unmet = sum(1 for c in cells if not c.met)
            if unmet:
                text += " <b>%d%s</b>" % (unmet, UNMET_MARK)
            parts.append("<td>%s</td>" % text)
        parts.append("</tr>")
    parts.append("</table></div>")
    parts.append(_features_table(rep))
    for group, scenarios in rep.groups():
        parts.append('<h2 id="group-%s">%s</h2>' % (_e(group), _e(group)))
        parts.append(_grid(rep, group, scenarios))
    if rep.engine_cells():
        parts.append('<h2 id="group-engine">engine: the same scenarios on every engine</h2>')
        parts.append(_engine_grid(rep))
        parts.append(_disagree_table(rep))
    unmet = rep.unmet()
    parts.append('<h2>Not as expected (%d)</h2><ul class="unmet" id="unmet-list">' % len(unmet))
    for cv in unmet:
        parts.append('<li><a class="open" data-cell="%s">%s</a>: %s, expected %s — %s</li>' % (
            _e(cv.id), _e(cv.id), _e(cv.outcome), _e(cv.expected), _e(cv.error[:200])))
    if not unmet:
        parts.append("<li class=\"muted\">every cell met its expectation</li>")
    parts.append("</ul>")
    parts.append(_expected_table(rep))
    flaky = rep.flaky()
    if flaky or rep.repeat > 1:
        parts.append('<h2>Flaky (%d over %d repeats)</h2><ul class="unmet" id="flaky-list">' % (len(flaky), rep.repeat))
        for cv in flaky:
            parts.append('<li><a class="open" data-cell="%s">%s</a>: %s</li>' % (_e(cv.id), _e(cv.id), _e(cv.rate_text())))
        if not flaky:
            parts.append("<li class=\"muted\">no cell changed outcome between repeats</li>")
        parts.append("</ul>")
    parts.append(_history_section(rep))
    parts.append("</main>")
    parts.append('<aside id="details" hidden></aside>')
    parts.append('<script type="application/json" id="report-data">%s</script>' % _json_for_script(data))
    parts.append("<script>%s</script></body></html>" % JS)
    return "".join(parts)
