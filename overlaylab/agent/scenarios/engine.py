"""The engine-neutral scenarios (group ``engine``): what a user of any storage engine needs.

Each is written once against the adapter (``ctx.engine``, an
:class:`~overlaylab.agent.engines.base.EngineSession`): pull images from layer tars built here,
create containers, look through their rootfs, ask for their changes and diffs, remove them. The
same function runs on the port, containers-storage, fuse-overlayfs and Docker's ``overlay`` and
``overlay2``. A rootfs may hold entries the engine adds (Docker's init layer: ``/dev``,
``/etc/hosts``, ``/.dockerenv``), so every scenario looks only below its own directory ``lab/``.

Expectations come from probed facts: the profile's (``d_type``, ``upperdir``, ``dir_rename``,
``xattr_user``, ``fs_inodes``) and the engine's own verdict on the backing filesystem
(``engine_verdict``, asked when the engine started on it, with ``mount_program``: whether the
driver mounts through a user-space program instead of the kernel's overlayfs). The engines
differ by design in two ways:

- Docker's ``overlay`` (1.10.3 and the port included) keeps every image layer as a full tree, a
  hard-link copy of its parent's with the layer's tar applied (moby v1.10.3
  ``daemon/graphdriver/overlay/overlay.go`` ``ApplyDiff``): an image layer's whiteouts delete
  files there, so only a container's own deletions rely on overlay whiteouts. ``overlay2`` and
  containers/storage stack the layers as lowerdirs (moby#22126; containers/storage
  ``drivers/overlay/overlay.go``), so image whiteouts are overlay whiteouts too.
- A driver with a mount program (containers/storage with ``overlay.mount_program``, or 1.43's
  own fallback to ``fuse-overlayfs`` where native overlay fails its checks) merges the layers in
  user space (containers/fuse-overlayfs ``main.c``): the kernel's refusal of an upperdir and its
  need for d_type do not apply; fuse-overlayfs 1.10's own behaviour does (:func:`fuse_failure`).
  This is taken from the verdict, never from the engine's name: the same engine may or may not
  run one, depending on the backing fs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
import time
from typing import Callable, Optional, Tuple

from ..scenario import ENGINE_GROUP, Expectation, Facts, Outcome, ScenarioContext, Unsupported, scenario
from ..engines.base import EngineError
from ._layers import CAP_NET_RAW_XATTR, GeneratedTarStream, LayerTar, few_inodes, param_enabled, read_dir, read_file

#: the scenarios' own directory in every image: nothing outside it is looked at
OWN = "lab"
MiB = 1 << 20

#: engines whose image layers are overlay lowerdirs (image whiteouts need d_type to be hidden)
STACKED_LAYERS = frozenset({"containers-storage", "fuse-overlayfs", "docker-overlay2"})


# facts -----------------------------------------------------------------------------------------

def engine_of(facts: Facts) -> str:
    """The engine the facts were taken for (none named: the port, as ``run_scenario`` runs it)."""
    return str(facts.get("engine") or "port")


def verdict_of(facts: Facts) -> Tuple[bool, str]:
    """(accepted, message) of the engine's verdict; without one, the port's Init as probed."""
    verdict = facts.get("engine_verdict")
    if isinstance(verdict, dict):
        return bool(verdict.get("accepted")), str(verdict.get("message") or "")
    if facts.get("driver_init") == "REFUSED":
        return False, str(facts.get("driver_verdict") or "refused")
    return True, ""


ExtraExpect = Callable[[Facts], Optional[Expectation]]


def mount_program(facts: Facts) -> bool:
    """Whether the engine's driver said it mounts through a mount program (fuse-overlayfs)."""
    verdict = facts.get("engine_verdict")
    return isinstance(verdict, dict) and verdict.get("mount_program") is True


def kernel_overlay(facts: Facts) -> bool:
    return not mount_program(facts)


#: fuse-overlayfs 1.10 (Debian's) against the scenarios, each seen on ext4, ext4 without
#: ``filetype`` and xfs alike, by hand as well as through containers-storage
FUSE_OVERLAYFS_1_10 = {
    "image-whiteouts": "fuse-overlayfs finds the lower layers' entries of an opaque image dir by name once its "
                       "parent dir was listed, when a layer lies above the one that made it opaque (readdir hides them; "
                       "main.c load_dir, do_lookup_file; cf. containers/fuse-overlayfs#324)",
    "delete-in-container": "fuse-overlayfs: a dir deleted and made again (opaque on disk) still finds the image's "
                           "entries by name until remounted (containers/fuse-overlayfs#324, #444; lookup changed "
                           "in 1.15 by https://github.com/containers/fuse-overlayfs/commit/6a1040f)",
    "hardlinks-pulled": "fuse-overlayfs reports st_nlink as the names of the inode it has looked up so far "
                        "(main.c rpl_stat; https://github.com/containers/fuse-overlayfs/issues/435)",
    "rename-image-dir": "EXDEV: fuse-overlayfs renames only dirs wholly in the upper layer (main.c ovl_rename_direct, "
                        "https://github.com/containers/fuse-overlayfs/commit/7bbfb5b)",
}


