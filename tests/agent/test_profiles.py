"""Profiles file and the pure recipe builders (no root needed)."""
from __future__ import annotations

import textwrap

import pytest

from overlaylab.agent import profiles as P
from overlaylab.agent.profiles import FsProfile, ProfileError, load_profiles, parse_profiles
from overlaylab.agent.recipes import MountSpec, mkfs_argv, mount_spec, overlay_mount_data, reproduce_commands, split_mount_options
from overlaylab.lab.matrix import select_profiles
from overlaylab.mountutil import MS_NODEV, MS_NOSUID, MS_RDONLY

REQUIRED = ["ext4", "ext4-nofiletype", "xfs", "xfs-v4-noftype", "btrfs", "tmpfs", "overlay",
            "ext4-fewinodes", "ext4-small"]


@pytest.fixture(scope="module")
def profs():
    return load_profiles()


def test_default_file_has_every_required_profile(profs):
    for name in REQUIRED:
        assert name in profs, name
        p = profs[name]
        assert p.name == name and p.description and p.kind in P.KINDS


def test_default_path_is_the_repository_file():
    path = P.default_profiles_path()
    assert path.name == "filesystems.toml" and path.parent.name == "vms"


def test_env_var_overrides_default_path(tmp_path, monkeypatch):
    f = tmp_path / "fs.toml"
    f.write_text('[profile.only]\nkind = "tmpfs"\nsize_mib = 8\n')
    monkeypatch.setenv(P.ENV_PROFILES, str(f))
    assert list(load_profiles()) == ["only"]


def test_no_dtype_profiles_are_made_the_documented_way(profs):
    assert mkfs_argv(profs["ext4-nofiletype"], "/dev/vdb") == ["mkfs.ext4", "-F", "-O", "^filetype", "-L", "overlaylab",
                                                                 "/dev/vdb"]
    argv = mkfs_argv(profs["xfs-v4-noftype"], "/dev/vdb")
    assert argv[:2] == ["mkfs.xfs", "-f"] and argv[-1] == "/dev/vdb"
    assert "crc=0" in argv and "ftype=0" in argv
    assert "ftype=1" in mkfs_argv(profs["xfs"], "/dev/loop7")
    assert profs["xfs-v4-noftype"].requires_config == ("CONFIG_XFS_SUPPORT_V4",)
    assert profs["ext4-nofiletype"].expect["d_type"] is False
    assert profs["xfs-v4-noftype"].expect["d_type"] is False


def test_scale_profiles(profs):
    argv = mkfs_argv(profs["ext4-fewinodes"], "/dev/x")
    assert argv[argv.index("-N") + 1].isdigit() and int(argv[argv.index("-N") + 1]) <= 1024
    assert profs["ext4-small"].size_mib < profs["ext4"].size_mib


def test_sizes_meet_the_tools_minimums(profs):
    # xfsprogs >= 5.19: "Filesystem must be larger than 300MB"; btrfs-progs: 114294784 bytes.
    for p in profs.values():
        if p.kind == "block" and p.fstype == "xfs":
            assert p.size_mib >= 300
        if p.kind == "block" and p.fstype == "btrfs":
            assert p.size_mib * (1 << 20) >= 114294784


def test_expectations(profs):
    assert profs["btrfs"].expect["driver_init"] == "REFUSED"
    assert profs["overlay"].expect["upperdir"] is False
    assert profs["overlay"].expect["driver_init"] == "ACCEPTED"  # 1.10.3 accepts overlay-on-overlay
    assert profs["tmpfs"].expect["xattr_trusted"] is True


def test_overlay_profile_resolves_its_base(profs):
    ov = profs["overlay"]
    assert ov.kind == "overlay" and ov.base == "tmpfs"
    assert ov.base_profile is profs["tmpfs"] or ov.base_profile == profs["tmpfs"]
    with pytest.raises(ValueError):
        mkfs_argv(ov, "/dev/vdb")


def test_profile_to_dict_is_plain_data(profs):
    import json

    for p in profs.values():
        d = p.to_dict()
        assert json.loads(json.dumps(d)) == d


# --- selection ---------------------------------------------------------------------------

def names(profs, expr):
    return list(select_profiles(profs, expr))


def test_select_substring_keeps_file_order(profs):
    assert names(profs, "ext4") == ["ext4", "ext4-nofiletype", "ext4-fewinodes", "ext4-small"]
    assert names(profs, "XFS") == ["xfs", "xfs-v4-noftype"]


def test_select_boolean_operators(profs):
    assert names(profs, "xfs and not v4") == ["xfs"]
    assert names(profs, "btrfs or tmpfs") == ["btrfs", "tmpfs"]
    assert names(profs, "not ext4 and not xfs") == ["btrfs", "tmpfs", "overlay"]
    assert names(profs, "(xfs or btrfs) and not noftype") == ["xfs", "btrfs"]
    assert names(profs, "not not btrfs") == ["btrfs"]


