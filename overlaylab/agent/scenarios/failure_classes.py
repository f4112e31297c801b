"""The known failure classes of overlay in the field (docs/reference-behaviour.md#field-failures), each reproduced at a small
scale. Every scenario checks the *healthy* behaviour a user needs, so where the kernel or the
backing filesystem breaks it the cell FAILs, and the expectation says FAIL where that is the
known behaviour (with the reason), so a run tells "broken as known" from "newly broken".
"""
from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any, Dict

from ...archive import ArchiveError
from ...graphdriver.errors import ErrIncompatibleFS, ErrNotSupported
from ...graphdriver.overlay import MountError
from ..logcapture import capture_log
from ..scenario import Expectation, Outcome, ScenarioContext, ScenarioFailure, default_expect, scenario
from ._layers import (
    TAR_MTIME,
    GeneratedTarStream,
    LayerTar,
    apply_layer,
    change_pairs,
    describe_error,
    expect_inodes,
    fs_free_bytes,
    fs_inodes,
    image_layer,
    in_process_apply,
    mounted,
    mounts,
    new_id,
    param_enabled,
    read_dir,
    read_file,
    stat_errno,
    tmproots,
    type_letter,
    write_file,
)

MiB = 1 << 20




def _other_than_pass(sc, facts):
    """The default expectation when it is not PASS (refused driver, refused upperdir, no d_type)."""
    base = default_expect(sc, facts)
    return base if base.outcome is not Outcome.PASS else None


# driver-init ----------------------------------------------------------------------------------

@scenario("driver-init", "Init accepts the backing filesystem (home made 0700) or refuses it as 1.10.3 does (btrfs/aufs/zfs: ErrIncompatibleFS with its log line)",
          "moby v1.10.3 overlay.go Init, driver_linux.go GetFSMagic of the home's parent, btrfs refusal of moby#9834; docs/reference-behaviour.md#init", "failure-class", needs_mount=False, timeout=30)
def driver_init(ctx: ScenarioContext) -> None:
    with capture_log("overlaylab.graphdriver") as cap:
        try:
            d = ctx.driver()
        except (ErrIncompatibleFS, ErrNotSupported) as err:
            ctx.note("Init refused: %s" % err, init_error=str(err), init_log=list(cap.lines))
            raise
    st = os.stat(d.home)
    rows = [list(r) for r in d.status()]
    ctx.note("Init accepted", home=d.home, home_mode="%o" % stat.S_IMODE(st.st_mode), status=rows,
             init_log=list(cap.lines))
    ctx.check(stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (0, 0),
              "the driver home is not a 0700 dir owned 0:0", home_mode="%o" % st.st_mode)
    ctx.check(not any(line.startswith("ERROR") for line in cap.lines), "Init logged an error", init_log=cap.lines)


# overlay-on-overlay ---------------------------------------------------------------------------

@scenario("overlay-on-overlay", "Image layers apply and a container's -init layer mounts (fails where the kernel refuses the fs as upperdir, e.g. docker-in-docker)",
          "overlay-on-overlay (moby#12488, moby#23930): 'error creating overlay mount to …/merged: invalid argument'; docs/reference-behaviour.md#field-failures",
          "failure-class", timeout=30)
def overlay_on_overlay(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().dir("etc").file("etc/os-release", b"ID=test\n"))
    child, _ = image_layer(ctx, d, base, LayerTar().file("app", b"app"))
    ctx.note("image layers applied (ApplyDiff only hard-links and extracts)")
    init = new_id() + "-init"
    d.create(init, child, "")
    try:
        merged = d.get(init, "")
    except (OSError, MountError) as err:
        ctx.note("Get(-init) failed: %s" % err, mount_error=describe_error(err))
        raise
    try:
        ctx.check(read_file(os.path.join(merged, "app")) == b"app", "the -init layer does not show the image")
        write_file(os.path.join(merged, "written"), b"w")
        ctx.check(os.path.isfile(os.path.join(d.home, init, "upper", "written")), "a write did not reach upper/")
    finally:
        d.put(init)