def fuse_failure(scenario_id: str) -> ExtraExpect:
    """An ``extra=``: FAIL with the reason where the driver mounts through fuse-overlayfs."""
    def extra(facts: Facts) -> Optional[Expectation]:
        if mount_program(facts):
            return Expectation(Outcome.FAIL, FUSE_OVERLAYFS_1_10[scenario_id])
        return None
    return extra


def too_few_inodes(facts: Facts, containers: int) -> Optional[Expectation]:
    """FAIL where the started engine left room for fewer than ``containers`` minimal containers
    (its probed footprint, :func:`overlaylab.agent.engine_cells.probe_footprint`); never for a
    scenario that makes no container (``containers=0``: it pulls, and runs the fs out itself)."""
    if containers <= 0:
        return None
    footprint = (facts.get("engine_verdict") or {}).get("footprint") or {}
    per, free = footprint.get("per_container"), footprint.get("free_inodes")
    if footprint.get("error") and "no space left" in footprint["error"]:
        return Expectation(Outcome.FAIL, "%s cannot fit one container in %s's %s free inodes (probed: %s)"
                           % (engine_of(facts), facts.fs_name, free, footprint["error"][-120:]))
    if per and per > 0 and free is not None and free // per < containers:
        return Expectation(Outcome.FAIL, "%s's own metadata costs %d inodes per container; the %d it left free on "
                           "%s hold fewer than the %d containers this needs (ENOSPC)"
                           % (engine_of(facts), per, free, facts.fs_name, containers))
    return None


def expect_engine(image_whiteouts: bool = False, extra: Optional[ExtraExpect] = None, containers: int = 2):
    """An ``expect=`` function: REFUSED where the engine refused the fs (its words); FAIL where
    a container is mounted (``needs_mount``) by the kernel on an fs it refuses as upperdir, or
    whiteouts must be hidden without d_type (moby#22937: a container's deletions,
    ``needs_dtype``, and for stacked engines an image's, ``image_whiteouts``); FAIL where the
    engine's probed footprint leaves room for fewer than ``containers`` containers; then
    ``extra``; else PASS."""
    def expect(sc, facts: Facts) -> Expectation:
        accepted, message = verdict_of(facts)
        name = engine_of(facts)
        if not accepted:
            return Expectation(Outcome.REFUSED, "%s refuses %s: %s" % (name, facts.fs_name, message))
        starved = too_few_inodes(facts, containers)
        if starved is not None:
            return starved
        kernel = kernel_overlay(facts)
        if sc.needs_mount and kernel and facts.get("upperdir") is False:
            return Expectation(Outcome.FAIL, "the kernel refuses %s as overlay upperdir" % facts.fs_name)
        stacked = name in STACKED_LAYERS
        if kernel and facts.get("d_type") is False and (sc.needs_dtype or (image_whiteouts and stacked)):
            return Expectation(Outcome.FAIL, "no d_type: overlay cannot hide %s whiteouts in readdir (moby#22937)"
                               % ("the container's" if sc.needs_dtype else "the image layers'"))
        other = extra(facts) if extra else None
        return other or Expectation(Outcome.PASS)
    return expect


# helpers ---------------------------------------------------------------------------------------

def pull(ctx: ScenarioContext, *layers: LayerTar) -> str:
    """An image of ``layers`` (base first), their tars written to the scratch dir."""
    paths = []
    for layer in layers:
        paths.append(layer.write(ctx.path("layer-%d.tar" % len(os.listdir(ctx.scratch)))))
    return ctx.engine.pull(paths)


def own(root: str, *parts: str) -> str:
    return os.path.join(root, OWN, *parts)


def errno_of(path: str) -> str:
    """"ok" if ``lstat`` works, else the errno's name."""
    try:
        os.lstat(path)
        return "ok"
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err.errno))


def no_space(err: BaseException) -> bool:
    return "no space left on device" in str(err).lower()


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def free_inodes(path: str) -> int:
    return os.statvfs(path).f_ffree


def settle(measure: Callable[[], int], at_least: int, seconds: float = 5.0) -> int:
    """``measure()`` once it reaches ``at_least`` (xfs and btrfs give space back in the
    background), or its last value after ``seconds``."""
    os.sync()
    deadline = time.monotonic() + seconds
    value = measure()
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


# engine-verdict --------------------------------------------------------------------------------

@scenario("engine-verdict", "The engine's driver accepts the backing fs and a container then reads and writes through its rootfs, or it refuses the fs in its own words",
          "moby v1.10.3 daemon/graphdriver/overlay/overlay.go Init (btrfs refused, moby#9834); moby daemon/graphdriver/overlay2/overlay.go Init (d_type required, moby#35514); containers/storage drivers/overlay/overlay.go Init",
          ENGINE_GROUP, expect=expect_engine(containers=1), timeout=60)
