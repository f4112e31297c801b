"""Overlay breakages users actually hit (issue 14), each reproduced with real overlay mounts on
the backing filesystem.

Every scenario checks the behaviour a user needs, so where this kernel breaks it the cell FAILs;
its expectation says FAIL where that is the known behaviour *given what was probed*: the
``overlay_features`` facts where the profile has them (each feature probed with a real mount),
else what the scenario finds when it mounts with the option itself. Where the kernel (or the
backing fs) lacks the feature a case needs, the cell is UNSUPPORTED with the errno and the
kernel's words. Most cases mount overlay directly (the breakage is the kernel's); the two about
diffs and image layers go through the port driver. docs/reference-behaviour.md#breakages
explains each case.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import shutil
import signal
import stat
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from ... import mountutil
from ..features import IDMAP_BASE, idmap_userns_fd
from ..scenario import Expectation, Facts, Outcome, ScenarioContext, ScenarioFailure, Unsupported, default_expect, scenario
from ..shell import KernelLogCursor
from ._layers import LayerTar, change_pairs, image_layer, mounted, new_id, read_dir, read_file, write_file

GROUP = "breakage"

OPAQUE = "trusted.overlay.opaque"
REDIRECT = "trusted.overlay.redirect"
METACOPY = "trusted.overlay.metacopy"


# ---------------------------------------------------------------------------------------------
# Facts and expectations

def _feature_entry(facts: Facts, name: str) -> Optional[Dict[str, Any]]:
    """``name``'s answer in the profile's ``overlay_features`` fact, as
    :func:`overlaylab.agent.features.probe_features` shapes it (``{"features": {name: {...}}}``)."""
    probed = facts.get("overlay_features")
    features = probed.get("features") if isinstance(probed, dict) else None
    entry = features.get(name) if isinstance(features, dict) else None
    return entry if isinstance(entry, dict) else None


def feature(facts: Facts, name: str) -> Optional[bool]:
    """Whether the kernel supports feature ``name`` on this fs (True/False), or None when not probed."""
    value = (_feature_entry(facts, name) or {}).get("supported")
    return value if isinstance(value, bool) else None


def undecided_reason(facts: Facts, name: str) -> str:
    """Why the feature probe of ``name`` could not decide (it ran, ``supported`` is None), or ""."""
    entry = _feature_entry(facts, name)
    if entry is not None and "supported" in entry and entry["supported"] is None:
        return str(entry.get("reason") or "undecided")
    return ""


def _base(sc, facts: Facts, probes: bool = False) -> Optional[Expectation]:
    """What every breakage case expects before its own rule: the driver's Init verdict for the
    cases that go through the port (``driver`` tag); where the kernel refuses this fs as upperdir
    (overlay on overlay), UNSUPPORTED for a case that first probes its feature with a mount of
    its own (``probes``: it cannot be set up) and FAIL for the others (their mount fails);
    FAIL, for a case that replaces an image dir, where the fs has no d_type."""
    if facts.get("upperdir") is False:
        if probes:
            return Expectation(Outcome.UNSUPPORTED, "the kernel refuses %s as overlay upperdir: the feature "
                                                    "probe's mount cannot be made" % facts.fs_name)
        return Expectation(Outcome.FAIL, "the kernel refuses %s as overlay upperdir" % facts.fs_name)
    if "driver" in sc.tags:
        base = default_expect(sc, facts)
        return base if base.outcome is not Outcome.PASS else None
    if sc.needs_dtype and facts.get("d_type") is False:
        return Expectation(Outcome.FAIL, "no d_type: rm -rf of an image dir through the mount sees its whiteouts "
                                         "(ENOTEMPTY)")
    return None


def expect_with(features: Sequence[str] = (), xattr: str = "", outcome: Outcome = Outcome.PASS, why: str = "",
                unless: Optional[Callable[[Facts], Optional[Expectation]]] = None):
    """An expectation: UNSUPPORTED where a needed feature could not be probed here (its set-up
    cannot be made), the base rule, then UNSUPPORTED where a needed feature was probed and
    refused (or the fs has no ``xattr`` namespace), then ``unless``'s word, else ``outcome``."""
    def expect(sc, facts: Facts) -> Expectation:
        for name in features:
            undecided = undecided_reason(facts, name)
            if undecided:  # what kept the probe from deciding (no user namespace in a chroot) stops the case
                # too, before anything it would test: this comes ahead of the fs rules
                return Expectation(Outcome.UNSUPPORTED, "overlay_features: '%s' could not be probed here: %s"
                                   % (name, undecided))
        base = _base(sc, facts, probes=bool(features))
        if base:
            return base
        for name in features:
            if feature(facts, name) is False:
                return Expectation(Outcome.UNSUPPORTED, "overlay_features: this kernel refused '%s' on %s"
                                   % (name, facts.fs_name))
        if xattr and facts.get("xattr_" + xattr) is False:
            return Expectation(Outcome.UNSUPPORTED, "%s has no %s.* xattrs" % (facts.fs_name, xattr))
        if unless is not None:
            other = unless(facts)
            if other:
                return other
        return Expectation(outcome, why)
    return expect


