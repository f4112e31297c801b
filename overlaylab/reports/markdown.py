"""The markdown report: ready to paste into an issue or release notes (GitHub-flavoured).

Layout: a summary line and the targets; the new failures (failing or not as expected, and no
entry of the known issues accounts for them) and the known issues that matched, each with its
upstream report (:mod:`.known`); a kernel x profile overview; the overlayfs features (kernel x
feature, each probed with a real mount per backing fs); per scenario group a
matrix (scenarios down, profiles across, one symbol per outcome, ``!`` where the outcome was
not the expected one) with the legend; the engine scenarios per kernel (profile x scenario
down, engines across, the port first) and the rows where the port and the other engines
disagree; then the cells that were not as expected with their evidence; flaky cells with pass
rates; and the other non-passing cells (known failures, refusals, unsupported profiles)
grouped by cause, each with one example's evidence.
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

from tabulate import tabulate

from ..lab.tables import feature_matrix
from .model import (ALL_OUTCOMES, FLAKY, MEANING, NOT_RUN, SYMBOLS, UNMET_MARK, CellView, RunReport,
                    evidence_sections, fs_sections, normalize)

MAX_SECTION_LINES = 30
MAX_SECTION_CHARS = 3000
MAX_CHARS = 60000
MAX_NEW_ROWS = 60
_PATH = re.compile(r"(?<![\w<])/[^\s:'\"]*")


def legend() -> str:
    items = ["%s %s" % (SYMBOLS[o], o) for o in ALL_OUTCOMES]
    return ("**Legend:** " + " · ".join(items) + " · %s not run · a trailing **%s** marks a cell whose "
            "outcome is not the one its facts led the lab to expect." % (NOT_RUN, UNMET_MARK))


def legend_table() -> str:
    rows = [(SYMBOLS[o], o, MEANING[o]) for o in ALL_OUTCOMES]
    rows.append((NOT_RUN, "", "not run (filtered out, or missing from an interrupted run)"))
    rows.append(("x" + UNMET_MARK, "", "not as expected: the outcome differs from the expectation"))
    return tabulate(rows, headers=["symbol", "outcome", "meaning"], tablefmt="github")


def _fence(text: str, lang: str = "") -> str:
    fence = "~~~~" if "```" in text else "```"
    return "%s%s\n%s\n%s" % (fence, lang, text.rstrip("\n"), fence)


def _clip(text: str, lines: int = MAX_SECTION_LINES, chars: int = MAX_SECTION_CHARS) -> str:
    all_lines = text.splitlines()
    clipped = all_lines[:lines]
    out = "\n".join(clipped)
    if len(out) > chars:
        out = out[:chars] + " …"
    if len(all_lines) > lines:
        out += "\n… (%d more lines; see the HTML report or a bundle)" % (len(all_lines) - lines)
    return out


def _section(title: str, text: str, lines: int = MAX_SECTION_LINES, chars: int = MAX_SECTION_CHARS) -> List[str]:
    """One evidence item: inline when it is one short line, else a fenced block."""
    if "\n" not in text and len(text) <= 120:
        return ["**%s**: `%s`" % (title, text.replace("`", "'")), ""]
    return ["**%s**" % title, "", _fence(_clip(text, lines, chars)), ""]


def _md_escape(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _target_label(rep: RunReport, target: str) -> str:
    release = rep.kernel_release(target)
    return "%s (%s)" % (target, release) if release and release != target else target


def targets_table(rep: RunReport) -> str:
    rows = []
    for t in rep.targets():
        rec = rep.target_record(t)
        cells = rep.cells_of(t)
        counts = rep.counts(cells)
        row = [t, rec.get("kernel_release", "") or rep.kernel_release(t), rec.get("provider", ""),
               len(cells)]
        row += [counts[o] for o in ALL_OUTCOMES if o != FLAKY or rep.repeat > 1]
        row.append(sum(1 for c in cells if not c.met))
        row.append(len(rep.warned(t)))
        if rec.get("error"):
            row.append("did not come up: " + _md_escape(rec["error"])[:200])
        rows.append(row)
    headers = ["kernel", "release", "provider", "cells"]
    headers += ["%s %s" % (SYMBOLS[o], o) for o in ALL_OUTCOMES if o != FLAKY or rep.repeat > 1]
    headers += ["not as expected", "kernel warnings"]
    if any(len(r) > len(headers) for r in rows):
        headers.append("note")
        rows = [r + [""] * (len(headers) - len(r)) for r in rows]
    return tabulate(rows, headers=headers, tablefmt="github")


def overview_table(rep: RunReport) -> str:
    """Kernel x profile: per pair, how many scenarios ended in each outcome."""
    rows = []
    for t in rep.targets():
        row = [_target_label(rep, t)]
        for p in rep.profiles():
            cells = rep.cells_of(t, p)
            if not cells:
                row.append(NOT_RUN)
                continue
            counts = rep.counts(cells)
            text = " ".join("%s%d" % (SYMBOLS[o], n) for o, n in counts.items() if n)
            unmet = sum(1 for c in cells if not c.met)
            if unmet:
                text += " **%d%s**" % (unmet, UNMET_MARK)
            row.append(text)
        rows.append(row)
    return tabulate(rows, headers=["kernel"] + rep.profiles(), tablefmt="github")


def features_table(rep: RunReport) -> str:
    """Kernel x overlayfs feature, each probed with a real mount per backing fs ("" when no
    profile probed them): ``yes``, ``no`` or where it works (``ext4,xfs only``)."""
    columns, rows = feature_matrix(rep)
    if not rows:
        return ""
    return tabulate([[_target_label(rep, t)] + [cells.get(f, NOT_RUN) for f in columns] for t, cells in rows],
                    headers=["kernel"] + columns, tablefmt="github")


def group_table(rep: RunReport, scenarios: Sequence[str]) -> str:
    multi = len(rep.targets()) > 1
    rows = []
    for sid in scenarios:
        for t in rep.targets():
            row = [sid] + ([t] if multi else [])
            for p in rep.profiles():
                cv = rep.get(t, p, sid)
                row.append(_symbol_md(cv))
            rows.append(row)
    headers = ["scenario"] + (["kernel"] if multi else []) + rep.profiles()
    return tabulate(rows, headers=headers, tablefmt="github")


def engine_table(rep: RunReport, target: str) -> str:
    """One kernel's engine scenarios: profile x scenario down, one column per engine."""
    engines = rep.engine_columns()
    rows = [[p, s] + [_symbol_md(rep.get(target, p, s, e)) for e in engines] for p, s in rep.engine_rows(target)]
    return tabulate(rows, headers=["profile", "scenario"] + engines, tablefmt="github")