def engine_verdict(ctx: ScenarioContext) -> None:
    session = ctx.engine
    ctx.note("verdict: %s" % (session.verdict.message or "accepted"), verdict=session.verdict.to_dict())
    if engine_of(ctx.facts) == "port":  # the port's Init was also asked by the driver_init probe
        ctx.check(ctx.facts.get("driver_init") in (None, "ACCEPTED"), "the port accepted a fs its Init probe refused",
                  driver_init=ctx.facts.get("driver_init"))
    image = pull(ctx, LayerTar().dir(OWN).file(OWN + "/hello", b"hello\n"))
    ctr = session.create(image)
    with session.rootfs(ctr) as root:
        ctx.check(read_file(own(root, "hello")) == b"hello\n", "the image's file does not read back through the rootfs")
        with open(own(root, "written"), "wb") as f:
            f.write(b"written\n")
        ctx.check(read_dir(own(root)) == ["hello", "written"], "the rootfs does not list what was written",
                  listing=read_dir(own(root)))
    session.remove(ctr)
    session.remove(image)


# image-whiteouts -------------------------------------------------------------------------------

@scenario("image-whiteouts", "An image whose upper layers delete a file and a dir (whiteouts), hide a dir's old entries (opaque) and re-add a file shows the result in a container",
          "moby pkg/archive whiteouts.go (.wh. and .wh..wh..opq); https://docs.kernel.org/filesystems/overlayfs.html (whiteouts and opaque directories); moby#22937",
          ENGINE_GROUP, expect=expect_engine(image_whiteouts=True, extra=fuse_failure("image-whiteouts")), timeout=60)
def image_whiteouts(ctx: ScenarioContext) -> None:
    session = ctx.engine
    base = (LayerTar().dir(OWN).file(OWN + "/a", b"a1").file(OWN + "/b", b"b").file(OWN + "/keep", b"k")
            .dir(OWN + "/opq").file(OWN + "/opq/x", b"x").file(OWN + "/opq/y", b"y")
            .dir(OWN + "/gone").file(OWN + "/gone/p", b"p"))
    second = (LayerTar().dir(OWN).whiteout(OWN + "/a").whiteout(OWN + "/gone")
              .dir(OWN + "/opq").opaque(OWN + "/opq").file(OWN + "/opq/z", b"z"))
    third = LayerTar().dir(OWN).file(OWN + "/a", b"a3")
    image = pull(ctx, base, second, third)
    ctr = session.create(image)
    with session.rootfs(ctr) as root:
        top, opq = read_dir(own(root)), read_dir(own(root, "opq"))
        codes = {rel: errno_of(own(root, rel)) for rel in ("gone", "gone/p", "opq/x", "opq/y")}
        ctx.note("container sees lab/ = %s, lab/opq = %s" % (top, opq), lab=top, opq=opq, stat=codes)
        ctx.check(top == ["a", "b", "keep", "opq"], "readdir of lab/ is not the image's result", lab=top)
        ctx.check(opq == ["z"], "the opaque dir still shows the lower layer's entries", opq=opq)
        ctx.check(all(c == "ENOENT" for c in codes.values()), "a whited-out entry can still be stat'ed", stat=codes)
        ctx.check(read_file(own(root, "a")) == b"a3", "lab/a is not the re-added file of the top layer")
    session.remove(ctr)
    session.remove(image)


# delete-in-container ---------------------------------------------------------------------------

@scenario("delete-in-container", "Deleting image files and a dir in a container hides them from readdir and stat; a dir deleted and made again shows only its new entries",
          "no d_type: deleted files stay listed (moby#22937, moby#10294); https://docs.kernel.org/filesystems/overlayfs.html (whiteouts and opaque directories)",
          ENGINE_GROUP, expect=expect_engine(extra=fuse_failure("delete-in-container")), needs_dtype=True, timeout=60)
def delete_in_container(ctx: ScenarioContext) -> None:
    session = ctx.engine
    image = pull(ctx, LayerTar().dir(OWN).file(OWN + "/f", b"f").file(OWN + "/g", b"g")
                 .dir(OWN + "/d").file(OWN + "/d/x", b"x").file(OWN + "/d/y", b"y")
                 .dir(OWN + "/e").file(OWN + "/e/z", b"z").dir(OWN + "/r").file(OWN + "/r/old", b"old"))
    ctr = session.create(image)
    with session.rootfs(ctr) as root:
        os.unlink(own(root, "f"))
        os.unlink(own(root, "d", "x"))
        shutil.rmtree(own(root, "e"))
        shutil.rmtree(own(root, "r"))
        os.mkdir(own(root, "r"))
        with open(own(root, "r", "new"), "wb") as f:
            f.write(b"new")
        top, d, r = read_dir(own(root)), read_dir(own(root, "d")), read_dir(own(root, "r"))
        codes = {rel: errno_of(own(root, rel)) for rel in ("f", "d/x", "e", "r/old")}
        ctx.note("after deletes: lab/ = %s, lab/d = %s, lab/r = %s" % (top, d, r), lab=top, d=d, r=r, stat=codes)
        ctx.check(top == ["d", "g", "r"], "readdir of lab/ shows deleted entries", lab=top)
        ctx.check(d == ["y"], "readdir of lab/d shows the deleted lab/d/x", d=d)
        ctx.check(r == ["new"], "the dir made again shows the image's old entries", r=r)
        ctx.check(all(c == "ENOENT" for c in codes.values()), "a deleted entry can still be stat'ed", stat=codes)
    session.remove(ctr)
    session.remove(image)


