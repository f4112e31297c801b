"""Damaged run directories: the readers skip and count bad results.jsonl lines (saying which
file and which lines), a broken run.json is a one-line usage error naming it, and a run or base
that is not there is a usage error (exit 2), never a regression."""
from __future__ import annotations

import json
import os

import pytest

from overlaylab.lab.results import RunFileError, load_run

from .conftest import cli, copy_run
from .test_repro_trust import assert_usage_error

CELL = "host/tmpfs/driver-init"

DAMAGE = {
    # valid JSON, but not a record
    "json-list": ("[1, 2]\n", "a JSON list, not a record"),
    "json-string": ('"cell"\n', "a JSON string, not a record"),
    "json-null": ("null\n", "a JSON null, not a record"),
    # a record whose fields the reports rely on have the wrong type, or are missing
    "cell-without-scenario": ('{"record": "cell", "target": "host", "profile": "tmpfs", "outcome": "PASS"}\n',
                              "cell record without 'scenario'"),
    "target-a-list": ('{"record": "cell", "target": ["host"], "profile": "tmpfs", "scenario": "x", "outcome": "PASS"}\n',
                      "'target' is a list"),
    "evidence-a-string": ('{"record": "cell", "target": "host", "profile": "tmpfs", "scenario": "driver-init", '
                          '"outcome": "PASS", "evidence": "oops"}\n', "'evidence' is a string"),
    "record-kind-a-list": ('{"record": ["cell"]}\n', "'record' is a list"),
    # a crash while appending: the last line is torn
    "torn-last-line": ('{"record": "cell", "target": "host", "prof', "cut short"),
}


def _damaged_copy(lab, tmp_path, tail, run_id="20260101-000000-dead"):
    reports = str(tmp_path / "reports")
    run = copy_run(lab.plain, reports, run_id)
    with open(os.path.join(run, "results.jsonl")) as f:
        n = sum(1 for _ in f)
    with open(os.path.join(run, "results.jsonl"), "a") as f:
        f.write(tail)
    return reports, run, n + 1


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_line_is_skipped_counted_and_named(lab, tmp_path, kind):
    tail, why = DAMAGE[kind]
    reports, run, lineno = _damaged_copy(lab, tmp_path, tail)
    loaded = load_run(run)
    assert loaded.skipped_lines == 1 and loaded.damaged == [(lineno, why)]
    assert len(loaded.cells) == len(load_run(lab.plain).cells)
    assert loaded.damage_note() == "skipped 1 damaged line of %s: line %d (%s)" % (
        os.path.join(run, "results.jsonl"), lineno, why)
    from overlaylab.reports import RunReport, render
    rep = RunReport.from_run(loaded)
    for fmt in ("markdown", "html", "junit", "json"):
        assert render(rep, fmt)
    assert "Damaged run directory: skipped 1 damaged line of" in render(rep, "markdown")
    assert 'id="damaged">Damaged run directory: skipped 1 damaged line of' in render(rep, "html")


def test_show_report_compare_bundle_work_on_a_damaged_run_and_say_so(lab, tmp_path):
    kinds = sorted(k for k in DAMAGE if k != "torn-last-line") + ["torn-last-line"]   # torn: last
    reports, run, first = _damaged_copy(lab, tmp_path, "".join(DAMAGE[k][0] for k in kinds))
    note = "skipped %d damaged lines of %s: %s, ..." % (len(kinds), os.path.join(run, "results.jsonl"), ", ".join(
        "line %d (%s)" % (first + i, DAMAGE[k][1]) for i, k in enumerate(kinds[:5])))
    assert load_run(run).damage_note() == note

    res = cli(["show", run])
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "(%s)" % note in res.stdout and "driver-init" in res.stdout
    res = cli(["report", run, "-f", "markdown"])
    assert res.returncode == 0 and res.stdout.startswith("# overlaylab run "), res.stderr
    assert res.stderr.strip() == "warning: " + note
    res = cli(["report", run, "-o", str(tmp_path / "all")])
    assert res.returncode == 0 and len(os.listdir(str(tmp_path / "all"))) == 4, res.stderr
    for args in (["compare", run, lab.plain], ["compare", lab.plain, run]):
        res = cli(args)
        assert res.returncode == 0, res.stdout + res.stderr    # the same cells: no regression
        assert res.stderr.strip() == "warning: " + note
    res = cli(["bundle", run, CELL, "-o", str(tmp_path / "b.tar.gz")])
    assert res.returncode == 0 and os.path.exists(str(tmp_path / "b.tar.gz")), res.stderr
    assert res.stderr.strip() == "warning: " + note


