"""Bad input is a usage error (exit 2, one line, nothing recorded), the exit-code table holds for
``run``, root is checked up front, the provider of a record is the one that ran it, ``--json``
outputs parse, and ``--profiles-file`` reaches every agent."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from overlaylab import exitcodes
from overlaylab.agent.profiles import load_profiles
from overlaylab.lab.matrix import ExpressionError, profile_matcher
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.matrix import Matrix
from overlaylab.lab.runner import Runner
from overlaylab.agent.scenario import all_scenarios
from overlaylab.lab.tables import clip
from overlaylab.mountutil import mounts_under
from overlaylab.providers.session import SessionBase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAYLAB = [sys.executable, "-m", "overlaylab"]


def _cli(args, env=None, timeout=300, cwd=REPO, user=None):
    argv = OVERLAYLAB + list(args)
    if user:
        argv = ["setpriv", "--reuid=%s" % user, "--regid=nogroup", "--clear-groups"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=dict(os.environ, **(env or {})))


def _one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# --- usage errors -------------------------------------------------------------------------

USAGE_CASES = [
    (["-p", "(("], "-p '((': unexpected end at column 3"),
    (["-p", "ext4 and"], "-p 'ext4 and': unexpected end at column 9"),
    (["-p", "or or"], "unexpected 'or' at column 1"),
    (["-k", "diff or"], "-k 'diff or': unexpected end at column 8"),
    (["-k", "(diff"], "missing ')' at column 6 for the '(' at column 1"),
    (["-p", "ext4 xfs"], "unexpected 'xfs' at column 6"),
    (["-p", "=ext5"], "did you mean =ext4?"),
    (["-p", "xfs or ext4 or btrfz"], "'btrfz' at column 16 matches no profile (did you mean btrfs?)"),
    (["-k", "=creat-empty"], "matches no scenario (did you mean =create-empty"),
    (["-p", "ext4 and xfs"], "matches no profile"),
    (["-K", "debian-6.2"], "-K debian-6.2: no such kernel in vms/kernels.toml (did you mean debian-6.1"),
    (["--provider", "local", "-K", "debian-6.1"], "--provider local runs only the host kernel"),
    (["-j", "0"], "0 is not in the range x>=1"),
    (["-j", "-3"], "-3 is not in the range x>=1"),
    (["--repeat", "0"], "0 is not in the range x>=1"),
    (["--provider", "qemuu"], "(did you mean qemu?)"),
    (["--engine", "dokcer"], "--engine 'dokcer': 'dokcer' at column 1 matches no engine (did you mean docker?)"),
    (["--engine", "docker and fuse"], "--engine 'docker and fuse': matches no engine (have: port, "),
    (["--engine", "port", "--engine", "docker-overlay3"], "matches no engine (did you mean docker-overlay"),
    (["--bogus"], "No such option '--bogus'"),
]


@pytest.mark.parametrize("args,expected", USAGE_CASES, ids=[" ".join(a) for a, _ in USAGE_CASES])
def test_bad_run_input_is_one_line_exit_2_and_records_nothing(tmp_path, args, expected):
    reports = tmp_path / "reports"
    res = _cli(["run", "--reports-dir", str(reports)] + args, timeout=60)
    assert res.returncode == exitcodes.USAGE == 2, res.stdout + res.stderr
    line = _one_line(res.stderr)
    assert line.startswith("overlaylab run: error: ") and expected in line, line
    assert res.stdout == ""
    assert not reports.exists()  # no run recorded, nothing becomes `latest`


def test_scenario_expression_errors_say_scenario():
    with pytest.raises(ExpressionError) as info:
        profile_matcher("or or", "scenario")
    assert str(info.value).startswith("scenario expression 'or or'") and info.value.column == 1


def test_a_malformed_profiles_file_is_a_usage_error(tmp_path):
    bad = tmp_path / "fs.toml"
    bad.write_text("[profile.x]\nkind = 'nonsense'\n")
    res = _cli(["run", "--reports-dir", str(tmp_path / "r"), "--profiles-file", str(bad)], timeout=60)
    assert res.returncode == 2 and "kind must be one of" in _one_line(res.stderr)
    assert not (tmp_path / "r").exists()


def test_show_of_a_run_that_does_not_exist_is_a_usage_error(tmp_path):
    res = _cli(["show", "nosuchrun", "--reports-dir", str(tmp_path)], timeout=60)
    assert res.returncode == 2 and _one_line(res.stderr).startswith("overlaylab show: error: ")


def test_list_with_a_typo_suggests_the_choice():
    res = _cli(["list", "profile"], timeout=60)
    assert res.returncode == 2 and "(did you mean profiles?)" in _one_line(res.stderr)


def _group_raising(exc):
    import click

    from overlaylab.cli import _Main

    @click.group(cls=_Main)
    def grp():
        pass

    @grp.command("boom")
    def boom():
        raise exc
    return grp


@pytest.mark.parametrize("exc,code", [(ValueError("bad record in results.jsonl"), 2),
                                      (KeyError("target"), 3)], ids=["bad-input", "lab-bug"])
def test_an_uncaught_exception_is_one_line_unless_debugging(monkeypatch, exc, code):
    monkeypatch.delenv("OVERLAYLAB_DEBUG", raising=False)
    res = CliRunner().invoke(_group_raising(exc), ["boom"])
    assert res.exit_code == code, res.output
    line = _one_line(res.output)
    assert line.startswith("overlaylab: error: %s: " % type(exc).__name__) and "OVERLAYLAB_DEBUG=1" in line
    monkeypatch.setenv("OVERLAYLAB_DEBUG", "1")
    res = CliRunner().invoke(_group_raising(exc), ["boom"])
    assert res.exception is exc  # re-raised: the traceback is printed


def test_a_broken_run_json_is_not_a_traceback(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{not json")
    res = _cli(["show", str(run)], timeout=60)
    assert res.returncode == 2, res.stderr  # bad input: the file is named, no traceback
    line = _one_line(res.stderr)
    assert line.startswith("overlaylab show: error: ") and "run.json" in line, line


def test_help_documents_the_exit_codes_and_the_default_kernels():
    top = _cli(["--help"], timeout=60)
    assert top.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "130 "):
        assert "\n    " + code in top.stdout, top.stdout
    assert "usage error" in top.stdout and "infrastructure" in top.stdout
    run = " ".join(_cli(["run", "--help"], timeout=60).stdout.split())
    assert "default: host)" not in run
    assert "Default: the host kernel plus every catalogue kernel" in run
    assert "with --provider local, the host kernel alone" in run


def test_exit_codes_are_one_table():
    assert [int(c) for c, _ in exitcodes.MEANINGS] == [0, 1, 2, 3, 130]
    assert (exitcodes.OK, exitcodes.NOT_AS_EXPECTED, exitcodes.USAGE, exitcodes.INFRASTRUCTURE,
            exitcodes.INTERRUPTED) == (0, 1, 2, 3, 130)


# --- root ---------------------------------------------------------------------------------

def test_non_root_run_is_refused_up_front_with_the_reason(tmp_path):
    os.chmod(str(tmp_path), 0o777)
    res = _cli(["run", "--provider", "local", "-p", "=tmpfs", "-k", "=driver-init",
                "--reports-dir", str(tmp_path / "r")], user="nobody", cwd=str(tmp_path), timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    line = _one_line(res.stderr)
    assert "overlaylab run needs root (running as uid 65534)" in line
    assert "loop devices" in line and "mount" in line
    assert not (tmp_path / "r").exists()


def test_non_root_driver_and_agent_are_refused_up_front(tmp_path):
    os.chmod(str(tmp_path), 0o777)
    res = _cli(["driver", "create", "x"], env={"OVERLAYLAB_HOME": str(tmp_path / "home")}, user="nobody", timeout=60)
    assert res.returncode == 2 and "overlaylab driver needs root" in _one_line(res.stderr)
    agent = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                            "-m", "overlaylab.agent", "run", "--profile", "tmpfs"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert agent.returncode == 2
    rec = json.loads(agent.stdout)
    assert rec["record"] == "error" and "needs root" in rec["error"]


def test_clip_keeps_the_tail_that_explains_the_error():
    err = ("backing fs 'ext4' unavailable: losetup failed: losetup: /tmp/overlaylab-agent.k2j3h4g5/"
           "ext4.img: failed to set up loop device: Permission denied")
    assert len(err) > 100
    out = clip(err, 100)
    assert out.endswith("Permission denied") and out.startswith("backing fs 'ext4'") and len(out) <= 100
    assert clip("short") == "short"
    assert clip("first line\nsecond") == "first line (+1 lines)"


# --- run's exit codes, in process with a stub provider ------------------------------------

class _Result:
    def __init__(self, rc, stdout="", stderr=""):
        self.rc, self.stdout, self.stderr = rc, stdout, stderr


class _StubProvider:
    name = "stub"

    def __init__(self, outcome=None, expected="PASS", boot_error=None):
        self.outcome, self.expected, self.boot_error = outcome, expected, boot_error

    @contextlib.contextmanager
    def up(self, kernel, disks=(), keep=False):
        if self.boot_error:
            raise RuntimeError(self.boot_error)
        provider = self

        class Session(SessionBase):
            kernel_release = "9.9-stub"
            disks = {}

            def run(self, command, timeout):
                target = json.dumps({"record": "target", "facts": {}}) + "\n" if "--probe-target" in command else ""
                sid = command.split("--scenario ")[1].split()[0]
                return _Result(0, target + json.dumps({"record": "cell", "profile": "tmpfs", "scenario": sid,
                                              "group": "lifecycle", "outcome": provider.outcome,
                                              "expected": provider.expected,
                                              "met": provider.outcome == provider.expected,
                                              "duration": 0.0, "error": "", "log": [], "evidence": {}}))
        yield Session()


@pytest.mark.parametrize("stub,code", [
    (dict(outcome="PASS"), 0),
    (dict(outcome="FAIL"), 1),
    (dict(outcome="ERROR"), 3),
    (dict(boot_error="no ready marker after 60 s"), 3),
], ids=["met", "not-as-expected", "error-cell", "target-down"])
def test_run_follows_the_exit_code_table(tmp_path, monkeypatch, stub, code):
    from overlaylab.cli import main
    monkeypatch.setattr("overlaylab.providers.make_provider", lambda name: _StubProvider(**stub))
    monkeypatch.setattr("overlaylab.kernels.prefetch.prefetch", lambda kernels, **kw: [])
    monkeypatch.setattr("overlaylab.agent.procutil.become_subreaper", lambda: None)
    res = CliRunner().invoke(main, ["run", "--provider", "qemu", "-K", "debian-6.1", "-p", "=tmpfs",
                                    "-k", "=driver-init", "--reports-dir", str(tmp_path)])
    assert res.exit_code == code, res.output
    assert "run " in res.output  # the run was recorded and reported


# --- the provider of a record is the one that ran it --------------------------------------

def test_auto_provider_names_each_session_and_runner_records_it(tmp_path):
    """Two targets in parallel through one AutoProvider: the host's records say local, the
    VM kernel's say qemu (the runner asks the session, not the shared provider)."""
    from overlaylab.providers.auto import AutoProvider

    class Stub:
        def __init__(self, name):
            self.name = name

        @contextlib.contextmanager
        def up(self, kernel, disks=(), keep=False):
            class Session(SessionBase):
                kernel_release = "1.0-" + self.name
                disks = {}

                def run(self, command, timeout):
                    import time
                    time.sleep(0.3)  # both targets are up at once
                    target = json.dumps({"record": "target", "facts": {}}) + "\n" if "--probe-target" in command else ""
                    return _Result(0, target + json.dumps({
                        "record": "cell", "profile": "tmpfs", "scenario": "driver-init", "group": "x",
                        "outcome": "PASS", "expected": "PASS", "met": True, "duration": 0.0, "error": "",
                        "log": [], "evidence": {}}))
            yield Session()

    auto = AutoProvider()
    auto._providers = {"local": Stub("local"), "qemu": Stub("qemu")}
    store = RunStore(str(tmp_path), run_id="mixed")
    store.start()
    sc = all_scenarios()
    matrix = Matrix(["host", "debian-6.1"], {"tmpfs": load_profiles()["tmpfs"]}, {"driver-init": sc["driver-init"]})
    Runner(auto, store, matrix, jobs=2).run()
    store.finish()
    run = load_run(store.path)
    cells = run.cell_map()
    assert cells[("host", "tmpfs", "driver-init", "port")]["provider"] == "local"
    assert cells[("debian-6.1", "tmpfs", "driver-init", "port")]["provider"] == "qemu"
    assert run.target_record("host")["provider"] == "local"
    assert run.target_record("debian-6.1")["provider"] == "qemu"
    assert auto.name == "auto"