# rename-image-dir ------------------------------------------------------------------------------

def _expect_rename(facts: Facts) -> Optional[Expectation]:
    if mount_program(facts):
        return fuse_failure("rename-image-dir")(facts)
    probe = facts.get("dir_rename")
    if probe == "EXDEV":
        return Expectation(Outcome.FAIL, "EXDEV: the dir_rename probe shows overlay's redirect_dir is off (moby#25409)")
    if probe in ("redirect", "renamed") or param_enabled(facts.param("redirect_dir")):
        return None
    return Expectation(Outcome.FAIL, "EXDEV: overlay's redirect_dir is off (moby#25409)")


@scenario("rename-image-dir", "Renaming an image directory in a container (rename(2)) moves it with its files (EXDEV where the kernel's overlay redirect_dir is off)",
          "moby#25409 (EXDEV 'Invalid cross-device link'); https://docs.kernel.org/filesystems/overlayfs.html (renaming directories, redirect_dir)",
          ENGINE_GROUP, expect=expect_engine(extra=_expect_rename), timeout=60)
def rename_image_dir(ctx: ScenarioContext) -> None:
    session = ctx.engine
    image = pull(ctx, LayerTar().dir(OWN).dir(OWN + "/d").file(OWN + "/d/x", b"lower x").dir(OWN + "/d/sub")
                 .file(OWN + "/d/sub/y", b"lower y"))
    ctr = session.create(image)
    with session.rootfs(ctr) as root:
        try:
            os.rename(own(root, "d"), own(root, "d2"))
        except OSError as err:
            name = errno.errorcode.get(err.errno or 0, str(err.errno))
            ctx.note("rename(lab/d, lab/d2): %s" % err, rename_errno=name)
            ctx.check(False, "renaming an image directory failed: %s (%s)" % (os.strerror(err.errno or 0), name))
        ctx.check(read_file(own(root, "d2", "x")) == b"lower x" and read_file(own(root, "d2", "sub", "y")) == b"lower y",
                  "lab/d2 does not hold lab/d's files")
        ctx.check(errno_of(own(root, "d")) == "ENOENT", "lab/d still exists after the rename")
        ctx.check(read_dir(own(root)) == ["d2"], "readdir of lab/ after the rename", lab=read_dir(own(root)))
    session.remove(ctr)
    session.remove(image)


# hardlinks-pulled ------------------------------------------------------------------------------

@scenario("hardlinks-pulled", "Three names of one file in an image layer are still one inode in a container, also under a later layer",
          "moby pkg/archive archive.go createTarFile (TypeLink); moby v1.10.3 overlay copy.go copyDir, the parent's hard-link copy (docs/reference-behaviour.md#copydir-quirks); https://docs.kernel.org/filesystems/overlayfs.html (inode properties)",
          ENGINE_GROUP, expect=expect_engine(extra=fuse_failure("hardlinks-pulled")), timeout=60)
def hardlinks_pulled(ctx: ScenarioContext) -> None:
    session = ctx.engine
    base = (LayerTar().dir(OWN).file(OWN + "/h1", b"linked\n").dir(OWN + "/sub").hardlink(OWN + "/sub/h2", OWN + "/h1")
            .hardlink(OWN + "/h3", OWN + "/h1"))
    image = pull(ctx, base, LayerTar().dir(OWN).file(OWN + "/later", b"later\n"))
    ctr = session.create(image)
    with session.rootfs(ctr) as root:
        names = ("h1", "sub/h2", "h3")
        stats = {n: os.lstat(own(root, n)) for n in names}
        seen = {n: {"ino": st.st_ino, "nlink": st.st_nlink} for n, st in stats.items()}
        ctx.note("links in the container: %s" % seen, links=seen)
        ctx.check(len({st.st_ino for st in stats.values()}) == 1, "the names are no longer one inode", links=seen)
        ctx.check(all(st.st_nlink >= 3 for st in stats.values()), "the link count dropped below 3", links=seen)
        ctx.check(all(read_file(own(root, n)) == b"linked\n" for n in names), "a name reads other content")
        ctx.check(read_file(own(root, "later")) == b"later\n", "the later layer's file is missing")
    session.remove(ctr)
    session.remove(image)


# xattrs-pulled ---------------------------------------------------------------------------------

