"""A run as KCIDB I/O data (``overlaylab report -f kcidb RUN``): what KernelCI's common
database takes, built and validated with the ``kcidb-io`` package (the optional extra
``kcidb``) against its latest schema (``kcidb_io.schema.LATEST``, v5.3 with kcidb-io 141; the
schema is the ``json`` of ``kcidb_io/schema/v05_03.py`` and its parents).

One *checkout* per kernel of the run (its release, and the Debian package, version and suite
when the target record names the booted image, or the ``uname -v`` line, which names Debian's
package version on a Debian kernel), one *build* per kernel (architecture from ``uname -m``,
the package as the configuration's name), one *test* per cell: path
``overlaylab.<profile>.<scenario>[.<engine>]`` (the port names no engine, as in cell ids),
the environment (kernel release, backing filesystem and its mount options), start time and
duration, and the evidence as ``log_excerpt`` (cut to the schema's ``maxLength``).

Ids are ``overlaylab:<run id>/<kernel>`` (checkout and build: separate id spaces) and
``overlaylab:<run id>/<cell id>`` (tests): the same run renders the same ids and the same bytes.

Status, per attempt (:func:`attempt_status`): PASS -> PASS, FAIL -> FAIL, ERROR -> ERROR (the
lab failed: the scenario did not complete), REFUSED and UNSUPPORTED -> SKIP (the scenario was
not applicable: the driver refuses that filesystem by design, or the target lacks a
prerequisite). An outcome the probed facts did not predict (not as expected) keeps PASS, FAIL
and ERROR, which say what happened, but would hide in a SKIP: an unexpected REFUSED is FAIL
(the driver refused a filesystem the facts say it supports) and an unexpected UNSUPPORTED is
MISS (the harness could not run it). A cell's status is its attempts' highest in the schema's
priority order (FAIL, ERROR, MISS, PASS, DONE, SKIP: a FLAKY cell that failed once is FAIL).
The lab's own words (outcome, expected, met, attempts) are kept in the test's ``misc``.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any, Dict, List, Optional

from .model import PORT_ENGINE, CellView, RunReport, evidence_sections

ORIGIN = "overlaylab"
STATUS = {"PASS": "PASS", "FAIL": "FAIL", "ERROR": "ERROR", "REFUSED": "SKIP", "UNSUPPORTED": "SKIP"}
#: the outcomes whose status changes when they were not as expected
UNMET_STATUS = {"REFUSED": "FAIL", "UNSUPPORTED": "MISS"}


class KcidbError(ValueError):
    """kcidb-io is missing, or the data does not validate (one line)."""


def _schema():
    try:
        from kcidb_io.schema import LATEST
    except ImportError:
        raise KcidbError("the kcidb format needs the kcidb-io package: pip install 'overlaylab[kcidb]'") from None
    return LATEST


def attempt_status(outcome: str, met: bool) -> str:
    if not met and outcome in UNMET_STATUS:
        return UNMET_STATUS[outcome]
    return STATUS.get(outcome, "ERROR")


def cell_status(cv: CellView, priority: List[str]) -> str:
    """The attempts' highest status in ``priority`` (the schema's status enum, highest first)."""
    statuses = [attempt_status(a.get("outcome", "ERROR"), bool(a.get("met"))) for a in cv.attempts]
    return min(statuses, key=priority.index)


def _text(value: Any) -> str:
    return str(value).replace("\0", "")


def _path_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def kcidb_path(cv: CellView) -> str:
    parts = [cv.profile, cv.scenario] + ([cv.engine] if cv.engine != PORT_ENGINE else [])
    return ".".join([ORIGIN] + [_path_part(p) for p in parts])


def _id(*parts: str) -> str:
    return "%s:%s" % (ORIGIN, "/".join(parts))


def log_excerpt(cv: CellView, limit: int) -> str:
    """The cell's evidence (error, dmesg, driver log, engine commands, ...) as text, cut to
    ``limit`` characters with a note of how to get the rest."""
    text = _text("\n\n".join("== %s ==\n%s" % (title, body.rstrip()) for title, body in evidence_sections(cv.record)))
    if len(text) <= limit:
        return text
    note = "\n[... %d characters cut: the whole evidence is in `overlaylab bundle RUN %s`]" % (len(text), cv.id)
    return text[:limit - len(note)] + note


def _start_time(cv: CellView) -> Optional[str]:
    """When the first attempt started: the time its record arrived less its duration (records
    of runs before that time was kept have none)."""
    first = cv.attempts[0]
    try:
        ended = _dt.datetime.fromisoformat(str(first["ended"]))
    except (KeyError, ValueError):
        return None
    if ended.tzinfo is None:
        return None
    return (ended - _dt.timedelta(seconds=float(first.get("duration") or 0.0))).isoformat(timespec="milliseconds")


def _uname(trec: Dict[str, Any]) -> List[str]:
    uname = trec.get("uname")
    return [str(u) for u in uname] if isinstance(uname, list) and len(uname) >= 5 else []


def _checkout(rep: RunReport, target: str) -> Dict[str, Any]:
    trec = rep.target_record(target)
    image = trec.get("kernel_image") if isinstance(trec.get("kernel_image"), dict) else {}
    release = rep.kernel_release(target)
    uname = _uname(trec)
    comment = "Linux %s" % (release or target)
    if image.get("package"):
        comment += " (%s package %s %s%s)" % (image.get("kind") or "debian", image["package"], image.get("version") or "",
                                             ", " + image["suite"] if image.get("suite") else "")
    elif uname:
        comment += " (%s)" % uname[3]
    misc = {"kernel": target, "kernel_release": release, "provider": trec.get("provider") or ""}
    if uname:
        misc["uname_version"] = uname[3]
    for key, name in (("package", "package"), ("version", "package_version"), ("suite", "package_suite"),
                      ("kind", "package_kind"), ("sha256", "package_sha256")):
        if image.get(key):
            misc[name] = image[key]
    out = {"id": _id(rep.run_id, target), "origin": ORIGIN, "comment": comment, "misc": misc}
    meta = rep.run.meta
    if meta.get("started"):
        out["start_time"] = meta["started"]
    if meta.get("ended") and meta.get("status") == "finished":
        out["origin_tests_finish_time"] = meta["ended"]
    return out


def _build(rep: RunReport, target: str) -> Dict[str, Any]:
    trec = rep.target_record(target)
    image = trec.get("kernel_image") if isinstance(trec.get("kernel_image"), dict) else {}
    out: Dict[str, Any] = {"id": _id(rep.run_id, target), "origin": ORIGIN, "checkout_id": _id(rep.run_id, target)}
    uname = _uname(trec)
    if uname:
        out["architecture"] = re.sub(r"[^a-z0-9_]", "_", uname[4].lower())
    if image.get("package"):
        out["config_name"] = image["package"]
    probes = trec.get("probes") if isinstance(trec.get("probes"), dict) else {}
    overlay_config = probes.get("kernel_config_overlay") if isinstance(probes.get("kernel_config_overlay"), dict) else {}
    misc: Dict[str, Any] = {}
    if image.get("config"):
        misc["config_path"] = image["config"]
    if overlay_config.get("value"):
        misc["kernel_config_overlay"] = overlay_config["value"]
        misc["kernel_config_source"] = _text(overlay_config.get("evidence") or "")
    if misc:
        out["misc"] = misc
    if trec.get("error"):
        out["comment"] = _text("the target did not come up: %s" % trec["error"])[:2000]
    elif trec:
        out["status"] = "PASS"   # it booted and answered the probes
    return out


def _environment(rep: RunReport, cv: CellView) -> Dict[str, Any]:
    info = ((rep.profile_record(cv.target, cv.profile).get("fs") or {}).get("info") or {})
    mount = info.get("mount") if isinstance(info.get("mount"), dict) else {}
    release = cv.kernel_release or rep.kernel_release(cv.target)
    fs_name = info.get("fs_name") or ""
    misc = {"kernel": cv.target, "kernel_release": release, "profile": cv.profile, "backing_fs": fs_name,
            "provider": cv.record.get("provider") or ""}
    if mount:
        misc["mount_options"] = mount.get("options") or ""
        misc["super_options"] = mount.get("super_options") or ""
    return {"comment": _text("Linux %s, backing filesystem %s (profile %s)" % (release or cv.target, fs_name or "?",
                                                                                cv.profile)),
            "misc": misc}


def _test(rep: RunReport, cv: CellView, priority: List[str], limit: int) -> Dict[str, Any]:
    reason = cv.reason_line
    comment = "%s: %s%s" % (cv.label, cv.outcome, "" if cv.met else " (NOT as expected: expected %s)" % cv.expected)
    if len(cv.attempts) > 1:
        comment += ", " + cv.rate_text()
    if reason:
        comment += ": " + reason
    out: Dict[str, Any] = {
        "id": _id(rep.run_id, cv.id), "origin": ORIGIN, "build_id": _id(rep.run_id, cv.target),
        "path": kcidb_path(cv), "status": cell_status(cv, priority), "comment": _text(comment)[:2000],
        "duration": round(sum(float(a.get("duration") or 0.0) for a in cv.attempts), 3),
        "environment": _environment(rep, cv),
        "misc": {"cell": cv.id, "run_id": rep.run_id, "outcome": cv.outcome, "outcomes": cv.outcomes,
                 "expected": cv.expected, "expected_why": cv.expected_why, "met": cv.met, "group": cv.group,
                 "engine": cv.engine, "engine_version": cv.engine_version,
                 "bundle": "overlaylab bundle %s %s" % (rep.run_id, cv.id)},
    }
    start = _start_time(cv)
    if start:
        out["start_time"] = start
    excerpt = log_excerpt(cv, limit)
    if excerpt:
        out["log_excerpt"] = excerpt
    return out


def build(rep: RunReport) -> Dict[str, Any]:
    """The run as KCIDB I/O data of the latest schema, validated (:class:`KcidbError` if not)."""
    schema = _schema()
    defs = schema.json["$defs"]
    priority = list(defs["status"]["enum"])
    limit = int(defs["test"]["properties"]["log_excerpt"]["maxLength"])
    data = schema.new()
    data["checkouts"] = [_checkout(rep, t) for t in rep.targets()]
    data["builds"] = [_build(rep, t) for t in rep.targets()]
    data["tests"] = [_test(rep, cv, priority, limit) for cv in rep.cells.values()]
    validate(data)
    return data


def validate(data: Dict[str, Any]) -> None:
    """kcidb-io's own validation against its latest schema, as one line on failure."""
    schema = _schema()
    import jsonschema
    try:
        schema.validate_exactly(data)
    except jsonschema.exceptions.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "the top"
        raise KcidbError("not valid KCIDB %s data at %s: %s" % (schema, where, err.message.splitlines()[0][:300])) from None


def render(rep: RunReport) -> str:
    return json.dumps(build(rep), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
