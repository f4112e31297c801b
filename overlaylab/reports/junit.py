"""JUnit XML: one ``<testcase>`` per cell, so CI systems show the lab natively.

- ``<testsuite>`` per kernel x profile (``name`` = ``kernel.profile``);
- ``<testcase classname="overlaylab.KERNEL.PROFILE" name="SCENARIO">`` (``SCENARIO[ENGINE]``
  for an engine other than the port, as pytest names parametrized cases) with the cell's
  kernel, kernel release, profile, scenario, engine (and its version and verdict when
  recorded), group, outcome, expected outcome and why as ``<properties>`` (the form pytest's
  ``record_property`` writes);
- not as expected: ``<failure type="OUTCOME">`` (``<error>`` when the outcome is ERROR,
  i.e. the lab's infrastructure failed);
- REFUSED or UNSUPPORTED as expected: ``<skipped>``; FAIL as expected: ``<skipped
  type="xfail">``, as pytest reports expected failures, whose message names the known issue
  (id, title, upstream URL, status; also as ``known_issue*`` properties) or says that none
  matched (``new_failure`` property ``true``; see :mod:`.known`);
- flaky over ``--repeat``: Maven Surefire's ``<flakyFailure>`` per attempt that missed its
  expectation when another attempt met it (the case passes, flagged), else ``<failure>`` plus
  ``<rerunFailure>`` per further attempt.

``system-out`` holds the scenario's log and evidence as text.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Dict, List

from .model import CellView, RunReport, evidence_sections


def _classpart(name: str) -> str:
    return name.replace(".", "_")


def _text(cv: CellView, rec=None) -> str:
    rec = rec or cv.record
    lines = ["%s: %s (expected %s%s)" % (cv.id, rec.get("outcome"), rec.get("expected"),
                                         ": " + rec["expected_why"] if rec.get("expected_why") else "")]
    for title, text in evidence_sections(rec):
        lines.append("--- %s" % title)
        lines.append(text)
    return "\n".join(lines)


#: what XML 1.0 cannot hold: control characters but tab, newline and carriage return; U+FFFE, U+FFFF
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    """Drop characters XML 1.0 cannot hold (mkfs progress bars carry backspaces)."""
    return _NOT_XML.sub("", text)


def _known_text(cv: CellView, prefix: str = "") -> str:
    """``known issue ID: TITLE (URL), STATUS`` of a KNOWN cell, else ""."""
    if not cv.is_known:
        return ""
    issue = cv.known[0]
    return "%sknown issue %s: %s (%s), %s" % (prefix, issue.id, issue.title, issue.url, issue.status)


def _case(rep: RunReport, cv: CellView) -> ET.Element:
    case = ET.Element("testcase", {"classname": "overlaylab.%s.%s" % (_classpart(cv.target), _classpart(cv.profile)),
                                   "name": cv.label, "time": "%.3f" % sum(float(a.get("duration") or 0) for a in cv.attempts)})
    props = ET.SubElement(case, "properties")
    values = [("kernel", cv.target), ("kernel_release", cv.kernel_release or rep.kernel_release(cv.target)),
              ("profile", cv.profile), ("scenario", cv.scenario), ("engine", cv.engine)]
    values += [(name, value) for name, value in (("engine_version", cv.engine_version),
                                                 ("engine_verdict", cv.verdict_line)) if value]
    values += [("group", cv.group), ("outcome", cv.outcome), ("expected", cv.expected),
               ("expected_why", cv.expected_why), ("met", str(cv.met).lower()),
               ("provider", cv.record.get("provider", ""))]
    if cv.known:
        values += [("known_issue", cv.known[0].id), ("known_issue_title", cv.known[0].title),
                   ("known_issue_url", cv.known[0].url), ("known_issue_status", cv.known[0].status)]
    values.append(("new_failure", str(cv.is_new).lower()))
    if len(cv.attempts) > 1:
        values += [("attempts", str(len(cv.attempts))), ("outcomes", ",".join(cv.outcomes)),
                   ("pass_rate", "%.3f" % cv.pass_rate), ("flaky", str(cv.flaky).lower())]
    for name, value in values:
        ET.SubElement(props, "property", {"name": name, "value": _xml_safe(str(value))})
    message = _xml_safe("%s, expected %s%s" % (cv.outcome, cv.expected, ": " + cv.error[:500] if cv.error else ""))
    if cv.flaky and cv.met_count > 0:
        for a in cv.attempts:
            if not a.get("met"):
                el = ET.SubElement(case, "flakyFailure", {"type": a.get("outcome", ""), "message": _xml_safe(
                    "attempt %s: %s, expected %s" % (a.get("attempt"), a.get("outcome"), a.get("expected")))})
                el.text = _xml_safe(_text(cv, a))
    elif not cv.met:
        unmet = [a for a in cv.attempts if not a.get("met")]
        tag = "error" if unmet[0].get("outcome") == "ERROR" else "failure"
        el = ET.SubElement(case, tag, {"type": unmet[0].get("outcome", ""), "message": message})
        el.text = _xml_safe(_text(cv, unmet[0]))
        for a in unmet[1:]:
            rerun = ET.SubElement(case, "rerunFailure", {"type": a.get("outcome", ""), "message": _xml_safe(
                "attempt %s: %s" % (a.get("attempt"), a.get("outcome")))})
            rerun.text = _xml_safe(_text(cv, a))
    elif cv.outcome in ("REFUSED", "UNSUPPORTED"):
        ET.SubElement(case, "skipped", {"type": cv.outcome, "message": _xml_safe(
            "%s as expected: %s%s" % (cv.outcome, cv.expected_why or cv.error, _known_text(cv, "; ")))})
    elif cv.outcome in ("FAIL", "ERROR"):
        ET.SubElement(case, "skipped", {"type": "xfail", "message": _xml_safe(
            _known_text(cv) or "expected failure, no known issue (new): %s as expected: %s" % (
                cv.outcome, cv.expected_why or cv.error))})
    out = ET.SubElement(case, "system-out")
    out.text = _xml_safe(_text(cv))
    return case


def render(rep: RunReport) -> str:
    root = ET.Element("testsuites", {"name": "overlaylab run %s" % rep.run_id})
    suites: Dict[tuple, List[CellView]] = {}
    for cv in rep.cells.values():
        suites.setdefault((cv.target, cv.profile), []).append(cv)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    for (target, profile), cells in suites.items():
        suite = ET.SubElement(root, "testsuite", {"name": "%s.%s" % (target, profile)})
        if rep.run.meta.get("started"):
            suite.set("timestamp", str(rep.run.meta["started"]))
        host = (rep.run.meta.get("host") or {}).get("hostname")
        if host:
            suite.set("hostname", host)
        sprops = ET.SubElement(suite, "properties")
        for name, value in (("run_id", rep.run_id), ("kernel", target), ("kernel_release", rep.kernel_release(target)),
                            ("profile", profile)):
            ET.SubElement(sprops, "property", {"name": name, "value": _xml_safe(str(value))})
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
        for cv in cells:
            case = _case(rep, cv)
            suite.append(case)
            counts["tests"] += 1
            counts["time"] += float(case.get("time"))
            if case.find("failure") is not None:
                counts["failures"] += 1
            elif case.find("error") is not None:
                counts["errors"] += 1
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
        for k, v in counts.items():
            suite.set(k, "%.3f" % v if k == "time" else str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, "%.3f" % v if k == "time" else str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