def _expect_xattrs(facts: Facts) -> Optional[Expectation]:
    if facts.get("xattr_user") is False:
        return Expectation(Outcome.UNSUPPORTED, "%s does not store user.* xattrs (xattr_user probe)" % facts.fs_name)
    return None


@scenario("xattrs-pulled", "A user.* xattr and a security.capability (CAP_NET_RAW) from an image layer read back through a container",
          "moby pkg/archive archive.go createTarFile (SCHILY.xattr PAX records, Lsetxattr; docs/reference-behaviour.md#the-tar-layer); moby v1.10.3 overlay copy.go copyXattr; https://docs.kernel.org/filesystems/overlayfs.html (permission model)",
          ENGINE_GROUP, expect=expect_engine(extra=_expect_xattrs), timeout=60)
def xattrs_pulled(ctx: ScenarioContext) -> None:
    if ctx.facts.get("xattr_user") is False:
        raise Unsupported("%s does not store user.* xattrs" % ctx.facts.fs_name)
    session = ctx.engine
    image = pull(ctx, LayerTar().dir(OWN).file(OWN + "/x", b"x", xattrs={"user.overlaylab": b"value"})
                 .file(OWN + "/ping", b"ping", 0o755, xattrs={"security.capability": CAP_NET_RAW_XATTR}),
                 LayerTar().dir(OWN).file(OWN + "/later", b"later"))
    ctr = session.create(image)
    with session.rootfs(ctr) as root:
        got = {}
        for rel, name in (("x", "user.overlaylab"), ("ping", "security.capability")):
            try:
                got[name] = os.getxattr(own(root, rel), name, follow_symlinks=False)
            except OSError as err:
                got[name] = errno.errorcode.get(err.errno or 0, str(err.errno))
        ctx.note("xattrs in the container: %r" % got, xattrs={k: repr(v) for k, v in got.items()})
        ctx.check(got["user.overlaylab"] == b"value", "the user.* xattr did not survive", got=repr(got["user.overlaylab"]))
        ctx.check(got["security.capability"] == CAP_NET_RAW_XATTR, "security.capability did not survive",
                  got=repr(got["security.capability"]))
    session.remove(ctr)
    session.remove(image)


# copy-up-isolation ----------------------------------------------------------------------------

@scenario("copy-up-isolation", "A container's writes to image files (content, mode) stay in it: a second container on the image sees the originals",
          "https://docs.kernel.org/filesystems/overlayfs.html (non-directories: copy up); moby v1.12 daemon/graphdriver/graphtest DriverTestCreateSnap (docs/reference-behaviour.md#graphtest)",
          ENGINE_GROUP, expect=expect_engine(), timeout=60)
def copy_up_isolation(ctx: ScenarioContext) -> None:
    session = ctx.engine
    image = pull(ctx, LayerTar().dir(OWN).file(OWN + "/f", b"original\n").file(OWN + "/m", b"m", 0o644))
    first, second = session.create(image), session.create(image)
    with session.rootfs(first) as root:
        with open(own(root, "f"), "ab") as f:
            f.write(b"appended\n")
        os.chmod(own(root, "m"), 0o600)
        with open(own(root, "new"), "wb") as f:
            f.write(b"new")
        ctx.check(read_file(own(root, "f")) == b"original\nappended\n", "the write did not land in the container")
    with session.rootfs(second) as root:
        seen = {"f": read_file(own(root, "f")), "m": "%o" % stat.S_IMODE(os.lstat(own(root, "m")).st_mode),
                "lab": read_dir(own(root))}
        ctx.note("the second container sees %r" % seen, second={k: repr(v) for k, v in seen.items()})
        ctx.check(seen["f"] == b"original\n", "the first container's write reached the image", got=repr(seen["f"]))
        ctx.check(seen["m"] == "644", "the first container's chmod reached the image", got=seen["m"])
        ctx.check(seen["lab"] == ["f", "m"], "the first container's new file shows in the second", lab=seen["lab"])
    for ref in (first, second, image):
        session.remove(ref)


# container-changes, exported-diff ----------------------------------------------------------------

def _container_work(ctx: ScenarioContext) -> Tuple[str, str]:
    """An image and a container that added, changed and deleted files and a dir below lab/."""
    session = ctx.engine
    image = pull(ctx, LayerTar().dir(OWN).file(OWN + "/mod", b"old").file(OWN + "/gone", b"gone")
                 .file(OWN + "/keep", b"keep").dir(OWN + "/dir").file(OWN + "/dir/inner", b"i")
                 .dir(OWN + "/olddir").file(OWN + "/olddir/f", b"f"))
    ctr = session.create(image)
    with session.rootfs(ctr) as root:
        with open(own(root, "mod"), "wb") as f:
            f.write(b"modified, and longer")  # another size: not the same-second rewrite of moby#21555
        os.unlink(own(root, "gone"))
        with open(own(root, "new"), "wb") as f:
            f.write(b"new")
        os.mkdir(own(root, "newdir"))
        with open(own(root, "newdir", "f"), "wb") as f:
            f.write(b"f")
        shutil.rmtree(own(root, "olddir"))
    return image, ctr