def test_a_target_that_never_came_up_is_named_by_its_provider(tmp_path):
    from overlaylab.providers.auto import AutoProvider

    class Down:
        @contextlib.contextmanager
        def up(self, kernel, disks=(), keep=False):
            raise RuntimeError("no vmlinuz")
            yield

    auto = AutoProvider()
    auto._providers = {"local": Down(), "qemu": Down()}
    store = RunStore(str(tmp_path), run_id="down")
    store.start()
    matrix = Matrix(["host", "debian-6.1"], {"tmpfs": load_profiles()["tmpfs"]},
                    {"driver-init": all_scenarios()["driver-init"]})
    Runner(auto, store, matrix, jobs=2).run()
    store.finish()
    cells = load_run(store.path).cell_map()
    assert cells[("host", "tmpfs", "driver-init", "port")]["provider"] == "local"
    assert cells[("debian-6.1", "tmpfs", "driver-init", "port")]["provider"] == "qemu"


# --- --json -------------------------------------------------------------------------------

def test_list_json_outputs_parse_with_the_expected_keys():
    profiles = json.loads(_cli(["list", "profiles", "--json"], timeout=60).stdout)
    assert {"name", "kind", "fstype", "size_mib", "tags"} <= set(profiles[0])
    assert [p["name"] for p in profiles] == list(load_profiles())
    scenarios = json.loads(_cli(["list", "scenarios", "--json"], timeout=60).stdout)
    assert {"id", "group", "description", "reference", "tags"} <= set(scenarios[0])
    assert [s["id"] for s in scenarios] == list(all_scenarios())
    for args in (["list", "kernels", "--json"], ["kernels", "list", "--json"]):
        kernels = json.loads(_cli(args, timeout=60).stdout)
        assert {"name", "kind", "suite", "description", "cached", "release"} <= set(kernels[0])
        assert kernels[0]["name"] == "host" and kernels[0]["release"] == os.uname().release
        assert "debian-6.1" in [k["name"] for k in kernels]


