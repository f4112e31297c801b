"""Diff scenarios: Diff/Changes/DiffSize/ApplyDiff (NaiveDiff over overlay, docs/reference-behaviour.md#naivediff) and what
a layer tar can carry through them: whiteouts, opaque dirs, hard links, xattrs, special files,
user-namespace owners, and the full-tree export. Plus the mount label of Get (docs/reference-behaviour.md#mount-options).

``diff-apply-roundtrip`` and ``changes`` run the cases of :mod:`overlaylab.graphdriver.graphtest`
(the suite the pytest tests run too) with the scenario's context as their ``t``.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
from typing import Dict, List

from ...graphdriver import graphtest
from ...idtools import IDMap
from ..scenario import Expectation, Outcome, ScenarioContext, default_expect, scenario
from ._layers import (
    CAP_NET_RAW_XATTR,
    LayerTar,
    backdate,
    change_pairs,
    describe_error,
    image_layer,
    member_map,
    mounted,
    mounts,
    new_id,
    read_dir,
    read_file,
    tar_bytes,
    tar_members,
    walk_tree,
    write_file,
)


def _names(members: List[tarfile.TarInfo]) -> List[str]:
    return [m.name for m in members]


@scenario("diff-apply-roundtrip", "DiffApply with 10 files (base backdated): Diff(upper, base) applied on a new layer gives upper's content; ApplyDiff size == DiffSize",
          "moby v1.12.0 graphtest_unix.go DriverTestDiffApply (TestOverlayDiffApply10Files, skipped upstream for moby#21555)", "diff",
          timeout=60)
def diff_apply_roundtrip(ctx: ScenarioContext) -> None:
    graphtest.driver_test_diff_apply(ctx, ctx.driver(), 10)


@scenario("changes", "Changes(upper, base) after rewriting, adding and deleting 20 files (base backdated) is exactly the 21 expected changes",
          "moby v1.12.0 graphtest_unix.go DriverTestChanges (TestOverlayChanges, skipped upstream); pkg/archive ChangesDirs, docs/reference-behaviour.md#naivediff", "diff",
          timeout=60)
def changes(ctx: ScenarioContext) -> None:
    graphtest.driver_test_changes(ctx, ctx.driver())


@scenario("diff-size", "DiffSize counts added/modified bytes once per inode (hard links) and symlink target lengths; ApplyDiff returns the tar's payload size",
          "moby v1.10.3 fsdiff.go DiffSize, pkg/archive ChangesSize, UnpackLayer size sum; docs/reference-behaviour.md#naivediff", "diff", timeout=30)
def diff_size(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    tar = LayerTar().file("a", b"a" * 100).file("b", b"b" * 200).dir("d").file("d/keep", b"k" * 7)
    base, applied = image_layer(ctx, d, "", tar)
    ctx.check(applied == 307, "ApplyDiff of the base returned %d, expected the payload size 307" % applied)
    full = d.diff_size(base, "")
    ctx.check(full == 307, "DiffSize(base, \"\") = %d, expected 307" % full)
    backdate(d, base)
    ctr = new_id()
    d.create(ctr, base, "")
    with mounted(d, ctr) as view:
        write_file(os.path.join(view, "c"), b"c" * 300)
        write_file(os.path.join(view, "a"), b"A" * 150)
        os.unlink(os.path.join(view, "b"))
        os.symlink("c", os.path.join(view, "l"))
        os.link(os.path.join(view, "c"), os.path.join(view, "c2"))
    size = d.diff_size(ctr, base)
    kinds = change_pairs(d.changes(ctr, base))
    ctx.note("DiffSize(ctr, base) = %d" % size, diff_size=size, changes=kinds)
    # c (300, counted once for c and c2) + a (150) + l (len("c") = 1); the delete counts 0.
    ctx.check(size == 451, "DiffSize(ctr, base) = %d, expected 451" % size)
    arch = tar_bytes(d.diff(ctr, base))
    new = new_id()
    d.create(new, base, "")
    got = d.apply_diff(new, base, io.BytesIO(arch))
    # The tar carries c (300) and a (150); c2 is a hard-link entry, l a symlink, .wh.b empty.
    ctx.note("ApplyDiff of the diff = %d" % got, apply_size=got)
    ctx.check(got == 450, "ApplyDiff of Diff(ctr, base) returned %d, expected 450" % got)


@scenario("whiteouts-through-diff", "Deleting files and a dir in a container gives .wh. entries in Diff; applying that on a new layer removes them",
          "moby v1.10.3 pkg/archive ExportChanges (Delete -> .wh.<name>), UnpackLayer whiteouts; docs/reference-behaviour.md#whiteouts", "diff", needs_dtype=True, timeout=30)
def whiteouts_through_diff(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    tar = (LayerTar().file("f1", b"1").dir("d").file("d/f2", b"2").file("d/f3", b"3")
           .dir("e").file("e/x", b"x").dir("e/sub").file("e/sub/y", b"y"))
    base, _ = image_layer(ctx, d, "", tar)
    ctr = new_id()
    d.create(ctr, base, "")
    with mounted(d, ctr) as view:
        os.unlink(os.path.join(view, "f1"))
        os.unlink(os.path.join(view, "d/f2"))
        shutil.rmtree(os.path.join(view, "e"))
    upper = os.path.join(d.home, ctr, "upper")
    wh = os.lstat(os.path.join(upper, "f1"))
    ctx.note("upper/f1 is %s rdev=%d:%d" % (stat.filemode(wh.st_mode), os.major(wh.st_rdev), os.minor(wh.st_rdev)))
    arch = tar_bytes(d.diff(ctr, base))
    members = tarfile.open(fileobj=io.BytesIO(arch), mode="r:").getmembers()
    names = _names(members)
    ctx.note("Diff(ctr, base) entries: %s" % names, diff_entries=names)
    for want in (".wh.f1", "d/.wh.f2", ".wh.e"):
        ctx.check(want in names, "Diff lacks the whiteout %s" % want, diff_entries=names)
    ctx.check(not any(n.startswith("e/") for n in names), "Diff lists children of a deleted directory",
              diff_entries=names)
    m = member_map(members)[".wh.f1"]
    ctx.note("whiteout header: type=%r mode=%o size=%d" % (m.type, m.mode, m.size))
    ctx.check(m.size == 0 and m.isreg(), "the whiteout entry is not an empty regular-file header",
              type=repr(m.type), size=m.size)
    new = new_id()
    d.create(new, base, "")
    d.apply_diff(new, base, io.BytesIO(arch))
    root = os.path.join(d.home, new, "root")
    tree = walk_tree(root)
    ctx.note("applied layer tree: %s" % sorted(tree), applied_tree=sorted(tree))
    ctx.check(sorted(tree) == ["d", "d/f3"], "applying the diff did not remove exactly f1, d/f2 and e",
              applied_tree=sorted(tree))
    ctx.check(not any(".wh." in p for p in tree), "a whiteout entry was written to disk")


@scenario("opaque-dir-through-apply", "A layer tar with d/.wh..wh..opq hides every child the parent layer had in d; entries after the marker stay",
          "moby v1.10.3 pkg/archive UnpackLayer (opaque marker), diff_test.go TestApplyLayerWhiteouts; docs/reference-behaviour.md#whiteouts", "diff", needs_mount=False, timeout=30, tags=("child-layer",))
def opaque_dir_through_apply(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().dir("d").file("d/a", b"a").file("d/b", b"b").dir("d/sub")
                          .file("d/sub/x", b"x").file("other", b"o"))
    child, _ = image_layer(ctx, d, base, LayerTar().dir("d").opaque("d").file("d/c", b"c").file("d/.hidden", b"h"))
    root = os.path.join(d.home, child, "root")
    got = read_dir(os.path.join(root, "d"))
    ctx.note("child d/ = %s" % got, child_d=got, child_root=read_dir(root))
    ctx.check(got == [".hidden", "c"], "the opaque marker did not hide the parent's children of d", child_d=got)
    ctx.check(read_dir(root) == ["d", "other"], "the opaque marker leaked outside d", child_root=read_dir(root))
    ctx.check(not os.path.lexists(os.path.join(root, "d", ".wh..wh..opq")), "the marker was written to disk")
    base_d = read_dir(os.path.join(d.home, base, "root", "d"))
    ctx.check(base_d == ["a", "b", "sub"], "the parent layer lost files", base_d=base_d)


@scenario("hardlinks-in-layer", "Tar hard links share one inode after apply (also across layers); the full-tree Diff re-exports them as TypeLink",
          "moby v1.10.3 pkg/archive createTarFile TypeLink, addTarFile hard links, overlay copy.go copyHardlink; docs/reference-behaviour.md#the-tar-layer", "diff", needs_mount=False, timeout=30,
          tags=("child-layer",))
def hardlinks_in_layer(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    data = b"#!busybox\n" * 10
    base, _ = image_layer(ctx, d, "", LayerTar().dir("bin").file("bin/busybox", data, 0o755)
                          .hardlink("bin/sh", "bin/busybox").hardlink("bin/ls", "bin/busybox"))
    broot = os.path.join(d.home, base, "root")
    inos = {n: os.lstat(os.path.join(broot, "bin", n)).st_ino for n in ("busybox", "sh", "ls")}
    nlink = os.lstat(os.path.join(broot, "bin/busybox")).st_nlink
    ctx.note("base inodes %s nlink %d" % (inos, nlink), base_inodes=inos, base_nlink=nlink)
    ctx.check(len(set(inos.values())) == 1 and nlink == 3, "tar hard links do not share one inode in the base",
              base_inodes=inos, base_nlink=nlink)
    child, _ = image_layer(ctx, d, base, LayerTar().hardlink("bin/cat", "bin/busybox"))
    croot = os.path.join(d.home, child, "root")
    cinos = {n: os.lstat(os.path.join(croot, "bin", n)).st_ino for n in ("busybox", "sh", "ls", "cat")}
    cnlink = os.lstat(os.path.join(croot, "bin/cat")).st_nlink
    ctx.note("child inodes %s nlink %d" % (cinos, cnlink), child_inodes=cinos, child_nlink=cnlink)
    ctx.check(set(cinos.values()) == set(inos.values()), "the child does not share the base's inode",
              child_inodes=cinos)
    ctx.check(cnlink == 7, "nlink after the child layer is %d, expected 7 (3 base + 3 copied + cat)" % cnlink)
    members = member_map(tar_members(d.diff(base, "")))
    kinds = {n: (m.type, m.linkname) for n, m in members.items() if n.startswith("bin/")}
    ctx.note("Diff(base, \"\") bin entries", diff_bin={k: [repr(t), l] for k, (t, l) in kinds.items()})
    ctx.check(members["bin/busybox"].isreg() and members["bin/busybox"].size == len(data),
              "bin/busybox is not the regular entry with the data")
    for name in ("bin/ls", "bin/sh"):
        m = members[name]
        ctx.check(m.islnk() and m.linkname == "bin/busybox" and m.size == 0,
                  "%s is not re-exported as a TypeLink to bin/busybox" % name, entry=[repr(m.type), m.linkname])
    dm = member_map(tar_members(d.diff(child, base)))
    ctx.note("Diff(child, base) entries: %s" % sorted(dm), child_diff=sorted(dm))
    ctx.check(sorted(dm) == ["bin", "bin/cat"], "Diff(child, base) is not just bin/ and bin/cat", child_diff=sorted(dm))


def _getxattr(path: str, name: str):
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as err:
        return "<%s>" % errno.errorcode.get(err.errno, err.errno)


@scenario("xattrs-capability", "security.capability survives ApplyDiff, a child layer and Diff; trusted.overlay.opaque and the capability survive Create case C",
          "moby v1.10.3 overlay copy.go copyXattr (two xattrs), pkg/archive addTarFile/createTarFile xattrs; docs/reference-behaviour.md#copydir-quirks", "diff", needs_dtype=True, timeout=30)
def xattrs_capability(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    cap = CAP_NET_RAW_XATTR
    base, _ = image_layer(ctx, d, "", LayerTar().dir("bin").file("bin/ping", b"ping", 0o755,
                                                                  xattrs={"security.capability": cap})
                          .dir("opq").file("opq/old1", b"1").file("opq/old2", b"2"))
    got = _getxattr(os.path.join(d.home, base, "root", "bin/ping"), "security.capability")
    ctx.check(got == cap, "security.capability was not set by ApplyDiff", got=repr(got))
    child, _ = image_layer(ctx, d, base, LayerTar().file("etc-new", b"n"))
    got = _getxattr(os.path.join(d.home, child, "root", "bin/ping"), "security.capability")
    ctx.check(got == cap, "security.capability lost in the child layer", got=repr(got))
    m = member_map(tar_members(d.diff(base, "")))["bin/ping"]
    exported = m.pax_headers.get("SCHILY.xattr.security.capability")
    exported_b = exported.encode("utf-8", "surrogateescape") if isinstance(exported, str) else exported
    ctx.note("Diff exports %r" % exported_b, pax_headers=sorted(m.pax_headers))
    ctx.check(exported_b == cap, "Diff did not export security.capability", exported=repr(exported_b))

    ctr = new_id()
    init = ctr + "-init"
    d.create(init, child, "")
    with mounted(d, init) as view:
        shutil.rmtree(os.path.join(view, "opq"))
        os.mkdir(os.path.join(view, "opq"))
        write_file(os.path.join(view, "opq", "new"), b"n")
        write_file(os.path.join(view, "bin", "newcap"), b"x", 0o755)
        os.setxattr(os.path.join(view, "bin", "newcap"), "security.capability", cap)
    init_upper = os.path.join(d.home, init, "upper")
    opaque = _getxattr(os.path.join(init_upper, "opq"), "trusted.overlay.opaque")
    ctx.note("init upper/opq trusted.overlay.opaque = %r" % (opaque,), init_opaque=repr(opaque))
    ctx.check(opaque == b"y", "the kernel did not mark the recreated dir opaque in the init upper", got=repr(opaque))
    d.create(ctr, init, "")
    ctr_upper = os.path.join(d.home, ctr, "upper")
    got_opq = _getxattr(os.path.join(ctr_upper, "opq"), "trusted.overlay.opaque")
    got_cap = _getxattr(os.path.join(ctr_upper, "bin", "newcap"), "security.capability")
    ctx.note("case C copy", ctr_opaque=repr(got_opq), ctr_cap=repr(got_cap))
    ctx.check(got_opq == opaque, "trusted.overlay.opaque lost by Create case C", got=repr(got_opq))
    ctx.check(got_cap == cap, "security.capability lost by Create case C", got=repr(got_cap))
    with mounted(d, ctr) as view:
        listing = read_dir(os.path.join(view, "opq"))
        ctx.check(listing == ["new"], "the opaque dir shows the image's children in the container", listing=listing)
        got = _getxattr(os.path.join(view, "bin", "ping"), "security.capability")
        ctx.check(got == cap, "bin/ping's capability is not visible through the container", got=repr(got))


def _special_ok(root: str) -> Dict[str, str]:
    out = {}
    for rel in ("dev/null2", "dev/loop200", "run/fifo", "lib/link", "lib/abs"):
        p = os.path.join(root, rel)
        try:
            st = os.lstat(p)
        except OSError as err:
            out[rel] = "missing (%s)" % errno.errorcode.get(err.errno, err.errno)
            continue
        desc = stat.filemode(st.st_mode)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            desc += " %d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        if stat.S_ISLNK(st.st_mode):
            desc += " -> " + os.readlink(p)
        out[rel] = desc
    return out


_SPECIAL_WANT = {"dev/null2": "crw-rw-rw- 1:3", "dev/loop200": "brw-rw---- 7:200", "run/fifo": "prw-r--r--",
                 "lib/link": "lrwxrwxrwx -> ../run/fifo", "lib/abs": "lrwxrwxrwx -> /etc/passwd"}


@scenario("special-files", "A fifo, char and block devices and symlinks survive ApplyDiff, the hard-link copy of a child layer, Diff and Create case C",
          "moby v1.10.3 overlay copy.go copyDir types, pkg/archive createTarFile, addTarFile typeflags; docs/reference-behaviour.md#copydir-quirks", "diff", timeout=30)
def special_files(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    tar = (LayerTar().dir("dev").chardev("dev/null2", 1, 3).blockdev("dev/loop200", 7, 200).dir("run")
           .fifo("run/fifo").dir("lib").symlink("lib/link", "../run/fifo").symlink("lib/abs", "/etc/passwd"))
    base, _ = image_layer(ctx, d, "", tar)
    got = _special_ok(os.path.join(d.home, base, "root"))
    ctx.check(got == _SPECIAL_WANT, "special files wrong after ApplyDiff", got=got, want=_SPECIAL_WANT)
    child, _ = image_layer(ctx, d, base, LayerTar().file("x", b"x"))
    got = _special_ok(os.path.join(d.home, child, "root"))
    ctx.check(got == _SPECIAL_WANT, "special files wrong in the child layer (copyDir)", got=got)
    members = member_map(tar_members(d.diff(base, "")))
    types = {n: repr(m.type) for n, m in members.items()}
    ctx.note("Diff(base, \"\") types", diff_types=types)
    ctx.check(members["dev/null2"].ischr() and (members["dev/null2"].devmajor, members["dev/null2"].devminor) == (1, 3),
              "dev/null2 is not exported as char 1:3", types=types)
    ctx.check(members["dev/loop200"].isblk() and members["dev/loop200"].devminor == 200,
              "dev/loop200 is not exported as block 7:200", types=types)
    ctx.check(members["run/fifo"].isfifo(), "run/fifo is not exported as a fifo", types=types)
    ctx.check(members["lib/link"].issym() and members["lib/link"].linkname == "../run/fifo",
              "lib/link is not exported as a symlink", types=types)
    ctr = new_id()
    init = ctr + "-init"
    d.create(init, child, "")
    with mounted(d, init) as view:
        os.mkfifo(os.path.join(view, "run", "fifo2"), 0o600)
        os.mknod(os.path.join(view, "dev", "zero2"), 0o666 | stat.S_IFCHR, os.makedev(1, 5))
        os.symlink("fifo2", os.path.join(view, "run", "l2"))
    d.create(ctr, init, "")
    with mounted(d, ctr) as view:
        got = _special_ok(view)
        ctx.check(got == _SPECIAL_WANT, "the image's special files are wrong in the container", got=got)
        st = os.lstat(os.path.join(view, "dev", "zero2"))
        extra = {"run/fifo2": stat.S_ISFIFO(os.lstat(os.path.join(view, "run", "fifo2")).st_mode),
                 "dev/zero2": stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 5),
                 "run/l2": os.readlink(os.path.join(view, "run", "l2")) == "fifo2"}
        ctx.note("init-layer specials through case C", case_c=extra)
        ctx.check(all(extra.values()), "special files made in the init layer did not survive Create case C", case_c=extra)


@scenario("uid-gid-maps", "With userns remap IDMap(0,100000,65536): ApplyDiff shifts owners up, Diff(ctr, image) shifts them back, work/work belongs to remapped root",
          "moby v1.10.3 pkg/idtools ToHost/ToContainer, UnpackLayer and addTarFile owner mapping, Get's chown of work/work; docs/reference-behaviour.md#idtools", "diff", timeout=30)
def uid_gid_maps(ctx: ScenarioContext) -> None:
    maps = [IDMap(0, 100000, 65536)]
    d = ctx.driver(uid_maps=maps, gid_maps=maps)
    home_st = os.stat(d.home)
    ctx.check((home_st.st_uid, home_st.st_gid) == (100000, 100000), "the driver home is not owned by remapped root",
              home_owner=[home_st.st_uid, home_st.st_gid])
    tar = (LayerTar().dir("etc").file("etc/f", b"root file").dir("home", 0o755).dir("home/u", 0o755, 1000, 1000)
           .file("home/u/g", b"user file", 0o644, 1000, 1000))
    image, _ = image_layer(ctx, d, "", tar)
    root = os.path.join(d.home, image, "root")

    def owner(p: str):
        st = os.lstat(p)
        return (st.st_uid, st.st_gid)

    owners = {rel: owner(os.path.join(root, rel)) for rel in (".", "etc/f", "home/u", "home/u/g")}
    ctx.note("owners on disk after ApplyDiff", image_owners={k: list(v) for k, v in owners.items()})
    want = {".": (100000, 100000), "etc/f": (100000, 100000), "home/u": (101000, 101000), "home/u/g": (101000, 101000)}
    ctx.check(owners == want, "ApplyDiff did not shift owners into the remapped range",
              image_owners={k: list(v) for k, v in owners.items()})
    backdate(d, image)
    ctr = new_id()
    d.create(ctr, image, "")
    with mounted(d, ctr) as view:
        ww = owner(os.path.join(d.home, ctr, "work", "work"))
        ctx.check(ww == (100000, 100000), "work/work is not owned by remapped root", work_work=list(ww))
        write_file(os.path.join(view, "home/u/new"), b"new")
        os.chown(os.path.join(view, "home/u/new"), 101000, 101000)
        write_file(os.path.join(view, "etc/f"), b"root file, changed")
    arch = tar_bytes(d.diff(ctr, image))
    members = tarfile.open(fileobj=io.BytesIO(arch), mode="r:").getmembers()
    ids = {m.name.rstrip("/"): (m.uid, m.gid) for m in members}
    ctx.note("Diff(ctr, image) owners", diff_owners={k: list(v) for k, v in ids.items()})
    ctx.check(ids.get("home/u/new") == (1000, 1000), "Diff did not map home/u/new back to 1000:1000",
              diff_owners={k: list(v) for k, v in ids.items()})
    ctx.check(ids.get("etc/f") == (0, 0), "Diff did not map etc/f back to 0:0",
              diff_owners={k: list(v) for k, v in ids.items()})
    new = new_id()
    d.create(new, image, "")
    d.apply_diff(new, image, io.BytesIO(arch))
    got = owner(os.path.join(d.home, new, "root", "home/u/new"))
    ctx.check(got == (101000, 101000), "re-applying the diff did not shift home/u/new up again", got=list(got))
    full = {m.name.rstrip("/"): (m.uid, m.gid) for m in tar_members(d.diff(image, ""))}
    ctx.note("full-tree Diff(image, \"\") does not translate owners (reference behaviour): home/u/g = %s"
             % (full.get("home/u/g"),), full_tree_owner=list(full.get("home/u/g", ())))


_LABEL = "system_u:object_r:svirt_sandbox_file_t:s0:c12,c34"


def _selinux_present(facts) -> bool:
    if "selinux" in facts:
        return bool(facts.get("selinux"))
    return os.path.isdir("/sys/fs/selinux")


def _expect_mount_label(sc, facts) -> Expectation:
    base = default_expect(sc, facts)
    if base.outcome is not Outcome.PASS:
        return base
    if not _selinux_present(facts):
        return Expectation(Outcome.FAIL, "no SELinux (/sys/fs/selinux missing): the kernel rejects the context= "
                                         "mount option (EINVAL); 1.10.3 refuses --selinux-enabled with overlay anyway")
    return Expectation(Outcome.PASS)


@scenario("mount-label", "Get with an SELinux mount label appends ,context=\"<label>\" to the overlay options and the mount works",
          "moby v1.10.3 overlay.go (*Driver).Get, runc label_selinux.go FormatMountLabel; docs/reference-behaviour.md#mount-options", "diff", expect=_expect_mount_label, timeout=30)
def mount_label(ctx: ScenarioContext) -> None:
    from ...graphdriver import overlay as ovl
    d = ctx.driver()
    image, _ = image_layer(ctx, d, "", LayerTar().file("f", b"x"))
    ctr = new_id()
    d.create(ctr, image, "")
    h = d.home
    want = ('lowerdir=%s/%s/root,upperdir=%s/%s/upper,workdir=%s/%s/work,context="%s"'
            % (h, image, h, ctr, h, ctr, _LABEL))
    seen: List[str] = []
    real_mount = ovl.mount

    def recording_mount(source, target, fstype, flags=0, data=None):
        seen.append(data)
        return real_mount(source, target, fstype, flags, data)

    ovl.mount = recording_mount
    try:
        try:
            merged = d.get(ctr, _LABEL)
        except (OSError, ovl.MountError) as err:
            ctx.note("Get(ctr, label) failed: %s" % err, mount_data=seen, kernel_answer=describe_error(err),
                     selinux=os.path.isdir("/sys/fs/selinux"))
            ctx.check(seen and seen[0] == want, "the mount option string is not the reference's", got=seen, want=want)
            raise
    finally:
        ovl.mount = real_mount
    try:
        ctx.check(seen and seen[0] == want, "the mount option string is not the reference's", got=seen, want=want)
        info = [m.super_options for m in mounts(d) if m.mountpoint == merged]
        ctx.note("mounted with a label", mount_data=seen, super_options=info)
        ctx.check(read_file(os.path.join(merged, "f")) == b"x", "the labelled mount does not show the image")
    finally:
        d.put(ctr)


@scenario("full-tree-export", "Diff(id, \"\") of an image and of a container is a full tar of the visible tree: every file, no whiteouts",
          "moby v1.10.3 fsdiff.go Diff with parent \"\", pkg/archive Tar; docs/reference-behaviour.md#naivediff", "diff", needs_dtype=True, timeout=30)
def full_tree_export(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().file("a", b"a").dir("d").file("d/b", b"b").file("d/c", b"c")
                          .dir("e").file("e/x", b"x").symlink("link", "a"))
    child, _ = image_layer(ctx, d, base, LayerTar().dir("d").whiteout("d/c").file("new", b"n"))
    croot = os.path.join(d.home, child, "root")
    names = sorted(m.name.rstrip("/") for m in tar_members(d.diff(child, "")))
    tree = sorted(walk_tree(croot))
    ctx.note("Diff(child, \"\") = %s" % names, image_export=names)
    ctx.check(names == tree, "the image's full export is not its tree", export=names, tree=tree)
    ctr = new_id()
    d.create(ctr, child, "")
    with mounted(d, ctr) as view:
        write_file(os.path.join(view, "ctr-file"), b"c")
        os.unlink(os.path.join(view, "d/b"))
        os.unlink(os.path.join(view, "e/x"))
        view_types = walk_tree(view)
        view_tree = sorted(view_types)
    phantoms = sorted(p for p, t in view_types.items() if t == "?")
    ctx.check(not phantoms, "readdir of the container lists deleted entries that stat cannot find (whiteouts shown)",
              phantoms=phantoms)
    members = tar_members(d.diff(ctr, ""))
    names = sorted(m.name.rstrip("/") for m in members)
    ctx.note("Diff(ctr, \"\") = %s" % names, container_export=names, container_tree=view_tree)
    ctx.check(not any(".wh." in n for n in names), "the full export has whiteout entries", export=names)
    ctx.check(names == view_tree, "the container's full export is not its merged tree", export=names, tree=view_tree)
    ctx.check(names == sorted(["a", "d", "e", "link", "new", "ctr-file"]),
              "the container's full export does not have exactly the visible files", export=names)
    ctx.check(not mounts(d), "Diff's stream close did not release the mount", mounts=[m.mountpoint for m in mounts(d)])