#: what ``docker diff`` lists for :func:`_container_work` (a parent of a change is changed too)
WORK_CHANGES = [("C", "/lab"), ("D", "/lab/gone"), ("C", "/lab/mod"), ("A", "/lab/new"), ("A", "/lab/newdir"),
                ("A", "/lab/newdir/f"), ("D", "/lab/olddir")]


@scenario("container-changes", "The changes of a container that added, changed and deleted files and a dir are listed as docker diff lists them (A/C/D)",
          "moby pkg/archive changes.go ChangesDirs and addChanges (parent dirs reported C); moby v1.10.3 daemon/graphdriver/fsdiff.go Changes (docs/reference-behaviour.md#naivediff); docker diff",
          ENGINE_GROUP, expect=expect_engine(), needs_dtype=True, timeout=60)
def container_changes(ctx: ScenarioContext) -> None:
    session = ctx.engine
    image, ctr = _container_work(ctx)
    changes = [(kind, path) for kind, path in session.changes(ctr) if path == "/" + OWN or path.startswith("/%s/" % OWN)]
    ctx.note("changes: %s" % " ".join("%s %s" % c for c in changes), changes=changes)
    ctx.check(changes == WORK_CHANGES, "the changes differ from what the container did",
              expected=WORK_CHANGES, got=changes)
    session.remove(ctr)
    session.remove(image)


def _member_name(info: tarfile.TarInfo) -> str:
    name = info.name
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


@scenario("exported-diff", "A container's exported diff holds what it added and changed, and an AUFS whiteout for each deletion (none for the image's untouched files)",
          "moby pkg/archive archive.go ExportChanges (.wh. whiteouts, docs/reference-behaviour.md#whiteouts); moby v1.10.3 daemon/graphdriver/fsdiff.go Diff; moby daemon/graphdriver/overlay2 Diff",
          ENGINE_GROUP, expect=expect_engine(), needs_dtype=True, timeout=60)
def exported_diff(ctx: ScenarioContext) -> None:
    session = ctx.engine
    image, ctr = _container_work(ctx)
    dest = ctx.path("diff.tar")
    session.export_diff(ctr, dest)
    with tarfile.open(dest, "r:") as tar:
        members = {_member_name(m): m for m in tar.getmembers()}
        names = sorted(n for n in members if n == OWN or n.startswith(OWN + "/"))
        mod = tar.extractfile(members[OWN + "/mod"]).read() if OWN + "/mod" in members else None  # type: ignore[union-attr]
    ctx.note("exported: %s" % " ".join(names), members=names)
    wanted = [OWN, OWN + "/.wh.gone", OWN + "/.wh.olddir", OWN + "/mod", OWN + "/new", OWN + "/newdir", OWN + "/newdir/f"]
    ctx.check(names == wanted, "the exported diff differs from what the container did", expected=wanted, got=names)
    ctx.check(mod == b"modified, and longer", "lab/mod in the diff has other content", got=repr(mod))
    session.remove(ctr)
    session.remove(image)


# many-layers -----------------------------------------------------------------------------------

#: More lowers than one page of mount data can name by absolute path (4096 bytes hold about 42
#: ``/var/lib/docker/overlay2/<64 hex>/diff`` paths, fewer under the lab's longer roots), so
#: overlay2 and containers/storage must mount through their short ``l/`` links (moby#22126,
#: moby#25824); well below the layer store's 125 (moby#26380) and containers/storage's 128
#: fast lowers (containers/storage#1375). The port copies its parent's tree per layer instead.
MANY_LAYERS = 48
#: inodes any engine spends per layer at least (the layer's dirs, its lab/ dirs, two files)
INODES_PER_LAYER = 6


def _expect_many(facts: Facts) -> Optional[Expectation]:
    need = MANY_LAYERS * INODES_PER_LAYER
    if few_inodes(facts, need):
        return Expectation(Outcome.FAIL, "%d layers need at least ~%d inodes; the fs has too few (ENOSPC, moby#17486)"
                           % (MANY_LAYERS, need))
    return None


@scenario("many-layers", "An image of 48 layers (each adds a file and rewrites one) pulls, and a container on it sees every layer's file and the top layer's rewrite",
          "overlay2 short lowerdir links for the one-page mount data limit (moby#22126, moby#25824), layer depth limits (moby#26380, containers/storage#1375); moby v1.10.3 overlay.go ApplyDiff copyDir",
          ENGINE_GROUP, expect=expect_engine(extra=_expect_many), timeout=120, tags=("scale",))
