"""The README's examples run as written.

Every fenced ``sh``, ``console`` and ``python`` block of README.md is run here, with
``.venv/bin`` first on PATH (as after the README's ``. .venv/bin/activate``), from a scratch
working directory, with ``OVERLAYLAB_REPORTS`` pointing into it. A block the README marks with
``<!-- not-run: reason -->`` just before it is not run as is; where it has a cheaper equivalent
(one cell instead of a whole matrix) that is run instead and named in :data:`CHEAP`, keyed by the
block's first line so that an edit of the block is noticed. ``console`` blocks are checked
line by line against their printed output (dates are the only wildcard); ``/mnt/scratch`` is
moved into the test's temp dir so a test never mounts on a fixed path of the machine.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from overlaylab.agent.backingfs import unmount_tree
from overlaylab.mountutil import mounts_under

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
VENV_BIN = os.path.dirname(sys.executable)
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[a-z]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!-- not-run: (?P<reason>.+?) -->\s*$")
SEP = "@@readme-command-done@@"


class Block:
    def __init__(self, lang, lines, line_no, not_run):
        self.lang, self.lines, self.line_no, self.not_run = lang, lines, line_no, not_run

    @property
    def text(self):
        return "\n".join(self.lines) + "\n"

    @property
    def first(self):
        return self.lines[0] if self.lines else ""

    @property
    def first_command(self):
        """The first line without its comment and extra blanks (comments may be reworded)."""
        return " ".join(self.first.split("#", 1)[0].split())

    def __repr__(self):
        return "README.md:%d (%s)" % (self.line_no, self.lang)


def readme_blocks():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group("indent")), m.group("lang"), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = NOT_RUN.match(lines[prev]) if prev >= 0 else None
        blocks.append(Block(lang, body, start + 1, marker.group("reason") if marker else None))
    return blocks


RUNNABLE_LANGS = ("sh", "console", "python")
BLOCKS = [b for b in readme_blocks() if b.lang in RUNNABLE_LANGS]
RUN = [b for b in BLOCKS if b.not_run is None]

# The marked blocks' cheaper equivalents: {first command of the block (no comment): [commands]}.
ONE_CELL = "--provider local -p =tmpfs -k =driver-init"
CHEAP = {
    "scripts/lab": ["scripts/lab " + ONE_CELL],
    "overlaylab run": ["overlaylab run " + ONE_CELL,
                       "overlaylab run --provider local -p 'xfs or ext4' -k 'whiteouts-through-diff'",
                       "overlaylab list kernels", "overlaylab list profiles", "overlaylab list scenarios",
                       "overlaylab show latest"],
    # neighbours in the order (nothing between them): nothing boots, the result is named
    "overlaylab bisect xfs-v4-noftype/create-empty --good debian-6.1 --bad debian-sid": [
        "overlaylab bisect xfs-v4-noftype/create-empty --good debian-6.12 --bad debian-sid --assume-ends"],
}


def test_readme_has_runnable_examples_and_every_skip_says_why():
    assert len(RUN) >= 4, RUN
    assert {b.lang for b in RUN} == {"sh", "console", "python"}
    for b in BLOCKS:
        if b.not_run is not None:
            assert len(b.not_run) > 20, "%r: say why it is not run" % b


def test_marked_blocks_with_cheap_equivalents_are_the_readme_ones():
    firsts = {b.first_command for b in BLOCKS if b.not_run is not None}
    assert set(CHEAP) <= firsts, "README block changed: update CHEAP in tests/test_readme.py"


@pytest.fixture
def scratch(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
               OVERLAYLAB_REPORTS=str(tmp_path / "reports"), TMPDIR=str(tmp_path), VIRTUAL_ENV=os.path.dirname(VENV_BIN))
    env.pop("OVERLAYLAB_HOME", None)
    try:
        yield str(tmp_path), str(work), env
    finally:
        if mounts_under(str(tmp_path)):
            unmount_tree(str(tmp_path))
        assert mounts_under(str(tmp_path)) == []


def _sh(script, cwd, env, timeout=900):
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _console(block):
    """[(command, [expected output lines])] of a console block."""
    out = []
    for line in block.lines:
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            assert out, "%r: output before the first command" % block
            out[-1][1].append(line)
    return out


DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d")


def _norm(lines):
    return [DATE.sub("DATE", line.rstrip()) for line in lines]


def _scenario_module_runner(block, tmp):
    """"Add a scenario": the block is a module of overlaylab/agent/scenarios/ (relative imports).
    Load it as one in a child process (so its registration never leaks into this session) and
    run the new scenario on a real tmpfs profile, as the agent does."""
    path = os.path.join(tmp, "my_check.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(block.text)
    return """if True:
    import importlib.util, sys
    import overlaylab.agent.scenarios
    from overlaylab.agent.main import probe_profile
    from overlaylab.agent import probes
    from overlaylab.agent.backingfs import make_backing_fs
    from overlaylab.agent.profiles import load_profiles
    from overlaylab.agent.scenario import all_scenarios, run_scenario
    spec = importlib.util.spec_from_file_location("overlaylab.agent.scenarios.my_check", %r)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    sc = all_scenarios()["my-check"]
    profile = load_profiles()["tmpfs"]
    with make_backing_fs(profile, %r) as bfs:
        facts = probe_profile(profile, bfs.mountpoint, probes.run_target_probes())[1]
        cell = run_scenario(sc, bfs.mountpoint, facts, %r)
    print(sc.id, cell.outcome.value, "expected", cell.expected.outcome.value, cell.error)
