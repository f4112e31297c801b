"""The ``breakage`` scenarios (overlaylab/agent/scenarios/breakages.py): their expectations per
probed facts, and real runs on this host's kernel over real backing filesystems, with the
outcomes pinned as this kernel gives them (a change in the kernel's behaviour, or in a
scenario, fails here).
"""
from __future__ import annotations

import os
import re

import pytest

from overlaylab.agent.scenario import Facts, Outcome, all_scenarios, run_scenario
from overlaylab.mountutil import mounts_under
from tests.agent.test_scenarios import _facts, profile_facts, unmet_table

P, F, U, R = Outcome.PASS, Outcome.FAIL, Outcome.UNSUPPORTED, Outcome.REFUSED

BREAKAGES = ["opaque-copied-up", "metacopy-dpkg-link", "dpkg-link-metacopy-off", "redirect-dir-native-diff",
             "redirect-dir-naive-diff", "upperdir-in-use", "upperdir-in-use-index-off", "rootless-no-userxattr",
             "rootless-userxattr", "idmapped-lower", "volatile-remount", "volatile-remount-cleaned",
             "listxattr-before-copy-up", "user-overlay-xattr-in-layer"]

#: What the host kernel (6.18, module defaults redirect_dir=N, index=N, metacopy=N) does.
HOST = {"opaque-copied-up": P, "metacopy-dpkg-link": P, "dpkg-link-metacopy-off": P, "redirect-dir-native-diff": F,
        "redirect-dir-naive-diff": P, "upperdir-in-use": F, "upperdir-in-use-index-off": P,
        "rootless-no-userxattr": F, "rootless-userxattr": P, "idmapped-lower": P, "volatile-remount": F,
        "volatile-remount-cleaned": P, "listxattr-before-copy-up": P, "user-overlay-xattr-in-layer": P}
PINNED = {
    "ext4": HOST, "xfs": HOST, "tmpfs": HOST,
    # Docker 1.10.3 refuses btrfs: the two cases through the port are REFUSED, the kernel's are not.
    "btrfs": dict(HOST, **{"redirect-dir-native-diff": R, "redirect-dir-naive-diff": R,
                           "user-overlay-xattr-in-layer": R}),
    # No d_type: rm -rf of an image dir through the mount sees its whiteouts (ENOTEMPTY).
    "ext4-nofiletype": dict(HOST, **{"opaque-copied-up": F, "rootless-userxattr": F}),
}


@pytest.fixture(scope="module")
def catalogue():
    return all_scenarios()


def _features(**supported) -> dict:
    """An ``overlay_features`` fact shaped as features.probe_features answers."""
    return {"features": {name: {"supported": value, "reason": "", "evidence": {}} for name, value in supported.items()},
            "baseline": {}}


# Expectations per facts (pure) --------------------------------------------------------------------

def test_the_breakage_group_is_registered_with_references(catalogue):
    group = [sid for sid, sc in catalogue.items() if sc.group == "breakage"]
    assert group == BREAKAGES
    for sid in group:
        ref = catalogue[sid].reference
        assert "docs/reference-behaviour.md#breakages" in ref, sid
        assert re.search(r"(?:moby|[\w.-]+/[\w.-]+)#\d+", ref), sid  # an upstream issue, not only our docs


def test_unprobed_features_expect_the_known_outcome(catalogue):
    facts = _facts()
    for sid in BREAKAGES:
        assert catalogue[sid].expect(facts).outcome is HOST[sid], sid


def test_a_refused_feature_expects_unsupported(catalogue):
    refused = _facts(overlay_features=_features(metacopy=False, redirect_dir=False, index=False, userxattr=False,
                                                idmapped_lower=False, volatile=False))
    needing = {"metacopy-dpkg-link", "dpkg-link-metacopy-off", "redirect-dir-native-diff", "redirect-dir-naive-diff",
               "upperdir-in-use", "upperdir-in-use-index-off", "rootless-no-userxattr", "rootless-userxattr",
               "idmapped-lower", "volatile-remount", "volatile-remount-cleaned"}
    for sid in BREAKAGES:
        got = catalogue[sid].expect(refused)
        if sid in needing:
            assert got.outcome is U and "refused" in got.why, sid
        else:
            assert got.outcome is HOST[sid], sid
    supported = _facts(overlay_features=_features(metacopy=True, redirect_dir=True, index=True, userxattr=True,
                                                  idmapped_lower=True, volatile=True))
    assert {sid: catalogue[sid].expect(supported).outcome for sid in BREAKAGES} == HOST


def test_the_fs_rules_come_before_the_features(catalogue):
    probing = {"metacopy-dpkg-link", "dpkg-link-metacopy-off", "redirect-dir-native-diff", "redirect-dir-naive-diff",
               "upperdir-in-use", "upperdir-in-use-index-off", "rootless-no-userxattr", "rootless-userxattr",
               "idmapped-lower", "volatile-remount", "volatile-remount-cleaned"}
    for sid in BREAKAGES:  # on overlay-on-overlay a feature probe's mount cannot be made; other mounts fail
        assert catalogue[sid].expect(_facts(upperdir=False)).outcome is (U if sid in probing else F), sid
    btrfs = _facts(fs_magic={"magic": "0x9123683e", "name": "btrfs"}, driver_init="REFUSED")
    assert {sid: catalogue[sid].expect(btrfs).outcome for sid in BREAKAGES} == PINNED["btrfs"]
    assert catalogue["user-overlay-xattr-in-layer"].expect(_facts(xattr_user=False)).outcome is F
    assert "47962" in catalogue["user-overlay-xattr-in-layer"].expect(_facts(xattr_user=False)).why
    assert catalogue["rootless-userxattr"].expect(_facts(xattr_user=False)).outcome is U
    assert catalogue["opaque-copied-up"].expect(_facts(xattr_trusted=False)).outcome is U
    assert catalogue["opaque-copied-up"].expect(_facts(d_type=False)).outcome is F


