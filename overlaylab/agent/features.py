"""The overlayfs feature matrix of one kernel x backing filesystem, each feature probed with a
real mount (never guessed from the kernel version).

:func:`probe_features` mounts scratch overlays whose lower/upper/work directories live on the
backing filesystem under test, tries each feature's mount option and then checks that the
feature really acts (a redirect xattr written, a metadata-only copy-up, an index entry, ...).
Every feature gets ``{"supported": True|False|None, "reason": one line, "evidence": {...}}``;
the evidence holds each mount attempt (``options``, ``errno`` name, the ``dmesg`` lines the
kernel logged during it), the ``checks`` made after the mount, and the module parameter that
sets the feature's default (``/sys/module/overlay/parameters/*``) where there is one.
``supported`` is None when the probe could not decide (a tool or syscall the probe itself needs
is missing) or when the filesystem cannot be an overlay upperdir at all (the baseline mount is
refused, e.g. overlay on overlay): then ``reason`` says why.

The features and where the kernel documents them (Documentation/filesystems/overlayfs.rst,
https://docs.kernel.org/filesystems/overlayfs.html; option parsing and the conflicts between
options in fs/overlayfs/params.c ``ovl_fs_params_verify``, fs/overlayfs/super.c before 6.5):

``redirect_dir``     "Renaming directories" (4.10): ``redirect_dir=on``, rename a lower directory
                     through the merged view; the upper copy carries ``trusted.overlay.redirect``.
``metacopy``         "Metadata only copy up" (4.19): ``metacopy=on``, chmod a lower file; the upper
                     copy has ``trusted.overlay.metacopy`` and no data blocks.
``index``            "Inode index" (4.13): ``index=on``, copy up a hard-linked lower file; an entry
                     appears in ``workdir/index`` and the other link sees the copy.
``xino``             "Inode properties" / xino (4.17): ``xino=on`` with a lower layer on a second
                     filesystem (a small tmpfs): every object reports the overlay's st_dev, inode
                     numbers stay unique; ``xino=off`` is mounted too, to show the difference.
``nfs_export``       "NFS export" (4.16): ``nfs_export=on`` (which turns index on); a file handle
                     of a merged file is encoded and decoded (name_to_handle_at/open_by_handle_at);
                     ``nfs_export=on,index=off`` must be refused (EINVAL: conflicting options).
``volatile``         "Volatile mount" (5.10): the ``volatile`` option is taken and shown in
                     mountinfo, with ``workdir/work/incompat/volatile`` made.
``userxattr``        "Permission model" / user xattrs (5.11): in a user namespace
                     (``unshare --user --map-root-user --mount``) a helper mounts with
                     ``userxattr`` and makes an opaque directory: ``user.overlay.opaque`` set.
``idmapped_lower``   idmapped layers (5.19; idmapped mounts 5.12, mount_setattr(2)): a lower
                     layer bind mount made with open_tree(2), idmapped with mount_setattr(2)
                     ``MOUNT_ATTR_IDMAP`` and attached with move_mount(2); the overlay mounts on it
                     and shows the lower's owner through the idmap.
``data_only_lower``  "Data-only lower layers" (6.5): ``lowerdir=l1::data`` with ``metacopy=on``;
                     the data layer's files are hidden and a metacopy file in l1 that redirects
                     to ``/blob`` reads the data layer's content.

Everything mounted is unmounted and every directory removed, on error too (one scratch
directory per call, :func:`overlaylab.agent.probes.scratch_dir`). Guest code: standard library
only, Python 3.9.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import json
import os
import stat
import sys
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from .. import mountutil
from ..mountutil import mount_entry
from .probes import OVERLAY_PARAMS_DIR, Probe, scratch_dir
from .recipes import overlay_mount_data
from .shell import KernelLogCursor, run, which

FEATURES: Tuple[str, ...] = ("redirect_dir", "metacopy", "index", "xino", "nfs_export", "volatile",
                             "userxattr", "idmapped_lower", "data_only_lower")
#: the overlay module parameter that sets a feature's default, where there is one
MODULE_PARAMS = {"redirect_dir": "redirect_dir", "metacopy": "metacopy", "index": "index",
                 "xino": "xino_auto", "nfs_export": "nfs_export"}

# Syscalls of the new mount API. Numbers from 424 on are the same on every architecture but
# alpha (include/uapi/asm-generic/unistd.h: open_tree 428, move_mount 429, mount_setattr 442).
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWUSER = 0x10000000
#: the idmap of the idmapped lower: ids 0..65535 inside are 100000.. outside
IDMAP_BASE = 100000

# libc as the interpreter already has it loaded (dlopen(NULL)): ctypes.util.find_library would
# run ldconfig -p, an exec that costs ~0.1 s at every agent start in a TCG guest
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    # struct mount_attr (include/uapi/linux/mount.h), MOUNT_ATTR_SIZE_VER0 = 32
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def errno_name(code: Optional[int]) -> Optional[str]:
    """The kernel's name of an errno (EOPNOTSUPP, not glibc's alias ENOTSUP)."""
    if code is None:
        return None
    if code == errno_mod.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno_mod.errorcode.get(code, str(code))


def _module_param(feature: str) -> Optional[Dict[str, str]]:
    name = MODULE_PARAMS.get(feature)
    if name is None:
        return None
    try:
        with open(os.path.join(OVERLAY_PARAMS_DIR, name)) as f:
            return {name: f.read().strip()}
    except OSError as err:
        return {name: "<%s>" % errno_name(err.errno)}


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _xattr(path: str, name: str) -> Tuple[Optional[bytes], str]:
    """``(value, text)``: the xattr's value (None if absent or unreadable) and a check line."""
    try:
        value = os.getxattr(path, name, follow_symlinks=False)
        return value, "%s %s = %r" % (_short(path), name, value)
    except OSError as err:
        return None, "%s %s: %s" % (_short(path), name, errno_name(err.errno))


