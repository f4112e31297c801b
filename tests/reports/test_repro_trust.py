"""`overlaylab repro` runs only the lab cell its bundle names.

A bundle comes from someone else: its command is never executed, its fields are checked
against this machine's catalogues, a profiles file it brings is used only when asked, and
anything malformed or hostile is refused in one line with exit 2.
"""
from __future__ import annotations

import io
import json
import re
import os
import shlex
import sys
import tarfile

import pytest

from overlaylab.lab.results import load_run

from .conftest import cli, run_dir_of

TOP = "overlaylab-bundle-20260101-000000-beef-host-tmpfs-driver-init"


def spec(**fields):
    """A repro.json for host/tmpfs/driver-init (PASS on tmpfs) with ``fields`` changed; a
    field given as None is left out."""
    out = {"run_id": "20260101-000000-beef", "cell": "host/tmpfs/driver-init", "kernel": "host", "profile": "tmpfs",
           "scenario": "driver-init", "provider": "local", "repeat": 1, "outcome": "PASS", "expected": "PASS",
           "met": True, "command": "overlaylab run --provider local -K host -p =tmpfs -k =driver-init"}
    out.update(fields)
    return {k: v for k, v in out.items() if v is not None}


def member(name, data=b"", kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def write_tar(path, members, mode="w:gz"):
    with tarfile.open(str(path), mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return str(path)


def bundle(path, repro, extra=()):
    data = repro if isinstance(repro, bytes) else json.dumps(repro).encode()
    return write_tar(path, [member(TOP, kind=tarfile.DIRTYPE), member(TOP + "/repro.json", data)] + list(extra))


def assert_usage_error(res, *words):
    """Exit 2, nothing on stdout, one line on stderr that says what is wrong, no traceback."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert len(lines) == 1 and re.match(r"overlaylab [a-z]+: error: ", lines[0]), res.stderr
    assert "Traceback" not in res.stderr and res.stdout == "", (res.stdout, res.stderr)
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_a_bundle_whose_command_is_hostile_runs_only_its_cell(lab, tmp_path):
    home = tmp_path / "precious"
    (home / "overlay").mkdir(parents=True)
    (home / "overlay" / "keep").write_text("data")
    hostile = ["overlaylab", "driver", "--home", str(home), "remove", "x"]
    path = bundle(tmp_path / "b.tar.gz", spec(argv=hostile, command=shlex.join(hostile)))
    reports = str(tmp_path / "r")

    dry = cli(["repro", path, "--dry-run", "--reports-dir", reports])
    assert dry.returncode == 0, dry.stderr
    want = [sys.executable, "-m", "overlaylab", "run", "--provider", "local", "-K", "host", "-p", "=tmpfs",
            "-k", "=driver-init", "--reports-dir", reports]
    assert shlex.split(dry.stdout) == want
    assert str(home) not in dry.stdout

    res = cli(["repro", path, "--reports-dir", reports], env=lab.env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "REPRODUCED: host/tmpfs/driver-init is PASS again" in res.stdout
    assert (home / "overlay" / "keep").read_text() == "data"
    ran = load_run(run_dir_of(res.stdout))
    assert [sys.executable, "-m", "overlaylab"] + ran.meta["argv"] == want   # what ran is what --dry-run said
    assert [(c["target"], c["profile"], c["scenario"]) for c in ran.cells] == [("host", "tmpfs", "driver-init")]

    # the hostile argv alone, without the cell's fields: refused, nothing runs
    only_argv = bundle(tmp_path / "argv-only.tar.gz", {"argv": hostile, "command": shlex.join(hostile)})
    assert_usage_error(cli(["repro", only_argv, "--reports-dir", reports], env=lab.env), "lacks kernel")
    assert (home / "overlay" / "keep").read_text() == "data"


def test_repeat_and_provider_come_from_the_fields(tmp_path):
    path = bundle(tmp_path / "b.tar.gz", spec(repeat=3, provider="auto", outcome="FLAKY"))
    res = cli(["repro", path, "--dry-run"])
    assert res.returncode == 0, res.stderr
    assert shlex.split(res.stdout)[3:] == ["run", "--provider", "auto", "-K", "host", "-p", "=tmpfs", "-k",
                                           "=driver-init", "--repeat", "3"]
    # what the repro builds is an `overlaylab run` that the run command itself parses to this one cell
    from overlaylab.cli.lab import run_cmd
    ctx = run_cmd.make_context("run", shlex.split(res.stdout)[4:])
    assert ctx.params["kernels"] == ("host",) and ctx.params["profile_exprs"] == ("=tmpfs",)
    assert ctx.params["scenario_exprs"] == ("=driver-init",) and ctx.params["repeat"] == 3
    assert ctx.params["engine_exprs"] == ()  # a bundle without an engine field is the port's


def test_an_engine_comes_from_its_field(tmp_path):
    """The engine of a bundle's cell is checked against the registry and given to run as
    --engine: that run's selection is the one engine."""
    from overlaylab.cli.lab import run_cmd
    from overlaylab.lab.matrix import select_engines
    path = bundle(tmp_path / "e.tar.gz", spec(engine="docker-overlay", cell="host/tmpfs/driver-init/docker-overlay"))
    res = cli(["repro", path, "--dry-run"])
    assert res.returncode == 0, res.stderr
    args = shlex.split(res.stdout)[4:]
    assert args[-2:] == ["--engine", "docker-overlay"]
    ctx = run_cmd.make_context("run", args)
    assert select_engines(ctx.params["engine_exprs"]) == ["docker-overlay"]


def _fifo():
    return member(TOP + "/fifo", kind=tarfile.FIFOTYPE)


MALFORMED = {
    "json-list": (lambda p: bundle(p, [1, 2]), ["is a list, not an object"]),
    "json-string": (lambda p: bundle(p, "host/tmpfs/x"), ["is a string, not an object"]),
    "not-json": (lambda p: bundle(p, b"{kernel: host"), ["repro.json is not JSON"]),
    "not-utf8": (lambda p: bundle(p, b"\xff\xfe{}"), ["not UTF-8"]),
    "missing-fields": (lambda p: bundle(p, spec(scenario=None, outcome=None)), ["lacks scenario, outcome"]),
    "kernel-not-a-string": (lambda p: bundle(p, spec(kernel=5)), ["'kernel' is a number"]),
    "profile-a-list": (lambda p: bundle(p, spec(profile=["tmpfs"])), ["'profile' is a list"]),
    "repeat-a-string": (lambda p: bundle(p, spec(repeat="3")), ["'repeat' must be a positive whole number"]),
    "repeat-zero": (lambda p: bundle(p, spec(repeat=0)), ["'repeat' must be a positive"]),
    "repeat-bool": (lambda p: bundle(p, spec(repeat=True)), ["'repeat' must be a positive"]),
    "unknown-kernel": (lambda p: bundle(p, spec(kernel="debian-6.2")), ["unknown kernel 'debian-6.2'", "did you mean debian-6.1"]),
    "option-as-kernel": (lambda p: bundle(p, spec(kernel="--home")), ["kernel '--home' is not a name"]),
    "unknown-profile": (lambda p: bundle(p, spec(profile="ext5")), ["unknown profile 'ext5'", "did you mean ext4?"]),
    "expression-as-profile": (lambda p: bundle(p, spec(profile="tmpfs or btrfs")), ["profile 'tmpfs or btrfs' is not a name"]),
    "unknown-scenario": (lambda p: bundle(p, spec(scenario="rm-rf")), ["unknown scenario 'rm-rf'"]),
    "unknown-provider": (lambda p: bundle(p, spec(provider="docker")), ["unknown provider 'docker'"]),
    "unknown-engine": (lambda p: bundle(p, spec(engine="docker-overlay3")),
                       ["unknown engine 'docker-overlay3' in the engine registry", "did you mean docker-overlay"]),
    "engine-not-a-string": (lambda p: bundle(p, spec(engine=["port"])), ["'engine' is a list"]),
    "expression-as-engine": (lambda p: bundle(p, spec(engine="not fuse")), ["engine 'not fuse' is not a name"]),
    "escapes-in-run-id": (lambda p: bundle(p, spec(run_id="x\x1b]0;owned\x07\nREPRODUCED")), ["run_id 'x\\x1b]0;owned"]),
    "unknown-outcome": (lambda p: bundle(p, spec(outcome="MAYBE")), ["outcome 'MAYBE'"]),
    "no-repro-json": (lambda p: write_tar(p, [member(TOP + "/README.txt", b"hi")]), ["no repro.json"]),
    "empty-tar": (lambda p: write_tar(p, []), ["no repro.json"]),
    "two-repro-json": (lambda p: bundle(p, spec(), [member("other/repro.json", json.dumps(spec()).encode())]),
                       ["two repro.json"]),
    "dotdot-member": (lambda p: bundle(p, spec(), [member(TOP + "/../../etc/cron.d/x", b"* * * * * root x")]),
                      ["not a safe bundle", "'..'"]),
    "absolute-member": (lambda p: bundle(p, spec(), [member("/tmp/overlaylab-evil", b"x")]), ["absolute path"]),
    "symlink-member": (lambda p: bundle(p, spec(), [member(TOP + "/filesystem", kind=tarfile.SYMTYPE, linkname="/etc")]),
                       ["is a symlink (to '/etc')"]),
    "hardlink-member": (lambda p: bundle(p, spec(), [member(TOP + "/shadow", kind=tarfile.LNKTYPE, linkname="/etc/shadow")]),
                        ["is a hard link"]),
    "fifo-member": (lambda p: bundle(p, spec(), [_fifo()]), ["not a regular file"]),
    "profiles-file-not-held": (lambda p: bundle(p, spec(profiles_file="profiles.toml")), ["does not hold"]),
}


def _write_bytes(path, data):
    path.write_bytes(data)
    return str(path)


RAW = {
    "not-a-tar": (b"this is not a bundle\n" * 20, ["not an overlaylab bundle (not a .tar.gz, nor any tar file)"]),
    "empty-file": (b"", ["not an overlaylab bundle (an empty file)"]),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED) + sorted(RAW) + ["truncated-gzip", "missing", "dir-symlink"])
def test_a_malformed_bundle_is_one_line_and_exit_2(kind, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(spec()))
    if kind in MALFORMED:
        make, words = MALFORMED[kind]
        path = make(tmp_path / "b.tar.gz")
    elif kind in RAW:
        data, words = RAW[kind]
        path = _write_bytes(tmp_path / "b.tar.gz", data)
    elif kind == "truncated-gzip":
        whole = (tmp_path / "whole.tar.gz")
        bundle(whole, spec(), [member(TOP + "/pad", os.urandom(200000))])
        path, words = _write_bytes(tmp_path / "b.tar.gz", whole.read_bytes()[:100000]), ["bundle"]
    elif kind == "missing":
        path, words = str(tmp_path / "nope.tar.gz"), ["no bundle", "nope.tar.gz"]
    else:  # an unpacked bundle whose repro.json is a symlink to a file elsewhere
        d = tmp_path / "unpacked" / TOP
        d.mkdir(parents=True)
        (d / "repro.json").symlink_to(outside)
        path, words = str(tmp_path / "unpacked"), ["not a safe bundle", "is a symlink"]
    for args in (["repro", path], ["repro", path, "--dry-run"]):
        assert_usage_error(cli(args + ["--reports-dir", str(tmp_path / "r")]), *words)
    assert not os.path.exists(str(tmp_path / "r")), "nothing may run or be recorded"
    assert not os.path.exists("/tmp/overlaylab-evil")


EVIL_PROFILES = """
[profile.tmpfs]
kind = "tmpfs"
fstype = "tmpfs"
description = "looks harmless"
size_mib = 64
"""


def test_profiles_the_bundle_brings_are_used_only_when_trusted(tmp_path):
    path = bundle(tmp_path / "b.tar.gz", spec(profiles_file="profiles.toml"),
                  [member(TOP + "/profiles.toml", EVIL_PROFILES.encode())])
    reports = str(tmp_path / "r")
    res = cli(["repro", path, "--dry-run", "--reports-dir", reports])
    assert_usage_error(res, "brings its own filesystem profiles", "--trust-bundle-profiles", "as root")

    res = cli(["repro", path, "--dry-run", "--reports-dir", reports, "--trust-bundle-profiles"])
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout)
    used = argv[argv.index("--profiles-file") + 1]
    assert used.startswith(os.path.join(reports, "bundle-profiles") + os.sep)
    assert open(used).read() == EVIL_PROFILES   # the file the printed command names holds the bundle's text
    assert "using the bundle's own profiles (--trust-bundle-profiles), copied to %s" % used in res.stderr

    # your own profiles file instead: no trust needed, the bundle's is not used
    own = tmp_path / "mine.toml"
    own.write_text(EVIL_PROFILES.replace("looks harmless", "mine"))
    res = cli(["repro", path, "--dry-run", "--profiles-file", str(own)])
    assert res.returncode == 0, res.stderr
    assert shlex.split(res.stdout)[-2:] == ["--profiles-file", str(own)]
    # ... and it must hold the bundle's profile
    other = tmp_path / "other.toml"
    other.write_text(EVIL_PROFILES.replace("[profile.tmpfs]", "[profile.scratch]"))
    assert_usage_error(cli(["repro", path, "--dry-run", "--profiles-file", str(other)]), "unknown profile 'tmpfs'")


