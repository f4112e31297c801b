"""The overlay driver's own behaviour (docs/reference-behaviour.md): layouts, Get/Put, errors, quirks, refusals."""
from __future__ import annotations

import io
import logging
import os
import socket
import stat
import tarfile
import threading

import pytest

from overlaylab import graphdriver
from overlaylab.goerrors import PathError
from overlaylab.graphdriver import ErrApplyDiffFallback, ErrIncompatibleFS, overlay
from overlaylab.graphdriver.overlay import InvalidLayerID, format_mount_label, mount_options
from overlaylab.idtools import IDMap
from overlaylab.mountutil import mounts_under


def _tar(entries):
    """entries: (name, kind, content/linkname, mode, uid, gid)"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, kind, payload, mode, uid, gid in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 1500000000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            else:
                data = payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _image(driver, layer_id, parent, entries):
    driver.create(layer_id, parent, "")
    return driver.apply_diff(layer_id, parent, _tar(entries))


# Pure data -------------------------------------------------------------------------------------
def test_mount_options_are_exact():
    assert mount_options("/h/l/root", "/h/x/upper", "/h/x/work") == \
        "lowerdir=/h/l/root,upperdir=/h/x/upper,workdir=/h/x/work"
    assert mount_options("/h/l/root", "/h/x/upper", "/h/x/work", "system_u:object_r:svirt_sandbox_file_t:s0:c1,c2") == \
        'lowerdir=/h/l/root,upperdir=/h/x/upper,workdir=/h/x/work,context="system_u:object_r:svirt_sandbox_file_t:s0:c1,c2"'
    assert format_mount_label("", 'a"b') == 'context="a\\"b"'


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "/abs", "x\0y",
                                 # overlay mount-option metacharacters (issue 9.6)
                                 "x,lowerdir=/", "a:b", ",", ":"])
def test_bad_layer_ids_are_refused(make_driver, bad):
    driver = make_driver("tmpfs")
    before = sorted(os.listdir(os.path.dirname(driver.home)))
    for call in (lambda: driver.create(bad, ""), lambda: driver.get(bad), lambda: driver.remove(bad),
                 lambda: driver.get_metadata(bad), lambda: driver.put(bad),
                 lambda: driver.apply_diff(bad, "", io.BytesIO()), lambda: driver.diff(bad, ""),
                 lambda: driver.changes(bad, ""), lambda: driver.diff_size(bad, "")):
        with pytest.raises(InvalidLayerID, match="invalid layer id"):
            call()
    with pytest.raises(InvalidLayerID, match="invalid parent id"):
        driver.create("ok", bad if bad else "..")
    assert not driver.exists(bad)
    assert sorted(os.listdir(os.path.dirname(driver.home))) == before  # nothing outside the home
    assert os.listdir(driver.home) == []


def test_a_lower_id_with_mount_option_metacharacters_is_refused(make_driver):
    """Issue 9.6: the lower-id file goes into the mount options too: the same check applies."""
    driver = make_driver("tmpfs")
    driver.create("base", "")
    driver.create("ctr", "base")
    with open(os.path.join(driver.home, "ctr", "lower-id"), "w") as f:
        f.write("base/root,lowerdir=/")
    with pytest.raises(InvalidLayerID, match='^invalid lower id "base/root,lowerdir=/": '):
        driver.get("ctr")
    assert mounts_under(driver.home) == []


# Layouts (docs/reference-behaviour.md#layout) ---------------------------------------------------------------------
def test_layouts_of_cases_a_b_c_and_apply(make_driver):
    driver = make_driver("ext4")
    h = driver.home
    assert stat.S_IMODE(os.stat(h).st_mode) == 0o700
    _image(driver, "img", "", [("etc/", "dir", "", 0o755, 0, 0), ("etc/f", "file", "data", 0o644, 0, 0)])
    assert sorted(os.listdir(os.path.join(h, "img"))) == ["root"]
    driver.create("child", "img")
    assert sorted(os.listdir(os.path.join(h, "child"))) == ["lower-id", "merged", "upper", "work"]
    with open(os.path.join(h, "child", "lower-id"), "rb") as f:
        assert f.read() == b"img"
    assert stat.S_IMODE(os.stat(os.path.join(h, "child", "upper")).st_mode) == 0o755  # parent root's mode
    size = driver.apply_diff("child", "img", _tar([("etc/g", "file", "more", 0o600, 0, 0)]))
    assert size == 4
    assert sorted(os.listdir(os.path.join(h, "child"))) == ["root"]
    # Unchanged files are hard links shared with the parent.
    a, b = os.stat(os.path.join(h, "img/root/etc/f")), os.stat(os.path.join(h, "child/root/etc/f"))
    assert a.st_ino == b.st_ino and a.st_nlink >= 2

    driver.create("ctr-init", "child")
    m = driver.get("ctr-init")
    os.unlink(os.path.join(m, "etc/f"))  # a whiteout in the upper
    os.makedirs(os.path.join(m, "dev"))
    driver.put("ctr-init")
    driver.create("ctr", "ctr-init")  # case C: deep copy of the upper, same lower
    with open(os.path.join(h, "ctr", "lower-id"), "rb") as f:
        assert f.read() == b"child"
    wh = os.lstat(os.path.join(h, "ctr/upper/etc/f"))
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert wh.st_ino != os.lstat(os.path.join(h, "ctr-init/upper/etc/f")).st_ino  # a copy, not a link
    assert driver.get_metadata("ctr") == {
        "LowerDir": os.path.join(h, "child/root"), "UpperDir": os.path.join(h, "ctr/upper"),
        "WorkDir": os.path.join(h, "ctr/work"), "MergedDir": os.path.join(h, "ctr/merged")}
    assert driver.get_metadata("img") == {"RootDir": os.path.join(h, "img/root")}
    assert driver.status() == [("Backing Filesystem", "extfs")]


def test_get_put_counts_and_mounts_once(make_driver):
    driver = make_driver("tmpfs")
    driver.create("base", "")
    assert driver.get("base") == os.path.join(driver.home, "base", "root")
    assert mounts_under(driver.home) == []  # root layers never mount
    driver.put("base")
    driver.create("ctr", "base")
    merged = os.path.join(driver.home, "ctr", "merged")
    assert driver.get("ctr") == merged
    assert driver.get("ctr") == merged
    mounts = mounts_under(driver.home)
    assert len(mounts) == 1 and mounts[0].fstype == "overlay"
    opts = mounts[0].super_options.split(",")
    assert "lowerdir=%s/base/root" % driver.home in opts
    assert "upperdir=%s/ctr/upper" % driver.home in opts and "workdir=%s/ctr/work" % driver.home in opts
    assert stat.S_IMODE(os.stat(os.path.join(driver.home, "ctr/work/work")).st_mode) == 0
    driver.put("ctr")
    assert len(mounts_under(driver.home)) == 1  # still one reference
    driver.put("ctr")
    assert mounts_under(driver.home) == []
    driver.put("ctr")  # a Put too many: no error, as in the reference
    driver.put("never-existed")


def test_put_returns_ebusy_and_remove_while_mounted(make_driver):
    driver = make_driver("tmpfs")
    _image(driver, "base", "", [("a", "file", "x", 0o644, 0, 0)])
    driver.create("ctr", "base")
    merged = driver.get("ctr")
    with pytest.raises(OSError) as err:
        driver.remove("ctr")
    assert str(err.value) == "unlinkat %s/ctr/merged: device or resource busy" % driver.home
    assert os.path.ismount(merged)
    fd = os.open(merged, os.O_RDONLY)
    cwd = os.getcwd()
    os.chdir(merged)
    try:
        with pytest.raises(OSError) as err:
            driver.put("ctr")  # busy: the error is returned, the count is gone
        assert str(err.value) == "device or resource busy"
    finally:
        os.chdir(cwd)
        os.close(fd)
    assert "ctr" not in driver.proto.active
    driver.put("ctr")  # not active: the reference unmounts merged anyway
    assert not os.path.ismount(merged)
    driver.remove("ctr")
    assert not driver.exists("ctr")
    driver.remove("ctr")  # missing is fine


def test_layers_lists_the_layout_as_driver_list_shows_it(make_driver, tmp_path):
    driver = make_driver("tmpfs")
    driver.create("base", "")
    driver.create("ctr", "base")
    driver.create("lost", "base")
    os.unlink(os.path.join(driver.home, "lost", "lower-id"))
    open(os.path.join(driver.home, "not-a-layer"), "w").close()
    driver.get("ctr")
    try:
        assert driver.proto.layers() == [overlay.Layer("base", "R", "", False),
                                         overlay.Layer("ctr", "O", "base", True),
                                         overlay.Layer("lost", "O", None, False)]
    finally:
        driver.put("ctr")
    assert overlay.OverlayDriver(driver.home).layers()[1].mounted is False  # no Init needed
    missing = str(tmp_path / "no-home")
    with pytest.raises(PathError) as err:
        overlay.OverlayDriver(missing).layers()
    assert str(err.value) == "open %s: no such file or directory" % missing
    assert not os.path.exists(missing)


def test_error_texts(make_driver):
    driver = make_driver("tmpfs")
    h = driver.home
    with pytest.raises(OSError, match="^stat %s/nope: no such file or directory$" % h):
        driver.get("nope")
    with pytest.raises(OSError, match="^lstat %s/nope: no such file or directory$" % h):
        driver.create("x", "nope")
    assert not driver.exists("x"), "a failed Create removes its directory"
    with pytest.raises(OSError, match="^stat %s/nope: no such file or directory$" % h):
        driver.get_metadata("nope")
    os.makedirs(os.path.join(h, "broken"))
    with pytest.raises(OSError, match="^open %s/broken/lower-id: no such file or directory$" % h):
        driver.get("broken")


def test_apply_diff_falls_back_for_base_and_shape_o_parents(make_driver):
    driver = make_driver("tmpfs")
    with pytest.raises(ErrApplyDiffFallback, match="^Fall back to normal ApplyDiff$"):
        driver.proto.apply_diff("x", "", io.BytesIO())
    assert _image(driver, "base", "", [("f", "file", "abc", 0o644, 0, 0)]) == 3  # naive path into root/
    driver.create("init", "base")
    driver.create("ctr", "init")
    with pytest.raises(ErrApplyDiffFallback):
        driver.proto.apply_diff("ctr", "init", io.BytesIO())
    # Through the wrapper the fallback extracts through the mount into upper/.
    assert driver.apply_diff("ctr", "init", _tar([("g", "file", "hello", 0o644, 0, 0)])) == 5
    with open(os.path.join(driver.home, "ctr", "upper", "g")) as f:
        assert f.read() == "hello"
    assert mounts_under(driver.home) == []


def test_recreate_quirk_deletes_layer_on_existing_symlink(make_driver):
    driver = make_driver("tmpfs")
    driver.create("base", "")
    driver.create("init", "base")
    m = driver.get("init")
    os.symlink("/target", os.path.join(m, "link"))
    driver.put("init")
    driver.create("ctr", "init")
    driver.create("base", "")  # case A again: silently fine
    assert driver.exists("base")
    with pytest.raises(OSError) as err:
        driver.create("ctr", "init")  # case C again: the symlink exists -> EEXIST -> rm -rf
    assert "file exists" in str(err.value)
    assert not driver.exists("ctr")


def test_socket_in_upper_breaks_case_c_copy(make_driver):
    """The reference "copies" a socket with mkfifo(st_mode): EINVAL (docs/reference-behaviour.md#copydir-quirks)."""
    driver = make_driver("tmpfs")
    driver.create("base", "")
    driver.create("init", "base")
    m = driver.get("init")
    s = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(m)  # sun_path is short; bind by a relative name
    try:
        s.bind("sock")
    finally:
        os.chdir(cwd)
        s.close()
    assert stat.S_ISSOCK(os.lstat(os.path.join(driver.home, "init", "upper", "sock")).st_mode)
    driver.put("init")
    with pytest.raises(OSError) as err:
        driver.create("ctr", "init")
    assert str(err.value) == "invalid argument"
    assert not driver.exists("ctr")


def test_btrfs_is_refused_with_the_reference_log_line(backing_fs, caplog):
    fs = backing_fs("btrfs")
    with caplog.at_level(logging.ERROR, logger="overlaylab.graphdriver"):
        with pytest.raises(ErrIncompatibleFS, match="^backing file system is unsupported for this graph driver$"):
            overlay.init(os.path.join(fs.mountpoint, "overlay"))
    assert "'overlay' is not supported over btrfs." in caplog.messages
    assert not os.path.exists(os.path.join(fs.mountpoint, "overlay"))
    # graphdriver.new() skips the sentinel in the priority loop; its last loop then passes the
    # root itself as home (docs/reference-behaviour.md#driver-selection, step 4), whose *parent* is not btrfs, so overlay is accepted
    # there. Unreachable in Docker (vfs always succeeds first); reachable here, so pinned.
    fallback = graphdriver.new(fs.mountpoint)
    assert fallback.home == fs.mountpoint


def test_overlay_on_overlay_passes_init_but_cannot_mount(backing_fs, umask022):
    fs = backing_fs("overlay")
    driver = overlay.init(os.path.join(fs.mountpoint, "overlay"))
    try:
        assert _image(driver, "img", "", [("f", "file", "abc", 0o644, 0, 0)]) == 3  # pulls work
        driver.create("ctr-init", "img")
        with pytest.raises(overlay.MountError) as err:
            driver.get("ctr-init")
        assert str(err.value) == "error creating overlay mount to %s/ctr-init/merged: invalid argument" % driver.home
        assert "ctr-init" not in driver.proto.active
    finally:
        driver.cleanup()


def test_registry_new_prior_driver_and_conflicts(backing_fs, monkeypatch, umask022):
    fs = backing_fs("tmpfs")
    d = graphdriver.new(fs.mountpoint)
    assert str(d) == "overlay" and d.home == os.path.join(fs.mountpoint, "overlay")
    with pytest.raises(graphdriver.RegistryError, match="Name already registered overlay"):
        graphdriver.register("overlay", overlay.init)
    with pytest.raises(graphdriver.ErrNotSupported):
        graphdriver.get_driver("nosuch", fs.mountpoint)
    monkeypatch.setitem(graphdriver._drivers, "testdrv", lambda *a: None)
    os.makedirs(os.path.join(fs.mountpoint, "testdrv"))
    with pytest.raises(graphdriver.RegistryError) as err:
        graphdriver.new(fs.mountpoint)
    assert str(err.value) == ('"%s" contains other graphdrivers: testdrv; Please cleanup or explicitly '
                              'choose storage driver (-s <DRIVER>)' % fs.mountpoint)


def test_uid_gid_maps_are_honoured(make_driver):
    maps = [IDMap(0, 100000, 65536)]
    driver = make_driver("tmpfs", uid_maps=maps, gid_maps=maps)
    assert os.stat(driver.home).st_uid == 100000
    _image(driver, "img", "", [("f", "file", "x", 0o644, 0, 0), ("g", "file", "y", 0o644, 1000, 1000)])
    root = os.path.join(driver.home, "img", "root")
    assert os.stat(root).st_uid == 100000
    assert (os.stat(os.path.join(root, "f")).st_uid, os.stat(os.path.join(root, "g")).st_gid) == (100000, 101000)
    driver.create("ctr", "img")
    driver.get("ctr")
    assert os.stat(os.path.join(driver.home, "ctr/work/work")).st_uid == 100000
    driver.put("ctr")
    stream = driver.diff("img", "")
    try:
        members = {m.name: (m.uid, m.gid) for m in tarfile.open(fileobj=io.BytesIO(stream.read()))}
    finally:
        stream.close()
    # Full-tree Diff (archive.Tar) does not translate ids, as in the reference.
    assert members["g"] == (101000, 101000)


def test_concurrent_get_put_keeps_counts_and_mounts_right(make_driver, monkeypatch):
    driver = make_driver("tmpfs")
    driver.create("base", "")
    layers = ["c%d" % i for i in range(4)]
    for layer in layers:
        driver.create(layer, "base")
    live = {}
    worst = [0]
    guard = threading.Lock()
    real_mount, real_umount = overlay.mount, overlay.umount

    def counting_mount(source, target, fstype, flags=0, data=None):
        real_mount(source, target, fstype, flags, data)
        with guard:
            live[target] = live.get(target, 0) + 1
            worst[0] = max(worst[0], live[target])

    def counting_umount(target, flags=0):
        real_umount(target, flags)
        with guard:
            live[target] -= 1

    monkeypatch.setattr(overlay, "mount", counting_mount)
    monkeypatch.setattr(overlay, "umount", counting_umount)
    errors = []

    def worker(n):
        try:
            for i in range(60):
                layer = layers[(n + i) % len(layers)]
                path = driver.get(layer)
                assert path.endswith("/merged") and os.path.ismount(path)
                driver.put(layer)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert driver.proto.active == {}
    assert mounts_under(driver.home) == []
    assert worst[0] == 1, "a layer was mounted twice at once"
    assert set(live.values()) == {0}


def _recreate_over_symlink(driver, tmp_path, what):
    """A container layer whose upper the container left with ``what`` as a symlink outside."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / "hosts").write_bytes(b"precious\n")
    os.utime(str(outside), ns=(10 ** 9, 10 ** 9))
    snap = lambda: (sorted(os.listdir(str(outside))), (outside / "hosts").read_bytes(),  # noqa: E731
                    os.lstat(str(outside)).st_mode, os.lstat(str(outside)).st_mtime_ns)
    before = snap()
    driver.create("base", "")
    driver.create("init", "base")
    m = driver.get("init")
    os.mkdir(os.path.join(m, "etc"), 0o755)
    with open(os.path.join(m, "etc", "hosts"), "w") as f:
        f.write("127.0.0.1 localhost\n")
    driver.put("init")
    driver.create("ctr", "init")
    m = driver.get("ctr")
    if what == "etc":
        os.unlink(os.path.join(m, "etc", "hosts"))
        os.rmdir(os.path.join(m, "etc"))
        os.symlink(str(outside), os.path.join(m, "etc"))
    else:
        os.unlink(os.path.join(m, "etc", "hosts"))
        os.symlink(str(outside / "hosts"), os.path.join(m, "etc", "hosts"))
    driver.put("ctr")
    assert os.path.islink(os.path.join(driver.home, "ctr", "upper", what))
    return snap, before


@pytest.mark.parametrize("what,op", [("etc", "mkdir"), ("etc/hosts", "open")])
def test_recreate_never_follows_a_symlink_left_in_the_upper(make_driver, tmp_path, what, op):
    """Issue 9.2: re-Create (case C) of a layer whose upper holds ``etc -> /outside`` (or
    ``etc/hosts -> /outside/hosts``) must not write or chmod outside the driver home. The
    reference's copy goes through the link; here the copy fails with EEXIST at the link and
    Create's cleanup deletes the whole layer (as the spec says of an existing symlink)."""
    driver = make_driver("tmpfs")
    snap, before = _recreate_over_symlink(driver, tmp_path, what)
    with pytest.raises(OSError) as err:
        driver.create("ctr", "init")
    assert str(err.value) == "%s %s: file exists" % (op, os.path.join(driver.home, "ctr", "upper", what))
    assert not driver.exists("ctr")
    assert snap() == before
    assert mounts_under(driver.home) == []
