"""Lifecycle scenarios: Create/Get/Put/Remove/Exists/Status/GetMetadata as the daemon uses them.

graphtest's 1.10.3 tests and 1.12's deep-layer read (docs/reference-behaviour.md#graphtest), the daemon's init
layer (#daemon-use), Remove while mounted, concurrent Get/Put and the exact Status/GetMetadata
rows (#put-remove-status, #mount-options).

The graphtest scenarios run the cases of :mod:`overlaylab.graphdriver.graphtest` (the suite the
pytest tests run too) with the scenario's context as their ``t``.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from typing import Dict, List, Tuple

from ...graphdriver import graphtest
from ...graphdriver.fsmagic import FS_NAMES, statfs_magic
from ..scenario import ScenarioContext, scenario
from ._layers import (
    LayerTar,
    container,
    expect_inodes,
    image_layer,
    mounted,
    mounts,
    new_id,
    read_dir,
    read_file,
)


@scenario("create-empty", "Create a parentless layer: it exists, its root is an empty 0755 dir owned 0:0, Remove deletes it",
          "moby v1.10.3 graphtest_unix.go DriverTestCreateEmpty; (*Driver).Create case A, docs/reference-behaviour.md#create", "lifecycle", needs_mount=False, timeout=30)
def create_empty(ctx: ScenarioContext) -> None:
    graphtest.driver_test_create_empty(ctx, ctx.driver())


@scenario("create-base", "createBase/verifyBase: a sticky 01705 dir owned 1:2 and a setuid 04222 file survive in a root layer",
          "moby v1.10.3 graphtest_unix.go DriverTestCreateBase (createBase/verifyBase); docs/reference-behaviour.md#graphtest", "lifecycle", needs_mount=False, timeout=30)
def create_base(ctx: ScenarioContext) -> None:
    graphtest.driver_test_create_base(ctx, ctx.driver())


@scenario("create-snap", "A snapshot layer on createBase's layer shows the same modes, owners and exactly 2 entries through the mounted overlay",
          "moby v1.10.3 graphtest_unix.go DriverTestCreateSnap; (*Driver).Create case B and Get, docs/reference-behaviour.md#create", "lifecycle", timeout=30)
def create_snap(ctx: ScenarioContext) -> None:
    graphtest.driver_test_create_snap(ctx, ctx.driver())


@scenario("deep-layer-chain", "50 layers stacked (case B then 49 x case C); each layer's files are read back through the top",
          "moby v1.12.0 graphtest_unix.go DriverTestDeepLayerRead (TestOverlay50LayerRead); docs/reference-behaviour.md#graphtest", "lifecycle", timeout=60,
          expect=expect_inodes(4200), tags=("inodes", "scale"))
def deep_layer_chain(ctx: ScenarioContext) -> None:
    graphtest.driver_test_deep_layer_read(ctx, ctx.driver(), 50)


# The daemon's setupInitLayer (daemon/daemon_unix.go @v1.10.3), in its order of ranging over a
# Go map (random there; the result does not depend on it).
INIT_LAYER_PATHS = (
    ("/dev/pts", "dir"), ("/dev/shm", "dir"), ("/proc", "dir"), ("/sys", "dir"),
    ("/.dockerenv", "file"), ("/.dockerinit", "file"), ("/etc/resolv.conf", "file"),
    ("/etc/hosts", "file"), ("/etc/hostname", "file"), ("/dev/console", "file"),
    ("/etc/mtab", "/proc/mounts"),
)


def _mkdir_all_new(path: str, mode: int, uid: int, gid: int) -> None:
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, mode, exist_ok=True)
    for m in missing:
        os.chown(m, uid, gid)


def setup_init_layer(init_root: str, uid: int = 0, gid: int = 0) -> None:
    """The daemon's init hook: unlink every path component, then create the path if absent."""
    for pth, typ in INIT_LAYER_PATHS:
        prev = "/"
        for part in pth.split("/")[1:]:
            prev = os.path.join(prev, part)
            try:
                os.unlink(os.path.join(init_root, prev.lstrip("/")))
            except OSError:
                pass  # the reference ignores the result (EISDIR for directories, ENOENT)
        full = os.path.join(init_root, pth.lstrip("/"))
        try:
            os.stat(full)
            continue
        except FileNotFoundError:
            pass
        _mkdir_all_new(os.path.dirname(full), 0o755, uid, gid)
        if typ == "dir":
            _mkdir_all_new(full, 0o755, uid, gid)
        elif typ == "file":
            fd = os.open(full, os.O_CREAT | os.O_RDONLY, 0o755)
            try:
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
        else:
            os.symlink(typ, full)