# ---------------------------------------------------------------------------------------------
# Raw overlay mounts in a workspace on the backing fs

class MountRefused(OSError):
    """An overlay mount the kernel refused: the errno and what it logged."""

    def __init__(self, code: int, data: str, dmesg: List[str]):
        super().__init__(code, "%s (mount -t overlay -o %s; dmesg: %s)" % (
            os.strerror(code), data, " | ".join(dmesg) or "nothing logged"))
        self.data = data
        self.dmesg = dmesg


class Workspace:
    """Directories on the backing fs for raw overlay mounts; everything mounted below it is
    unmounted and everything removed when the block ends."""

    def __init__(self, ctx: ScenarioContext, root: str):
        self.ctx = ctx
        self.root = root

    def dir(self, *parts: str) -> str:
        path = os.path.join(self.root, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def mount(self, merged: str, lowers: Sequence[str], upper: Optional[str] = None, work: Optional[str] = None,
              options: str = "", note: str = "") -> List[str]:
        """Mount overlay (``lowers`` top first); returns the kernel's lines, raises :class:`MountRefused`."""
        data = "lowerdir=" + ":".join(lowers)
        if upper:
            data += ",upperdir=%s,workdir=%s" % (upper, work)
        if options:
            data += "," + options
        os.makedirs(merged, exist_ok=True)
        with KernelLogCursor() as klog:
            try:
                mountutil.mount("overlay", merged, "overlay", 0, data)
            except OSError as err:
                lines = [_strip(line) for line in klog.read_new() if "overlay" in line]
                self.ctx.note("mount %s refused: %s" % (note or os.path.basename(merged), os.strerror(err.errno)),
                              **{"mount_" + (note or os.path.basename(merged)): {
                                  "options": _short(data, self.root), "errno": errno.errorcode.get(err.errno),
                                  "dmesg": lines}})
                raise MountRefused(err.errno, _short(data, self.root), lines) from None
            lines = [_strip(line) for line in klog.read_new() if "overlay" in line]
        self.ctx.note("mounted %s (%s)" % (note or os.path.basename(merged), _short(data, self.root)),
                      **{"mount_" + (note or os.path.basename(merged)): {"options": _short(data, self.root),
                                                                         "dmesg": lines}})
        return lines

    def require(self, options: str, what: str) -> None:
        """UNSUPPORTED unless a scratch overlay mounts here with ``options``."""
        probe = self.dir("probe-" + options.replace(",", "+").replace("=", "-"))
        lower, upper, work = (self.dir(probe, n) for n in ("l", "u", "w"))
        try:
            self.mount(os.path.join(probe, "m"), [lower], upper, work, options, note="probe " + options)
        except MountRefused as err:
            raise Unsupported("%s: this kernel refuses overlay with '%s' on %s: %s"
                              % (what, options, self.ctx.facts.fs_name, err.strerror)) from None
        mountutil.umount(os.path.join(probe, "m"))


def _strip(line: str) -> str:
    return line.split(";", 1)[-1].strip()  # /dev/kmsg: "prio,seq,usec,flags;text"


def _short(data: str, root: str) -> str:
    return data.replace(root + "/", "")


@contextlib.contextmanager
def workspace(ctx: ScenarioContext) -> Iterator[Workspace]:
    root = tempfile.mkdtemp(prefix="breakage-", dir=ctx.backing_dir)
    try:
        yield Workspace(ctx, root)
    finally:
        mountutil.unmount_all_under(root)  # the mount table is parsed only when it names the workspace
        shutil.rmtree(root, ignore_errors=True)


def xattr(path: str, name: str) -> Optional[bytes]:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def upper_entries(upper: str, xattr_prefix: str = "trusted.overlay.") -> Dict[str, str]:
    """What a *native* (upperdir-only) differ sees: relative path -> kind (whiteout, opaque
    dir, redirect dir, dir, file), as buildkit's overlay differ and overlay2's native diff do."""
    out: Dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, upper)
            st = os.lstat(full)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out[rel] = "whiteout"
            elif stat.S_ISDIR(st.st_mode):
                marks = [m for m in ("opaque", "redirect") if xattr(full, xattr_prefix + m) is not None]
                out[rel] = "dir" + "".join("+" + m for m in marks)
            else:
                out[rel] = "file"
    return out