""" % (path, tmp, tmp)


@pytest.mark.parametrize("block", RUN, ids=repr)
def test_readme_example_runs_as_written(block, scratch):
    tmp, work, env = scratch
    if block.lang == "sh":
        res = _sh("set -euo pipefail\ncd %s\n%s" % (ROOT, block.text), ROOT, env)
        assert res.returncode == 0, "%r failed:\n%s" % (block, res.stdout[-4000:])
    elif block.lang == "python":
        code = block.text
        if block.first.startswith("from ..scenario import"):
            code = _scenario_module_runner(block, tmp)
        res = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=300)
        assert res.returncode == 0, "%r failed:\n%s" % (block, res.stdout[-4000:])
        if "driver.changes(" in block.text:
            assert "Change(path='/etc/hostname'" in res.stdout
        if block.first.startswith("from ..scenario import"):
            assert "my-check PASS expected PASS" in res.stdout, res.stdout
    else:
        steps = _console(block)
        script = "exec 2>&1\n" + "".join("%s\necho %s\n" % (cmd.replace("/mnt/scratch", tmp + "/mnt/scratch"), SEP)
                                         for cmd, _ in steps)
        res = _sh(script, work, env)
        got = res.stdout.split(SEP + "\n")
        assert len(got) == len(steps) + 1, res.stdout
        for (cmd, expected), output in zip(steps, got):
            expected = [line.replace("/mnt/scratch", tmp + "/mnt/scratch") for line in expected]
            assert _norm(output.splitlines()) == _norm(expected), "%r: `%s` printed:\n%s" % (block, cmd, output)


@pytest.mark.parametrize("first", sorted(CHEAP))
def test_readme_marked_block_cheap_equivalent(first, scratch):
    tmp, work, env = scratch
    for cmd in CHEAP[first]:
        res = _sh(cmd, ROOT, env)
        assert res.returncode == 0, "`%s` failed:\n%s" % (cmd, res.stdout[-4000:])
        if cmd.startswith(("overlaylab run", "scripts/lab")):
            assert "PASS" in res.stdout, res.stdout[-2000:]


@pytest.mark.vm
def test_readme_kernel_line_boots_a_debian_kernel(scratch):
    """The "Using the lab" block's `-K debian-6.1 -K debian-sid` line, on one kernel and one cell:
    the README's way of naming a Debian kernel boots it under qemu and runs the cell there."""
    block = [b for b in BLOCKS if b.first_command == "overlaylab run"][0]
    assert "overlaylab run -K debian-6.1 -K debian-sid" in block.text
    tmp, work, env = scratch
    # Not TMPDIR=tmp_path here: ssh's ControlPath under a long TMPDIR exceeds the socket path limit.
    env = dict(env)
    env.pop("TMPDIR")
    res = _sh("overlaylab run -K debian-6.1 " + ONE_CELL.replace("--provider local ", ""), ROOT, env, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "debian-6.1" in res.stdout and "PASS" in res.stdout, res.stdout[-2000:]


def test_readme_bundle_block_names_what_a_bundle_holds(scratch):
    """The bug-report block (marked: its output is abridged): its command on a fresh one-cell
    run prints the bundle's path, and the archive holds exactly the files the README lists."""
    block = [b for b in BLOCKS if b.first.startswith("$ overlaylab bundle latest ")][0]
    assert block.not_run
    cell = block.first.split()[-1]
    target, profile, scenario = cell.split("/")
    listed = [line.split()[1] for line in block.lines[3:] if len(line.split()) > 1 and line.split()[0].isdigit()]
    assert "README.txt" in listed and "filesystem/recipe.sh" in listed
    tmp, work, env = scratch
    res = _sh("overlaylab run --provider local -p =%s -k =%s && %s" % (profile, scenario, block.first[2:]),
              work, env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:]
    path = res.stdout.strip().splitlines()[-1]
    assert re.search(r"/bundles/overlaylab-bundle-\S+-%s-%s-%s\.tar\.gz$" % (target, profile, scenario), path), path
    import tarfile
    with tarfile.open(os.path.join(work, path)) as t:
        names = sorted(m.name.split("/", 1)[1] for m in t.getmembers() if m.isfile())
    assert names == sorted(listed)