@scenario("init-layer-setup", "The daemon's -init layer (dirs, empty files, /etc/mtab symlink) then a case-C container layer: the merged view is right",
          "moby v1.10.3 layer/layer_store.go CreateRWLayer, daemon/daemon_unix.go setupInitLayer; Create case C, docs/reference-behaviour.md#daemon-use", "lifecycle", timeout=30)
def init_layer_setup(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    tar = (LayerTar().dir("bin").file("bin/sh", b"#!shell\n", 0o755).dir("etc")
           .file("etc/hostname", b"image-host\n").file("etc/mtab", b"stale\n").dir("dev").dir("tmp", 0o1777))
    image, _ = image_layer(ctx, d, "", tar)
    ctr = new_id()
    init = ctr + "-init"
    d.create(init, image, "")
    with mounted(d, init) as path:
        setup_init_layer(path)
    d.create(ctr, init, "")
    with mounted(d, ctr) as view:
        found: Dict[str, str] = {}
        for pth, typ in INIT_LAYER_PATHS:
            full = os.path.join(view, pth.lstrip("/"))
            try:
                st = os.lstat(full)
            except OSError as err:
                found[pth] = "missing (%s)" % errno.errorcode.get(err.errno, err.errno)
                continue
            found[pth] = "%s size=%d" % (stat.filemode(st.st_mode), st.st_size)
            if typ == "dir":
                ok = stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
            elif typ == "file":
                ok = stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o755
            else:
                ok = stat.S_ISLNK(st.st_mode) and os.readlink(full) == typ
            ctx.check(ok, "%s in the container is not a %s as the init layer made it" % (pth, typ), merged=found)
        ctx.note("container view", merged=found)
        ctx.check(read_file(os.path.join(view, "bin/sh")) == b"#!shell\n", "the image's /bin/sh is not visible")
        ctx.check(stat.S_IMODE(os.stat(os.path.join(view, "tmp")).st_mode) == 0o1777, "/tmp lost its sticky mode")
    image_root = os.path.join(d.home, image, "root")
    ctx.check(read_file(os.path.join(image_root, "etc/hostname")) == b"image-host\n",
              "the image layer was modified by the init layer")
    init_upper = os.path.join(d.home, init, "upper")
    ctr_upper = os.path.join(d.home, ctr, "upper")
    a, b = os.lstat(os.path.join(init_upper, "etc/hosts")), os.lstat(os.path.join(ctr_upper, "etc/hosts"))
    ctx.check((a.st_dev, a.st_ino) != (b.st_dev, b.st_ino), "case C hard-linked the init upper instead of copying it")
    ctx.check(read_file(os.path.join(d.home, ctr, "lower-id")) == image.encode(),
              "the container layer's lower-id is not the image")
    ctx.note("init upper: %s" % read_dir(init_upper), ctr_upper=read_dir(ctr_upper))


@scenario("remove-while-mounted", "Remove of a mounted container layer fails with EBUSY on merged (reference text); after Put, Remove works",
          "moby v1.10.3 overlay.go (*Driver).Remove does not unmount; docs/reference-behaviour.md#put-remove-status", "lifecycle", timeout=30)
def remove_while_mounted(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    # Top-level files only: Remove recurses through the live mount in readdir order of
    # H/<id>; where upper/ goes first (ext4 hash order), deleting a lower *directory* through
    # merged then fails with ENOTEMPTY (unlinkat …/merged/<dir>: directory not empty) before
    # merged itself reports EBUSY. Files give ENOENT there, which RemoveAll ignores.
    image, _ = image_layer(ctx, d, "", LayerTar().file("a", b"a\n").file("b", b"b\n"))
    ctr = new_id()
    d.create(ctr, image, "")
    merged = d.get(ctr, "")
    expected = "unlinkat %s/%s/merged: device or resource busy" % (d.home, ctr)
    try:
        d.remove(ctr)
    except OSError as err:
        ctx.note("Remove while mounted: %s" % err, remove_error=str(err), remove_errno=err.errno)
        ctx.check(err.errno == errno.EBUSY, "Remove while mounted failed with %s, not EBUSY" % err)
        ctx.check(str(err) == expected, "Remove's error text differs from the reference",
                  expected=expected, got=str(err))
    else:
        d.put(ctr)
        ctx.check(False, "Remove of a mounted layer succeeded (the reference fails with EBUSY)")
    ctx.check(os.path.ismount(merged), "merged is no longer mounted after the failed Remove")
    image_root = os.path.join(d.home, image, "root")
    ctx.check(read_dir(image_root) == ["a", "b"] and read_file(os.path.join(image_root, "a")) == b"a\n",
              "deleting through the mount damaged the image layer", image_root=read_dir(image_root))
    d.put(ctr)
    ctx.check(not os.path.ismount(merged), "Put did not unmount")
    d.remove(ctr)
    ctx.check(not d.exists(ctr), "the layer still exists after Put + Remove")
    d.remove(ctr)  # missing is fine
    d.remove(image)
    ctx.check(not d.exists(image), "the image still exists after Remove")


def _mount_depths(infos) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Mounts seen per mountpoint, and how deep they are *stacked* (a mount whose parent is
    another mount on the same mountpoint). /proc/self/mountinfo is read in several chunks, so
    while other threads mount and unmount, one snapshot can show an old and a new mount of
    the same mountpoint side by side; only stacking is proof of a double mount."""
    per: Dict[str, int] = {}
    ids: Dict[str, set] = {}
    for m in infos:
        per[m.mountpoint] = per.get(m.mountpoint, 0) + 1
        ids.setdefault(m.mountpoint, set()).add(m.mount_id)
    stacked: Dict[str, int] = {}
    for m in infos:
        depth = 2 if m.parent_id in ids[m.mountpoint] else 1
        stacked[m.mountpoint] = max(stacked.get(m.mountpoint, 0), depth)
    return per, stacked


@scenario("concurrent-get-put", "12 threads Get/Put 4 container layers 40 times each: one mount per layer at most, counts balance, nothing left mounted",
          "moby v1.10.3 overlay.go (*Driver).Get/Put (driver mutex, active counts); docs/reference-behaviour.md#mount-options", "lifecycle", timeout=60, tags=("scale",))
def concurrent_get_put(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    image, _ = image_layer(ctx, d, "", LayerTar().file("f", b"x"))
    layers = [new_id() for _ in range(4)]
    for layer in layers:
        d.create(layer, image, "")
    errors: List[str] = []
    stats = {"gets": 0, "max_mounts_per_layer": 0, "max_seen_per_mountpoint": 0, "max_layers_mounted": 0}
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(40):
                layer = layers[(n + i) % len(layers)]
                path = d.get(layer, "")
                if not (path.endswith("/merged") and os.path.ismount(path)):
                    errors.append("Get(%s) returned %s, not a mounted merged dir" % (layer[:12], path))
                per, stacked = _mount_depths(mounts(d))
                with lock:
                    stats["gets"] += 1
                    stats["max_mounts_per_layer"] = max([stats["max_mounts_per_layer"]] + list(stacked.values()))
                    stats["max_seen_per_mountpoint"] = max([stats["max_seen_per_mountpoint"]] + list(per.values()))
                    stats["max_layers_mounted"] = max(stats["max_layers_mounted"], len(per))
                with open(os.path.join(path, "f"), "rb") as f:
                    if f.read() != b"x":
                        errors.append("wrong content through %s" % layer[:12])
                d.put(layer)
        except Exception as err:  # surfaced below
            errors.append("%s: %s" % (type(err).__name__, err))

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ctx.note("concurrent Get/Put done", **stats)
    ctx.check(not any(t.is_alive() for t in threads), "a Get/Put thread hung")
    ctx.check(not errors, "errors in Get/Put threads: %s" % errors[:3], errors=errors[:10])
    proto = getattr(d, "proto", d)
    ctx.check(proto.active == {}, "active mounts left after balanced Get/Put", active=sorted(proto.active))
    left = [m.mountpoint for m in mounts(d)]
    ctx.check(not left, "mounts left after balanced Get/Put", mounts=left)
    ctx.check(stats["gets"] == 12 * 40, "not every Get ran")
    ctx.check(stats["max_mounts_per_layer"] == 1, "a layer was mounted more than once at the same time")


@scenario("status-and-metadata", "Status is exactly one 'Backing Filesystem' row; GetMetadata has RootDir for image layers and exactly 4 dirs for overlay layers",
          "moby v1.10.3 overlay.go (*Driver).Status/GetMetadata/Cleanup/String; docs/reference-behaviour.md#put-remove-status", "lifecycle", needs_mount=False, timeout=30, tags=("child-layer",))
def status_and_metadata(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    h = d.home
    rows = [tuple(r) for r in d.status()]
    magic = statfs_magic(os.path.dirname(h))
    ctx.note("Status() = %s" % rows, status=[list(r) for r in rows], fs_magic="0x%x" % magic)
    ctx.check(len(rows) == 1 and rows[0][0] == "Backing Filesystem", "Status is not one 'Backing Filesystem' row",
              status=[list(r) for r in rows])
    if magic in FS_NAMES:
        ctx.check(rows[0][1] == FS_NAMES[magic], "Backing Filesystem is %r, expected %r" % (rows[0][1], FS_NAMES[magic]))
    else:
        # 1.10.3 does not know this magic: the process-global name keeps what the last Init set.
        ctx.note("magic 0x%x unknown to 1.10.3: Backing Filesystem keeps the last Init's value %r" % (magic, rows[0][1]))
    ctx.check(str(d) == "overlay", "String() is %r" % str(d))
    image, _ = image_layer(ctx, d, "", LayerTar().file("f", b"x"))
    ctr, init = container(d, image)
    md_image = d.get_metadata(image)
    md_ctr = d.get_metadata(ctr)
    md_init = d.get_metadata(init)
    ctx.note("GetMetadata", image=md_image, container=md_ctr)
    ctx.check(md_image == {"RootDir": os.path.join(h, image, "root")}, "image metadata differs", got=md_image)
    for layer, md in ((ctr, md_ctr), (init, md_init)):
        want = {"LowerDir": os.path.join(h, image, "root"), "UpperDir": os.path.join(h, layer, "upper"),
                "WorkDir": os.path.join(h, layer, "work"), "MergedDir": os.path.join(h, layer, "merged")}
        ctx.check(md == want, "overlay layer metadata differs", got=md, want=want)
    try:
        d.get_metadata("nope")
    except OSError as err:
        want_err = "stat %s/nope: no such file or directory" % h
        ctx.check(str(err) == want_err, "GetMetadata of a missing layer: %s" % err, want=want_err)
    else:
        ctx.check(False, "GetMetadata of a missing layer did not fail")
    ctx.check(d.exists(ctr) and not d.exists("nope"), "Exists is wrong")
    ctx.check(d.cleanup() is None, "Cleanup returned something")