# dtype-whiteouts ------------------------------------------------------------------------------

@scenario("dtype-whiteouts", "Deleting image files and a dir through the container hides them from readdir and stat",
          "no d_type: whiteouts show up / deleted files reappear (moby#22937, moby#10294); docs/reference-behaviour.md#whiteouts", "failure-class",
          needs_dtype=True, timeout=30)
def dtype_whiteouts(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().dir("d").file("d/x", b"x").file("d/y", b"y").file("f", b"f")
                          .file("g", b"g").dir("e").file("e/z", b"z"))
    ctr = new_id()
    d.create(ctr, base, "")
    with mounted(d, ctr) as view:
        problems: Dict[str, Any] = {}
        for rel, op in (("f", os.unlink), ("d/x", os.unlink), ("e/z", os.unlink), ("e", os.rmdir)):
            try:
                op(os.path.join(view, rel))
            except OSError as err:
                problems["delete " + rel] = describe_error(err)
        top, sub = read_dir(view), read_dir(os.path.join(view, "d"))
        codes = {rel: stat_errno(os.path.join(view, rel)) for rel in ("f", "d/x", "e")}
        upper = os.path.join(d.home, ctr, "upper")
        upper_types = {}
        for rel in ("f", "d/x", "e"):
            try:
                st = os.lstat(os.path.join(upper, rel))
                upper_types[rel] = "%s %d:%d" % (type_letter(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))
            except OSError as err:
                upper_types[rel] = errno.errorcode.get(err.errno, str(err.errno))
        ctx.note("after deletes", merged_top=top, merged_d=sub, stat_errnos=codes, upper=upper_types)
        ctx.check(not problems, "deleting image files through the container failed", problems=problems)
        ctx.check(top == ["d", "g"], "readdir of the container root shows deleted entries", merged_top=top)
        ctx.check(sub == ["y"], "readdir of d/ shows the deleted d/x", merged_d=sub)
        ctx.check(all(c == errno.ENOENT for c in codes.values()), "a deleted entry can still be stat'ed",
                  stat_errnos=codes)


# inode-exhaustion -----------------------------------------------------------------------------

INODE_LAYERS = 3
INODE_DIRS = 100
#: Roughly what the three layers cost (every layer re-creates every directory of the image).
INODE_NEED = 930


@scenario("inode-exhaustion", "Pull a base and 3 image layers of 100 dirs each (every layer re-creates all dirs): all apply; where inodes run out the failure is a clean ENOSPC",
          "inode exhaustion (moby#17486, coreos/bugs#264), overlay copy.go copyDir; docs/reference-behaviour.md#copydir-quirks", "failure-class", needs_mount=False,
          expect=expect_inodes(INODE_NEED), timeout=60, tags=("scale", "inodes"))