def test_select_exact_glob_and_keywords(profs):
    assert names(profs, "=ext4") == ["ext4"]
    assert names(profs, "=ext4 or =xfs") == ["ext4", "xfs"]
    assert names(profs, "ext4-*") == ["ext4-nofiletype", "ext4-fewinodes", "ext4-small"]
    assert names(profs, "scale") == ["ext4-fewinodes", "ext4-small"]  # a tag
    assert "overlay" in names(profs, "dind")
    assert names(profs, "block and not scale and not no-dtype") == ["ext4", "xfs", "btrfs"]


def test_select_lists_are_ored_and_empty_selects_all(profs):
    assert names(profs, ["=ext4", "btrfs"]) == ["ext4", "btrfs"]
    assert names(profs, None) == list(profs)
    assert names(profs, "") == list(profs)
    assert names(profs, []) == list(profs)
    assert names(profs, "nothing-like-this") == []


@pytest.mark.parametrize("bad", ["ext4 and", "(ext4", "or xfs", "xfs )", "not"])
def test_select_rejects_malformed_expressions(profs, bad):
    with pytest.raises(ValueError):
        select_profiles(profs, bad)


# --- recipes as data -------------------------------------------------------------------

def test_split_mount_options():
    assert split_mount_options("") == (0, "")
    assert split_mount_options("ro,nodev,nosuid,discard") == (MS_RDONLY | MS_NODEV | MS_NOSUID, "discard")
    assert split_mount_options("ro,rw,noatime") == (0x400, "")
    flags, data = split_mount_options("size=64m,mode=0755")
    assert flags == 0 and data == "size=64m,mode=0755"


def test_tmpfs_mount_spec_carries_size(profs):
    spec = mount_spec(profs["tmpfs"], "tmpfs", "/mnt/x")
    assert spec.fstype == "tmpfs" and spec.options.startswith("size=64m")
    assert spec.argv() == ["mount", "-t", "tmpfs", "-o", spec.options, "tmpfs", "/mnt/x"]


def test_block_mount_spec(profs):
    spec = mount_spec(profs["xfs"], "/dev/loop3", "/mnt/x")
    assert spec == MountSpec("/dev/loop3", "/mnt/x", "xfs", "")
    assert spec.argv() == ["mount", "-t", "xfs", "/dev/loop3", "/mnt/x"]
    d = spec.to_dict()
    assert d["source"] == "/dev/loop3" and d["fstype"] == "xfs" and d["command"] == "mount -t xfs /dev/loop3 /mnt/x"


def test_overlay_mount_data_lists_top_lower_first():
    assert overlay_mount_data(["/l2", "/l1"], "/u", "/w") == "lowerdir=/l2:/l1,upperdir=/u,workdir=/w"
    assert overlay_mount_data(["/l"]) == "lowerdir=/l"
    assert overlay_mount_data(["/l"], "/u", "/w", "redirect_dir=on") == "lowerdir=/l,upperdir=/u,workdir=/w,redirect_dir=on"


def test_reproduce_commands(profs):
    lines = reproduce_commands(profs["ext4-nofiletype"], "/dev/vdb", "/mnt/d")
    assert lines[0] == "mkfs.ext4 -F -O '^filetype' -L overlaylab /dev/vdb"  # ^ is quoted for old shells
    assert lines[-1] == "mount -t ext4 /dev/vdb /mnt/d"
    ov = reproduce_commands(profs["overlay"], "/dev/vdb", "/mnt/d")
    assert any(l.startswith("mount -t tmpfs") for l in ov)
    assert any(l.startswith("mount -t overlay -o lowerdir=BASE/lower") for l in ov)


# --- validation ------------------------------------------------------------------------

def test_parse_rejects_bad_tables():
    with pytest.raises(ProfileError, match="kind"):
        parse_profiles('[profile.a]\nkind = "nfs"\n')
    with pytest.raises(ProfileError, match="mkfs"):
        parse_profiles('[profile.a]\nkind = "block"\nfstype = "ext4"\n')
    with pytest.raises(ProfileError, match="unknown field"):
        parse_profiles('[profile.a]\nkind = "tmpfs"\nsizemib = 3\n')
    with pytest.raises(ProfileError, match="base"):
        parse_profiles('[profile.a]\nkind = "overlay"\nbase = "missing"\n')
    with pytest.raises(ProfileError, match="list of strings"):
        parse_profiles('[profile.a]\nkind = "block"\nfstype = "ext4"\nmkfs = "mkfs.ext4 -F"\n')


def test_parse_minimal_and_overlay_default_base():
    text = textwrap.dedent("""
        [profile.tmpfs]
        kind = "tmpfs"
        [profile.dind]
        kind = "overlay"
        [profile.dind.expect]
        upperdir = false
    """)
    ps = parse_profiles(text)
    assert ps["tmpfs"].size_mib == 64 and ps["tmpfs"].fstype == "tmpfs"
    assert ps["dind"].base == "tmpfs" and ps["dind"].base_profile == ps["tmpfs"]
    assert ps["dind"].expect == {"upperdir": False}
    assert isinstance(ps["dind"], FsProfile)
