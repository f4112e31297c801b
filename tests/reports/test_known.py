"""Known issues (reports/known-issues.toml): the file, matching, KNOWN and new cells in every
report of a real run, and ``overlaylab known list|check``.

The real run is ``overlaylab run --provider local`` on ext4 without ``filetype`` and btrfs with
the whiteout, d_type and rename scenarios, on the port, containers-storage and Docker's overlay2:
d_type and EXDEV failures, Docker's refusal of a filesystem without d_type, btrfs refusals.
"""
from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET

import pytest

from overlaylab.lab.results import load_run
from overlaylab.lab.tables import render_report
from overlaylab.reports import RunReport, render
from overlaylab.reports.known import DEFAULT_PATH, KnownIssue, KnownIssues, KnownIssuesError, check, load, parse

from .conftest import cli, run_dir_of, tear_down_run_dirs

ENTRY = """
[[issue]]
id = "x"
title = "t"
url = "https://github.com/moby/moby/issues/1"
match = "*/ext4/s"
"""


def _issue(**kw) -> KnownIssue:
    fields = dict(id="x", title="t", url="https://github.com/moby/moby/issues/1", match=("*/*/*",))
    fields.update(kw)
    return KnownIssue(**fields)


# --- the file -----------------------------------------------------------------------------------

def test_every_shipped_entry_parses_and_links_an_upstream_page():
    issues = load(DEFAULT_PATH)
    assert len(issues.issues) >= 10
    hosts = ("github.com", "git.kernel.org", "www.kernel.org", "lore.kernel.org")
    for issue in issues.issues:
        for url in (issue.url,) + issue.see:
            assert url.startswith("https://") and url.split("/")[2] in hosts, (issue.id, url)
    by_id = {i.id: i for i in issues.issues}
    assert by_id["no-dtype-whiteouts"].url == "https://github.com/moby/moby/issues/22937"
    assert by_id["dir-rename-exdev"].url == "https://github.com/moby/moby/issues/25409"
    assert by_id["mtime-diff-bug"].url == "https://github.com/moby/moby/issues/21555"
    assert by_id["too-many-links"].url == "https://github.com/moby/moby/issues/32732"


@pytest.mark.parametrize("text, says", [
    ("[[issue]\n", "not TOML"),
    (ENTRY + "colour = 'red'\n", "issue 1 (x): unknown key colour"),
    (ENTRY.replace("https://github.com/moby/moby/issues/1", "http://example.org/1"), "issue 1 (x): url"),
    (ENTRY.replace('"*/ext4/s"', '"ext4/s"'), "issue 1 (x): match 'ext4/s' is not KERNEL/PROFILE/SCENARIO"),
    (ENTRY + 'status = "fixed"\n', "issue 1 (x): status must be"),
    (ENTRY + 'since = "5.10"\nuntil = "4.19"\n', "issue 1 (x): since 5.10 is not before 4.19"),
    (ENTRY + 'outcomes = ["PASS"]\n', "issue 1 (x): unknown outcome 'PASS'"),
    (ENTRY + 'since = "five"\n', "issue 1 (x): since must be a kernel version"),
    (ENTRY + ENTRY, "issue 2: id 'x' is used twice"),
    (ENTRY.replace('title = "t"\n', ""), "issue 1 (x): no title"),
])
def test_a_bad_entry_is_one_line_naming_the_file_and_the_entry(text, says):
    with pytest.raises(KnownIssuesError) as err:
        parse(text, "my.toml")
    assert str(err.value).startswith("my.toml: ") and says in str(err.value) and "\n" not in str(err.value)


def test_known_list_of_a_bad_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "known.toml"
    bad.write_text(ENTRY + 'status = "closed"\n')
    out = cli(["known", "list", "--file", str(bad)])
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "issue 1 (x): status must be" in lines[0] and str(bad) in lines[0]


def test_known_list_names_every_entry_and_its_report():
    out = cli(["known", "list", "--json"])
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)["issues"]
    assert [i["id"] for i in listed] == [i.id for i in load(DEFAULT_PATH).issues]
    assert all(i["url"].startswith("https://") for i in listed)