def _short(path: str) -> str:
    """``upper/f`` of a scratch path: the last two components."""
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


class Layout:
    """One scratch overlay's directories (``l1`` at the bottom), its mount attempts and checks."""

    def __init__(self, root: str, nlowers: int = 1):
        self.root = root
        os.mkdir(root)
        self.lowers = [os.path.join(root, "l%d" % (i + 1)) for i in range(nlowers)]
        self.upper, self.work, self.merged = (os.path.join(root, n) for n in ("upper", "work", "merged"))
        for d in self.lowers + [self.upper, self.work, self.merged]:
            os.mkdir(d)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)


class FeatureProbe:
    """The probes of one call: a scratch root, the kernel log cursor, each feature's evidence."""

    def __init__(self, root: str, klog: KernelLogCursor):
        self.root = root
        self.klog = klog
        self.evidence: Dict[str, Any] = {}
        self._n = 0

    def start(self, feature: str) -> Dict[str, Any]:
        self.evidence = {"attempts": [], "checks": [], "module_param": _module_param(feature)}
        return self.evidence

    def layout(self, name: str, nlowers: int = 1) -> Layout:
        self._n += 1
        return Layout(os.path.join(self.root, "%02d-%s" % (self._n, name)), nlowers)

    def attempt(self, options: str, fn: Callable[[], None]) -> Optional[str]:
        """Run one mount step; record ``options``, its errno name (None: it worked) and the
        kernel's lines. Returns the errno name."""
        self.klog.read_new()
        try:
            fn()
            err = None
        except OSError as exc:
            err = errno_name(exc.errno)
        self.evidence["attempts"].append({"options": options, "errno": err, "dmesg": self.klog.read_new()})
        return err

    def check(self, text: str) -> None:
        self.evidence["checks"].append(text)

    @contextlib.contextmanager
    def overlay(self, ov: Layout, options: str, lowerdir: Optional[str] = None) -> Iterator[Optional[str]]:
        """Mount ``ov`` with ``options``; yields the errno name (None: mounted); unmounts."""
        lower = lowerdir if lowerdir is not None else ":".join(reversed(ov.lowers))
        data = overlay_mount_data([lower], ov.upper, ov.work, options)
        err = self.attempt(options or "(defaults)",
                           lambda: mountutil.mount("overlay", ov.merged, "overlay", 0, data))
        try:
            if err is None:
                self.evidence["attempts"][-1]["mountinfo"] = _super_options(ov.merged)
            yield err
        finally:
            if err is None:
                with contextlib.suppress(OSError):
                    mountutil.umount(ov.merged)