def disagree_table(rep: RunReport) -> str:
    """Per row where the port and another engine disagree, each engine's outcome and reason."""
    rows = []
    for t, p, s in rep.disagreements():
        for e in rep.engine_columns():
            cv = rep.get(t, p, s, e)
            if cv is not None:
                rows.append(("%s/%s/%s" % (t, p, s), e, "%s %s" % (_symbol_md(cv), cv.outcome),
                             "`%s`" % _md_escape(cv.reason_line)[:300].replace("`", "'") if cv.reason_line else ""))
    return tabulate(rows, headers=["row", "engine", "outcome", "error or verdict"], tablefmt="github")


DISAGREE_TITLE = "Where the port and the living drivers disagree"
AGREE_TEXT = "On every engine scenario the other engines came to the port's outcome."


def _engine_facts(cv: CellView) -> List[str]:
    """The engine, its version and its verdict, for a cell of an engine scenario."""
    if not cv.in_engine_section:
        return []
    version = " " + cv.engine_version if cv.engine_version else ""
    return ["engine %s%s" % (cv.engine, version)] + (["verdict: " + cv.verdict_line] if cv.verdict_line else [])


def _symbol_md(cv) -> str:
    if cv is None:
        return NOT_RUN
    if cv.met:
        return cv.symbol(False)
    return "**%s**" % cv.symbol(True)


def _cell_block(rep: RunReport, cv: CellView, heading: str = "###") -> List[str]:
    out = ["%s `%s` — %s, expected %s" % (heading, cv.id, cv.outcome, cv.expected)]
    facts = ["kernel %s" % (cv.kernel_release or rep.kernel_release(cv.target) or "?"),
             "group %s" % cv.group] + _engine_facts(cv) + ["%.2f s" % cv.duration]
    if len(cv.attempts) > 1:
        facts.append(cv.rate_text())
    out.append("*" + " · ".join(facts) + "*")
    out.append("")
    if cv.expected_why:
        out.append("Expected %s because: %s" % (cv.expected, cv.expected_why))
        out.append("")
    for issue in cv.known:
        out.append("%s: %s (%s)" % ("Known issue" if cv.is_known else "Resembles known issue", _link(issue), issue.status))
        out.append("")
    for title, text in evidence_sections(cv.record):
        out.extend(_section(title, text))
    fs = fs_sections(rep.profile_record(cv.target, cv.profile))
    if fs:
        out.append("<details><summary>backing filesystem %s</summary>" % cv.profile)
        out.append("")
        for title, text in fs:
            if title in ("dumpe2fs", "mkfs_output", "df_i", "df_k", "df"):
                continue
            out.extend(_section(title, text, 20))
        out.append("</details>")
        out.append("")
    out.append("Bundle for a bug report: `overlaylab bundle %s %s`" % (rep.run_id, cv.id))
    out.append("")
    return out