# Real runs on the host kernel -------------------------------------------------------------------

@pytest.mark.parametrize("profile", sorted(PINNED))
def test_breakages_on_the_host_kernel_meet_their_pinned_outcomes(backing_fs, profiles, profile, tmp_path):
    bfs = backing_fs(profile)
    facts = profile_facts(bfs, profiles[profile])
    cat = all_scenarios()
    cells = {sid: run_scenario(cat[sid], bfs.mountpoint, facts, str(tmp_path)) for sid in BREAKAGES}
    table = unmet_table(profile, cells)
    assert not table, "cells that did not meet their expectation:\n" + table
    assert {sid: c.outcome for sid, c in cells.items()} == PINNED[profile]
    left = [m.mountpoint for m in mounts_under(bfs.mountpoint) if m.mountpoint != bfs.mountpoint]
    assert left == [], "a breakage scenario left a mount behind"
    assert not [n for n in os.listdir(bfs.mountpoint) if n.startswith("breakage-")], "a workspace was left behind"
    if profile == "btrfs":
        return
    # The evidence a reader needs, as the kernel gives it.
    busy = cells["upperdir-in-use"]
    assert "Device or resource busy" in busy.error and busy.evidence["refused_errno"] == "EBUSY"
    assert any("upperdir is in-use" in l for l in busy.evidence["mount_second"]["dmesg"]), busy.evidence
    warned = cells["upperdir-in-use-index-off"].evidence["in_use_warnings"]
    assert any("undefined behavior" in l for l in warned), warned
    volatile = cells["volatile-remount"]
    assert volatile.evidence["volatile_marker_left"] is True and volatile.evidence["refused_errno"] == "EINVAL"
    assert any("incompat feature 'volatile'" in l for l in volatile.evidence["mount_again"]["dmesg"])
    native = cells["redirect-dir-native-diff"]
    assert native.evidence["native_changes"] == [("/foo", "D"), ("/foo2", "A")]  # /foo2/bar missing
    assert cells["redirect-dir-naive-diff"].evidence["changes"] == [("/foo", "D"), ("/foo2", "A"), ("/foo2/bar", "A")]
    rootless = cells["rootless-no-userxattr"].evidence["rootless"]
    assert rootless["ops"]["replace-dir"] == ("ENOTEMPTY" if profile == "ext4-nofiletype" else "EIO"), rootless
    assert cells["rootless-userxattr"].evidence["rootless"]["ops"]["rename-dir"] == "EXDEV"  # redirect_dir off
    assert cells["idmapped-lower"].evidence["merged_owner"] == [100000, 100000]
    assert cells["metacopy-dpkg-link"].evidence["metacopy_xattr"] is True
    assert cells["dpkg-link-metacopy-off"].evidence["metacopy_xattr"] is False
    assert cells["opaque-copied-up"].evidence.get("upper_d_opaque", "None") == "None"


def test_a_feature_the_probe_could_not_decide_expects_unsupported_with_its_reason(catalogue):
    """In a qemu guest the agent runs chrooted and cannot make a user namespace: the feature
    probe says so (supported None) and the rootless and idmapped cases hit the same wall."""
    why = "unshare(CLONE_NEWUSER): Operation not permitted"
    undecided = _facts(overlay_features={"features": {
        name: {"supported": None if name in ("userxattr", "idmapped_lower") else True, "reason": why}
        for name in ("metacopy", "redirect_dir", "index", "userxattr", "idmapped_lower", "volatile")}})
    for sid in ("rootless-no-userxattr", "rootless-userxattr", "idmapped-lower"):
        got = catalogue[sid].expect(undecided)
        assert got.outcome is U and why in got.why, sid
    assert catalogue["volatile-remount"].expect(undecided).outcome is HOST["volatile-remount"]
    # before the fs rules: on a fs without d_type the case still cannot be set up
    no_dtype = Facts(dict(undecided, d_type=False))
    for sid in ("rootless-no-userxattr", "rootless-userxattr", "idmapped-lower"):
        got = catalogue[sid].expect(no_dtype)
        assert got.outcome is U and why in got.why, sid


def test_expectations_read_the_feature_facts_the_agent_really_probes(backing_fs, profiles):
    """The expectations read ``overlay_features`` in the shape the agent's probe gives it (a
    shape mismatch once made every feature look unprobed, and guests expected PASS where their
    own probe could not decide)."""
    from overlaylab.agent.scenarios.breakages import feature
    facts = profile_facts(backing_fs("ext4"), profiles["ext4"])
    probed = facts["overlay_features"]["features"]
    assert probed and all(feature(facts, name) is probed[name]["supported"] for name in probed)
    assert any(feature(facts, name) is not None for name in probed)
