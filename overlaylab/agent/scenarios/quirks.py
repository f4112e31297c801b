"""Quirks of the reference that the port keeps on purpose. PASS means the quirk reproduces
exactly as the reference has it (docs/reference-behaviour.md#create, #put-remove-status, #applydiff, #copydir-quirks); a FAIL means the port (or the kernel)
behaves differently from Docker 1.10.3 here.
"""
from __future__ import annotations

import io
import os

from ...graphdriver.errors import ErrApplyDiffFallback
from ..logcapture import capture_log
from ..scenario import ScenarioContext, scenario
from ._layers import (
    LayerTar,
    image_layer,
    mounted,
    mounts,
    new_id,
    read_file,
    short_dir_path,
    write_file,
)


@scenario("recreate-quirk", "Re-Create of a case-C layer over an existing symlink fails with EEXIST and deletes the whole layer; regular files are overwritten without truncation",
          "moby v1.10.3 overlay.go (*Driver).Create re-Create of an existing id, copy.go copyRegular (no O_TRUNC); docs/reference-behaviour.md#create", "quirks", timeout=30)
def recreate_quirk(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().file("f", b"x"))
    # Part 1: regular files are re-copied without O_TRUNC.
    init1, ctr1 = new_id(), new_id()
    d.create(init1, base, "")
    with mounted(d, init1) as view:
        write_file(os.path.join(view, "g"), b"XYZ")
    d.create(ctr1, init1, "")
    write_file(os.path.join(d.home, ctr1, "upper", "g"), b"abcdefgh")
    d.create(ctr1, init1, "")  # no symlink/fifo/device in the upper: silently "succeeds"
    got = read_file(os.path.join(d.home, ctr1, "upper", "g"))
    ctx.note("re-Create over a longer file left %r" % got, untruncated=repr(got))
    ctx.check(got == b"XYZdefgh", "re-Create case C did not overwrite without truncation (got %r)" % got)
    # Part 2: an existing symlink makes the copy fail, and the failure removes the layer.
    init2, ctr2 = new_id(), new_id()
    d.create(init2, base, "")
    with mounted(d, init2) as view:
        os.symlink("/target", os.path.join(view, "link"))
    d.create(ctr2, init2, "")
    d.create(base, "", "")  # case A again: silently fine
    d.create(init2, base, "")  # case B again: silently fine
    ctx.check(d.exists(base) and d.exists(init2), "re-Create of case A/B lost a layer")
    try:
        d.create(ctr2, init2, "")
    except OSError as err:
        ctx.note("re-Create case C: %s" % err, recreate_error=str(err), recreate_errno=err.errno)
        ctx.check("file exists" in str(err), "re-Create failed, but not with EEXIST: %s" % err)
    else:
        ctx.check(False, "re-Create case C over a symlink succeeded (the reference fails with EEXIST)")
    ctx.check(not d.exists(ctr2), "the failed re-Create did not delete the layer (the reference does rm -rf)")


@scenario("socket-copy-quirk", "A unix socket in an -init layer's upper makes Create case C fail with 'invalid argument' (mkfifo of a socket mode); the layer is removed",
          "moby v1.10.3 overlay copy.go copyDir fifo/socket case (syscall.Mkfifo(st_mode) -> EINVAL); docs/reference-behaviour.md#copydir-quirks", "quirks", timeout=30)