def test_show_and_history_json(tmp_path):
    store = RunStore(str(tmp_path), run_id="20260101-000000-abcd")
    store.start(matrix={"kernels": ["host"], "profiles": ["tmpfs"], "scenarios": ["driver-init"]}, provider="local")
    store.append({"record": "cell", "target": "host", "profile": "tmpfs", "scenario": "driver-init",
                  "group": "failure-class", "provider": "local", "outcome": "PASS", "expected": "PASS",
                  "met": True, "duration": 0.1, "error": "", "log": [], "evidence": {}})
    store.finish()
    shown = _cli(["show", "latest", "--json", "--reports-dir", str(tmp_path)], timeout=60)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["run_id"] == "20260101-000000-abcd" and data["ok"] is True
    assert data["matrix"] == {"host": {"tmpfs": {"driver-init": "PASS"}}}
    assert {"counts", "unmet", "targets", "status", "cells"} <= set(data)
    hist = _cli(["history", "--json", "--reindex", "--reports-dir", str(tmp_path)], timeout=60)
    assert hist.returncode == 0, hist.stderr
    data = json.loads(hist.stdout)
    assert [r["run_id"] for r in data["runs"]] == ["20260101-000000-abcd"] and data["moving"] == []
    assert {"status", "provider", "cells", "pass", "unmet"} <= set(data["runs"][0])
    cell = json.loads(_cli(["history", "--json", "--cell", "host/tmpfs/*", "--reports-dir", str(tmp_path)],
                           timeout=60).stdout)
    assert cell["cell"] == "host/tmpfs/*"
    assert [(r["run_id"], r["outcome"]) for r in cell["history"]] == [("20260101-000000-abcd", "PASS")]


