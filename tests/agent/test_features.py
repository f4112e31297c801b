"""The overlayfs feature probes, with real mounts on this host's kernel (6.18) over ext4, xfs,
tmpfs and btrfs: what this kernel really does is pinned, so a probe that breaks fails here."""
from __future__ import annotations

import os

import pytest

from overlaylab import mountutil
from overlaylab.agent.features import (FEATURES, IDMAP_BASE, MODULE_PARAMS, features_probe, matrix_cell,
                                       probe_features)
from overlaylab.agent.probes import OVERLAY_PARAMS_DIR

from .conftest import requires_root

pytestmark = requires_root

FILESYSTEMS = ["ext4", "xfs", "tmpfs", "btrfs"]
#: this host's 6.18 kernel has every feature on every one of FILESYSTEMS (tmpfs got idmapped
#: mounts in 6.3 and user xattrs in 6.6; data-only lowers came in 6.5)
HOST_SUPPORTS = {f: True for f in FEATURES}


@pytest.fixture(scope="module")
def probed(module_fs_factory):
    """Each profile made once and probed once: ``{profile: (probe_features answer, what the
    backing fs held afterwards, the mounts left under it)}``."""
    out = {}
    for name in FILESYSTEMS + ["overlay"]:
        bfs = module_fs_factory(name)
        answer = probe_features(bfs.mountpoint)
        left = [e for e in os.listdir(bfs.mountpoint) if e != "lost+found"]
        mounts = [m.mountpoint for m in mountutil.mounts_under(bfs.mountpoint) if m.mountpoint != bfs.mountpoint]
        out[name] = (answer, left, mounts)
    return out


def feature(probed, fs, name):
    return probed[fs][0]["features"][name]


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_every_feature_probes_as_this_kernel_supports_it(probed, fs):
    answer = probed[fs][0]
    got = {name: f["supported"] for name, f in answer["features"].items()}
    assert got == HOST_SUPPORTS, {n: f["reason"] for n, f in answer["features"].items() if not f["supported"]}
    assert answer["baseline"]["attempts"][0]["errno"] is None


@pytest.mark.parametrize("fs", FILESYSTEMS + ["overlay"])
def test_the_probe_leaves_nothing_mounted_and_no_directory(probed, fs):
    _, left, mounts = probed[fs]
    assert left == [] and mounts == []


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_the_whole_probe_stays_within_a_second(probed, fs):
    assert 0 < probed[fs][0]["seconds"] < 1.0


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_each_feature_records_its_mount_options_and_module_parameter(probed, fs):
    for name in FEATURES:
        ev = feature(probed, fs, name)["evidence"]
        assert ev["attempts"] and all("options" in a and "dmesg" in a for a in ev["attempts"]), name
        if name in MODULE_PARAMS:
            param = MODULE_PARAMS[name]
            with open(os.path.join(OVERLAY_PARAMS_DIR, param)) as f:
                assert ev["module_param"] == {param: f.read().strip()}
        else:
            assert ev["module_param"] is None
    assert feature(probed, fs, "metacopy")["evidence"]["attempts"][0]["options"] == "metacopy=on"


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_redirect_dir_sees_the_redirect_xattr_of_a_renamed_lower_dir(probed, fs):
    checks = feature(probed, fs, "redirect_dir")["evidence"]["checks"]
    assert "rename(merged/d1, merged/d2): ok" in checks
    assert any(c.startswith("upper/d2 trusted.overlay.redirect = ") for c in checks), checks


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_metacopy_sees_a_metadata_only_copy_up(probed, fs):
    checks = feature(probed, fs, "metacopy")["evidence"]["checks"]
    assert "upper/f trusted.overlay.metacopy = b''" in checks
    assert "merged/f reads the lower's data: True" in checks


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_nfs_export_decodes_a_handle_and_the_kernel_refuses_it_without_index(probed, fs):
    ev = feature(probed, fs, "nfs_export")["evidence"]
    refused = [a for a in ev["attempts"] if a["options"] == "nfs_export=on,index=off"]
    assert refused and refused[0]["errno"] == "EINVAL"
    assert any("conflicting options" in line for line in refused[0]["dmesg"]), refused
    assert any(c.startswith("name_to_handle_at and open_by_handle_at: ok") for c in ev["checks"])


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_xino_makes_a_second_filesystems_files_report_the_overlay_device(probed, fs):
    """xino=off is the control: there the tmpfs lower's file keeps another st_dev."""
    checks = feature(probed, fs, "xino")["evidence"]["checks"]
    by_mode = {c.split(":", 1)[0]: c for c in checks}

    def devs(line):
        parts = line.split("st_dev ", 1)[1].split(";", 1)[0].split()
        return [p.split("=", 1)[1] for p in parts]
    off, on = devs(by_mode["xino=off"]), devs(by_mode["xino=on"])
    assert len(set(off)) > 1 and len(set(on)) == 1, checks


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_idmapped_lower_shows_the_owner_through_the_idmap(probed, fs):
    ev = feature(probed, fs, "idmapped_lower")["evidence"]
    assert [(a["options"], a["errno"]) for a in ev["attempts"]] == [
        ("user namespace 0:%d:65536 (unshare CLONE_NEWUSER)" % IDMAP_BASE, None), ("open_tree(OPEN_TREE_CLONE)", None), ("mount_setattr(MOUNT_ATTR_IDMAP 0:%d:65536)" % IDMAP_BASE, None),
        ("move_mount", None), ("(defaults)", None)]
    assert "merged/f uid %d (the idmapped lower's %d)" % (IDMAP_BASE, IDMAP_BASE) in ev["checks"]


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_data_only_lower_is_hidden_and_reached_by_a_metacopy_redirect(probed, fs):
    checks = feature(probed, fs, "data_only_lower")["evidence"]["checks"]
    assert "merged lists ['f'] (the data layer's blob and hidden must not show)" in checks
    assert "merged/f reads b'data-only payload\\n'" in checks


def test_userxattr_marks_an_opaque_dir_with_user_xattrs_inside_a_user_namespace(probed):
    f = feature(probed, "ext4", "userxattr")
    assert f["evidence"]["attempts"][0]["returncode"] == 0
    assert any("user.overlay.opaque='y'" in c for c in f["evidence"]["checks"]), f["evidence"]


def test_an_fs_that_cannot_be_an_upperdir_gives_null_with_the_reason(probed):
    answer = probed["overlay"][0]
    assert answer["baseline"]["attempts"][0]["errno"] == "EINVAL"
    for name in FEATURES:
        f = answer["features"][name]
        assert f["supported"] is None
        assert f["reason"].startswith("this fs cannot be an overlay upperdir here: plain mount refused (EINVAL: ")
        assert "not supported as upperdir" in f["reason"]


def test_the_profile_probe_is_supported_per_feature_with_one_line_each(probed):
    probe = features_probe(probed["ext4"][0])
    assert probe.name == "overlay_features" and probe.value == HOST_SUPPORTS
    assert probe.evidence.splitlines()[0].startswith("redirect_dir: yes (")


@pytest.mark.parametrize("states, cell", [
    ({"ext4": True, "xfs": True}, "yes"),
    ({"ext4": False, "tmpfs": False}, "no"),
    ({"ext4": True, "xfs": True, "tmpfs": False}, "ext4,xfs only"),
    ({"ext4": True, "overlay": None}, "yes (? on overlay)"),
    ({"overlay": None}, "?"),
    ({}, "-"),
])
def test_a_kernels_cell_names_the_filesystems_where_it_differs(states, cell):
    assert matrix_cell(states) == cell
