"""``overlaylab bisect`` without booting: the version order, the search with a stubbed step
(which kernels it boots, flaky and ERROR steps, ends that are not good/bad), kernel builds
read from a directory, and the usage errors of the command (exit 2, nothing booted).

The real bisection, with boots, is tests/vm/test_bisect_vm.py.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from overlaylab.kernels.cache import KernelImage
from overlaylab.kernels.catalogue import KernelEntry, parse_catalogue
from overlaylab.kernels.fetch import KernelUnavailable, fetch_kernel
from overlaylab.lab.bisect import (BisectKernel, Step, between, bisect, build_entry, builds_catalogue,
                                   catalogue_toml, excerpt, order_kernels, version_key)
from overlaylab.lab.matrix import SelectionError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- the version order ---------------------------------------------------------------------------

def test_versions_order_numerically_not_as_text():
    versions = ["7.2", "6.12", "5.10", "6.1", "6.1.0-50-amd64", "6.12.117+deb13-amd64", "6.1.0-9-amd64"]
    assert sorted(versions, key=version_key) == [
        "5.10", "6.1", "6.1.0-9-amd64", "6.1.0-50-amd64", "6.12", "6.12.117+deb13-amd64", "7.2"]


def test_a_release_candidate_sorts_before_its_release():
    assert version_key("6.19.0-rc1") < version_key("6.19.0-rc2") < version_key("6.19.0")
    assert version_key("6.19~rc1-1~exp1") < version_key("6.19.1-1")
    assert version_key("6.1") == version_key("6.1.0")


def test_a_version_without_a_number_has_no_key():
    assert version_key("unknown") is None
    assert version_key("") is None


def _image(name, release, version=""):
    return KernelImage(name=name, release=release, vmlinuz="/x", modules_dir=None, version=version)


def test_kernels_order_by_package_version_and_unresolvable_ones_are_left_out_with_the_reason():
    entries = [KernelEntry(n, "debian", "s", "p") for n in ("debian-sid", "host", "debian-6.1", "mine", "debian-6.12")]
    images = {"debian-sid": _image("debian-sid", "7.2.13+deb14-amd64", "7.2.13-1"),
              "debian-6.1": _image("debian-6.1", "6.1.0-50-amd64", "6.1.176-1"),
              "debian-6.12": _image("debian-6.12", "6.12.117+deb13-amd64", "6.12.117-1"),
              "mine": _image("mine", "6.1.100")}

    def resolve(entry):
        if entry.name == "host":
            raise KernelUnavailable("host", "no vmlinuz in /boot")
        return images[entry.name]

    ordered, left_out = order_kernels(entries, resolve)
    # Debian's 6.1.0-50 is 6.1.176: after a 6.1.100 build, whatever its release string says
    assert [k.name for k in ordered] == ["mine", "debian-6.1", "debian-6.12", "debian-sid"]
    assert left_out == [{"kernel": "host", "why": "no vmlinuz in /boot"}]


def K(name, version):
    return BisectKernel(name, version + "-amd64", version)


KERNELS = [K("a", "5.10"), K("b", "6.1"), K("c", "6.6"), K("d", "6.12"), K("e", "6.18"), K("f", "7.2")]


def test_between_keeps_the_range_and_refuses_a_good_kernel_not_older_than_the_bad_one():
    assert [k.name for k in between(KERNELS, "b", "e")] == ["b", "c", "d", "e"]
    with pytest.raises(SelectionError, match=r"--good e \(6.18\) is not older than --bad b \(6.1\)"):
        between(KERNELS, "e", "b")


# --- the search, with a stubbed step ----------------------------------------------------------------

class FakeLab:
    """A step function: ``outcomes[name]`` is the outcome of each repeat on that kernel."""

    def __init__(self, outcomes):
        self.outcomes = outcomes
        self.booted = []

    def __call__(self, kernel):
        self.booted.append(kernel.name)
        got = self.outcomes[kernel.name]
        got = got if isinstance(got, list) else [got]
        return Step(kernel, list(got), run_id="run-" + kernel.name, run_dir="/r/" + kernel.name,
                    evidence=["%s: on %s" % (o, kernel.name) for o in got], paths=["/r/%s/results.jsonl" % kernel.name])


def test_bisect_boots_the_ends_then_only_midpoints_and_names_both_sides():
    lab = FakeLab({"a": "PASS", "b": "PASS", "c": "PASS", "d": "PASS", "e": "UNSUPPORTED", "f": "UNSUPPORTED"})
    result = bisect(KERNELS, lab)
    assert result.status == "found" and result.exit_code == 0
    assert (result.first_bad.name, result.last_good.name) == ("e", "d")
    assert lab.booted == ["a", "f", "c", "d", "e"]  # ends, then log2 midpoints, never b
    assert result.step_of(result.first_bad).outcome == "UNSUPPORTED"
    assert [s.verdict for s in result.steps] == ["good", "bad", "good", "good", "bad"]


def test_bisect_with_three_kernels_boots_the_middle_one_once():
    lab = FakeLab({"b": "PASS", "d": "PASS", "f": "UNSUPPORTED"})
    result = bisect([KERNELS[1], KERNELS[3], KERNELS[5]], lab)
    assert lab.booted == ["b", "f", "d"]
    assert (result.first_bad.name, result.last_good.name) == ("f", "d")


def test_any_outcome_other_than_k1s_is_bad_so_a_fix_bisects_too():
    lab = FakeLab({"a": "FAIL", "b": "FAIL", "c": "PASS", "d": "PASS", "e": "PASS", "f": "PASS"})
    result = bisect(KERNELS, lab)
    assert (result.first_bad.name, result.last_good.name) == ("c", "b")
    assert result.good_outcome == "FAIL"


def test_a_flaky_midpoint_stops_the_bisection_with_both_outcomes_and_the_evidence_paths():
    lab = FakeLab({"a": ["PASS", "PASS"], "f": ["UNSUPPORTED", "UNSUPPORTED"], "c": ["PASS", "FAIL"]})
    result = bisect(KERNELS, lab)
    assert result.status == "flaky" and result.exit_code == 1
    assert result.first_bad is None and result.last_good is None
    assert "c is flaky: PASS in repeat 1, FAIL in repeat 2" in result.message
    assert "/r/c/results.jsonl" in result.message
    assert lab.booted == ["a", "f", "c"]  # nothing after the flaky step
    assert "\n" not in result.message


def test_an_error_step_stops_the_bisection_as_the_labs_failure():
    lab = FakeLab({"a": "PASS", "f": "UNSUPPORTED", "c": ["ERROR", "ERROR"]})
    result = bisect(KERNELS, lab)
    assert result.status == "error" and result.exit_code == 3
    assert "could not run the cell on c" in result.message


def test_a_k1_that_is_not_good_is_refused_without_booting_k2():
    lab = FakeLab({"a": ["PASS", "UNSUPPORTED"]})
    result = bisect(KERNELS, lab)
    assert result.status == "ends" and result.exit_code == 1
    assert result.message.startswith("--good a is not good: it gave PASS in repeat 1, UNSUPPORTED in repeat 2")
    assert lab.booted == ["a"]


def test_a_k1_without_the_asked_good_outcome_is_refused():
    lab = FakeLab({"a": "FAIL"})
    result = bisect(KERNELS, lab, good_outcome="PASS")
    assert result.status == "ends"
    assert "--good a is not good: it gave FAIL (not PASS)" in result.message


def test_a_k2_that_behaves_like_k1_is_refused_with_what_was_seen():
    lab = FakeLab({"a": "PASS", "f": "PASS"})
    result = bisect(KERNELS, lab)
    assert result.status == "ends" and result.exit_code == 1
    assert result.message.startswith("--bad f is not bad: it gave PASS like --good a")
    assert lab.booted == ["a", "f"]


def test_assume_ends_boots_only_midpoints_and_takes_k1_to_pass():
    lab = FakeLab({"c": "PASS", "d": "PASS", "e": "FAIL"})
    result = bisect(KERNELS, lab, assume_ends=True)
    assert lab.booted == ["c", "d", "e"]
    assert (result.first_bad.name, result.last_good.name) == ("e", "d")


def test_assume_ends_over_neighbours_boots_nothing():
    lab = FakeLab({})
    result = bisect(KERNELS[:2], lab, assume_ends=True)
    assert lab.booted == [] and result.status == "found"
    assert (result.first_bad.name, result.last_good.name) == ("b", "a")


# --- evidence -------------------------------------------------------------------------------------

def test_excerpt_is_one_line_with_the_error_and_new_dmesg_lines():
    cell = {"outcome": "UNSUPPORTED", "error": "mount failed:\n invalid argument",
            "evidence": {"backing_fs": {"dmesg": ["XFS (vdb): Deprecated V4 format (crc=0) not supported"]}}}
    assert excerpt(cell) == ("UNSUPPORTED: mount failed: invalid argument "
                             "[dmesg: XFS (vdb): Deprecated V4 format (crc=0) not supported]")
    assert excerpt({"outcome": "PASS", "error": "", "log": ["create base", "mounted ok"]}) == "PASS: mounted ok"


# --- a directory of kernel builds -----------------------------------------------------------------

def _bzimage(path, release):
    """A file with a bzImage setup header whose version string is ``release``."""
    head = bytearray(0x4000)
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x20E, 0x1000)
    head[0x1200:0x1200 + len(release) + 30] = (release + " (builder@host) #1 SMP").encode().ljust(len(release) + 30, b"\0")
    with open(path, "wb") as f:
        f.write(bytes(head))


def test_builds_in_a_directory_become_catalogue_entries_with_their_releases(tmp_path):
    b1 = tmp_path / "v6.8"                                     # bzImage + modules_install tree
    (b1 / "lib" / "modules" / "6.8.0-dirty").mkdir(parents=True)
    _bzimage(str(b1 / "bzImage"), "6.8.0-dirty")
    b2 = tmp_path / "v6.9-rc1"                                 # a bare image: release from its header
    b2.mkdir()
    _bzimage(str(b2 / "vmlinuz"), "6.9.0-rc1")
    (tmp_path / "notes").mkdir()                               # not a build
    (tmp_path / "README").write_text("x")

    tables, left_out = builds_catalogue(str(tmp_path))
    assert sorted(tables) == ["v6.8", "v6.9-rc1"]
    assert tables["v6.8"]["modules"] == str(b1 / "lib" / "modules" / "6.8.0-dirty")
    assert left_out == [{"kernel": "notes", "why": "%s holds no .deb, bzImage or vmlinuz" % (tmp_path / "notes")}]
    entries = parse_catalogue(catalogue_toml(tables))          # what the run machinery reads
    releases = {name: fetch_kernel(entry).release for name, entry in entries.items()}
    assert releases == {"v6.8": "6.8.0-dirty", "v6.9-rc1": "6.9.0-rc1"}
    ordered, _ = order_kernels(list(entries.values()), fetch_kernel)
    assert [k.name for k in ordered] == ["v6.8", "v6.9-rc1"]


def test_a_build_of_debs_is_a_deb_entry_and_two_modules_dirs_are_refused(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "linux-image-6.9.0_6.9.0-1_amd64.deb").write_bytes(b"")
    assert build_entry(str(tmp_path / "pkg"))[0] == {
        "kind": "deb", "deb": [str(tmp_path / "pkg" / "linux-image-6.9.0_6.9.0-1_amd64.deb")]}
    two = tmp_path / "two"
    for rel in ("6.9.0", "6.9.1"):
        (two / "lib" / "modules" / rel).mkdir(parents=True)
    _bzimage(str(two / "bzImage"), "6.9.1")
    entry, why = build_entry(str(two))
    assert entry is None and why == "has 2 modules directories (6.9.0, 6.9.1): keep one"


# --- the command's usage errors -------------------------------------------------------------------

def _bisect(*args, env=None):
    return subprocess.run([sys.executable, "-m", "overlaylab", "bisect"] + list(args), capture_output=True,
                          text=True, cwd=REPO, env=dict(os.environ, **(env or {})), timeout=120)


@pytest.mark.parametrize("args, message", [
    (["xfs-v4-noftype/creat-empty", "--good", "debian-6.1", "--bad", "debian-sid"],
     "no scenario 'creat-empty' (did you mean create-empty"),
    (["xfs-v4-noftyp/create-empty", "--good", "debian-6.1", "--bad", "debian-sid"],
     "no profile 'xfs-v4-noftyp' (did you mean xfs-v4-noftype"),
    (["xfs-v4-noftype", "--good", "debian-6.1", "--bad", "debian-sid"], "expected PROFILE/SCENARIO"),
    (["ext4/image-whiteouts/docker", "--good", "debian-6.1", "--bad", "debian-sid"],
     "no engine 'docker' (did you mean docker-overlay"),
    (["ext4/create-empty/docker-overlay", "--good", "debian-6.1", "--bad", "debian-sid"],
     "create-empty runs on the port alone"),
    (["xfs-v4-noftype/create-empty", "--good", "debian-6.2", "--bad", "debian-sid"],
     "--good debian-6.2: no such kernel in vms/kernels.toml (did you mean debian-6.1"),
    (["xfs-v4-noftype/create-empty", "--good", "debian-6.1", "--bad", "debian-6.1"], "are both debian-6.1"),
    (["xfs-v4-noftype/create-empty", "--good", "debian-6.1", "--bad", "debian-sid", "--good-outcome", "PAS"],
     "--good-outcome PAS: not an outcome (did you mean PASS"),
    (["xfs-v4-noftype/create-empty", "--good", "debian-6.1", "--bad", "debian-sid", "--repeat", "0"], "--repeat"),
])
def test_usage_errors_are_one_line_exit_2_and_boot_nothing(args, message, tmp_path):
    res = _bisect(*args, "--reports-dir", str(tmp_path))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("overlaylab bisect: error: "), res.stderr
    assert message in res.stderr
    assert res.stdout == "" and os.listdir(str(tmp_path)) == []  # nothing recorded


def test_a_good_kernel_not_older_than_the_bad_one_is_a_usage_error(tmp_path):
    from tests.needs import need
    from overlaylab.kernels.cache import KernelIndex
    have = KernelIndex().load()
    need({"debian-6.1", "debian-sid"} <= set(have), "debian-6.1 and debian-sid in the kernel cache "
         "(`overlaylab kernels fetch` or python -m overlaylab.kernels.fetch)")
    res = _bisect("xfs-v4-noftype/create-empty", "--good", "debian-sid", "--bad", "debian-6.1",
                  "--reports-dir", str(tmp_path))
    assert res.returncode == 2
    assert "--good debian-sid (7." in res.stderr and "is not older than --bad debian-6.1 (6.1." in res.stderr
    assert os.listdir(str(tmp_path)) == []


def test_kernels_dir_names_the_builds_it_found_in_a_usage_error(tmp_path):
    builds = tmp_path / "builds"
    (builds / "v6.8").mkdir(parents=True)
    _bzimage(str(builds / "v6.8" / "bzImage"), "6.8.0")
    res = _bisect("ext4/create-empty", "--good", "v6.7", "--bad", "v6.8", "--kernels-dir", str(builds),
                  "--reports-dir", str(tmp_path / "reports"))
    assert res.returncode == 2
    assert "--good v6.7: no such kernel in --kernels-dir %s (did you mean v6.8?); have: v6.8" % builds in res.stderr