# --- --profiles-file ----------------------------------------------------------------------

MYTMP = textwrap.dedent("""\
    [profile.mytmp]
    description = "a custom tmpfs"
    kind = "tmpfs"
    size_mib = 48
    mount_options = "mode=0711"
    """)


def test_every_agent_gets_the_profiles_text():
    """Whatever the provider, the agent's command line carries the profiles' content."""
    profiles = {"mytmp": __import__("overlaylab.agent.profiles", fromlist=["x"]).parse_profiles(MYTMP)["mytmp"]}
    store = __import__("types").SimpleNamespace(run_id="20261202-000000-abcd")
    runner = Runner(_StubProvider(outcome="PASS"), store, Matrix(["k"], profiles, {}), profiles_text=MYTMP)

    class Session(SessionBase):
        disks = {}
    args = runner._agent_args(Session(), list(profiles.values()), [("driver-init", "port")], "k")
    b64 = args[args.index("--profiles-b64") + 1]
    assert base64.b64decode(b64).decode() == MYTMP


def test_profiles_file_is_honoured_by_local_agents(tmp_path):
    fs = tmp_path / "fs.toml"
    fs.write_text(MYTMP)
    agent_tmp = tmp_path / "agent-tmp"
    agent_tmp.mkdir()
    try:
        res = _cli(["run", "--provider", "local", "--profiles-file", str(fs), "-p", "=mytmp", "-k", "=driver-init",
                    "--reports-dir", str(tmp_path / "r")], env={"TMPDIR": str(agent_tmp)})
        assert res.returncode == 0, res.stdout + res.stderr
        runs = os.listdir(str(tmp_path / "r" / "runs"))
        run = load_run(str(tmp_path / "r" / "runs" / runs[0]))
        cell = run.cell_map()[("host", "mytmp", "driver-init", "port")]
        assert cell["outcome"] == "PASS" and cell["provider"] == "local"
        mount = json.dumps(run.profile_record("host", "mytmp")["fs"])
        assert "size=48m" in mount and "mode=0711" in mount
    finally:
        from overlaylab.agent.backingfs import unmount_tree
        unmount_tree(str(agent_tmp))
    assert mounts_under(str(agent_tmp)) == []