def _super_options(mountpoint: str) -> str:
    """The overlay's options as the kernel shows them in mountinfo, without the layer paths."""
    m = mount_entry(mountpoint)
    if m is None:
        return ""
    return ",".join(o for o in m.super_options.split(",")
                    if o.split("=", 1)[0] not in ("lowerdir", "upperdir", "workdir", "datadir"))


def _result(supported: Optional[bool], reason: str, evidence: Mapping[str, Any]) -> Dict[str, Any]:
    decided = [a for a in evidence.get("attempts", ()) if a.get("errno")]
    out = dict(evidence)
    out["errno"] = decided[0]["errno"] if decided and supported is not True else None
    out["dmesg"] = [line for a in evidence.get("attempts", ()) for line in a.get("dmesg", ())]
    return {"supported": supported, "reason": reason, "evidence": out}


def _refused(err: str, options: str) -> Tuple[bool, str]:
    return False, "mount with %s refused: %s" % (options, err)


# --- the features -----------------------------------------------------------------------

def probe_redirect_dir(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    ov = fp.layout("redirect_dir")
    os.mkdir(os.path.join(ov.lowers[0], "d1"))
    _write(os.path.join(ov.lowers[0], "d1", "x"), b"lower\n")
    with fp.overlay(ov, "redirect_dir=on") as err:
        if err:
            return _refused(err, "redirect_dir=on")
        try:
            os.rename(os.path.join(ov.merged, "d1"), os.path.join(ov.merged, "d2"))
        except OSError as exc:
            fp.check("rename(merged/d1, merged/d2): %s" % errno_name(exc.errno))
            return False, "rename of a lower directory failed: %s" % errno_name(exc.errno)
        fp.check("rename(merged/d1, merged/d2): ok")
        redirect, line = _xattr(os.path.join(ov.upper, "d2"), "trusted.overlay.redirect")
        fp.check(line)
        seen = os.listdir(os.path.join(ov.merged, "d2"))
        fp.check("merged/d2 lists %s" % sorted(seen))
        if redirect is None:
            return False, "rename worked without a trusted.overlay.redirect xattr (copied the tree?)"
        return seen == ["x"], "lower directory renamed; upper/d2 trusted.overlay.redirect=%r" % redirect


def probe_metacopy(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    ov = fp.layout("metacopy")
    data = b"m" * 65536
    _write(os.path.join(ov.lowers[0], "f"), data)
    with fp.overlay(ov, "metacopy=on") as err:
        if err:
            return _refused(err, "metacopy=on")
        os.chmod(os.path.join(ov.merged, "f"), 0o600)
        st = os.lstat(os.path.join(ov.upper, "f"))
        fp.check("chmod merged/f 0600; upper/f mode %s size %d blocks %d"
                 % (stat.filemode(st.st_mode), st.st_size, st.st_blocks))
        marker, line = _xattr(os.path.join(ov.upper, "f"), "trusted.overlay.metacopy")
        fp.check(line)
        same = _read(os.path.join(ov.merged, "f")) == data
        fp.check("merged/f reads the lower's data: %s" % same)
        # st_blocks may count an xattr block (ext4), never the 64 KiB of data
        if marker is None or st.st_blocks * 512 >= len(data):
            return False, "chmod copied the data up (trusted.overlay.metacopy %s, %d blocks)" % (
                "absent" if marker is None else "set", st.st_blocks)
        return same, "chmod copied up metadata only (trusted.overlay.metacopy, no data blocks)"


def probe_index(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    ov = fp.layout("index")
    _write(os.path.join(ov.lowers[0], "f"), b"lower\n")
    os.link(os.path.join(ov.lowers[0], "f"), os.path.join(ov.lowers[0], "g"))
    with fp.overlay(ov, "index=on") as err:
        if err:
            return _refused(err, "index=on")
        with open(os.path.join(ov.merged, "f"), "ab") as f:
            f.write(b"upper\n")
        index_dir = os.path.join(ov.work, "index")
        entries = sorted(os.listdir(index_dir)) if os.path.isdir(index_dir) else None
        fp.check("after writing merged/f: work/index = %s" % (entries,))
        f_st, g_st = os.stat(os.path.join(ov.merged, "f")), os.stat(os.path.join(ov.merged, "g"))
        linked = f_st.st_ino == g_st.st_ino and _read(os.path.join(ov.merged, "g")) == b"lower\nupper\n"
        fp.check("merged/g is still merged/f's hard link (same inode and data): %s" % linked)
        if not entries:
            return False, "index=on mounted but copy-up made no index entry (index fell back to off)"
        return linked, "copy-up of a hard-linked file went through work/index (%d entry)" % len(entries)


def probe_xino(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    # The second lower is another filesystem: only then does xino change what stat says.
    ov = fp.layout("xino", nlowers=2)
    other = ov.lowers[1]
    err = fp.attempt("tmpfs for the second lower",
                     lambda: mountutil.mount("tmpfs", other, "tmpfs", 0, "size=1m"))
    if err:
        return None, "could not mount a tmpfs for a second lower filesystem: %s" % err
    _write(os.path.join(ov.lowers[0], "a"), b"a")
    _write(os.path.join(other, "b"), b"b")
    seen: Dict[str, Tuple[bool, bool]] = {}
    for mode in ("xino=off", "xino=on"):
        with fp.overlay(ov, mode) as err:
            if err:
                if mode == "xino=on":
                    return _refused(err, mode)
                continue
            root = os.stat(ov.merged)
            stats = [os.stat(os.path.join(ov.merged, n)) for n in ("a", "b")]
            same_dev = all(s.st_dev == root.st_dev for s in stats)
            inos = [root.st_ino] + [s.st_ino for s in stats]
            unique = len(set(inos)) == len(inos)
            fp.check("%s: st_dev merged=%x a=%x b(tmpfs)=%x; st_ino %s" % (
                mode, root.st_dev, stats[0].st_dev, stats[1].st_dev, inos))
            seen[mode] = (same_dev, unique)
    same_dev, unique = seen["xino=on"]
    if not same_dev:
        return False, "xino=on mounted, but a file of the other lower fs still reports its own st_dev"
    return unique, "with xino=on every object reports the overlay's st_dev%s" % (
        "" if unique else ", but inode numbers collide")


class _FileHandle(ctypes.Structure):
    # struct file_handle with room for MAX_HANDLE_SZ (128) bytes
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


def _handle_roundtrip(mountpoint: str, name: str) -> Tuple[Optional[bytes], str]:
    """Encode a file handle of ``mountpoint/name`` and open it again by handle: ``(content,
    what happened)``; content None when a step failed."""
    handle = _FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    path = os.fsencode(os.path.join(mountpoint, name))
    if _libc.name_to_handle_at(AT_FDCWD, path, ctypes.byref(handle), ctypes.byref(mount_id), 0) != 0:
        return None, "name_to_handle_at: %s" % errno_name(ctypes.get_errno())
    mfd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _libc.open_by_handle_at(mfd, ctypes.byref(handle), os.O_RDONLY)
        if fd < 0:
            return None, "name_to_handle_at: ok (type %d, %d bytes); open_by_handle_at: %s" % (
                handle.handle_type, handle.handle_bytes, errno_name(ctypes.get_errno()))
        with os.fdopen(fd, "rb") as f:
            return f.read(), "name_to_handle_at and open_by_handle_at: ok (type %d)" % handle.handle_type
    finally:
        os.close(mfd)


def probe_nfs_export(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    ov = fp.layout("nfs_export")
    _write(os.path.join(ov.lowers[0], "f"), b"lower\n")
    with fp.overlay(ov, "nfs_export=on") as err:
        if err:
            return _refused(err, "nfs_export=on")
        shown = "nfs_export=on" in fp.evidence["attempts"][-1]["mountinfo"].split(",")
        fp.check("mountinfo shows nfs_export=on: %s" % shown)
        content, line = _handle_roundtrip(ov.merged, "f")
        fp.check(line)
        decoded = content == b"lower\n"
    # The combination the kernel must refuse, as evidence of its option checks.
    ov2 = fp.layout("nfs_export-noindex")
    with fp.overlay(ov2, "nfs_export=on,index=off") as conflict:
        fp.check("nfs_export=on,index=off: %s" % (conflict or "accepted"))
    if not shown:
        return False, "nfs_export=on mounted but fell back to off (not in mountinfo)"
    return decoded, "a merged file's handle decodes again" if decoded else "file handles do not decode"


def probe_volatile(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    ov = fp.layout("volatile")
    with fp.overlay(ov, "volatile") as err:
        if err:
            return _refused(err, "volatile")
        # shown as "volatile", or "fsync=volatile" since the fsync= option (6.15)
        shown = bool({"volatile", "fsync=volatile"} & set(fp.evidence["attempts"][-1]["mountinfo"].split(",")))
        marker = os.path.isdir(os.path.join(ov.work, "work", "incompat", "volatile"))
        fp.check("mountinfo shows volatile: %s; work/work/incompat/volatile exists: %s" % (shown, marker))
        return shown and marker, "volatile taken (no syncs; incompat/volatile made)" if shown and marker else \
            "volatile mounted but not in effect"


#: run by ``unshare --user --map-root-user --mount``: mount with userxattr, make an opaque
#: directory, report as JSON (the mount dies with the namespace)
_USERNS_HELPER = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
merged, upper, data = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
if libc.mount(b"overlay", merged.encode(), b"overlay", 0, data.encode()) != 0:
    out["mount_errno"] = ctypes.get_errno()
else:
    try:
        os.rmdir(os.path.join(merged, "d"))
        os.mkdir(os.path.join(merged, "d"))
        for name in ("user.overlay.opaque", "trusted.overlay.opaque"):
            try:
                out[name] = os.getxattr(os.path.join(upper, "d"), name).decode()
            except OSError as err:
                out[name] = err.errno
    except OSError as err:
        out["step_errno"] = err.errno
    libc.umount2(merged.encode(), 0)
print(json.dumps(out))
"""


def probe_userxattr(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    unshare = which("unshare")
    if unshare is None:
        return None, "no unshare(1) here to make a user namespace"
    ov = fp.layout("userxattr")
    os.mkdir(os.path.join(ov.lowers[0], "d"))  # empty: rmdir needs no readdir of whiteouts
    data = overlay_mount_data([ov.lowers[0]], ov.upper, ov.work, "userxattr")
    argv = [unshare, "--user", "--map-root-user", "--mount", sys.executable, "-I", "-S", "-c",
            _USERNS_HELPER, ov.merged, ov.upper, data]
    fp.klog.read_new()
    res = run(argv, timeout=30)
    attempt = {"options": "userxattr (in a user namespace)", "errno": None, "dmesg": fp.klog.read_new(),
               "command": "unshare --user --map-root-user --mount <helper>", "returncode": res.returncode}
    fp.evidence["attempts"].append(attempt)
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        # e.g. "unshare failed: Operation not permitted": a chrooted process (the agent in a
        # qemu guest) may not make user namespaces (unshare(2), EPERM)
        attempt["stderr"] = res.stderr.strip()[-400:]
        return None, "the user-namespace helper failed: %s" % (res.stderr.strip().splitlines() or ["rc %d" % res.returncode])[-1]
    if "mount_errno" in out:
        attempt["errno"] = errno_name(out["mount_errno"])
        return _refused(attempt["errno"], "userxattr in a user namespace")
    if "step_errno" in out:
        fp.check("rmdir merged/d; mkdir merged/d: %s" % errno_name(out["step_errno"]))
        return False, "mounted in a user namespace, but making an opaque directory failed: %s" % (
            errno_name(out["step_errno"]))
    found = {n: errno_name(v) if isinstance(v, int) else repr(v)
             for n, v in out.items() if n.endswith("overlay.opaque")}
    fp.check("rmdir merged/d; mkdir merged/d: upper/d %s" % ", ".join("%s=%s" % kv for kv in sorted(found.items())))
    if out.get("user.overlay.opaque") != "y":
        return False, "mounted in a user namespace, but no user.overlay.opaque on an opaque directory"
    return True, "mounted in a user namespace; opaque dir marked with user.overlay.opaque"


def idmap_userns_fd() -> int:
    """A user namespace whose ids 0..65535 are ``IDMAP_BASE``.. outside, as an fd: a forked
    child unshares its user namespace, the parent writes its maps and opens its ns file."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work, then _exit
        try:
            os.close(ready_r)
            os.close(go_w)
            rc = _libc.unshare(CLONE_NEWUSER)
            os.write(ready_w, b"0" if rc == 0 else str(ctypes.get_errno()).encode())
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        said = os.read(ready_r, 16)
        if said != b"0":
            code = int(said) if said.isdigit() else errno_mod.EIO
            raise OSError(code, "unshare(CLONE_NEWUSER): %s" % os.strerror(code))
        for name in ("uid_map", "gid_map"):
            with open("/proc/%d/%s" % (pid, name), "w") as f:
                f.write("0 %d 65536\n" % IDMAP_BASE)
        return os.open("/proc/%d/ns/user" % pid, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def _syscall(nr: int, *args: Any) -> int:
    rc = _libc.syscall(ctypes.c_long(nr), *args)
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


def probe_idmapped_lower(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    ov = fp.layout("idmapped_lower")
    source = ov.path("source")
    os.mkdir(source)
    _write(os.path.join(source, "f"), b"lower\n")
    os.chown(os.path.join(source, "f"), 0, 0)
    lower = ov.lowers[0]
    fds: Dict[str, int] = {}

    def open_tree() -> None:
        fds["tree"] = _syscall(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), os.fsencode(source),
                               ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC))

    def userns() -> None:
        fds["userns"] = idmap_userns_fd()

    def setattr_idmap() -> None:
        attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=fds["userns"])
        _syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fds["tree"]), b"", ctypes.c_uint(AT_EMPTY_PATH),
                 ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))

    def move_mount() -> None:
        _syscall(SYS_MOVE_MOUNT, ctypes.c_int(fds["tree"]), b"", ctypes.c_int(AT_FDCWD), os.fsencode(lower),
                 ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))

    try:
        # Without a user namespace there is no idmap to try: undecided, not "no".
        err = fp.attempt("user namespace 0:%d:65536 (unshare CLONE_NEWUSER)" % IDMAP_BASE, userns)
        if err:
            return None, "cannot make a user namespace for the idmap here: %s" % err
        for step, fn in (("open_tree(OPEN_TREE_CLONE)", open_tree),
                         ("mount_setattr(MOUNT_ATTR_IDMAP 0:%d:65536)" % IDMAP_BASE, setattr_idmap),
                         ("move_mount", move_mount)):
            err = fp.attempt(step, fn)
            if err:
                return False, "%s failed: %s (no idmapped mount of this fs here)" % (step, err)
    finally:
        for fd in fds.values():
            os.close(fd)
    bind_uid = os.stat(os.path.join(lower, "f")).st_uid
    fp.check("source/f owned by uid 0 shows as uid %d on the idmapped bind mount" % bind_uid)
    with fp.overlay(ov, "") as err:
        if err:
            return False, "overlay refused the idmapped lower layer: %s" % err
        uid = os.stat(os.path.join(ov.merged, "f")).st_uid
        fp.check("merged/f uid %d (the idmapped lower's %d)" % (uid, bind_uid))
        ok = bind_uid == IDMAP_BASE and uid == IDMAP_BASE
        return ok, "overlay mounted on an idmapped lower and shows its mapped owner" if ok else \
            "overlay mounted, but the owner is not mapped (uid %d)" % uid


def probe_data_only_lower(fp: FeatureProbe) -> Tuple[Optional[bool], str]:
    ov = fp.layout("data_only_lower", nlowers=2)
    layer, data_layer = ov.lowers
    payload = b"data-only payload\n"
    _write(os.path.join(data_layer, "blob"), payload)
    _write(os.path.join(data_layer, "hidden"), b"x")
    stub = os.path.join(layer, "f")
    _write(stub, b"")
    os.truncate(stub, len(payload))
    try:
        os.setxattr(stub, "trusted.overlay.metacopy", b"")
        os.setxattr(stub, "trusted.overlay.redirect", b"/blob")
        fp.check("l1/f: a metacopy file redirecting to /blob (trusted.overlay.metacopy, .redirect)")
        redirected = True
    except OSError as exc:
        fp.check("cannot set trusted.overlay.* on l1/f (%s): checking visibility only" % errno_name(exc.errno))
        redirected = False
    with fp.overlay(ov, "metacopy=on", lowerdir="%s::%s" % (layer, data_layer)) as err:
        if err:
            return _refused(err, "lowerdir=l1::data,metacopy=on")
        listing = sorted(os.listdir(ov.merged))
        fp.check("merged lists %s (the data layer's blob and hidden must not show)" % listing)
        hidden = "hidden" not in listing and "blob" not in listing
        if not redirected:
            return hidden, "data-only layer hidden from the merged view" if hidden else "data layer visible"
        try:
            content = _read(os.path.join(ov.merged, "f"))
        except OSError as exc:
            fp.check("read merged/f: %s" % errno_name(exc.errno))
            return False, "reading a metacopy file redirected into the data layer failed: %s" % errno_name(exc.errno)
        fp.check("merged/f reads %r" % content)
        ok = hidden and content == payload
        return ok, "data-only layer hidden and reached through a metacopy redirect" if ok else \
            "the data-only layer did not behave (listing %s, f=%r)" % (listing, content)


PROBES: Dict[str, Callable[[FeatureProbe], Tuple[Optional[bool], str]]] = {
    "redirect_dir": probe_redirect_dir, "metacopy": probe_metacopy, "index": probe_index,
    "xino": probe_xino, "nfs_export": probe_nfs_export, "volatile": probe_volatile,
    "userxattr": probe_userxattr, "idmapped_lower": probe_idmapped_lower,
    "data_only_lower": probe_data_only_lower,
}


def _baseline(fp: FeatureProbe) -> Tuple[Optional[str], Dict[str, Any]]:
    """A plain overlay with an upperdir on this fs takes a write: ``(None, evidence)``, or
    ``(reason, evidence)`` when the fs cannot be an upperdir here."""
    fp.evidence = {"attempts": [], "checks": []}
    ov = fp.layout("baseline")
    with fp.overlay(ov, "") as err:
        if err:
            said = fp.evidence["attempts"][-1]["dmesg"]
            return "this fs cannot be an overlay upperdir here: plain mount refused (%s%s)" % (
                err, (": " + said[-1].split("] ", 1)[-1]) if said else ""), fp.evidence
        try:
            _write(os.path.join(ov.merged, "probe"), b"x")
        except OSError as exc:
            return "the plain overlay mounted but refused a write (%s)" % errno_name(exc.errno), fp.evidence
    return None, fp.evidence


def probe_features(backing_dir: str, features: Sequence[str] = FEATURES) -> Dict[str, Any]:
    """Probe ``features`` on the filesystem holding ``backing_dir``: ``{"features": {name:
    {"supported", "reason", "evidence"}}, "baseline": evidence, "seconds": float}``. Never
    raises: what cannot be probed is None with the reason."""
    started = time.monotonic()
    out: Dict[str, Any] = {"features": {}, "baseline": {}}
    try:
        with KernelLogCursor() as klog, scratch_dir(backing_dir, ".ovl-features-") as root:
            fp = FeatureProbe(root, klog)
            unusable, out["baseline"] = _baseline(fp)
            for name in features:
                out["features"][name] = _probe_one(fp, name, unusable)
    except Exception as exc:  # noqa: BLE001 - the scratch directory itself failed
        reason = "could not probe here: %s: %s" % (type(exc).__name__, exc)
        for name in features:
            out["features"].setdefault(name, _result(None, reason, {}))
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def _probe_one(fp: FeatureProbe, name: str, unusable: Optional[str]) -> Dict[str, Any]:
    evidence = fp.start(name)
    if unusable:
        return _result(None, unusable, evidence)
    try:
        supported, reason = PROBES[name](fp)
    except OSError as exc:  # the probe's own set-up or checks failed
        where = os.path.relpath(exc.filename, fp.root) if exc.filename else "?"
        supported, reason = None, "probe step on %s failed: %s" % (where, errno_name(exc.errno))
    except Exception as exc:  # noqa: BLE001 - a probe never raises
        supported, reason = None, "probe failed: %s: %s" % (type(exc).__name__, exc)
    return _result(supported, reason, evidence)


def features_probe(probed: Mapping[str, Any]) -> Probe:
    """The ``overlay_features`` probe of a profile record from :func:`probe_features`'s answer:
    ``{feature: supported}`` and one evidence line per feature (the full answer, with each
    mount attempt, is the profile's ``facts.overlay_features``)."""
    features = probed.get("features") or {}
    lines = ["%s: %s (%s)" % (name, word(f["supported"]), f["reason"]) for name, f in features.items()]
    lines.append("probed in %.3fs" % probed.get("seconds", 0.0))
    return Probe("overlay_features", {name: f["supported"] for name, f in features.items()}, "\n".join(lines))


def word(supported: Optional[bool]) -> str:
    """A feature's state in one word of the tables: ``yes``, ``no`` or ``?``."""
    return {True: "yes", False: "no"}.get(supported, "?")  # type: ignore[arg-type]


def matrix_cell(by_profile: Mapping[str, Optional[bool]]) -> str:
    """One kernel's cell for a feature over its profiles: ``yes``/``no`` when every decided
    profile agrees, else where it works (``ext4,xfs only``); undecided profiles are named
    after it (``yes (? on overlay)``), and a cell with nothing decided is ``?``."""
    if not by_profile:
        return "-"
    yes = [p for p, s in by_profile.items() if s is True]
    no = [p for p, s in by_profile.items() if s is False]
    unknown = [p for p, s in by_profile.items() if s is None]
    if not (yes or no):
        return "?"
    text = "yes" if not no else "no" if not yes else "%s only" % ",".join(yes)
    return text + (" (? on %s)" % ",".join(unknown) if unknown else "")