def many_layers(ctx: ScenarioContext) -> None:
    session = ctx.engine
    layers = [LayerTar().dir(OWN).dir(OWN + "/layers").file("%s/layers/%02d" % (OWN, i), b"%d" % i)
              .file(OWN + "/top", b"layer %d" % i) for i in range(MANY_LAYERS)]
    start = time.monotonic()
    image = pull(ctx, *layers)
    ctx.note("pulled %d layers in %.1f s" % (MANY_LAYERS, time.monotonic() - start),
             pull_seconds=round(time.monotonic() - start, 3))
    ctr = session.create(image)
    with session.rootfs(ctr) as root:
        listing = read_dir(own(root, "layers"))
        ctx.check(listing == ["%02d" % i for i in range(MANY_LAYERS)], "the container does not see every layer's file",
                  count=len(listing))
        ctx.check(read_file(own(root, "top")) == b"layer %d" % (MANY_LAYERS - 1), "lab/top is not the top layer's")
    session.remove(ctr)
    session.remove(image)


# out-of-space ----------------------------------------------------------------------------------

#: space left free before the big layer; the filler takes the rest where more is free
HEADROOM = 8 * MiB
FILL_ABOVE = 24 * MiB
OVERSHOOT = 8 * MiB
BLOB = 4 * MiB


def _base_layer() -> LayerTar:
    return LayerTar().dir(OWN).file(OWN + "/os-release", b"ID=test\n")


def _expect_space(facts: Facts) -> Optional[Expectation]:
    """btrfs cannot be filled to an exact free space: fallocate runs into its chunk allocation
    (data and metadata chunks) with space still reported free, so the case cannot be set up."""
    if facts.fs_name == "btrfs":
        return Expectation(Outcome.UNSUPPORTED, "btrfs cannot be filled to a set free space with fallocate "
                                                "(its data/metadata chunk allocation answers ENOSPC first)")
    return None


@scenario("out-of-space", "Pulling an image whose second layer is bigger than the free space fails cleanly ('no space left on device'), gives the space back, and the engine pulls again",
          "moby layer/layer_store.go Register (a failed layer is removed); moby v1.10.3 overlay.go ApplyDiff, tmproot removed on error (docs/reference-behaviour.md#applydiff)",
          ENGINE_GROUP, expect=expect_engine(extra=_expect_space, containers=0), needs_mount=False, timeout=120,
          tags=("scale",))
