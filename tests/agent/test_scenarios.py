"""The scenario catalogue: its invariants, its expectations per facts, and real runs.

The real runs make backing filesystems on loop devices / tmpfs (``backing_fs`` from
tests/conftest.py), probe them as the agent does, run scenarios with ``run_scenario`` and
check that every cell met its expectation; a table of the cells that did not is printed with
their evidence.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from overlaylab.agent import probes as probe_mod
from overlaylab.agent.scenario import Expectation, Facts, Outcome, all_scenarios, run_scenario

EXPECTED_IDS = {
    # lifecycle
    "create-empty", "create-base", "create-snap", "deep-layer-chain", "init-layer-setup",
    "remove-while-mounted", "concurrent-get-put", "status-and-metadata",
    # diff
    "diff-apply-roundtrip", "changes", "diff-size", "whiteouts-through-diff", "opaque-dir-through-apply",
    "hardlinks-in-layer", "xattrs-capability", "special-files", "uid-gid-maps", "mount-label",
    "full-tree-export",
    # quirks
    "recreate-quirk", "socket-copy-quirk", "applydiff-fallback", "put-unknown-id",
    "applydiff-hardlink-hazard", "applydiff-safe-apply",
    # failure classes
    "driver-init", "overlay-on-overlay", "dtype-whiteouts", "inode-exhaustion", "too-many-links",
    "dir-rename-exdev", "open-fd-copy-up", "mtime-diff-bug", "deep-layer-limit", "enospc",
}
GROUPS = {"lifecycle", "diff", "quirks", "failure-class", "breakage", "engine"}


@pytest.fixture(scope="module")
def catalogue():
    return all_scenarios()


# Catalogue invariants (pure) -------------------------------------------------------------------

def test_catalogue_has_every_listed_scenario(catalogue):
    assert len(catalogue) >= 28
    assert EXPECTED_IDS <= set(catalogue), sorted(EXPECTED_IDS - set(catalogue))


def test_every_scenario_is_well_formed(catalogue):
    ids = [sc.id for sc in catalogue.values()]
    assert len(ids) == len(set(ids))
    for key, sc in catalogue.items():
        assert key == sc.id
        assert re.match(r"^[a-z0-9]+(-[a-z0-9]+)*$", sc.id), sc.id
        for name in ("description", "reference", "group"):
            value = getattr(sc, name)
            assert isinstance(value, str) and value.strip(), (sc.id, name)
            assert "\n" not in value, (sc.id, name, "must be one line")
        assert len(sc.description) <= 200, sc.id
        assert sc.group in GROUPS, (sc.id, sc.group)
        assert callable(sc.func)
        assert 0 < sc.timeout <= 120, sc.id
        assert isinstance(sc.to_dict(), dict)
    assert {sc.group for sc in catalogue.values()} == GROUPS


# Expectations per facts (pure, no mounts) ---------------------------------------------------------

def _facts(**over) -> Facts:
    base = {"kernel_release": "6.18.0", "overlay_filesystem": True,
            "overlay_params": {"redirect_dir": "N", "index": "N"},
            "fs_magic": {"magic": "0xef53", "name": "extfs"}, "d_type": True, "xattr_trusted": True,
            "xattr_user": True, "upperdir": True, "whiteout": True, "opaque": True, "multi_lower": True,
            "dir_rename": "EXDEV", "driver_init": "ACCEPTED", "selinux": False}
    base.update(over)
    return Facts(base)


def _expect(catalogue, sid, **over) -> Outcome:
    got = catalogue[sid].expect(_facts(**over))
    assert isinstance(got, Expectation)
    return got.outcome


def test_every_expectation_is_an_outcome_with_a_reason_where_not_pass(catalogue):
    for facts in (_facts(), _facts(d_type=False), _facts(upperdir=False), _facts(driver_init="REFUSED"),
                  _facts(fs_magic={"magic": "0x58465342", "name": "xfs"}), Facts({})):
        for sc in catalogue.values():
            e = sc.expect(facts)
            assert isinstance(e.outcome, Outcome)
            if e.outcome is not Outcome.PASS:
                assert e.why, (sc.id, e)


def test_btrfs_facts_expect_refused_everywhere(catalogue):
    facts = _facts(fs_magic={"magic": "0x9123683e", "name": "btrfs"}, driver_init="REFUSED")
    for sc in catalogue.values():
        if sc.group == "breakage" and "driver" not in sc.tags:
            continue  # raw overlay mounts: the port's Init verdict does not apply (tests/agent/test_breakages.py)
        assert sc.expect(facts).outcome is Outcome.REFUSED, sc.id


# Kept reference hazards: their healthy check fails wherever the driver works.
KNOWN_FAIL_EVERYWHERE = {"applydiff-hardlink-hazard"}


def test_refused_upperdir_fails_exactly_the_mounting_scenarios(catalogue):
    facts = _facts(fs_magic={"magic": "0x794c7630", "name": "overlayfs"}, upperdir=False)
    for sc in catalogue.values():
        got = sc.expect(facts).outcome
        if sc.group == "breakage":  # a case that probes its feature by mounting cannot be set up
            assert got in (Outcome.UNSUPPORTED, Outcome.FAIL), sc.id
        elif sc.needs_mount or sc.id in KNOWN_FAIL_EVERYWHERE:
            assert got is Outcome.FAIL, sc.id
        else:
            assert got is Outcome.PASS, sc.id
    assert _expect(catalogue, "overlay-on-overlay") is Outcome.PASS
    assert _expect(catalogue, "overlay-on-overlay", upperdir=False) is Outcome.FAIL
    assert _expect(catalogue, "driver-init", upperdir=False) is Outcome.PASS


def test_hardlink_hazard_is_an_expected_fail_and_safe_apply_an_expected_pass(catalogue):
    hazard = catalogue["applydiff-hardlink-hazard"].expect(_facts())
    assert hazard.outcome is Outcome.FAIL
    assert "parent layer's inode" in hazard.why and "overlay.safe_apply" in hazard.why and "v1.10.3" in hazard.why
    assert _expect(catalogue, "applydiff-safe-apply") is Outcome.PASS
    assert _expect(catalogue, "applydiff-hardlink-hazard", driver_init="REFUSED") is Outcome.REFUSED
    assert not catalogue["applydiff-hardlink-hazard"].needs_mount


def test_hardlink_hazard_cells_on_tmpfs(backing_fs, profiles, tmp_path):
    """The hazard shows (parent changed, warned) and safe_apply keeps the parent intact."""
    facts, cells = run_cells(backing_fs, profiles, "tmpfs", ["applydiff-hardlink-hazard", "applydiff-safe-apply"],
                             str(tmp_path))
    hazard, safe = cells["applydiff-hardlink-hazard"], cells["applydiff-safe-apply"]
    assert hazard.outcome is Outcome.FAIL and hazard.met, unmet_table("tmpfs", cells)
    assert "changed the PARENT layer's bin/ping: mode 0o755 -> 0o6777, uid 0 -> 4242" in hazard.error
    assert hazard.evidence["parent_after"]["ino"] == hazard.evidence["child"]["ino"]
    assert len(hazard.evidence["warnings"]) == 1
    assert safe.outcome is Outcome.PASS and safe.met, unmet_table("tmpfs", cells)
    assert safe.evidence["parent_after"] == safe.evidence["parent_before"]


def test_no_d_type_fails_the_d_type_scenarios(catalogue):
    needing = {sid for sid, sc in catalogue.items() if sc.needs_dtype}
    assert {"dtype-whiteouts", "whiteouts-through-diff", "full-tree-export"} <= needing
    for sid in needing:
        assert _expect(catalogue, sid, d_type=False) is Outcome.FAIL, sid
        assert _expect(catalogue, sid) is Outcome.PASS, sid


def test_dir_rename_follows_redirect_dir(catalogue):
    assert _expect(catalogue, "dir-rename-exdev") is Outcome.FAIL
    assert _expect(catalogue, "dir-rename-exdev", dir_rename=None) is Outcome.FAIL
    assert _expect(catalogue, "dir-rename-exdev", dir_rename=None,
                   overlay_params={"redirect_dir": "Y"}) is Outcome.PASS
    assert _expect(catalogue, "dir-rename-exdev", dir_rename="redirect",
                   overlay_params={"redirect_dir": "Y"}) is Outcome.PASS
    assert _expect(catalogue, "dir-rename-exdev", dir_rename="EXDEV",
                   overlay_params={"redirect_dir": "Y"}) is Outcome.FAIL  # the probe's word wins
    assert _expect(catalogue, "dir-rename-exdev", upperdir=False) is Outcome.FAIL


def test_known_failure_classes_per_facts(catalogue):
    assert _expect(catalogue, "too-many-links") is Outcome.FAIL  # extfs
    assert _expect(catalogue, "too-many-links", fs_magic={"magic": "0x58465342", "name": "xfs"}) is Outcome.PASS
    assert _expect(catalogue, "too-many-links", fs_magic={"magic": "0x1021994", "name": "tmpfs"}) is Outcome.PASS
    assert _expect(catalogue, "open-fd-copy-up", kernel_release="4.14.0-1-amd64") is Outcome.FAIL
    assert _expect(catalogue, "open-fd-copy-up", kernel_release="4.19.0-21-amd64") is Outcome.PASS
    assert _expect(catalogue, "mtime-diff-bug") is Outcome.FAIL
    assert "21555" in catalogue["mtime-diff-bug"].expect(_facts()).why
    assert _expect(catalogue, "mtime-diff-bug", driver_init="REFUSED") is Outcome.REFUSED
    assert _expect(catalogue, "mount-label") is Outcome.FAIL
    assert _expect(catalogue, "mount-label", selinux=True) is Outcome.PASS
    assert _expect(catalogue, "driver-init") is Outcome.PASS
    assert _expect(catalogue, "deep-layer-limit") is Outcome.PASS
    assert _expect(catalogue, "enospc") is Outcome.PASS


def test_inode_starved_filesystems(catalogue):
    assert _expect(catalogue, "inode-exhaustion") is Outcome.PASS
    assert _expect(catalogue, "inode-exhaustion", fs_inodes=16384) is Outcome.PASS
    assert _expect(catalogue, "inode-exhaustion", fs_inodes=128) is Outcome.FAIL
    assert _expect(catalogue, "inode-exhaustion", profile="ext4-fewinodes") is Outcome.FAIL
    assert _expect(catalogue, "inode-exhaustion", profile="x", profile_tags=["fewinodes"]) is Outcome.FAIL
    assert _expect(catalogue, "inode-exhaustion", fs_inodes=0) is Outcome.PASS  # btrfs-like: no table
    assert _expect(catalogue, "deep-layer-chain", fs_inodes=4096) is Outcome.FAIL  # ext4-small
    assert _expect(catalogue, "deep-layer-chain", fs_inodes=16384) is Outcome.PASS
    assert _expect(catalogue, "create-empty", fs_inodes=128) is Outcome.PASS


# Real runs -----------------------------------------------------------------------------------------

def profile_facts(bfs, profile) -> Facts:
    """What the agent gives run_scenario: probe values, the driver's Init verdict, and the
    profile and inode count (which the inode expectations use)."""
    from overlaylab.agent.main import probe_profile
    return probe_profile(profile, bfs.mountpoint, probe_mod.run_target_probes())[1]


def run_cells(backing_fs, profiles, name, ids=None, scratch=None):
    bfs = backing_fs(name)
    facts = profile_facts(bfs, profiles[name])
    cat = all_scenarios()
    cells = {}
    for sid in ids or list(cat):
        cells[sid] = run_scenario(cat[sid], bfs.mountpoint, facts, scratch)
    return facts, cells


def unmet_table(profile, cells) -> str:
    lines = []
    for sid, cell in cells.items():
        if cell.met:
            continue
        ev = {k: v for k, v in cell.evidence.items() if k not in ("driver_log", "driver_status")}
        lines.append("%-10s %-26s got %-11s expected %-11s (%s)\n    error: %s\n    evidence: %s" % (
            profile, sid, cell.outcome.value, cell.expected.outcome.value, cell.expected.why, cell.error[:400],
            json.dumps(ev, default=str)[:1500]))
    return "\n".join(lines)


@pytest.mark.parametrize("profile", ["tmpfs", "ext4"])
def test_whole_catalogue_meets_expectations(backing_fs, profiles, profile, tmp_path):
    start = time.monotonic()
    facts, cells = run_cells(backing_fs, profiles, profile, scratch=str(tmp_path))
    elapsed = time.monotonic() - start
    table = unmet_table(profile, cells)
    if table:
        print(table)
    assert not table, "cells that did not meet their expectation:\n" + table
    assert all(c.outcome is not Outcome.ERROR for c in cells.values())
    # Known behaviour on this kind of target, as data: PASS for the healthy ones.
    assert cells["create-snap"].outcome is Outcome.PASS
    assert cells["mtime-diff-bug"].outcome is Outcome.FAIL
    assert cells["mtime-diff-bug"].evidence.get("missing") == ["/f"]
    assert elapsed < 45, "the catalogue took %.1f s on %s" % (elapsed, profile)
    if profile == "ext4":
        cell = cells["too-many-links"]
        assert cell.outcome is Outcome.FAIL
        assert "too many links" in cell.error and re.search(r"^link \S+/root/bin/busybox \S+/tmproot\d+/bin/busybox: ",
                                                            cell.error), cell.error
        assert cell.evidence["tmproot_left"] == []
    else:
        assert cells["too-many-links"].outcome is Outcome.PASS


def test_driver_init_on_btrfs_is_refused_with_the_log_line(backing_fs, profiles, tmp_path):
    facts, cells = run_cells(backing_fs, profiles, "btrfs", ["driver-init", "create-empty"], str(tmp_path))
    assert facts["driver_init"] == "REFUSED"
    cell = cells["driver-init"]
    assert cell.outcome is Outcome.REFUSED and cell.met, unmet_table("btrfs", cells)
    assert cell.error == "backing file system is unsupported for this graph driver"
    assert any(line.endswith("'overlay' is not supported over btrfs.") for line in cell.evidence["init_log"]), cell.evidence
    assert cells["create-empty"].outcome is Outcome.REFUSED


def test_overlay_on_overlay_fails_with_the_reference_mount_error(backing_fs, profiles, tmp_path):
    facts, cells = run_cells(backing_fs, profiles, "overlay", ["overlay-on-overlay", "driver-init"], str(tmp_path))
    assert facts["upperdir"] is False and facts["driver_init"] == "ACCEPTED"
    cell = cells["overlay-on-overlay"]
    assert cell.outcome is Outcome.FAIL and cell.met, unmet_table("overlay", cells)
    assert re.match(r"^error creating overlay mount to /\S+/overlay/[0-9a-f]{64}-init/merged: invalid argument$",
                    cell.error), cell.error
    assert cell.evidence["errno"] == 22
    assert cells["driver-init"].outcome is Outcome.PASS  # 1.10.3 Init accepts overlayfs


def test_too_many_links_on_ext4_fails_with_emlink(backing_fs, profiles, tmp_path):
    facts, cells = run_cells(backing_fs, profiles, "ext4", ["too-many-links"], str(tmp_path))
    cell = cells["too-many-links"]
    assert cell.outcome is Outcome.FAIL and cell.met, unmet_table("ext4", cells)
    assert "too many links" in cell.error
    assert cell.evidence["base_nlink"] == 65000 and cell.evidence["errno"] == 31


def test_child_layers_are_expected_to_fail_where_overlayfs_hides_trusted_overlay_xattrs():
    """Found by the lab: on 5.10/6.1 a driver home on overlayfs cannot apply any child layer
    (copyDir's lgetxattr of trusted.overlay.opaque -> EOPNOTSUPP); 6.7+ answers ENODATA."""
    catalogue = all_scenarios()
    facts = Facts({"driver_init": "ACCEPTED", "upperdir": False, "d_type": True, "fs_magic": {"name": "overlayfs"}})
    old = Facts(facts, overlay_xattr_read="EOPNOTSUPP")
    new = Facts(facts, overlay_xattr_read="ENODATA")
    alias = Facts(facts, overlay_xattr_read="ENOTSUP")  # Python's name for errno 95
    for sid in ("hardlinks-in-layer", "opaque-dir-through-apply", "status-and-metadata"):
        assert catalogue[sid].expect(old).outcome is Outcome.FAIL
        assert catalogue[sid].expect(alias).outcome is Outcome.FAIL
        assert catalogue[sid].expect(new).outcome is Outcome.PASS
    assert catalogue["create-empty"].expect(old).outcome is Outcome.PASS