def test_many_damaged_lines_are_counted_and_the_first_named(lab, tmp_path):
    reports, run, lineno = _damaged_copy(lab, tmp_path, "[]\n" * 7 + '{"torn')
    loaded = load_run(run)
    assert loaded.skipped_lines == 8
    assert loaded.damage_note().startswith("skipped 8 damaged lines of %s: line %d (a JSON list, not a record)" % (
        os.path.join(run, "results.jsonl"), lineno))
    assert loaded.damage_note().endswith(", ...")


BROKEN_META = {
    "not-json": ('{"run_id": "x", "status": ', "is broken (not JSON"),
    "a-list": ("[]", "is broken (a JSON list, not an object)"),
    "matrix-a-list": ('{"run_id": "x", "matrix": []}', "is broken ('matrix' is a list)"),
    "argv-a-string": ('{"run_id": "x", "argv": "run -K host"}', "is broken ('argv' is a string)"),
    "not-utf8": (b"\xff\xfe{}", "is broken (not JSON"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_META))
def test_a_broken_run_json_is_named_in_one_line_with_exit_2(lab, tmp_path, kind):
    text, words = BROKEN_META[kind]
    reports = str(tmp_path / "reports")
    run = copy_run(lab.plain, reports, "20260101-000000-beef")
    meta_path = os.path.join(run, "run.json")
    with open(meta_path, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RunFileError) as err:
        load_run(run)
    assert str(err.value).startswith(meta_path + " " + words)
    every = [["show", run], ["report", run], ["report", run, "-f", "json"], ["compare", run, lab.plain],
             ["compare", lab.plain, run], ["bundle", run, CELL, "-o", str(tmp_path / "b.tar.gz")]]
    for args in (every if kind == "not-json" else every[:1]):   # each command once; each kind once
        assert_usage_error(cli(args), meta_path, words)
    assert not os.path.exists(str(tmp_path / "b.tar.gz"))
    if kind == "not-json":   # the index leaves the run out and says which file
        res = cli(["history", "--reindex", "--reports-dir", reports])
        assert res.returncode == 0 and "warning: left out %s: %s %s" % (run, meta_path, words) in res.stderr, res.stderr


def test_a_missing_run_or_base_is_a_usage_error_not_a_regression(lab, tmp_path):
    reports = str(tmp_path / "empty-reports")
    assert_usage_error(cli(["compare", "no-such-run", lab.plain, "--reports-dir", reports]),
                       "base no-such-run:", "no run 'no-such-run'")
    assert_usage_error(cli(["compare", lab.plain, "no-such-run", "--reports-dir", reports]), "no run 'no-such-run'")
    assert_usage_error(cli(["compare", lab.plain, "--reports-dir", reports]), "no runs under")   # NEW = latest
    bad = tmp_path / "bad.toml"
    bad.write_text("cell = [ {match = 'host/x'} ]\n")
    assert_usage_error(cli(["compare", str(bad), lab.plain]), str(bad), "needs match and outcome")
    bad.write_text("schema = 'new'\n")
    assert_usage_error(cli(["compare", str(bad), lab.plain]), str(bad))
    for args in (["show", "no-such-run"], ["report", "no-such-run"], ["bundle", "no-such-run", CELL]):
        assert_usage_error(cli(args + ["--reports-dir", reports]), "no run 'no-such-run'")
    # a directory that is not a run: usage error, not "not reproduced" / "regression"
    assert_usage_error(cli(["repro", str(tmp_path)]), "not an overlaylab bundle")


def test_an_output_that_cannot_be_written_is_one_line(lab, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["report", lab.plain, "-o", str(blocker / "sub")], ["report", lab.plain, "-f", "json", "-o", str(blocker / "x.json")],
                 ["bundle", lab.plain, CELL, "-o", str(blocker / "b.tar.gz")]):
        assert_usage_error(cli(args), "cannot write", str(blocker))