def _link(issue) -> str:
    return "[%s](%s)" % (_md_escape(issue.title).replace("[", "(").replace("]", ")"), issue.url)


def known_sections(rep: RunReport) -> List[str]:
    """First in the report: the new failures (failing or not as expected, no known issue
    accounts for them), then each known issue that matched, with its upstream report."""
    new = rep.new_failures()
    out = ["## New failures (%d)" % len(new), ""]
    if new:
        rows = [(cv.id, "%s %s" % (_symbol_md(cv), cv.outcome), cv.expected,
                 "`%s`" % _md_escape(cv.reason_line)[:200].replace("`", "'") if cv.reason_line else "",
                 "resembles %s" % _link(cv.known[0]) if cv.known else "") for cv in new[:MAX_NEW_ROWS]]
        out.append(tabulate(rows, headers=["cell", "outcome", "expected", "error", "note"], tablefmt="github"))
        if len(new) > MAX_NEW_ROWS:
            out.append("")
            out.append("(+%d more: see the HTML report or summary.json)" % (len(new) - MAX_NEW_ROWS))
    else:
        out.append("None: every failing cell is a known issue (below).")
    out.append("")
    groups = rep.known_groups()
    out.append("## Known issues (%d cells)" % sum(len(cells) for _, cells in groups))
    out.append("")
    if groups:
        rows = [(_link(issue), issue.status, issue.range_text, len(cells), _md_escape(_where(rep, cells)))
                for issue, cells in groups]
        out.append(tabulate(rows, headers=["known issue", "status", "applies to", "n", "cells"], tablefmt="github"))
    else:
        out.append("No cell matched an entry of `%s`." % (rep.known_issues.source or "the known issues"))
    out.append("")
    return out


def _expected_groups(rep: RunReport) -> List[Tuple[Tuple[str, str, str], List[CellView]]]:
    """Non-passing cells that met their expectation, grouped by kernel, outcome and cause."""
    groups: Dict[Tuple[str, str, str], List[CellView]] = {}
    for cv in rep.cells.values():
        if cv.outcome == "PASS" or not cv.met or cv.flaky:
            continue
        key = (cv.target, cv.outcome, cv.expected_why or normalize(cv.error))
        groups.setdefault(key, []).append(cv)
    return list(groups.items())


def _causes(cells: List[CellView]) -> List[Tuple[str, List[CellView]]]:
    """Cells grouped by outcome, expectation and error with paths and ids blanked out."""
    groups: Dict[Tuple[str, str, str], List[CellView]] = {}
    for cv in cells:
        cause = _PATH.sub("<path>", normalize(cv.error or (cv.record.get("evidence") or {}).get("agent_problem", "")
                                              or "no error text"))[:300]
        groups.setdefault((cv.outcome, cv.expected, cause), []).append(cv)
    return [(k[2], v) for k, v in groups.items()]


def _where(rep: RunReport, cells: List[CellView]) -> str:
    """Which cells, compactly: 'all N scenarios on btrfs', 'mount-label on ext4, xfs', ..."""
    profiles = list(dict.fromkeys(c.profile for c in cells))
    scenarios = list(dict.fromkeys(c.label for c in cells))
    every = [s for _, group in rep.groups() for s in group]
    parts = []
    for p in profiles:
        mine = [c.label for c in cells if c.profile == p]
        if sorted(mine) == sorted(every) and len(every) > 3:
            parts.append("all %d scenarios on **%s**" % (len(mine), p))
        elif len(scenarios) > 1 or len(profiles) == 1:
            parts.append("**%s**: %s" % (p, ", ".join(mine)))
    if len(scenarios) == 1 and len(profiles) > 1:
        return "%s on %s" % (scenarios[0], ", ".join("**%s**" % p for p in profiles))
    return "; ".join(parts)


def render(rep: RunReport) -> str:
    """The report; evidence of expected non-passing cells is dropped if it would not fit in
    a GitHub issue comment (65536 characters)."""
    text = _render(rep, details=True)
    for max_blocks in (1000, 20, 10, 5, 2, 0):
        if len(text) <= MAX_CHARS:
            break
        text = _render(rep, details=False, max_blocks=max_blocks)
    return text