# --- matching -----------------------------------------------------------------------------------

def test_matching_by_kernel_profile_scenario_and_engine():
    issue = _issue(match=("debian-*/ext4*/dtype-whiteouts", "*/xfs/rename-image-dir/docker-*"))
    assert issue.covers_key(("debian-6.1", "ext4-nofiletype", "dtype-whiteouts", "port"))
    assert not issue.covers_key(("host", "ext4-nofiletype", "dtype-whiteouts", "port"))          # kernel
    assert not issue.covers_key(("debian-6.1", "xfs", "dtype-whiteouts", "port"))                # profile
    assert not issue.covers_key(("debian-6.1", "ext4", "whiteouts-through-diff", "port"))        # scenario
    assert not issue.covers_key(("debian-6.1", "ext4", "dtype-whiteouts", "containers-storage"))  # 3 parts: the port
    assert issue.covers_key(("host", "xfs", "rename-image-dir", "docker-overlay2"))              # engine glob
    assert not issue.covers_key(("host", "xfs", "rename-image-dir", "port"))
    assert _issue(match=("*/xfs/s/*",)).covers_key(("host", "xfs", "s", "port"))                 # '*' takes the port too


def test_matching_by_outcome_and_kernel_release():
    issue = _issue(outcomes=("FAIL", "REFUSED"), since=(4, 6, 0), until=(5, 10, 0))
    key = ("host", "ext4", "s", "port")
    assert issue.matches(key, "4.19.0-27-amd64", "FAIL") and issue.matches(key, "4.6.0", "REFUSED")
    assert not issue.matches(key, "4.19.0-27-amd64", "UNSUPPORTED")
    assert not issue.matches(key, "4.5.7", "FAIL") and not issue.matches(key, "5.10.0-30-amd64", "FAIL")
    fixed = parse(ENTRY + 'status = "fixed-in 4.19"\n', "f").issues[0]
    assert fixed.fix == (4, 19, 0) and fixed.in_range("4.18.20") and not fixed.in_range("6.1.0-50-amd64")


# --- a real run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real():
    top = tempfile.mkdtemp(prefix="overlaylab-known-tests.")
    reports, agent_tmp = os.path.join(top, "reports"), os.path.join(top, "agent-tmp")
    os.makedirs(agent_tmp)
    try:
        out = cli(["run", "--provider", "local", "--reports-dir", reports, "-p", "=ext4-nofiletype or =btrfs",
                   "-k", "whiteouts or dtype or rename", "--engine", "=port or =containers-storage or =docker-overlay2",
                   "-j", "1"], env={"TMPDIR": agent_tmp}, timeout=900)
        assert out.returncode in (0, 1), out.stderr[-3000:]
        yield reports, run_dir_of(out.stdout), out
    finally:
        tear_down_run_dirs(top, agent_tmp)


def _ids(cells):
    return {c.id for c in cells}


def test_dtype_exdev_and_docker_refusal_entries_make_real_cells_known(real):
    rep = RunReport.from_run(load_run(real[1]))
    known = {issue.id: _ids(cells) for issue, cells in rep.known_groups()}
    assert {"host/ext4-nofiletype/dtype-whiteouts", "host/ext4-nofiletype/whiteouts-through-diff"} \
        <= known["no-dtype-whiteouts"]
    # containers-storage mounts through fuse-overlayfs without d_type: its whiteout failure is that one's
    assert "host/ext4-nofiletype/image-whiteouts/containers-storage" in known["fuse-overlayfs-stale-lookup"]
    assert {"host/ext4-nofiletype/dir-rename-exdev", "host/ext4-nofiletype/rename-image-dir",
            "host/ext4-nofiletype/rename-image-dir/containers-storage"} <= known["dir-rename-exdev"]
    assert {"host/ext4-nofiletype/image-whiteouts/docker-overlay2",
            "host/ext4-nofiletype/rename-image-dir/docker-overlay2"} == known["docker-refuses-no-dtype"]
    cell = rep.cells[("host", "ext4-nofiletype", "dtype-whiteouts", "port")]
    assert cell.outcome == "FAIL" and cell.met and cell.is_known and not cell.is_new
    assert all(c.outcome == "REFUSED" and not c.is_known for c in rep.cells.values()
               if c.profile == "btrfs" and c.engine == "port")  # refusals no entry names stay as they were


