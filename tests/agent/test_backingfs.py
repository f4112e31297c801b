"""Making backing filesystems for real (loop devices, mkfs, mounts) and tearing them down."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import time

import pytest

from overlaylab import mountutil
from overlaylab.agent import cellmark
from overlaylab.agent.backingfs import BackingFsUnavailable, loop_devices_for, make_backing_fs
from overlaylab.agent.probes import read_kernel_config, parse_kernel_config
from overlaylab.agent.recipes import overlay_mount_spec

from tests.needs import kernel_cannot

from .conftest import requires_root

pytestmark = requires_root

ALL = ["ext4", "ext4-nofiletype", "xfs", "xfs-v4-noftype", "btrfs", "tmpfs", "overlay",
       "ext4-fewinodes", "ext4-small"]


def kernel_has(symbol: str):
    """True/False from the kernel config, None if the config is not readable."""
    text, _ = read_kernel_config()
    if text is None:
        return None
    return parse_kernel_config(text, [symbol]).get(symbol, "n") in ("y", "m")


def mount_at(path: str):
    """The mountinfo entry of the filesystem ``path`` lives on (deepest containing mount)."""
    real = os.path.realpath(path)
    cands = [m for m in mountutil.mountinfo()
             if real == m.mountpoint or real.startswith(m.mountpoint.rstrip("/") + "/")]
    return max(cands, key=lambda m: len(m.mountpoint))


def assert_torn_down(workdir: str, image=None, root=None):
    assert mountutil.mounts_under(workdir) == [], "mounts left under %s" % workdir
    if image is not None:
        assert loop_devices_for(image) == [], "loop devices left for %s" % image
        assert not os.path.exists(image)
    if root is not None:
        assert not os.path.exists(root)


def v4_refused_here() -> bool:
    return kernel_has("CONFIG_XFS_SUPPORT_V4") is False


@pytest.mark.parametrize("name", ALL)
def test_every_profile_is_made_mounted_and_torn_down(name, lab_profiles, lab_workdir):
    profile = lab_profiles[name]
    if name == "xfs-v4-noftype" and v4_refused_here():
        with pytest.raises(BackingFsUnavailable) as exc_info:
            with make_backing_fs(profile, lab_workdir):
                pass  # pragma: no cover
        err = exc_info.value
        assert err.step == "mount" and err.errno == 22 and "invalid argument" in err.stderr
        assert any("V4" in line for line in err.dmesg), err.dmesg  # the kernel says why
        assert err.info["xfs"]["ftype"] == 0 and err.info["xfs"]["crc"] == 0  # what was made
        assert err.recipe[-1]["op"] == "mount" and "error" in err.recipe[-1]
        assert_torn_down(lab_workdir)
        assert os.listdir(lab_workdir) == []
        return
    with make_backing_fs(profile, lab_workdir) as bfs:
        image, root = bfs.image, bfs.root
        assert os.path.isdir(bfs.mountpoint)
        m = mount_at(bfs.mountpoint)
        assert m.fstype == profile.fstype
        assert bfs.kind == profile.kind
        assert bfs.info["mount"]["fstype"] == profile.fstype
        assert bfs.info["mountinfo"] == m.line
        if profile.kind == "block":
            assert m.mountpoint == bfs.mountpoint and m.source == bfs.device
            assert bfs.device.startswith("/dev/loop") and loop_devices_for(image) == [bfs.device]
            assert [s["argv"][0] for s in bfs.recipe if s["op"] == "run"] == ["losetup", profile.mkfs[0]]
            mkfs = [s for s in bfs.recipe if s.get("step") == "mkfs"][0]
            # the profile's own options, then the lab's label (so --allow-mkfs can tell its disks)
            assert mkfs["argv"] == list(profile.mkfs) + list(profile.mkfs_options) + ["-L", "overlaylab", bfs.device]
        if profile.kind == "overlay":
            assert m.mountpoint != bfs.mountpoint  # a directory inside the merged view
            assert bfs.info["fs_name"] == "overlayfs"
            assert bfs.base is not None and bfs.info["base"]["fs_name"] == "tmpfs"
        # the size is roughly what was asked for (tmpfs exact, block minus metadata)
        assert bfs.info["df"]["size_mib"] <= profile.size_mib
        with open(os.path.join(bfs.mountpoint, "hello"), "w") as f:
            f.write("hi")
    assert_torn_down(lab_workdir, image, root)


def test_info_records_real_xfs_parameters(fs_factory):
    bfs = fs_factory("xfs")
    assert bfs.info["xfs"]["ftype"] == 1 and bfs.info["xfs"]["crc"] == 1
    assert "ftype=1" in bfs.info["xfs_info"]
    assert bfs.info["fs_name"] == "xfs" and bfs.info["statfs_magic"] == "0x58465342"


def test_info_records_xfs_v4_ftype0(fs_factory):  # pragma: no cover - kernels with V4 only
    if v4_refused_here():
        kernel_cannot("mount xfs V4: no CONFIG_XFS_SUPPORT_V4")
    bfs = fs_factory("xfs-v4-noftype")
    assert bfs.info["xfs"]["ftype"] == 0 and bfs.info["xfs"]["crc"] == 0


def test_info_records_ext4_features(fs_factory):
    plain = fs_factory("ext4")
    nofile = fs_factory("ext4-nofiletype")
    assert "filetype" in plain.info["ext4_features"] and plain.info["filetype"] is True
    assert "filetype" not in nofile.info["ext4_features"] and nofile.info["filetype"] is False
    assert "Filesystem features:" in nofile.info["dumpe2fs"]
    few = fs_factory("ext4-fewinodes")
    assert few.info["inode_count"] == 128
    assert few.info["df"]["files"] == 128
    assert "Inodes" in few.info["df_i"]


def test_info_records_btrfs_and_tmpfs(fs_factory):
    b = fs_factory("btrfs")
    assert b.device in b.info["btrfs_show"] and b.info["fs_name"] == "btrfs"
    t = fs_factory("tmpfs")
    assert t.info["fs_name"] == "tmpfs" and "size=65536k" in t.info["mount"]["super_options"]
    assert t.recipe[0]["op"] == "mount" and t.recipe[0]["options"].startswith("size=64m")


def test_host_fs_of_the_images_is_recorded(fs_factory):
    assert fs_factory("ext4").info["host_fs"]["fs_name"] in ("extfs", "xfs", "btrfs", "tmpfs", "overlayfs")


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_teardown_also_on_exceptions(exc, lab_profiles, lab_workdir):
    with pytest.raises(type(exc)):
        with make_backing_fs(lab_profiles["ext4"], lab_workdir) as bfs:
            image = bfs.image
            raise exc
    assert_torn_down(lab_workdir, image, bfs.root)


def test_teardown_unmounts_leftover_overlays_and_busy_mounts(lab_profiles, lab_workdir):
    """A scenario leaves an overlay mounted inside the fs and a file open: teardown still
    unmounts everything (lazily where busy) and the loop device goes once the file closes."""
    with make_backing_fs(lab_profiles["ext4"], lab_workdir) as bfs:
        mp = bfs.mountpoint
        dirs = [os.path.join(mp, d) for d in ("lower", "upper", "work", "merged")]
        for d in dirs:
            os.mkdir(d)
        spec = overlay_mount_spec([dirs[0]], dirs[1], dirs[2], dirs[3])
        mountutil.mount(spec.source, spec.target, spec.fstype, 0, spec.data)
        busy = open(os.path.join(dirs[3], "open-file"), "w")
        image = bfs.image
    try:
        assert mountutil.mounts_under(lab_workdir) == []
        assert any("umount -l" in l for l in bfs.teardown_log), bfs.teardown_log
    finally:
        busy.close()
    # losetup -d on a busy device sets autoclear; it goes away once the last user is gone.
    for _ in range(50):
        if not loop_devices_for(image):
            break
        time.sleep(0.1)
    assert loop_devices_for(image) == []


def test_overlay_profile_teardown_with_nested_mounts(lab_profiles, lab_workdir):
    with make_backing_fs(lab_profiles["overlay"], lab_workdir) as bfs:
        inner = os.path.join(bfs.mountpoint, "tmp")
        os.mkdir(inner)
        mountutil.mount("tmpfs", inner, "tmpfs", 0, "size=1m")
    assert_torn_down(lab_workdir, root=bfs.root)


def test_given_device_is_used_instead_of_an_image(lab_profiles, lab_workdir, tmp_path_factory):
    """The VM path: the profile's disk is an existing block device (here a loop device we own)."""
    img = str(tmp_path_factory.mktemp("disk") / "vdb.img")
    with open(img, "wb") as f:
        f.truncate(300 << 20)
    dev = subprocess.run(["losetup", "--find", "--show", img], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        with make_backing_fs(lab_profiles["xfs"], lab_workdir, device=dev) as bfs:
            assert bfs.device == dev and bfs.image is None
            assert [s["op"] for s in bfs.recipe] == ["run", "mount"]
            assert bfs.recipe[0]["argv"][-1] == dev
            assert mount_at(bfs.mountpoint).source == dev
            assert bfs.info["xfs"]["ftype"] == 1
        assert_torn_down(lab_workdir)
        assert loop_devices_for(img) == [dev]  # not ours to detach
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_mkfs_failure_is_unavailable_and_torn_down(lab_profiles, lab_workdir):
    bad = dataclasses.replace(lab_profiles["ext4"], name="ext4-bad", mkfs_options=("-O", "no_such_feature"))
    with pytest.raises(BackingFsUnavailable) as exc_info:
        with make_backing_fs(bad, lab_workdir):
            pass  # pragma: no cover
    err = exc_info.value
    assert err.step == "mkfs" and "no_such_feature" in err.stderr and not err.infrastructure
    assert err.recipe[-1]["step"] == "mkfs" and err.recipe[-1]["returncode"] != 0
    assert_torn_down(lab_workdir)
    assert os.listdir(lab_workdir) == []


def test_mount_failure_carries_dmesg(lab_profiles, lab_workdir):
    bad = dataclasses.replace(lab_profiles["ext4"], name="ext4-badopt", mount_options="no_such_option=1")
    with pytest.raises(BackingFsUnavailable) as exc_info:
        with make_backing_fs(bad, lab_workdir):
            pass  # pragma: no cover
    err = exc_info.value
    assert err.step == "mount" and err.stderr == "invalid argument"
    assert any("no_such_option" in line or "ext4" in line.lower() for line in err.dmesg), err.dmesg
    assert "invalid argument" in str(err) and err.to_dict()["step"] == "mount"
    assert_torn_down(lab_workdir)


def test_missing_mkfs_tool_is_unavailable(lab_profiles, lab_workdir):
    bad = dataclasses.replace(lab_profiles["ext4"], name="nofs", mkfs=("mkfs.no-such-fs",))
    with pytest.raises(BackingFsUnavailable, match="mkfs"):
        with make_backing_fs(bad, lab_workdir):
            pass  # pragma: no cover
    assert_torn_down(lab_workdir)


def test_factory_fixture_cleans_up(fs_factory, lab_workdir):
    a = fs_factory("tmpfs")
    b = fs_factory("ext4-small")
    assert a.root != b.root and len(mountutil.mounts_under(lab_workdir)) == 2
    assert b.to_dict()["profile"] == "ext4-small"


def test_overlay_profile_whose_base_fails(lab_profiles, lab_workdir):
    bad_base = dataclasses.replace(lab_profiles["ext4"], name="ext4-broken", mount_options="no_such_option=1")
    ov = dataclasses.replace(lab_profiles["overlay"], name="overlay-on-broken", base="ext4-broken",
                             base_profile=bad_base)
    with pytest.raises(BackingFsUnavailable) as exc_info:
        with make_backing_fs(ov, lab_workdir):
            pass  # pragma: no cover
    err = exc_info.value
    assert err.profile == "ext4-broken" and err.step == "mount"
    assert err.recipe[-1]["op"] == "base" and err.recipe[-1]["recipe"][-1]["op"] == "mount"
    assert err.info["base"]["filetype"] is True
    assert_torn_down(lab_workdir)
    assert os.listdir(lab_workdir) == []


def test_interrupt_during_setup_still_tears_down(lab_profiles, lab_workdir, monkeypatch):
    """Ctrl-C while mkfs runs (after losetup): the loop device and image still go."""
    from overlaylab.agent import backingfs

    real_run = backingfs.run
    seen = {}

    def run(argv, *a, **kw):
        if argv[0].startswith("mkfs"):
            seen["device"] = argv[-1]
            raise KeyboardInterrupt()
        return real_run(argv, *a, **kw)

    monkeypatch.setattr(backingfs, "run", run)
    with pytest.raises(KeyboardInterrupt):
        with make_backing_fs(lab_profiles["ext4"], lab_workdir):
            pass  # pragma: no cover
    assert seen["device"].startswith("/dev/loop")
    assert_torn_down(lab_workdir)
    assert os.listdir(lab_workdir) == []
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert lab_workdir not in out


@pytest.mark.parametrize("source", ["/dev/kmsg", "dmesg"])
def test_kernel_log_cursor_sees_only_new_lines(source, monkeypatch):
    from overlaylab.agent import shell

    if source == "dmesg":
        real_open = os.open

        def no_kmsg(path, *a, **kw):
            if path == "/dev/kmsg":
                raise PermissionError(13, "denied")
            return real_open(path, *a, **kw)

        monkeypatch.setattr(shell.os, "open", no_kmsg)
    marker = "overlaylab-test-marker-%d-%s" % (os.getpid(), source.strip("/").replace("/", "-"))
    with shell.KernelLogCursor() as cursor:
        monkeypatch.undo()
        assert cursor.source == source
        with open("/dev/kmsg", "w") as k:
            k.write(marker + "\n")
        cellmark.write("tmpfs", marker, "port")  # the agent's own line: not the kernel's
        lines = cursor.read_new()
        assert any(marker in l for l in lines), lines
        assert not any(cellmark.PREFIX in l for l in lines), lines
        assert not any(marker in l for l in cursor.read_new())


def test_cell_marks_reach_the_kernel_log_past_the_rate_limit_of_one_open():
    """25 marks at once: /dev/kmsg allows 10 lines per 5 s per open (printk.devkmsg=ratelimit,
    this host's default), and each mark is an open of its own, so none is dropped."""
    from overlaylab.agent import shell

    tag = "rl%d" % os.getpid()
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.lseek(fd, 0, os.SEEK_END)
        for i in range(25):
            cellmark.write("tmpfs", "%s-%d" % (tag, i), "port")
        seen = []
        while True:
            try:
                line = shell._format_kmsg_record(os.read(fd, 8192))
            except BlockingIOError:
                break
            if line and cellmark.is_mark(line) and tag in line:
                seen.append(cellmark.last_mark([line]))
    finally:
        os.close(fd)
    assert seen == [("tmpfs", "%s-%d" % (tag, i), "port") for i in range(25)]


def test_run_never_raises():
    from overlaylab.agent.shell import run

    r = run(["no-such-command-overlaylab"])
    assert r.returncode == 127 and not r.ok and "no-such-command" in r.stderr
    r = run(["sleep", "5"], timeout=0.2)
    assert r.returncode == 124 and "timed out" in r.stderr
    r = run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n") and r.command == "sh -c 'echo out; echo err >&2; exit 3'"


def test_mounts_under_answers_as_the_full_mount_table_does_for_paths_mountinfo_escapes(tmp_path):
    """mounts_under parses the table only when the path occurs in its (escaped) text."""
    def parsed_whole(path):  # the answer from every entry of the table, parsed
        p = path.rstrip("/")
        return [m for m in mountutil.mountinfo() if m.mountpoint == p or m.mountpoint.startswith(p + "/")]

    base = tmp_path / "a dir\\with\tescapes"
    inner = base / "in ner"
    inner.mkdir(parents=True)
    assert mountutil.mounts_under(str(base)) == [] == parsed_whole(str(base))
    mountutil.mount("tmpfs", str(inner), "tmpfs", 0, "size=1m")
    try:
        assert [m.mountpoint for m in mountutil.mounts_under(str(base))] == [str(inner)]
        assert mountutil.mounts_under(str(base)) == parsed_whole(str(base))
        assert mountutil.mounts_under(str(base) + "/") == parsed_whole(str(base) + "/")
        assert mountutil.mounts_under(str(tmp_path / "a dir")) == []  # a prefix of the name is not a parent
        assert mountutil.mount_entry(str(inner)).fstype == "tmpfs"
        assert mountutil.mount_entry(str(base)) is None
    finally:
        mountutil.umount(str(inner))
    assert mountutil.mounts_under(str(base)) == []


@pytest.mark.parametrize("name", ["ext4", "xfs", "btrfs", "tmpfs", "overlay"])
def test_df_evidence_is_what_gnu_df_prints(name, fs_factory):
    """df_k and df_i come from statvfs in-process (an exec of df costs ~0.2 s in a TCG guest):
    byte for byte what `df -k` and `df -k -i` print for the same, quiet, filesystem."""
    bfs = fs_factory(name)
    for key, argv in (("df_k", ["df", "-k", bfs.mountpoint]), ("df_i", ["df", "-k", "-i", bfs.mountpoint])):
        real = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
        assert bfs.info[key] == real, key
