"""The native ApplyDiff's hard-link hazard, shown and avoided.

overlay's ApplyDiff (moby v1.10.3 ``daemon/graphdriver/overlay/overlay.go`` ``ApplyDiff``)
fills the new layer's root with ``copyDir(parentRootDir, tmpRootDir, copyHardlink)``: every
regular file of the child is a hard link to the parent's inode. When the layer tar then holds a
hard-link entry to such an inherited file, ``createTarFile`` (``pkg/archive/archive.go``) links
it and runs ``Lchown``, the xattrs, ``Chmod`` and ``Chtimes`` on the link, i.e. on the inode the
**parent layer** shares: a child layer can make the parent's ``/bin/ping`` mode 6777, owned by
another user, with a new ``security.capability``, for every other image built on that parent.

The port keeps this as the default (pinned by ``applydiff-hardlink-hazard``, expected FAIL: the
healthy behaviour it checks, "the parent layer is unchanged", does not hold) and warns about
each such entry; the driver option ``overlay.safe_apply=true`` (a port addition) copies the
file before changing it, and ``applydiff-safe-apply`` checks that the parent stays intact.
"""
from __future__ import annotations

import os
import stat

from ..scenario import Expectation, Outcome, ScenarioContext, default_expect, scenario
from ._layers import CAP_NET_RAW_XATTR, LayerTar, image_layer

# What the child's hard-link entry carries: setuid+setgid+rwx for all, another owner, a capability.
_HAZARD_MODE = 0o6777
_HAZARD_UID = 4242
_HAZARD_CAP = bytes.fromhex("01000002" "00300000" "00000000" "00000000" "00000000")


def _expect_hazard(sc, facts) -> Expectation:
    base = default_expect(sc, facts)
    if base.outcome is not Outcome.PASS:
        return base
    return Expectation(Outcome.FAIL, "known hazard kept from the reference: a child layer's hard link to an "
                       "inherited file changes the parent layer's inode (overlay ApplyDiff hard-links the "
                       "parent's files, moby v1.10.3 overlay.go ApplyDiff + archive.go createTarFile); "
                       "overlay.safe_apply=true avoids it")


def _meta(path: str):
    st = os.lstat(path)
    try:
        cap = os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        cap = None
    return {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid,
            "cap": cap.hex() if cap else None, "ino": st.st_ino}


def _apply_hazard(ctx: ScenarioContext, options):
    d = ctx.driver(options=options)
    parent, _ = image_layer(ctx, d, "", LayerTar().dir("bin").file(
        "bin/ping", b"ping", 0o755, xattrs={"security.capability": CAP_NET_RAW_XATTR}))
    parent_ping = os.path.join(d.home, parent, "root", "bin", "ping")
    before = _meta(parent_ping)
    child, _ = image_layer(ctx, d, parent, LayerTar().dir("usr").hardlink(
        "usr/ping2", "bin/ping", mode=_HAZARD_MODE, uid=_HAZARD_UID, gid=_HAZARD_UID,
        xattrs={"security.capability": _HAZARD_CAP}))
    child_root = os.path.join(d.home, child, "root")
    after = _meta(parent_ping)
    child_meta = _meta(os.path.join(child_root, "usr", "ping2"))
    warnings = list(getattr(d, "last_apply_warnings", []))
    ctx.note("parent bin/ping before %s, after %s; child usr/ping2 %s" % (before, after, child_meta),
             parent_before=before, parent_after=after, child=child_meta, warnings=warnings)
    return d, child_root, before, after, child_meta, warnings


@scenario("applydiff-hardlink-hazard", "A child layer's hard link to an inherited file changes the parent layer's inode (mode 6777, owner, security.capability): the reference's hazard, kept and warned about",
          "moby v1.10.3 overlay.go ApplyDiff (copyDir with hard links) + pkg/archive createTarFile (Lchown/Chmod on the link); docs/reference-behaviour.md#applydiff",
          "quirks", expect=_expect_hazard, needs_mount=False, timeout=30, tags=("child-layer",))
def applydiff_hardlink_hazard(ctx: ScenarioContext) -> None:
    _d, _root, before, after, child, warnings = _apply_hazard(ctx, ())
    ctx.check(child["mode"] == oct(_HAZARD_MODE) and child["uid"] == _HAZARD_UID,
              "the child layer's hard link did not get the entry's mode and owner", child=child)
    ctx.check(any("changes the parent layer's file" in w for w in warnings),
              "ApplyDiff did not warn about the hard link to an inherited file", warnings=warnings)
    ctx.check(after["mode"] == before["mode"] and after["uid"] == before["uid"] and after["cap"] == before["cap"],
              "the child layer's hard-link entry changed the PARENT layer's bin/ping: mode %s -> %s, uid %d -> %d, "
              "security.capability %s -> %s" % (before["mode"], after["mode"], before["uid"], after["uid"],
                                                 before["cap"], after["cap"]))


@scenario("applydiff-safe-apply", "With overlay.safe_apply=true, a child layer's hard link to an inherited file gets the entry's metadata and the parent layer's file stays intact",
          "port option overlay.safe_apply (README 'Where the port differs from the reference'); the hazard of moby v1.10.3 overlay.go ApplyDiff, docs/reference-behaviour.md#applydiff",
          "quirks", needs_mount=False, timeout=30, tags=("child-layer",))
def applydiff_safe_apply(ctx: ScenarioContext) -> None:
    _d, root, before, after, child, warnings = _apply_hazard(ctx, ("overlay.safe_apply=true",))
    ctx.check(after == before, "the parent layer's bin/ping changed although overlay.safe_apply is on",
              before=before, after=after)
    ctx.check(child["mode"] == oct(_HAZARD_MODE) and child["uid"] == _HAZARD_UID,
              "the child layer's hard link did not get the entry's mode and owner", child=child)
    ping = _meta(os.path.join(root, "bin", "ping"))
    ctx.check(ping["ino"] == child["ino"] != before["ino"],
              "in the child, bin/ping and usr/ping2 are not one new inode", child_ping=ping)
    with open(os.path.join(root, "usr", "ping2"), "rb") as f:
        ctx.check(f.read() == b"ping", "the copied file lost its content")
    ctx.check(warnings == [], "safe_apply still warned", warnings=warnings)