def test_every_report_shows_known_cells_with_their_upstream_report(real):
    rep = RunReport.from_run(load_run(real[1]))
    url = "https://github.com/moby/moby/issues/22937"
    md = render(rep, "markdown")
    assert md.index("## New failures") < md.index("## Known issues") < md.index("## Kernel × profile")
    assert "](%s)" % url in md.split("## Kernel × profile")[0]
    page = render(rep, "html")
    assert 'id="known-table"' in page and 'href="%s"' % url in page
    assert 'data-cell="host/ext4-nofiletype/dtype-whiteouts"' in page and "known issue: No d_type" in page
    root = ET.fromstring(render(rep, "junit"))
    case = next(tc for tc in root.iter("testcase") if tc.get("classname") == "overlaylab.host.ext4-nofiletype"
                and tc.get("name") == "dtype-whiteouts")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    skipped = case.find("skipped")
    assert skipped.get("type") == "xfail" and url in skipped.get("message") and "no-dtype-whiteouts" in skipped.get("message")
    assert props["known_issue_url"] == url and props["new_failure"] == "false"
    summary = json.loads(render(rep, "json"))
    by_id = {k["id"]: k for k in summary["known"]}
    assert by_id["no-dtype-whiteouts"]["url"] == url
    assert "host/ext4-nofiletype/dtype-whiteouts" in by_id["no-dtype-whiteouts"]["cells"]
    assert {c["cell"] for c in summary["new_failures"]} == _ids(rep.new_failures())
    terminal = render_report(rep)
    assert "Known issues (" in terminal and url in terminal and "New failures (" in terminal
    shown = cli(["show", real[1]])
    assert shown.returncode in (0, 1) and url in shown.stdout, shown.stderr


def test_failures_no_entry_names_are_new_and_listed_first(real):
    shipped = load(DEFAULT_PATH)
    without_dtype = KnownIssues("test", [i for i in shipped.issues if i.id != "no-dtype-whiteouts"])
    rep = RunReport.from_run(load_run(real[1]), known=without_dtype)
    new = _ids(rep.new_failures())
    assert "host/ext4-nofiletype/dtype-whiteouts" in new and "host/ext4-nofiletype/dir-rename-exdev" not in new
    md = render(rep, "markdown")
    head = md.split("## Known issues")[0]
    assert "## New failures (%d)" % len(new) in head and "host/ext4-nofiletype/dtype-whiteouts" in head
    root = ET.fromstring(render(rep, "junit"))
    case = next(tc for tc in root.iter("testcase") if tc.get("classname") == "overlaylab.host.ext4-nofiletype"
                and tc.get("name") == "dtype-whiteouts")
    assert case.find("skipped").get("message").startswith("expected failure, no known issue (new)")
    # a cell not as expected comes before the expected ones, whatever its name
    rep.cells[("host", "ext4-nofiletype", "whiteouts-through-diff", "port")].attempts[0]["met"] = False
    assert rep.new_failures()[0].id == "host/ext4-nofiletype/whiteouts-through-diff"


def _copy_with_release(src: str, reports: str, run_id: str, release: str) -> str:
    """A copy of a real run whose every record says it ran on kernel ``release``."""
    dst = os.path.join(reports, "runs", run_id)
    os.makedirs(dst)
    with open(os.path.join(src, "run.json")) as f:
        meta = json.load(f)
    meta["run_id"] = run_id
    with open(os.path.join(dst, "run.json"), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(src, "results.jsonl")) as f, open(os.path.join(dst, "results.jsonl"), "w") as out:
        for line in f:
            rec = dict(json.loads(line), run_id=run_id)
            if "kernel_release" in rec:
                rec["kernel_release"] = release
            out.write(json.dumps(rec) + "\n")
    return dst