def inode_exhaustion(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    total, free = fs_inodes(d.home)
    ctx.note("inodes: %d total, %d free" % (total, free), inodes_total=total, inodes_free_before=free)
    if total and total < INODE_NEED + 64:
        ctx.note("only %d inodes: this workload (~%d) is expected to exhaust them" % (total, INODE_NEED))
    # A small base first, so that the exhaustion hits a layer with a parent: overlay's own
    # ApplyDiff, with its tmproot (a base layer is extracted straight into root/).
    parent, _ = image_layer(ctx, d, "", LayerTar().dir("etc").file("etc/os-release", b"ID=test\n"))
    dirs_below = 1
    for i in range(1, INODE_LAYERS + 1):
        tar = LayerTar().dir("l%d" % i)
        for j in range(INODE_DIRS):
            tar.dir("l%d/d%03d" % (i, j)).file("l%d/d%03d/f" % (i, j), b"%d" % j)
        layer = new_id()
        free_before = fs_inodes(d.home)[1]
        try:
            d.create(layer, parent, "")
            apply_layer(ctx, d, layer, parent, tar)
        except (OSError, ArchiveError) as err:  # ArchiveError: the chrooted helper's failure
            left = tmproots(d, layer)
            at_failure = fs_inodes(d.home)[1]
            ctx.note("layer %d failed: %s" % (i, err), failed_layer=i, error=describe_error(err),
                     tmproot_left=left, inodes_free_at_failure=at_failure)
            clean_enospc = getattr(err, "errno", None) == errno.ENOSPC or "no space left on device" in str(err)
            ctx.check(clean_enospc, "layer %d failed, but not with ENOSPC: %s" % (i, err))
            ctx.check(not left, "layer %d: ApplyDiff failed with ENOSPC and left %s behind" % (i, left))
            d.remove(layer)  # what the layer store does after a failed register
            after = fs_inodes(d.home)[1]
            ctx.note("after Remove of the failed layer: %d inodes free" % after, inodes_free_after_remove=after)
            ctx.check(after >= free_before, "Remove of the failed layer did not give its inodes back")
            raise ScenarioFailure("layer %d of %d: no space left on device (inodes exhausted; failed cleanly: "
                                  "no tmproot left, inodes given back): %s" % (i, INODE_LAYERS, err))
        ndirs = sum(len(dirs) for _, dirs, _ in os.walk(os.path.join(d.home, layer, "root")))
        ctx.note("layer %d: %d dirs in root/, %d inodes free" % (i, ndirs, fs_inodes(d.home)[1]))
        dirs_below += INODE_DIRS + 1
        ctx.check(ndirs == dirs_below, "layer %d has %d dirs, expected %d" % (i, ndirs, dirs_below))
        parent = layer
    ctx.note("all layers applied", inodes_free_after=fs_inodes(d.home)[1])


# too-many-links -------------------------------------------------------------------------------

LINKS = 65000  # EXT4_LINK_MAX


def _expect_links(sc, facts) -> Expectation:
    other = _other_than_pass(sc, facts)
    if other:
        return other
    if facts.fs_name == "extfs":
        return Expectation(Outcome.FAIL, "ext4 caps an inode at 65000 links: the child layer's hard-link copy fails "
                                         "with 'too many links' (coreos/bugs#474)")
    return Expectation(Outcome.PASS)


@scenario("too-many-links", "A file with 65000 names in an image layer; a child layer's ApplyDiff (hard-link copy of the parent) works",
          "EMLINK (coreos/bugs#474, moby#32732), overlay.go (*Driver).ApplyDiff hard-link copy; docs/reference-behaviour.md#applydiff", "failure-class", needs_mount=False,
          expect=_expect_links, timeout=90, tags=("scale",))
def too_many_links(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().dir("bin").file("bin/busybox", b"#!busybox\n", 0o755))
    bin_dir = os.path.join(d.home, base, "root", "bin")
    src = os.path.join(bin_dir, "busybox")
    made = 1
    limit_err = None
    for i in range(1, LINKS):
        try:
            os.link(src, os.path.join(bin_dir, "l%05d" % i))
        except OSError as err:
            limit_err = describe_error(err)
            break
        made += 1
    nlink = os.lstat(src).st_nlink
    ctx.note("base bin/busybox has %d names" % nlink, base_nlink=nlink, base_link_error=limit_err)
    child = new_id()
    d.create(child, base, "")
    try:
        apply_layer(ctx, d, child, base, LayerTar().dir("etc").file("etc/new", b"n"))
    except (OSError, ArchiveError) as err:
        ctx.note("child ApplyDiff failed: %s" % err, apply_error=describe_error(err), tmproot_left=tmproots(d, child))
        ctx.check(not tmproots(d, child), "the failed ApplyDiff left a tmproot behind")
        raise
    cn = os.lstat(os.path.join(d.home, child, "root", "bin", "busybox")).st_nlink
    ctx.note("child applied; bin/busybox now has %d names" % cn, child_nlink=cn)
    ctx.check(cn == 2 * nlink, "the child layer did not hard-link every name (nlink %d, expected %d)" % (cn, 2 * nlink))


# dir-rename-exdev -----------------------------------------------------------------------------

def _expect_rename(sc, facts) -> Expectation:
    other = _other_than_pass(sc, facts)
    if other:
        return other
    probe = facts.get("dir_rename")
    if probe == "EXDEV":
        return Expectation(Outcome.FAIL, "EXDEV: the dir_rename probe shows redirect_dir is off (moby#25409)")
    if probe in ("redirect", "renamed"):
        return Expectation(Outcome.PASS, "the dir_rename probe renamed a lower dir (%s)" % probe)
    if param_enabled(facts.param("redirect_dir")):
        return Expectation(Outcome.PASS, "redirect_dir is on")
    return Expectation(Outcome.FAIL, "EXDEV: overlay's redirect_dir is off (moby#25409)")


@scenario("dir-rename-exdev", "Renaming an image directory inside the container works (EXDEV where overlay's redirect_dir is off)",
          "moby#25409 (EXDEV 'Invalid cross-device link'), kernel Documentation/filesystems/overlayfs.rst redirect_dir; docs/reference-behaviour.md#field-failures", "failure-class", expect=_expect_rename, timeout=30)
def dir_rename_exdev(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().dir("d").file("d/x", b"lower x"))
    ctr = new_id()
    d.create(ctr, base, "")
    ctx.note("overlay redirect_dir=%s" % ctx.facts.param("redirect_dir"), redirect_dir=ctx.facts.param("redirect_dir"))
    with mounted(d, ctr) as view:
        try:
            os.rename(os.path.join(view, "d"), os.path.join(view, "d2"))
        except OSError as err:
            ctx.note("rename(merged/d, merged/d2): %s" % err, rename_error=describe_error(err))
            ctx.check(False, "renaming a lower directory failed: %s (%s)" % (os.strerror(err.errno), errno.errorcode.get(err.errno)))
        ctx.check(read_file(os.path.join(view, "d2", "x")) == b"lower x", "d2/x does not have d/x's content")
        ctx.check(stat_errno(os.path.join(view, "d")) == errno.ENOENT, "d still exists after the rename")
    redirect = None
    try:
        redirect = os.getxattr(os.path.join(d.home, ctr, "upper", "d2"), "trusted.overlay.redirect")
    except OSError:
        pass
    ctx.note("upper/d2 trusted.overlay.redirect = %r" % (redirect,), redirect_xattr=repr(redirect))


# open-fd-copy-up ------------------------------------------------------------------------------

def _expect_fd(sc, facts) -> Expectation:
    other = _other_than_pass(sc, facts)
    if other:
        return other
    version = facts.kernel_version()
    if version != (0,) and version < (4, 19):
        return Expectation(Outcome.FAIL, "kernel %s < 4.19: a read-only fd keeps the lower inode after copy-up "
                                         "(moby#31587)" % facts.get("kernel_release"))
    return Expectation(Outcome.PASS)


@scenario("open-fd-copy-up", "A read-only fd opened before copy-up sees what another fd then writes to the image file",
          "open-file copy-up inconsistency (docker/docs#3709, moby#31587); docs/reference-behaviour.md#field-failures", "failure-class",
          expect=_expect_fd, timeout=30)
def open_fd_copy_up(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().file("f", b"old content\n"))
    ctr = new_id()
    d.create(ctr, base, "")
    with mounted(d, ctr) as view:
        path = os.path.join(view, "f")
        rfd = os.open(path, os.O_RDONLY)
        try:
            before = os.fstat(rfd).st_ino
            ctx.check(os.pread(rfd, 100, 0) == b"old content\n", "the image file does not read back")
            wfd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(wfd, b"new content!\n")
            finally:
                os.close(wfd)
            seen = os.pread(rfd, 100, 0)
            after = os.stat(path).st_ino
        finally:
            os.close(rfd)
        ctx.note("old fd reads %r after the write" % seen, old_fd_reads=repr(seen), ino_before=before, ino_after=after)
        ctx.check(seen == b"new content!\n", "the fd opened before copy-up still reads the old content (%r)" % seen)


# mtime-diff-bug -------------------------------------------------------------------------------

def _expect_mtime(sc, facts) -> Expectation:
    other = _other_than_pass(sc, facts)
    if other:
        return other
    return Expectation(Outcome.FAIL, "known reference bug moby#21555: same size + same second with 0 ns = unchanged")


@scenario("mtime-diff-bug", "Changes reports every rewrite, including a same-size rewrite stamped within the lower file's (0 ns) second",
          "moby v1.10.3 pkg/archive statDifferent/sameFsTimeSpec (moby#21555); docs/reference-behaviour.md#naivediff", "failure-class", expect=_expect_mtime, timeout=30)
def mtime_diff_bug(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().file("f", b"12345678").file("h", b"abcdefgh"))
    ctr = new_id()
    d.create(ctr, base, "")
    stamp = TAR_MTIME * 10**9 + 5  # the lower's whole second (tar extraction: 0 ns), plus 5 ns
    with mounted(d, ctr) as view:
        write_file(os.path.join(view, "f"), b"87654321")
        os.utime(os.path.join(view, "f"), ns=(stamp, stamp))
        write_file(os.path.join(view, "h"), b"hgfedcba")
        os.utime(os.path.join(view, "h"), ns=(stamp + 10**9, stamp + 10**9))  # a later second: seen
        write_file(os.path.join(view, "g"), b"new")
    got = change_pairs(d.changes(ctr, base))
    want = [("/f", "C"), ("/g", "A"), ("/h", "C")]
    missing = sorted(set(want) - set(got))
    ctx.note("Changes(ctr, base) = %s" % got, changes=got, missing=missing,
             lower_mtime_ns=TAR_MTIME * 10**9, rewrite_mtime_ns=stamp)
    ctx.check(not missing, "Changes missed %s (moby#21555: same size, same second, 0 ns lower)"
              % ", ".join(p for p, _ in missing), missing=[p for p, _ in missing])
    ctx.check(got == want, "Changes has unexpected entries", unexpected=sorted(set(got) - set(want)))


# deep-layer-limit -----------------------------------------------------------------------------

DEEP_LAYERS = 126


@scenario("deep-layer-limit", "126 image layers (one beyond the layer store's 125): the overlay driver applies them all and a container on top reads every layer",
          "moby v1.10.3 layer/layer_store.go maxLayerDepth=125 (layer store, not driver), moby#20298; docs/reference-behaviour.md#daemon-use", "failure-class", timeout=120,
          expect=expect_inodes(400), tags=("scale", "inodes"))
def deep_layer_limit(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    parent = ""
    for i in range(1, DEEP_LAYERS + 1):
        tar = LayerTar().file("layer-%03d" % i, b"%d" % i)
        if 1 < i < DEEP_LAYERS:
            # The middle layers are unpacked in-process (as 1.12's graphtest does) to keep the
            # scenario fast; the first and the 126th go through the real chrooted helper.
            with in_process_apply():
                layer, _ = image_layer(ctx, d, parent, tar)
        else:
            layer, _ = image_layer(ctx, d, parent, tar)
        parent = layer
    root = os.path.join(d.home, parent, "root")
    names = read_dir(root)
    ctx.note("top layer has %d files" % len(names), top_files=len(names))
    ctx.check(len(names) == DEEP_LAYERS, "the top layer has %d files, expected %d" % (len(names), DEEP_LAYERS))
    ctr = new_id()
    d.create(ctr, parent, "")
    with mounted(d, ctr) as view:
        bad = [n for n in ("layer-%03d" % i for i in range(1, DEEP_LAYERS + 1))
               if read_file(os.path.join(view, n)) != n[6:].lstrip("0").encode()]
        ctx.check(not bad, "files of some layers are wrong through the container", files=bad[:10])
        nlink = os.lstat(os.path.join(root, "layer-001")).st_nlink
        ctx.note("layer-001 has %d links (one per image layer)" % nlink, layer1_nlink=nlink)


# enospc ---------------------------------------------------------------------------------------

#: When the fs has more free space than this, most of it is taken by a preallocated filler
#: file first (fallocate: instant, no data written) so that the scenario stays fast and
#: bounded; the layer is then bigger than what is really left.
FILL_ABOVE = 32 * MiB
HEADROOM = 16 * MiB
OVERSHOOT = 8 * MiB
BLOB = 4 * MiB
#: Without fallocate, fill by writing zeros only up to this much free space (else UNSUPPORTED).
WRITE_FILL_MAX = 512 * MiB


@scenario("enospc", "A layer bigger than the free space fails cleanly with 'no space left on device', leaves no tmproot, and the driver stays usable",
          "moby v1.10.3 overlay.go (*Driver).ApplyDiff (tmp removed on error), 'no space left on device'; docs/reference-behaviour.md#applydiff", "failure-class",
          needs_mount=False, timeout=90, tags=("scale",))
def enospc(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().dir("etc").file("etc/os-release", b"ID=test\n"))
    root_dir = os.path.dirname(d.home)
    free0 = fs_free_bytes(root_dir)
    filler = None
    if free0 > FILL_ABOVE:
        filler = os.path.join(root_dir, "filler")
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, free0 - HEADROOM)
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                # No fallocate here (e.g. ext4 without extents): write zeros instead, but
                # only where that stays small enough to be quick.
                ctx.require(free0 <= WRITE_FILL_MAX, "no fallocate on this fs (%s) and %d MiB free: "
                            "too much to fill by writing" % (os.strerror(err.errno), free0 // MiB))
                ctx.note("no fallocate (%s): filling by writing zeros" % os.strerror(err.errno))
                zeros = bytes(MiB)
                for _ in range((free0 - HEADROOM) // MiB):
                    os.write(fd, zeros)
                os.fsync(fd)
        finally:
            os.close(fd)
    free1 = fs_free_bytes(root_dir)
    files = (free1 + OVERSHOOT) // BLOB + 1
    stream = GeneratedTarStream(files, BLOB)
    ctx.note("free %d MiB (filler: %s), applying a %d MiB layer" % (free1 // MiB, bool(filler), stream.payload_size // MiB),
             free_before=free0, free_after_fill=free1, layer_bytes=stream.payload_size)
    layer = new_id()
    d.create(layer, base, "")
    failure = None
    try:
        d.apply_diff(layer, base, stream)
    except (OSError, ArchiveError) as err:  # ArchiveError: the chrooted helper's ENOSPC
        failure = err
    ctx.check(failure is not None, "a layer bigger than the free space was applied", streamed=stream.produced)
    left = tmproots(d, layer)
    ctx.note("ApplyDiff failed: %s" % failure, apply_error=describe_error(failure), tmproot_left=left,
             streamed=stream.produced)
    ctx.check("no space left on device" in str(failure), "the failure is not 'no space left on device': %s" % failure)
    ctx.check(not left, "the failed ApplyDiff left %s behind" % left)
    if filler:
        os.unlink(filler)
    d.remove(layer)
    # Some filesystems (xfs: background inode GC) give freed blocks back asynchronously.
    os.sync()
    deadline = time.monotonic() + 5
    free2 = fs_free_bytes(root_dir)
    while free2 < free0 - 8 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
        free2 = fs_free_bytes(root_dir)
    ctx.note("after Remove: %d MiB free" % (free2 // MiB), free_after_remove=free2)
    ctx.check(free2 >= free0 - 8 * MiB, "space was not given back after the failed layer was removed",
              free_before=free0, free_after_remove=free2)
    again, size = image_layer(ctx, d, base, LayerTar().file("after", b"still usable"))
    ctx.check(size == len(b"still usable") and read_file(os.path.join(d.home, again, "root", "after")) == b"still usable",
              "the driver is not usable after ENOSPC")
    ctx.check(not mounts(d), "mounts left behind")