# ---------------------------------------------------------------------------------------------
# A child in a user namespace (rootless), reporting back as JSON

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def in_userns(fn: Callable[[], Dict[str, Any]], timeout: float = 30.0) -> Dict[str, Any]:
    """Run ``fn`` in a forked child that is uid 0 of a new user namespace (mapped to 0: it keeps
    file access, but loses CAP_SYS_ADMIN of the initial namespace, so ``trusted.*`` xattrs and
    mounts need what rootless engines need) with its own mount namespace; its mounts end with
    it. Returns ``fn``'s dict, or ``{"error", "errno"}`` for an exception."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(rfd)
            if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER|CLONE_NEWNS): " + os.strerror(ctypes.get_errno()))
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", "0 0 1")
            _write("/proc/self/gid_map", "0 0 1")
            mountutil.mount("none", "/", None, mountutil.MS_REC | mountutil.MS_PRIVATE)
            out = fn()
        except BaseException as err:  # reported to the parent, never raised here
            out = {"error": str(err), "errno": errno.errorcode.get(getattr(err, "errno", None) or 0)}
            code = 1
        try:
            os.write(wfd, json.dumps(out, default=str).encode())
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise ScenarioFailure("the user-namespace child ran past %.0f s" % timeout)
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    return json.loads(b"".join(chunks).decode() or "{}")


def _rootless_mount(lower: str, upper: str, work: str, merged: str, options: str) -> Dict[str, Any]:
    """In the user-namespace child: mount overlay, then do what apt/dpkg do to an image: replace
    a dir (rm -rf + mkdir: an opaque dir), delete a file (a whiteout), install a file over an
    image file (write .dpkg-new, rename over). Renaming a lower dir is recorded too, but is EXDEV
    wherever redirect_dir is off (and userxattr does not allow it on)."""
    data = "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work) + ("," + options if options else "")
    with KernelLogCursor() as klog:
        try:
            mountutil.mount("overlay", merged, "overlay", 0, data)
        except OSError as err:
            return {"mount": errno.errorcode.get(err.errno), "dmesg": [_strip(l) for l in klog.read_new()]}
        dmesg = [_strip(l) for l in klog.read_new() if "overlay" in l]

    def at(*parts: str) -> str:
        return os.path.join(merged, *parts)

    ops: Dict[str, str] = {}
    for name, op in (("replace-dir", lambda: (shutil.rmtree(at("e")), os.mkdir(at("e")))),
                     ("delete-file", lambda: os.unlink(at("f"))),
                     ("install-over", lambda: (write_file(at("g.dpkg-new"), b"new"), os.rename(at("g.dpkg-new"), at("g")))),
                     ("rename-dir", lambda: os.rename(at("d"), at("d2")))):
        try:
            op()
            ops[name] = "ok"
        except OSError as err:
            ops[name] = errno.errorcode.get(err.errno, str(err.errno))
    view = {"top": sorted(n for n in os.listdir(merged) if n not in ("d", "d2")),
            "e": sorted(os.listdir(at("e"))) if os.path.isdir(at("e")) else None,
            "g": read_file(at("g")).decode() if os.path.isfile(at("g")) else None}
    mountutil.umount(merged)
    return {"mount": "ok", "dmesg": dmesg, "ops": ops, "view": view}


# ---------------------------------------------------------------------------------------------
# opaque flag copied up (moby#25244)

@scenario("opaque-copied-up", "Copy-up of a dir that is opaque in a lower layer leaves the upper copy not opaque; a dir replaced in the upper is opaque",
          "moby#25244 (layer/layer_test.go TestRemoveDirectoryInLowerLayer), containers/storage drivers/overlay/check.go 'opaque flag erroneously copied up'; docs/reference-behaviour.md#breakages",
          GROUP, expect=expect_with(xattr="trusted"), needs_dtype=True, timeout=30, tags=("raw-mount",))
def opaque_copied_up(ctx: ScenarioContext) -> None:
    with workspace(ctx) as ws:
        l1, l2, upper, work = ws.dir("l1", "d"), ws.dir("l2", "d"), ws.dir("upper"), ws.dir("work")
        write_file(os.path.join(l1, "hidden"), b"l1")
        write_file(os.path.join(l2, "kept"), b"l2")
        os.setxattr(l2, OPAQUE, b"y")
        os.makedirs(os.path.join(ws.root, "l1", "e"))
        write_file(os.path.join(ws.root, "l1", "e", "old"), b"old")
        merged = os.path.join(ws.root, "merged")
        ws.mount(merged, [os.path.dirname(l2), os.path.dirname(l1)], upper, work)
        before = read_dir(os.path.join(merged, "d"))
        write_file(os.path.join(merged, "d", "new"), b"new")  # copies d up from l2
        shutil.rmtree(os.path.join(merged, "e"))
        os.mkdir(os.path.join(merged, "e"))  # replaced in the upper: must be opaque
        after, e_view = read_dir(os.path.join(merged, "d")), read_dir(os.path.join(merged, "e"))
        copied, made = xattr(os.path.join(upper, "d"), OPAQUE), xattr(os.path.join(upper, "e"), OPAQUE)
        ctx.note("upper/d opaque=%r (copied up from opaque l2/d), upper/e opaque=%r (replaced)" % (copied, made),
                 merged_d_before=before, merged_d_after=after, merged_e=e_view,
                 upper_d_opaque=repr(copied), upper_e_opaque=repr(made))
        ctx.check(before == ["kept"], "the opaque l2/d does not hide l1/d/hidden: %s" % before)
        ctx.check(copied is None, "the opaque flag of l2/d was copied up to upper/d (moby#25244): a native diff "
                                  "of this layer would emit an opaque whiteout")
        ctx.check(made == b"y" and e_view == [], "a dir replaced through the mount is not opaque in the upper "
                                                 "(opaque=%r, merged/e lists %s)" % (made, e_view))
        ctx.check(after == ["kept", "new"], "merged/d after the copy-up lists %s" % after)


# ---------------------------------------------------------------------------------------------
# metacopy: dpkg's backup link and rename (docker/for-linux#480)

def _dpkg_unpack(ctx: ScenarioContext, options: str) -> None:
    with workspace(ctx) as ws:
        if options:
            ws.require(options, "metadata-only copy-up")
        lower, upper, work = ws.dir("lower", "usr", "bin"), ws.dir("upper"), ws.dir("work")
        write_file(os.path.join(lower, "perl"), b"perl 5.24.1-3+deb9u4\n", 0o755)
        os.makedirs(os.path.join(ws.root, "lower", "var", "lib", "dpkg"))
        write_file(os.path.join(ws.root, "lower", "var", "lib", "dpkg", "status"), b"Package: perl-base\n")
        merged = os.path.join(ws.root, "merged")
        ws.mount(merged, [os.path.join(ws.root, "lower")], upper, work, options)
        perl = os.path.join(merged, "usr", "bin", "perl")
        os.chown(perl, 0, 0)
        os.chmod(perl, 0o755)  # metadata only: with metacopy=on the copy-up takes no data
        meta = xattr(os.path.join(upper, "usr", "bin", "perl"), METACOPY)
        ctx.note("upper/usr/bin/perl after chmod: metacopy xattr %s" % ("present" if meta is not None else "absent"),
                 metacopy_xattr=meta is not None)
        steps = [("backup link usr/bin/perl", lambda: os.link(perl, perl + ".dpkg-tmp")),
                 ("unpack usr/bin/perl.dpkg-new", lambda: write_file(perl + ".dpkg-new", b"perl 5.24.1-3+deb9u5\n", 0o755)),
                 ("rename over usr/bin/perl", lambda: os.rename(perl + ".dpkg-new", perl)),
                 ("status-old link", lambda: os.link(os.path.join(merged, "var/lib/dpkg/status"),
                                                     os.path.join(merged, "var/lib/dpkg/status-old")))]
        for what, step in steps:
            try:
                step()
            except OSError as err:
                ctx.note("%s: %s" % (what, os.strerror(err.errno)), failed_step=what,
                         step_errno=errno.errorcode.get(err.errno))
                raise ScenarioFailure("dpkg's '%s' failed: %s (%s)" % (what, os.strerror(err.errno),
                                                                     errno.errorcode.get(err.errno))) from None
        ctx.check(read_file(perl + ".dpkg-tmp") == b"perl 5.24.1-3+deb9u4\n", "the backup link lost the old content")
        ctx.check(read_file(perl) == b"perl 5.24.1-3+deb9u5\n", "usr/bin/perl is not the new version")


@scenario("metacopy-dpkg-link", "With metacopy=on, dpkg's unpack (chmod, backup hard link, rename over, status-old link) of an image file works",
          "docker/for-linux#480 ('unable to make backup link ... Invalid cross-device link', kernel 4.19 metacopy), moby#38296; docs/reference-behaviour.md#breakages",
          GROUP, expect=expect_with(("metacopy",)), timeout=30, tags=("raw-mount", "metacopy"))
def metacopy_dpkg_link(ctx: ScenarioContext) -> None:
    _dpkg_unpack(ctx, "redirect_dir=on,metacopy=on")


@scenario("dpkg-link-metacopy-off", "With metacopy=off (what overlay2 passes since moby#38296), dpkg's unpack of an image file works: the passing counterpart",
          "moby#38296 (overlay2: metacopy=off), docker/for-linux#480; docs/reference-behaviour.md#breakages",
          GROUP, expect=expect_with(("metacopy",)), timeout=30, tags=("raw-mount", "metacopy"))
def dpkg_link_metacopy_off(ctx: ScenarioContext) -> None:
    _dpkg_unpack(ctx, "metacopy=off")


# ---------------------------------------------------------------------------------------------
# redirect_dir and the native (upperdir) diff (moby/buildkit#2490)

def _renamed_under_redirect(ctx: ScenarioContext, ws: Workspace, d, base: str, ctr: str) -> None:
    """Mount the container layer as the port lays it out, but with redirect_dir=on, and
    ``mv /foo /foo2`` there (as a RUN step on a kernel defaulting to redirect_dir=on)."""
    ws.require("redirect_dir=on", "directory rename by redirect")
    layer = os.path.join(d.home, ctr)
    lower = os.path.join(d.home, base, "root")
    merged = os.path.join(layer, "merged")
    ws.mount(merged, [lower], os.path.join(layer, "upper"), os.path.join(layer, "work"), "redirect_dir=on",
             note="container")
    try:
        os.rename(os.path.join(merged, "foo"), os.path.join(merged, "foo2"))
    finally:
        mountutil.umount(merged)
    ctx.note("renamed /foo to /foo2 under redirect_dir=on", upper=upper_entries(os.path.join(layer, "upper")))


def _redirect_layers(ctx: ScenarioContext, d):
    base, _ = image_layer(ctx, d, "", LayerTar().dir("foo").file("foo/bar", b"bar"))
    ctr = new_id()
    d.create(ctr, base, "")
    return base, ctr


WANT_RENAME = [("/foo", "D"), ("/foo2", "A"), ("/foo2/bar", "A")]


@scenario("redirect-dir-native-diff", "After mv /foo /foo2 under redirect_dir=on, a diff of the upper dir alone (a native differ) has /foo2/bar",
          "moby/buildkit#2490 (overlay differ breaks when redirect_dir is on), moby/buildkit#2491, moby#34342; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("driver", "redirect_dir"),
          expect=expect_with(("redirect_dir",), outcome=Outcome.FAIL,
                             why="redirect_dir=on leaves an empty redirect dir in the upper: a native differ misses "
                                 "/foo2/bar (moby/buildkit#2490)"))
def redirect_dir_native_diff(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, ctr = _redirect_layers(ctx, d)
    with workspace(ctx) as ws:
        _renamed_under_redirect(ctx, ws, d, base, ctr)
    entries = upper_entries(os.path.join(d.home, ctr, "upper"))
    native = sorted(("/" + rel, "D" if kind == "whiteout" else "A") for rel, kind in entries.items())
    ctx.note("native diff = %s" % native, native_changes=native)
    ctx.check(native == WANT_RENAME, "the upperdir diff is %s, not %s: /foo2 is only a redirect to /foo"
              % (native, WANT_RENAME), native_changes=native)


@scenario("redirect-dir-naive-diff", "After mv /foo /foo2 under redirect_dir=on, the port's naive Changes (merged view against the parent) has /foo2/bar",
          "moby/buildkit#2490, moby#34342 (overlay2 falls back to the naive diff where redirect_dir is on), moby v1.10.3 daemon/graphdriver/fsdiff.go; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("driver", "redirect_dir"), expect=expect_with(("redirect_dir",)))
def redirect_dir_naive_diff(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, ctr = _redirect_layers(ctx, d)
    with workspace(ctx) as ws:
        _renamed_under_redirect(ctx, ws, d, base, ctr)
    got = change_pairs(d.changes(ctr, base))
    ctx.note("Changes(ctr, base) = %s" % got, changes=got)
    ctx.check(got == WANT_RENAME, "the naive Changes are %s, not %s" % (got, WANT_RENAME))


# ---------------------------------------------------------------------------------------------
# "upperdir is in-use by another mount" (moby#39475)

def _second_mount_on_shared_upper(ctx: ScenarioContext, index: str) -> None:
    with workspace(ctx) as ws:
        ws.require("index=" + index, "the inodes index")
        lower, upper, work = ws.dir("lower"), ws.dir("upper"), ws.dir("work")
        write_file(os.path.join(lower, "f"), b"lower")
        first, second = os.path.join(ws.root, "first"), os.path.join(ws.root, "second")
        ws.mount(first, [lower], upper, work, "index=" + index, note="first")
        try:
            lines = ws.mount(second, [lower], upper, work, "index=" + index, note="second")
        except MountRefused as err:
            ctx.note("second mount refused", refused_errno=errno.errorcode.get(err.errno))
            raise ScenarioFailure("a second overlay mount sharing the upperdir/workdir was refused: %s"
                                  % err.strerror) from None
        in_use = [l for l in lines if "in-use" in l]
        ctx.note("second mount sharing upper/work accepted", in_use_warnings=in_use)
        write_file(os.path.join(first, "g"), b"via first")
        ctx.check(read_file(os.path.join(second, "g")) == b"via first", "the second mount does not see the first's write")


@scenario("upperdir-in-use", "A second overlay mount sharing a mounted overlay's upperdir/workdir, with index=on, mounts (a restarted container whose old mount leaked)",
          "moby#39475 (kernel 5.2 overlapping-layer and in-use detection, backported to 4.19.56), kernel fs/overlayfs/super.c ovl_report_in_use; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("raw-mount", "index"),
          expect=expect_with(("index",), outcome=Outcome.FAIL,
                             why="with index=on the kernel protects an upperdir in use: the second mount gets EBUSY "
                                 "('upperdir is in-use as upperdir/workdir of another mount')"))
def upperdir_in_use(ctx: ScenarioContext) -> None:
    _second_mount_on_shared_upper(ctx, "on")


@scenario("upperdir-in-use-index-off", "The same second mount with index=off (what overlay2 passes) mounts, the kernel only warning: the passing counterpart",
          "moby#39475, moby#39780 (overlay2 busy error on mount), kernel fs/overlayfs/super.c ovl_report_in_use; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("raw-mount", "index"), expect=expect_with(("index",)))
def upperdir_in_use_index_off(ctx: ScenarioContext) -> None:
    _second_mount_on_shared_upper(ctx, "off")


# ---------------------------------------------------------------------------------------------
# rootless: userxattr, EXDEV and EINVAL (moby#42055, containers/storage#863)

def _rootless(ctx: ScenarioContext, options: str) -> None:
    with workspace(ctx) as ws:
        lower, upper, work = ws.dir("lower", "d"), ws.dir("upper"), ws.dir("work")
        write_file(os.path.join(lower, "x"), b"x")
        ws.dir("lower", "e")
        write_file(os.path.join(ws.root, "lower", "e", "old"), b"old")
        write_file(os.path.join(ws.root, "lower", "f"), b"f")
        write_file(os.path.join(ws.root, "lower", "g"), b"old")
        merged = ws.dir("merged")
        got = in_userns(lambda: _rootless_mount(os.path.dirname(lower), upper, work, merged, options))
        ctx.note("in a user namespace, mount -o %s: %s" % (options or "(defaults)", got.get("mount", got.get("error"))),
                 rootless=got)
        if got.get("error"):
            raise Unsupported("no user namespace here: %s" % got["error"])
        if got["mount"] != "ok":
            raise Unsupported("this kernel refuses overlay in a user namespace%s: %s (dmesg: %s)" % (
                " with " + options if options else "", got["mount"], " | ".join(got["dmesg"]) or "nothing logged"))
        bad = {op: res for op, res in got["ops"].items() if res != "ok" and op != "rename-dir"}
        ctx.check(not bad, "in a user namespace: %s" % ", ".join("%s -> %s" % kv for kv in sorted(bad.items())))
        ctx.check(got["view"] == {"top": ["e", "g"], "e": [], "g": "new"}, "the merged view is wrong: %s" % got["view"])


def _no_redirect_in_userns(facts: Facts) -> Optional[Expectation]:
    return Expectation(Outcome.FAIL, "without userxattr an unprivileged overlay cannot set trusted.overlay.*: "
                                     "replacing an image dir fails (EIO; moby#42055)")


@scenario("rootless-no-userxattr", "In a user namespace, an overlay mounted without userxattr lets apt replace image dirs, delete files and install files over image files",
          "moby#42055 ('[kernel 5.11 + overlay2 + rootless]: Invalid cross-device link'), containers/podman#13123; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("raw-mount", "rootless"),
          expect=expect_with(("userxattr",), unless=_no_redirect_in_userns))
def rootless_no_userxattr(ctx: ScenarioContext) -> None:
    _rootless(ctx, "")


@scenario("rootless-userxattr", "The same in a user namespace with userxattr (what rootless engines pass): the passing counterpart",
          "containers/storage#816 (userxattr for rootless overlay), containers/podman#9783 (userxattr -> EINVAL on kernel 5.4), moby#42068; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("raw-mount", "rootless"), needs_dtype=True, expect=expect_with(("userxattr",), xattr="user"))
def rootless_userxattr(ctx: ScenarioContext) -> None:
    _rootless(ctx, "userxattr")


# ---------------------------------------------------------------------------------------------
# idmapped lower layers (containers/storage#1180)

SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every architecture
OPEN_TREE_CLONE, AT_EMPTY_PATH, AT_RECURSIVE, MOVE_MOUNT_F_EMPTY_PATH = 1, 0x1000, 0x8000, 0x4
MOUNT_ATTR_IDMAP = 0x00100000
AT_FDCWD = -100


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _syscall(number: int, *args: Any) -> int:
    res = _libc.syscall(ctypes.c_long(number), *args)
    if res < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return res


def idmapped_mount(source: str, target: str, userns_fd: int) -> None:
    """``open_tree(OPEN_TREE_CLONE)`` + ``mount_setattr(MOUNT_ATTR_IDMAP)`` + ``move_mount``."""
    fd = _syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source), OPEN_TREE_CLONE | os.O_CLOEXEC)
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
        _syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(fd)


@scenario("idmapped-lower", "An idmapped mount of an image layer (0 -> 100000) works as overlay lowerdir: the container sees the shifted owners, copy-up keeps them",
          "containers/storage#1180 (overlay: use idmapped lower layers where supported), kernel mount_setattr(2) MOUNT_ATTR_IDMAP; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("raw-mount", "idmap"), expect=expect_with(("idmapped_lower",)))
def idmapped_lower(ctx: ScenarioContext) -> None:
    with workspace(ctx) as ws:
        lower, upper, work = ws.dir("lower"), ws.dir("upper"), ws.dir("work")
        write_file(os.path.join(lower, "f"), b"image")
        os.chown(os.path.join(lower, "f"), 0, 0)
        mapped = ws.dir("mapped")
        try:
            userns = idmap_userns_fd()  # ids 0.. inside are IDMAP_BASE.. outside
            try:
                idmapped_mount(lower, mapped, userns)
            finally:
                os.close(userns)
        except OSError as err:
            raise Unsupported("no idmapped mount of %s here: %s" % (ctx.facts.fs_name, os.strerror(err.errno))) from None
        st = os.stat(os.path.join(mapped, "f"))
        ctx.note("idmapped lower shows f as %d:%d" % (st.st_uid, st.st_gid), mapped_owner=[st.st_uid, st.st_gid])
        merged = os.path.join(ws.root, "merged")
        try:
            ws.mount(merged, [mapped], upper, work)
        except MountRefused as err:
            raise Unsupported("this kernel refuses an idmapped lowerdir: %s" % err.strerror) from None
        seen = os.stat(os.path.join(merged, "f"))
        with open(os.path.join(merged, "f"), "ab") as f:
            f.write(b"+")  # copy-up
        copied = os.lstat(os.path.join(upper, "f"))
        ctx.note("merged f %d:%d, upper copy %d:%d" % (seen.st_uid, seen.st_gid, copied.st_uid, copied.st_gid),
                 merged_owner=[seen.st_uid, seen.st_gid], upper_owner=[copied.st_uid, copied.st_gid])
        ctx.check((seen.st_uid, seen.st_gid) == (IDMAP_BASE, IDMAP_BASE),
                  "the container sees f as %d:%d, not the mapped %d" % (seen.st_uid, seen.st_gid, IDMAP_BASE))
        ctx.check((copied.st_uid, copied.st_gid) == (IDMAP_BASE, IDMAP_BASE),
                  "the copied-up f is %d:%d in the upper, not %d" % (copied.st_uid, copied.st_gid, IDMAP_BASE))


# ---------------------------------------------------------------------------------------------
# volatile (containers/podman#22046)

VOLATILE_DIR = ("work", "incompat", "volatile")


def _volatile_remount(ctx: ScenarioContext, clean: bool) -> None:
    with workspace(ctx) as ws:
        ws.require("volatile", "volatile mounts")
        lower, upper, work = ws.dir("lower"), ws.dir("upper"), ws.dir("work")
        write_file(os.path.join(lower, "f"), b"lower")
        merged = os.path.join(ws.root, "merged")
        ws.mount(merged, [lower], upper, work, "volatile", note="volatile")
        write_file(os.path.join(merged, "data"), b"written")
        mountutil.umount(merged)
        marker = os.path.join(work, *VOLATILE_DIR)
        left = os.path.isdir(marker)
        ctx.note("after unmount, workdir/work/incompat/volatile %s" % ("is left" if left else "is gone"),
                 volatile_marker_left=left)
        if clean and left:
            shutil.rmtree(os.path.join(work, "work", "incompat"))
            ctx.note("removed workdir/work/incompat (as containers/storage does before a volatile remount)")
        try:
            ws.mount(merged, [lower], upper, work, "volatile", note="again")
        except MountRefused as err:
            ctx.note("remount refused", refused_errno=errno.errorcode.get(err.errno))
            raise ScenarioFailure("remounting the container's upper (volatile) was refused: %s" % err.strerror) from None
        ctx.check(read_file(os.path.join(merged, "data")) == b"written", "the remounted upper lost what was written")


@scenario("volatile-remount", "A container mounted volatile, unmounted and mounted again (podman run --rm restart) mounts",
          "containers/podman#22046 (podman run fails because of overlayfs mount errors; userxattr,volatile,context=), kernel Documentation/filesystems/overlayfs.rst 'Volatile mount'; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("raw-mount", "volatile"),
          expect=expect_with(("volatile",), outcome=Outcome.FAIL,
                             why="a volatile mount leaves workdir/work/incompat/volatile: the next mount of that "
                                 "upper is refused (EINVAL, \"incompat feature 'volatile'\")"))
def volatile_remount(ctx: ScenarioContext) -> None:
    _volatile_remount(ctx, clean=False)


@scenario("volatile-remount-cleaned", "The same volatile remount after removing workdir/work/incompat (what containers/storage does): the passing counterpart",
          "containers/podman#22046, kernel Documentation/filesystems/overlayfs.rst 'Volatile mount'; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("raw-mount", "volatile"), expect=expect_with(("volatile",)))
def volatile_remount_cleaned(ctx: ScenarioContext) -> None:
    _volatile_remount(ctx, clean=True)


# ---------------------------------------------------------------------------------------------
# listxattr before copy-up (kernel 6.12, composefs/composefs-rs#311)

@scenario("listxattr-before-copy-up", "listxattr of an image dir and file through the container works before copy-up and lists the same user xattrs after",
          "composefs/composefs-rs#311 (OverlayFS throws EOPNOTSUPP for listxattr until copy-up, kernel 6.12); docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("raw-mount", "xattr"), expect=expect_with())
def listxattr_before_copy_up(ctx: ScenarioContext) -> None:
    with workspace(ctx) as ws:
        lower, upper, work = ws.dir("lower", "var"), ws.dir("upper"), ws.dir("work")
        write_file(os.path.join(lower, "f"), b"f")
        tagged = True
        try:
            os.setxattr(os.path.join(lower, "f"), "user.test", b"1")
        except OSError:
            tagged = False  # no user xattrs on this fs: listxattr must still answer (an empty list)
        merged = os.path.join(ws.root, "merged")
        ws.mount(merged, [os.path.dirname(lower)], upper, work)
        rows: Dict[str, Any] = {}
        for when in ("before", "after"):
            for rel in ("var", "var/f"):
                try:
                    rows["%s %s" % (when, rel)] = sorted(n for n in os.listxattr(os.path.join(merged, rel), follow_symlinks=False)
                                                         if not n.startswith("security."))
                except OSError as err:
                    rows["%s %s" % (when, rel)] = errno.errorcode.get(err.errno, str(err.errno))
            if when == "before":
                write_file(os.path.join(merged, "var", ".x"), b"")  # copies var up
                with open(os.path.join(merged, "var", "f"), "ab") as f:
                    f.write(b"+")  # copies f up
        ctx.note("listxattr through the mount: %s" % rows, listxattr=rows, lower_tagged=tagged)
        failed = {k: v for k, v in rows.items() if isinstance(v, str)}
        ctx.check(not failed, "listxattr failed: %s" % ", ".join("%s -> %s" % kv for kv in sorted(failed.items())))
        ctx.check(rows["before var/f"] == rows["after var/f"] and rows["before var"] == rows["after var"],
                  "listxattr lists different names before and after copy-up: %s" % rows)
        ctx.check(not tagged or rows["before var/f"] == ["user.test"], "the image file's user.test is not listed: %s" % rows)


# ---------------------------------------------------------------------------------------------
# user.overlay.* xattrs inside image layers (moby#47962)

def _user_overlay_layer() -> LayerTar:
    tar = LayerTar().dir("etc").file("etc/os-release", b"ID=test\n",
                                     xattrs={"user.overlay.origin": b"\x00\xfb\x21\x01"})
    tar.entries[0].info.pax_headers = {"SCHILY.xattr.user.overlay.opaque": "y"}
    return tar


@scenario("user-overlay-xattr-in-layer", "An image layer built by rootless podman (user.overlay.* xattrs in the tar) applies through the port and its files show in a container",
          "moby#47962 ('failed to register layer: lsetxattr user.overlay.origin /etc: operation not supported'), containers/storage#1847; docs/reference-behaviour.md#breakages",
          GROUP, timeout=30, tags=("driver", "xattr"),
          expect=expect_with(unless=lambda f: Expectation(Outcome.FAIL, "%s has no user.* xattrs: lsetxattr user.overlay.* "
                                                                     "fails with EOPNOTSUPP (moby#47962)" % f.fs_name)
                             if f.get("xattr_user") is False else None))
def user_overlay_xattr_in_layer(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().dir("etc").file("etc/hostname", b"base\n"))
    layer, _ = image_layer(ctx, d, base, _user_overlay_layer())
    root = os.path.join(d.home, layer, "root", "etc")
    kept = {n: xattr(p, n) for p, n in ((root, "user.overlay.opaque"),
                                         (os.path.join(root, "os-release"), "user.overlay.origin"))}
    ctx.note("applied; xattrs on disk: %s" % {k: repr(v) for k, v in kept.items()},
             on_disk={k: repr(v) for k, v in kept.items()})
    ctr = new_id()
    d.create(ctr, layer, "")
    with mounted(d, ctr) as view:
        names = read_dir(os.path.join(view, "etc"))
    ctx.note("container /etc lists %s" % names, container_etc=names)
    ctx.check(names == ["hostname", "os-release"], "the container's /etc lists %s: user.overlay.opaque was taken "
                                                   "as overlay's own" % names)