def test_known_check_names_stale_entries_and_entries_still_failing_after_their_fix(real, tmp_path):
    reports = str(tmp_path / "reports")
    late = _copy_with_release(real[1], reports, "20990101-000000-late", "7.3.0-test")
    known = tmp_path / "known.toml"
    known.write_text('''
[[issue]]
id = "dtype-fixed-long-ago"
title = "d_type whiteouts, said to be fixed in 6.0"
url = "https://github.com/moby/moby/issues/22937"
match = "*/ext4-nofiletype/dtype-whiteouts"
status = "fixed-in 6.0"

[[issue]]
id = "btrfs-whiteouts-never-fail"
title = "containers-storage on btrfs loses whiteouts (it does not)"
url = "https://github.com/containers/storage/issues/1"
match = "*/btrfs/image-whiteouts/containers-storage"

[[issue]]
id = "xfs-only"
title = "not in this run"
url = "https://github.com/moby/moby/issues/2"
match = "*/xfs/*"
''')
    issues = load(str(known))
    rep = RunReport.from_run(load_run(late), known=issues)
    result = check(rep.cells.values(), issues, rep.cell_release)
    assert [i.id for i in result.stale] == ["btrfs-whiteouts-never-fail"]
    assert [i.id for i in result.not_run] == ["dtype-fixed-long-ago", "xfs-only"]  # 7.3 is past its fix
    assert [(i.id, _ids(cells)) for i, cells in result.still_failing] == [
        ("dtype-fixed-long-ago", {"host/ext4-nofiletype/dtype-whiteouts"})]
    out = cli(["known", "check", "20990101-000000-late", "--reports-dir", reports, "--file", str(known)])
    assert out.returncode == 1, out.stderr
    assert "STALE    btrfs-whiteouts-never-fail" in out.stdout
    assert "STILL FAILING after its fix (kernel < 6.0): dtype-fixed-long-ago: host/ext4-nofiletype/dtype-whiteouts on 7.3.0-test (FAIL)" in out.stdout
    assert "1 stale, 1 still failing after their fix" in out.stdout


def test_known_check_of_the_shipped_file_on_the_real_run_needs_no_attention(real):
    out = cli(["known", "check", "latest", "--reports-dir", real[0], "--json"])
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["stale"] == [] and result["still_failing"] == []
    assert "host/ext4-nofiletype/dtype-whiteouts" in result["matched"]["no-dtype-whiteouts"]
    assert "mtime-diff-bug" in result["not_run"]
    missing = cli(["known", "check", "no-such-run", "--reports-dir", real[0]])
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_the_breakage_scenarios_expected_failures_are_known_not_new(tmp_path):
    """The breakage cases that fail as expected on this kernel each have their upstream entry,
    so a default run's "New failures" lists only what is really new (it listed 147 cells of
    these before they had entries). A real host run of the failing cases on ext4 and on ext4
    without d_type, where the d_type entry takes the opaque case."""
    agent_tmp = str(tmp_path / "agent-tmp")
    os.makedirs(agent_tmp)
    reports = str(tmp_path / "reports")
    try:
        out = cli(["run", "--provider", "local", "--reports-dir", reports, "-p", "=ext4 or =ext4-nofiletype",
                   "-k", "=upperdir-in-use or =volatile-remount or =redirect-dir-native-diff or "
                         "=rootless-no-userxattr or =opaque-copied-up", "--engine", "port", "-j", "1"],
                  env={"TMPDIR": agent_tmp}, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        rep = RunReport.from_run(load_run(run_dir_of(out.stdout)))
    finally:
        tear_down_run_dirs(str(tmp_path), agent_tmp)
    assert rep.new_failures() == []
    known = {issue.id: _ids(cells) for issue, cells in rep.known_groups()}
    for sid in ("upperdir-in-use", "volatile-remount", "redirect-dir-native-diff", "rootless-no-userxattr"):
        assert known[sid] == {"host/ext4/" + sid, "host/ext4-nofiletype/" + sid}, known
    assert "host/ext4-nofiletype/opaque-copied-up" in known["no-dtype-whiteouts"]
    assert rep.cells[("host", "ext4", "opaque-copied-up", "port")].outcome == "PASS"
    assert "New failures (0)" in out.stdout