def test_a_run_with_its_own_profiles_file_bundles_it(lab, tmp_path):
    from .conftest import copy_run
    profiles = tmp_path / "lab-profiles.toml"
    from overlaylab.agent.profiles import default_profiles_path
    profiles.write_text(default_profiles_path().read_text())
    reports = str(tmp_path / "reports")
    meta = json.load(open(os.path.join(lab.plain, "run.json")))
    run = copy_run(lab.plain, reports, "20260101-000000-cafe",
                   argv=list(meta["argv"]) + ["--profiles-file", str(profiles)])
    res = cli(["bundle", run, "host/tmpfs/driver-init", "-o", str(tmp_path / "b.tar.gz")])
    assert res.returncode == 0, res.stderr
    with tarfile.open(str(tmp_path / "b.tar.gz")) as tar:
        names = {os.path.basename(n): n for n in tar.getnames()}
        assert tar.extractfile(names["profiles.toml"]).read().decode() == profiles.read_text()
        repro_json = json.loads(tar.extractfile(names["repro.json"]).read())
        script = tar.extractfile(names["repro"]).read().decode()
        readme = tar.extractfile(names["README.txt"]).read().decode()
    assert repro_json["profiles_file"] == "profiles.toml" and "argv" not in repro_json
    assert '--profiles-file "$(dirname "$0")/profiles.toml"' in script and "run as root" in script
    assert "--trust-bundle-profiles" in readme
    assert_usage_error(cli(["repro", str(tmp_path / "b.tar.gz"), "--dry-run"]), "--trust-bundle-profiles")