def _render(rep: RunReport, details: bool, max_blocks: int = 1000) -> str:
    meta = rep.run.meta
    out: List[str] = []
    out.append("# overlaylab run %s" % rep.run_id)
    out.append("")
    status = meta.get("status", "?")
    host = meta.get("host") or {}
    out.append("**%s** — status %s, provider %s, started %s, ended %s, on %s (overlaylab %s)%s" % (
        rep.summary_line(), status, meta.get("provider", "?"), meta.get("started", "?"),
        meta.get("ended", "?"), host.get("hostname", "?"), host.get("overlaylab", "?"),
        "" if rep.repeat == 1 else ", each cell run %d times" % rep.repeat))
    out.append("")
    if rep.run.skipped_lines:
        out.append("> Damaged run directory: %s." % rep.run.damage_note())
        out.append("")
    out.append(targets_table(rep))
    out.append("")
    out.extend(known_sections(rep))
    out.append("## Kernel × profile")
    out.append("")
    out.append(overview_table(rep))
    out.append("")
    out.append(legend())
    out.append("")
    features = features_table(rep)
    if features:
        out += ["## Overlay features", "", "Each probed with a real mount on the kernel and backing fs.", "",
                features, ""]
    for group, scenarios in rep.groups():
        out.append("## %s" % group)
        out.append("")
        out.append(group_table(rep, scenarios))
        out.append("")
    if rep.engine_cells():
        out.append("## engine: the same scenarios on every engine")
        out.append("")
        for t in rep.targets():
            if rep.engine_rows(t):
                out.append("### %s" % _target_label(rep, t))
                out.append("")
                out.append(engine_table(rep, t))
                out.append("")
        disagree = rep.disagreements()
        out.append("## %s (%d)" % (DISAGREE_TITLE, len(disagree)))
        out.append("")
        out.append(disagree_table(rep) if disagree else AGREE_TEXT)
        out.append("")
    unmet = rep.unmet()
    out.append("## Not as expected (%d)" % len(unmet))
    out.append("")
    if not unmet:
        out.append("Every cell met its expectation.")
        out.append("")
    causes = _causes(unmet)
    if len(causes) < len(unmet):
        out.append("%d distinct causes; each with the evidence of its first cell." % len(causes))
        out.append("")
    for i, (cause, cells) in enumerate(causes):
        if len(causes) < len(unmet):
            out.append("### Cause %d: %s, expected %s, in %d cell%s" % (
                i + 1, cells[0].outcome, cells[0].expected, len(cells), "" if len(cells) == 1 else "s"))
            out.append("")
            out.append("`%s`" % cause.replace("`", "'"))
            out.append("")
            out.append("Cells: " + _where(rep, cells))
            out.append("")
        if i < max_blocks:
            out.extend(_cell_block(rep, cells[0], "####" if len(causes) < len(unmet) else "###"))
        elif i == max_blocks:
            out.append("(Evidence of further causes left out to keep this under %d characters: see the "
                       "HTML report.)" % MAX_CHARS)
            out.append("")
    flaky = rep.flaky()
    if rep.repeat > 1 or flaky:
        out.append("## Flaky (%d of %d cells over %d repeats)" % (len(flaky), len(rep.cells), rep.repeat))
        out.append("")
        if flaky:
            rows = [(cv.id, "%.0f%%" % (100 * cv.pass_rate), ", ".join(cv.outcomes), cv.expected) for cv in flaky]
            out.append(tabulate(rows, headers=["cell", "pass rate", "outcomes by attempt", "expected"],
                                tablefmt="github"))
            out.append("")
            for cv in flaky:
                out.extend(_cell_block(rep, cv))
        else:
            out.append("No cell changed outcome between repeats.")
            out.append("")
    groups = _expected_groups(rep)
    out.append("## Other non-passing cells, as expected (%d)" % sum(len(g) for _, g in groups))
    out.append("")
    if groups:
        rows = []
        for (t, outcome, why), cells in groups:
            rows.append(("%s %s" % (SYMBOLS.get(outcome, ""), outcome), t, len(cells),
                         _md_escape(_where(rep, cells)), _md_escape(why)[:300]))
        out.append(tabulate(rows, headers=["outcome", "kernel", "n", "cells", "why"], tablefmt="github"))
        out.append("")
        if details:
            for (t, outcome, why), cells in groups:
                example = cells[0]
                out.append("<details><summary>%s ×%d — evidence of %s</summary>" % (outcome, len(cells), example.id))
                out.append("")
                for title, text in evidence_sections(example.record):
                    out.extend(_section(title, text, 12, 1000))
                out.append("</details>")
                out.append("")
        else:
            out.append("(Evidence of these cells left out to keep this under %d characters: see the HTML "
                       "report.)" % MAX_CHARS)
            out.append("")
    out.append("---")
    out.append(legend_table())
    out.append("")
    return "\n".join(out)