def socket_copy_quirk(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    base, _ = image_layer(ctx, d, "", LayerTar().dir("run").file("f", b"x"))
    ctr = new_id()
    init = ctr + "-init"
    d.create(init, base, "")
    with mounted(d, init) as view:
        import socket  # imported here: only this cell needs it, and guests pay ~25 ms per import under TCG
        fd = os.open(os.path.join(view, "run"), os.O_RDONLY | os.O_DIRECTORY)
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(short_dir_path(fd, "sock"))  # the merged path is longer than sun_path allows
        finally:
            s.close()
            os.close(fd)
    try:
        d.create(ctr, init, "")
    except OSError as err:
        ctx.note("Create case C: %r" % str(err), create_error=str(err), create_errno=err.errno)
        ctx.check(str(err) == "invalid argument", "Create case C failed, but not with 'invalid argument': %s" % err)
    else:
        ctx.check(False, "Create case C copied a socket (the reference fails with EINVAL)")
    ctx.check(not d.exists(ctr), "the failed Create left the layer directory behind")


@scenario("applydiff-fallback", "ApplyDiff with a Shape-O parent (and with no parent) falls back to the naive path: extraction through the mount into upper/",
          "moby v1.10.3 overlay.go (*naiveDiffDriverWithApply).ApplyDiff (ErrApplyDiffFallback, 'Fall back to normal ApplyDiff'); docs/reference-behaviour.md#applydiff", "quirks", timeout=30)
def applydiff_fallback(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    proto = getattr(d, "proto", d)
    try:
        proto.apply_diff(new_id(), "", io.BytesIO())
    except ErrApplyDiffFallback as err:
        ctx.check(str(err) == "Fall back to normal ApplyDiff", "fallback error text is %r" % str(err))
    else:
        ctx.check(False, "overlay's own ApplyDiff accepted a parentless layer")
    base, size = image_layer(ctx, d, "", LayerTar().file("f", b"abc"))
    ctx.check(size == 3, "the naive ApplyDiff of a base layer returned %d, expected 3" % size)
    ctx.check(os.path.isfile(os.path.join(d.home, base, "root", "f")), "the base layer was not extracted into root/")
    ctr = new_id()
    init = ctr + "-init"
    d.create(init, base, "")
    d.create(ctr, init, "")
    try:
        proto.apply_diff(ctr, init, io.BytesIO())
    except ErrApplyDiffFallback:
        pass
    else:
        ctx.check(False, "overlay's own ApplyDiff accepted a Shape-O parent")
    tar = LayerTar().file("g", b"hello").dir("sub").file("sub/h", b"hi")
    path = tar.write(ctx.path("fallback.tar"))
    with open(path, "rb") as stream:
        got = d.apply_diff(ctr, init, stream)
    layer = os.path.join(d.home, ctr)
    ctx.note("fallback ApplyDiff returned %d; layer has %s" % (got, sorted(os.listdir(layer))),
             apply_size=got, layer_dir=sorted(os.listdir(layer)))
    ctx.check(got == 7, "the fallback ApplyDiff returned %d, expected 7" % got)
    ctx.check(read_file(os.path.join(layer, "upper", "g")) == b"hello", "the fallback did not extract into upper/")
    ctx.check(read_file(os.path.join(layer, "upper", "sub", "h")) == b"hi", "sub/h is not in upper/")
    ctx.check(not os.path.exists(os.path.join(layer, "root")), "the layer turned into Shape R")
    ctx.check(read_file(os.path.join(layer, "lower-id")) == base.encode(), "lower-id changed")
    ctx.check(ctr not in proto.active and not mounts(d), "the fallback left the layer mounted",
              mounts=[m.mountpoint for m in mounts(d)])
    with mounted(d, ctr) as view:
        ctx.check(read_file(os.path.join(view, "f")) == b"abc" and read_file(os.path.join(view, "g")) == b"hello",
                  "the container view does not show both the image and the applied files")




@scenario("put-unknown-id", "Put of a never-created id, an extra Put, and Put of a never-mounted overlay layer all return no error",
          "moby v1.10.3 overlay.go (*Driver).Put ('Put on a non-mounted device', always nil); docs/reference-behaviour.md#put-remove-status", "quirks", needs_mount=False, timeout=30)
def put_unknown_id(ctx: ScenarioContext) -> None:
    d = ctx.driver()
    with capture_log("overlaylab.graphdriver") as cap:
        results = {}
        results["never-existed"] = d.put("never-existed")
        base, _ = image_layer(ctx, d, "", LayerTar().file("f", b"x"))
        d.get(base, "")
        d.put(base)
        results["extra Put of an image layer"] = d.put(base)
        ctr = new_id()
        d.create(ctr, base, "")
        results["never-mounted overlay layer"] = d.put(ctr)
    ctx.note("Put results", results={k: repr(v) for k, v in results.items()}, log=cap.lines)
    ctx.check(all(v is None for v in results.values()), "a Put returned something", results=repr(results))
    want = "Put on a non-mounted device never-existed"
    ctx.check(any(line.endswith(": " + want) for line in cap.lines),
              "the debug line %r was not logged" % want, log=cap.lines)
    ctx.check(d.exists(ctr) and d.exists(base), "Put removed a layer")