def out_of_space(ctx: ScenarioContext) -> None:
    session = ctx.engine
    fs = ctx.backing_dir
    base = pull(ctx, _base_layer())
    free0 = free_bytes(fs)
    filler = os.path.join(fs, "lab-filler")
    if free0 > FILL_ABOVE:  # leave HEADROOM: the ext4-small profile needs no filler
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, free0 - HEADROOM)
        except OSError as err:
            raise Unsupported("fallocate on %s: %s" % (ctx.facts.fs_name, os.strerror(err.errno or 0))) from None
        finally:
            os.close(fd)
    try:
        free1 = free_bytes(fs)
        big = ctx.path("big.tar")
        files = (free1 + OVERSHOOT) // BLOB + 1
        with open(big, "wb") as out:
            shutil.copyfileobj(GeneratedTarStream(files, BLOB, prefix=OWN + "/blob"), out, MiB)
        ctx.note("%d MiB free (filler: %s); pulling a %d MiB layer" % (free1 // MiB, os.path.exists(filler), files * BLOB // MiB),
                 free_before=free0, free_after_fill=free1, layer_bytes=files * BLOB)
        try:
            session.pull([_base_layer().write(ctx.path("base.tar")), big])
        except EngineError as err:
            ctx.note("the pull failed: %s" % err, pull_error=str(err))
            ctx.check(no_space(err), "the pull failed, but not with 'no space left on device': %s" % err)
        else:
            ctx.check(False, "a layer bigger than the free space was pulled")
    finally:
        if os.path.exists(filler):
            os.unlink(filler)
    free2 = settle(lambda: free_bytes(fs), free0 - HEADROOM)
    ctx.note("after the failed pull: %d MiB free" % (free2 // MiB), free_after=free2)
    ctx.check(free2 >= free0 - HEADROOM, "the failed pull did not give the space back", free_before=free0, free_after=free2)
    again = pull(ctx, LayerTar().dir(OWN).file(OWN + "/after", b"still usable"))
    session.remove(again)
    session.remove(base)


# out-of-inodes ---------------------------------------------------------------------------------

#: inode tables up to this size are run out by creating files (ext4 of 64 MiB has 16384)
INODE_FILL_MAX = 20000
INODE_HEADROOM = 24
LAYER_FILES = 200


def _fill_inodes(dir_fd: int) -> int:
    """Empty files ``0``, ``1``, ... in ``dir_fd`` until ENOSPC; how many were made. One
    ``mknod`` each, relative to the dir (no path walk, no open and close): the kernel's inode
    allocation is then nearly all the time it takes."""
    made = 0
    try:
        while True:
            os.mknod(str(made), stat.S_IFREG | 0o600, dir_fd=dir_fd)
            made += 1
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
    return made


def _expect_inodes(facts: Facts) -> Optional[Expectation]:
    total = facts.get("fs_inodes")
    if isinstance(total, int) and not isinstance(total, bool) and not 0 < total <= INODE_FILL_MAX:
        return Expectation(Outcome.UNSUPPORTED, "%s has no small fixed inode table to run out (f_files %d)"
                           % (facts.fs_name, total))
    return None


@scenario("out-of-inodes", "With the inodes (nearly) all used, pulling an image whose second layer has 200 files fails cleanly ('no space left on device'), and the engine pulls again once they are freed",
          "inode exhaustion: ENOSPC with free blocks (moby#17486, coreos/bugs#264); moby layer/layer_store.go Register (failed layer removed)",
          ENGINE_GROUP, expect=expect_engine(extra=_expect_inodes, containers=0), needs_mount=False, timeout=120,
          tags=("scale", "inodes"))
def out_of_inodes(ctx: ScenarioContext) -> None:
    session = ctx.engine
    fs = ctx.backing_dir
    total = os.statvfs(fs).f_files
    if not 0 < total <= INODE_FILL_MAX:
        raise Unsupported("no small fixed inode table to run out here (f_files %d)" % total)
    base = pull(ctx, _base_layer())
    free0 = free_inodes(fs)
    filler = os.path.join(fs, "lab-inode-filler")
    os.mkdir(filler)
    fd = os.open(filler, os.O_RDONLY | os.O_DIRECTORY)
    made = 0
    try:
        made = _fill_inodes(fd)
        for i in range(max(made - INODE_HEADROOM, 0), made):
            os.unlink(str(i), dir_fd=fd)
        ctx.note("%d inodes of %d free; filled %d, left %d" % (free0, total, made, free_inodes(fs)),
                 inodes_total=total, inodes_free_before=free0, filled=made, inodes_free_filled=free_inodes(fs))
        layer = LayerTar().dir(OWN).dir(OWN + "/many")
        for i in range(LAYER_FILES):
            layer.file("%s/many/f%03d" % (OWN, i), b"")
        try:
            pull(ctx, _base_layer(), layer)
        except EngineError as err:
            ctx.note("the pull failed: %s" % err, pull_error=str(err))
            ctx.check(no_space(err), "the pull failed, but not with 'no space left on device': %s" % err)
        else:
            ctx.check(False, "a layer of %d files was pulled with %d inodes free" % (LAYER_FILES, INODE_HEADROOM))
    finally:
        for i in range(max(made - INODE_HEADROOM, 0)):  # by name: no readdir of the full dir
            with contextlib.suppress(OSError):
                os.unlink(str(i), dir_fd=fd)
        os.close(fd)
        shutil.rmtree(filler, ignore_errors=True)
    free2 = settle(lambda: free_inodes(fs), free0 - 8)
    ctx.note("after the failed pull: %d inodes free" % free2, inodes_free_after=free2)
    ctx.check(free2 >= free0 - 8, "the failed pull did not give its inodes back", before=free0, after=free2)
    again = pull(ctx, LayerTar().dir(OWN).file(OWN + "/after", b"still usable"))
    session.remove(again)
    session.remove(base)


# remove-while-mounted --------------------------------------------------------------------------

def _mounts_under(path: str) -> int:
    from ...mountutil import mounts_under
    return len(mounts_under(path))


@scenario("remove-mounted-container", "Removing a container while its rootfs is mounted is refused or done without harm: the image stays intact and nothing stays mounted",
          "moby v1.10.3 overlay.go (*Driver).Remove, no unmount: EBUSY (docs/reference-behaviour.md#put-remove-status); moby daemon/delete.go (rm of a running container needs -f); containers/storage layers.go Delete (unmounts first)",
          ENGINE_GROUP, expect=expect_engine(containers=1), timeout=60)  # one at a time
def remove_mounted_container(ctx: ScenarioContext) -> None:
    session = ctx.engine
    image = pull(ctx, LayerTar().dir(OWN).file(OWN + "/a", b"a\n").file(OWN + "/b", b"b\n"))
    mounts_before = _mounts_under(ctx.backing_dir)
    ctr = session.create(image)
    removed = False
    with session.rootfs(ctr) as root:
        ctx.check(read_dir(own(root)) == ["a", "b"], "the container does not see the image", lab=read_dir(own(root)))
        try:
            session.remove(ctr)
            removed = True
            ctx.note("removed while mounted")
        except EngineError as err:
            ctx.note("remove while mounted refused: %s" % err, remove_error=str(err))
    if not removed:
        session.remove(ctr)
    other = session.create(image)
    with session.rootfs(other) as root:
        seen = {n: read_file(own(root, n)) for n in read_dir(own(root))}
        ctx.check(seen == {"a": b"a\n", "b": b"b\n"}, "the image was damaged by removing the mounted container",
                  seen={k: repr(v) for k, v in seen.items()})
    session.remove(other)
    left = _mounts_under(ctx.backing_dir)
    ctx.note("mounts under the backing fs: %d before the container, %d after" % (mounts_before, left))
    ctx.check(left == mounts_before, "a mount stayed behind the removed container", before=mounts_before, after=left)
    session.remove(image)

