"""The features table (kernel x overlayfs feature) in every report of a real ``--provider local``
run on ext4 and tmpfs: the terminal tables of ``run`` and ``show``, report.md, report.html and
summary.json, all read from the profile records' ``facts.overlay_features``."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile

import pytest

from overlaylab.agent.features import FEATURES
from overlaylab.mountutil import mounts_under

from .conftest import cli, run_dir_of

PROFILES = ("ext4", "tmpfs")


@pytest.fixture(scope="module")
def run():
    top = tempfile.mkdtemp(prefix="overlaylab-features-tests.")
    agent_tmp = os.path.join(top, "agent-tmp")
    os.makedirs(agent_tmp)
    try:
        out = cli(["run", "--provider", "local", "--reports-dir", os.path.join(top, "reports"),
                   "-p", "=ext4 or =tmpfs", "-k", "=create-empty", "-j", "1"], env={"TMPDIR": agent_tmp})
        assert out.returncode == 0, out.stdout + out.stderr
        yield out, run_dir_of(out.stdout)
        assert mounts_under(agent_tmp) == []
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _terminal_table(text: str):
    """The rows of the features table under its heading: ``{kernel: {feature: cell}}``."""
    lines = text[text.index("Overlay features (a real mount per kernel x backing fs):"):].splitlines()[1:]
    header = lines[0].split()
    rows = {}
    for line in lines[2:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return header, rows


def test_run_prints_the_features_table_with_every_feature_of_the_host(run):
    out, _ = run
    header, rows = _terminal_table(out.stdout)
    assert header == ["kernel"] + list(FEATURES)
    assert rows == {"host": {f: "yes" for f in FEATURES}}


def test_show_prints_the_same_features_table(run):
    out, run_dir = run
    shown = cli(["show", run_dir])
    assert shown.returncode == 0, shown.stderr
    assert _terminal_table(shown.stdout) == _terminal_table(out.stdout)


def test_each_profile_record_carries_its_features_with_their_attempts(run):
    _, run_dir = run
    with open(os.path.join(run_dir, "results.jsonl")) as f:
        records = [json.loads(line) for line in f if '"record": "profile"' in line]
    assert sorted(r["profile"] for r in records) == sorted(PROFILES)
    for rec in records:
        features = rec["facts"]["overlay_features"]["features"]
        assert sorted(features) == sorted(FEATURES)
        assert features["nfs_export"]["evidence"]["attempts"][0]["options"] == "nfs_export=on"
        assert rec["probes"]["overlay_features"]["value"] == {f: True for f in FEATURES}


def test_markdown_has_the_features_table(run):
    _, run_dir = run
    with open(os.path.join(run_dir, "report.md")) as f:
        md = f.read()
    section = md[md.index("## Overlay features"):]
    header = next(line for line in section.splitlines() if line.startswith("| kernel"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["kernel"] + list(FEATURES)
    row = next(line for line in section.splitlines() if line.startswith("| host ("))
    assert [c.strip() for c in row.strip("|").split("|")][1:] == ["yes"] * len(FEATURES)


def test_html_has_the_features_table_with_each_filesystems_answer_as_tooltip(run):
    _, run_dir = run
    with open(os.path.join(run_dir, "report.html")) as f:
        page = f.read()
    table = page[page.index('<table class="overview" id="features-table">'):]
    table = table[:table.index("</table>")]
    assert re.findall(r"<th>([^<]+)</th>", table) == ["kernel"] + list(FEATURES)
    tips = [html.unescape(t) for t in re.findall(r'<td title="([^"]*)">', table)]
    assert len(tips) == len(FEATURES)
    assert all(t.startswith("ext4: yes — ") and "\ntmpfs: yes — " in t for t in tips), tips
    assert re.findall(r'<span class="pill o-PASS">([^<]+)</span>', table) == ["yes"] * len(FEATURES)


def test_summary_json_has_the_features_per_kernel_and_filesystem(run):
    _, run_dir = run
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    host = summary["overlay_features"]["host"]
    assert sorted(host) == sorted(FEATURES)
    for name, entry in host.items():
        assert entry["cell"] == "yes"
        assert sorted(entry["profiles"]) == sorted(PROFILES)
        assert all(p["supported"] is True and p["reason"] for p in entry["profiles"].values()), name
