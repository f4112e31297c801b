"""Build the lab's initramfs: busybox-static, ``guest_init.sh`` and the modules the lab needs.

The image is a gzip-compressed newc cpio written by pure Python (no ``cpio`` binary needed):

    /init                      guest_init.sh (PID 1)
    /bin/busybox               the host's busybox-static; applets are linked at boot
    /dev/console, /dev/null    so PID 1 has a console before devtmpfs is mounted
    /modules/<name>.ko         plain (decompressed) modules, loadable by busybox insmod
    /modules/order             module names, one a line, in load order
    /etc/overlaylab-initramfs  what went in (release, modules, built-ins, missing)

Module selection follows modprobe: hard dependencies from ``modules.dep`` (or, without one,
from each module's ``.modinfo``), soft pre/post dependencies from ``modules.softdep`` resolved
through ``modules.alias`` (``crc32c`` before ``libcrc32c``/xfs/btrfs), built-ins skipped.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

#: What the guest needs to reach its root and the network: loaded first, synchronously.
BOOT_MODULES: Tuple[str, ...] = (
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_rng",
    "9pnet", "9pnet_virtio", "9p",
)
#: What the lab needs in the guest, in the order it asks for it. Modules not in BOOT_MODULES
#: (nor their dependencies) load in the background while sshd starts; init waits for them
#: before it prints the ready marker. ``fuse`` makes /dev/fuse for fuse-overlayfs (no udev in
#: the guest to load it on first open); dockerd, containerd and runc need nothing more with
#: ``--bridge=none --iptables=false`` and ``--network none`` (cgroup2, namespaces and seccomp are
#: built into Debian's kernels).
LAB_MODULES: Tuple[str, ...] = BOOT_MODULES + ("overlay", "loop", "ext4", "xfs", "btrfs", "fuse")
#: Filesystem modules the guest kernel asks for itself at the first mount of their type
#: (``get_fs_type()`` in fs/filesystems.c calls ``request_module("fs-%s")``), which guest_init.sh
#: hands to the host's kmod over the kernel's own modules dir. Left to that request they cost the
#: boot nothing: under TCG xfs takes ~0.5 s to load, and btrfs pulls in raid6_pq, whose init
#: benchmarks every RAID-6 algorithm for ~0.8 s (``raid6_select_algo()`` in lib/raid6/algos.c)
#: on the guest's only vCPU, before the first result. The image still carries them and init
#: loads them at boot where the kernel's requests cannot reach a modules dir.
ON_DEMAND_MODULES: Tuple[str, ...] = ("xfs", "btrfs")

FORMAT_VERSION = 5  # bump when the layout or the init changes incompatibly

GUEST_INIT = Path(__file__).with_name("guest_init.sh")


def busybox_path() -> str:
    """The static busybox to put in the image (busybox-static's ``/bin/busybox``)."""
    for cand in ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox/busybox-static"):
        if os.path.isfile(cand):
            return cand
    raise FileNotFoundError("busybox not found: apt-get install busybox-static")


# --- newc cpio ---------------------------------------------------------------------------------

class CpioWriter:
    """Writes a newc ("070701") cpio archive, the format the kernel unpacks as initramfs."""

    def __init__(self, out: io.BufferedIOBase) -> None:
        self.out = out
        self.ino = 300000
        self.names: List[str] = []

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: Tuple[int, int] = (0, 0),
               nlink: int = 1, mtime: int = 0) -> None:
        name = name.lstrip("/")
        self.ino += 1
        nameb = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0)
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(hdr + nameb)
        self.out.write(b"\0" * ((4 - (len(hdr) + len(nameb)) % 4) % 4))
        self.out.write(data)
        self.out.write(b"\0" * ((4 - len(data) % 4) % 4))
        if name != "TRAILER!!!":
            self.names.append(name)

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)


def read_cpio(data: bytes) -> List[Tuple[str, int, bytes]]:
    """List a newc cpio (possibly gzip-compressed): ``[(name, mode, data), ...]``."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    out = []
    pos = 0
    while pos + 110 <= len(data):
        if data[pos:pos + 6] not in (b"070701", b"070702"):
            raise ValueError("bad cpio magic at %d" % pos)
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += (4 - pos % 4) % 4
        body = data[pos: pos + size]
        pos += size
        pos += (4 - pos % 4) % 4
        if name == "TRAILER!!!":
            break
        out.append((name, mode, body))
    return out


# --- the module tree ---------------------------------------------------------------------------

def module_name(path: str) -> str:
    """``kernel/fs/9p/9p.ko.xz`` -> ``9p``; dashes normalised to underscores like kmod does."""
    base = os.path.basename(path)
    for ext in (".xz", ".zst", ".gz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    if base.endswith(".ko"):
        base = base[:-3]
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> Dict[str, Tuple[str, List[str]]]:
    """``modules.dep`` -> {name: (relative path, [dependency names])}."""
    out: Dict[str, Tuple[str, List[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        out[module_name(path)] = (path.strip(), [module_name(d) for d in deps.split()])
    return out


def parse_softdeps(text: str) -> Dict[str, Tuple[List[str], List[str]]]:
    """``modules.softdep`` (or modprobe.d lines) -> {name: ([pre...], [post...])}; lines add up."""
    out: Dict[str, Tuple[List[str], List[str]]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        pre, post = out.setdefault(words[1].replace("-", "_"), ([], []))
        cur = None
        for w in words[2:]:
            if w == "pre:":
                cur = pre
            elif w == "post:":
                cur = post
            elif cur is not None and w not in cur:
                cur.append(w)
    return out


def parse_aliases(text: str) -> List[Tuple[str, str]]:
    """``modules.alias`` -> [(alias pattern, module name)]."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            out.append((words[1], words[2].replace("-", "_")))
    return out


def parse_builtin(text: str) -> Set[str]:
    """``modules.builtin`` -> the names of modules compiled into the kernel."""
    return {module_name(l.strip()) for l in text.splitlines() if l.strip()}


def modinfo_fields(ko: bytes) -> List[Tuple[str, str]]:
    """The ``key=value`` strings of an ELF module's ``.modinfo`` section."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:  # ELF64 only (x86_64 kernels)
        return []
    endian = "<" if ko[5] == 1 else ">"
    shoff = struct.unpack_from(endian + "Q", ko, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", ko, 0x3A)
    sections = []
    for i in range(shnum):
        off = shoff + i * shentsize
        name, _typ, _flags, _addr, soff, size = struct.unpack_from(endian + "IIQQQQ", ko, off)
        sections.append((name, soff, size))
    strtab = sections[shstrndx]
    out = []
    for name, soff, size in sections:
        end = ko.index(b"\0", strtab[1] + name)
        if ko[strtab[1] + name: end] == b".modinfo":
            for item in ko[soff: soff + size].split(b"\0"):
                if b"=" in item:
                    k, _, v = item.partition(b"=")
                    out.append((k.decode("ascii", "replace"), v.decode("utf-8", "replace")))
    return out


def read_module(path: str) -> bytes:
    """A module's bytes, decompressed (``.ko.xz``, ``.ko.zst``, ``.ko.gz``)."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        try:  # Python 3.14+
            from compression import zstd  # type: ignore[import-not-found]
            return zstd.decompress(data)
        except ImportError:
            pass
        p = subprocess.run(["zstd", "-dcq"], input=data, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise RuntimeError("zstd -d %s failed (apt-get install zstd): %s"
                               % (path, p.stderr.decode(errors="replace").strip()))
        return p.stdout
    return data


@dataclass
class ModuleTree:
    """What kmod knows about one modules directory, as plain data."""

    deps: Dict[str, Tuple[str, List[str]]]
    softdeps: Dict[str, Tuple[List[str], List[str]]] = field(default_factory=dict)
    aliases: List[Tuple[str, str]] = field(default_factory=list)
    builtin: Set[str] = field(default_factory=set)

    @classmethod
    def load(cls, modules_dir: str) -> "ModuleTree":
        def read(name: str) -> str:
            try:
                with open(os.path.join(modules_dir, name), encoding="utf-8", errors="replace") as f:
                    return f.read()
            except OSError:
                return ""

        builtin = parse_builtin(read("modules.builtin"))
        aliases = parse_aliases(read("modules.alias")) + parse_aliases(read("modules.builtin.alias"))
        if os.path.isfile(os.path.join(modules_dir, "modules.dep")):
            return cls(parse_modules_dep(read("modules.dep")), parse_softdeps(read("modules.softdep")),
                       aliases, builtin)
        return cls.scan(modules_dir, builtin, aliases)

    @classmethod
    def scan(cls, modules_dir: str, builtin: Set[str], aliases: List[Tuple[str, str]]) -> "ModuleTree":
        """Without ``modules.dep`` (a hand-made modules dir): read each module's .modinfo."""
        deps: Dict[str, Tuple[str, List[str]]] = {}
        soft_lines = []
        aliases = list(aliases)
        for dirpath, _dirs, files in os.walk(modules_dir):
            for fn in files:
                if not (fn.endswith(".ko") or ".ko." in fn):
                    continue
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, modules_dir)
                name = module_name(fn)
                info = modinfo_fields(read_module(full))
                dep_names = [module_name(d) for kv in info if kv[0] == "depends"
                             for d in kv[1].split(",") if d]
                deps[name] = (rel, dep_names)
                for k, v in info:
                    if k == "softdep":
                        soft_lines.append("softdep %s %s" % (name, v))
                    elif k == "alias":
                        aliases.append((v, name))
        return cls(deps, parse_softdeps("\n".join(soft_lines)), aliases, builtin)

    def lookup(self, name: str) -> List[str]:
        """Module names a modprobe name or alias stands for (exact module name first)."""
        norm = name.replace("-", "_")
        if norm in self.deps:
            return [norm]
        exact = [m for a, m in self.aliases if a == name]
        if exact:
            return list(dict.fromkeys(exact))
        return list(dict.fromkeys(m for a, m in self.aliases
                                  if any(c in a for c in "*?[") and fnmatch.fnmatchcase(name, a)))

    def is_builtin(self, name: str) -> bool:
        norm = name.replace("-", "_")
        return norm in self.builtin or any(m in self.builtin for m in self.lookup(name))


@dataclass
class ModulePlan:
    order: List[str]                    # names, load order
    paths: Dict[str, str]               # name -> path relative to the modules dir
    builtin: List[str]                  # wanted but compiled in
    missing: List[str]                  # wanted but neither a module nor built in


def plan_modules(tree: ModuleTree, wanted: Sequence[str]) -> ModulePlan:
    """The load order for ``wanted``: each module after its soft-pre and hard dependencies.

    Mirrors ``modprobe``: softdep ``pre:`` modules first (optional: skipped if absent), then
    the ``modules.dep`` dependencies (required), then the module, then ``post:`` softdeps.
    """
    order: List[str] = []
    seen: Set[str] = set()
    builtin: List[str] = []
    missing: List[str] = []

    def visit_name(name: str, required: bool) -> None:
        mods = [m for m in tree.lookup(name) if m in tree.deps]
        if not mods:
            if tree.is_builtin(name):
                if required and name not in builtin:
                    builtin.append(name)
            elif required and name not in missing:
                missing.append(name)
            return
        for m in mods:
            visit(m)

    def visit(mod: str) -> None:
        if mod in seen:
            return
        seen.add(mod)
        pre, post = tree.softdeps.get(mod, ([], []))
        for s in pre:
            visit_name(s, required=False)
        for d in tree.deps[mod][1]:
            if d in tree.deps:
                visit(d)
        order.append(mod)
        for s in post:
            visit_name(s, required=False)

    for w in wanted:
        visit_name(w, required=True)
    return ModulePlan(order, {m: tree.deps[m][0] for m in order}, builtin, missing)


# --- the image ---------------------------------------------------------------------------------

@dataclass
class InitramfsInfo:
    path: str
    release: str
    modules: List[str]
    builtin: List[str]
    missing: List[str]
    size: int
    cached: bool = False


def _cache_key(kernel, wanted: Sequence[str], init_text: bytes, busybox: str, compress: bool) -> str:
    h = hashlib.sha256()
    for part in (str(FORMAT_VERSION), kernel.release, kernel.sha256 or kernel.vmlinuz,
                 str(kernel.modules_dir), ",".join(wanted), str(compress), str(os.path.getsize(busybox))):
        h.update(part.encode() + b"\0")
    for f in ("modules.dep", "modules.builtin", "modules.softdep"):  # a re-fetched kernel dir
        try:
            st = os.stat(os.path.join(str(kernel.modules_dir), f))
            h.update(("%s:%d:%d" % (f, st.st_size, st.st_mtime_ns)).encode())
        except OSError:
            pass
    h.update(init_text)
    return h.hexdigest()[:16]


def build_initramfs(kernel, dest: Optional[str] = None, modules: Sequence[str] = LAB_MODULES,
                    init_script: Optional[str] = None, compress: bool = True,
                    cache_dir: Optional[os.PathLike] = None) -> InitramfsInfo:
    """Build (or reuse from the cache) the initramfs for ``kernel`` (a ``KernelImage``).

    Without ``dest`` the image goes to ``<cache>/initramfs/<release>-<hash>.cpio.gz`` and is
    reused while the kernel, the module list, busybox and the init script stay the same.
    """
    from ..kernels.cache import cache_root

    init_text = Path(init_script).read_bytes() if init_script else GUEST_INIT.read_bytes()
    busybox = busybox_path()
    key = _cache_key(kernel, modules, init_text, busybox, compress)
    meta_path = None
    if dest is None:
        d = cache_root(cache_dir) / "initramfs"
        d.mkdir(parents=True, exist_ok=True)
        dest = str(d / ("%s-%s.cpio%s" % (kernel.release, key, ".gz" if compress else "")))
        meta_path = dest + ".json"
        if os.path.isfile(dest) and os.path.isfile(meta_path):
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            return InitramfsInfo(dest, kernel.release, meta["modules"], meta["builtin"],
                                 meta["missing"], os.path.getsize(dest), cached=True)

    if kernel.modules_dir and os.path.isdir(kernel.modules_dir):
        tree = ModuleTree.load(kernel.modules_dir)
        plan = plan_modules(tree, modules)
        boot = plan_modules(tree, [m for m in modules if m in BOOT_MODULES])
        lab = plan_modules(tree, [m for m in modules if m not in ON_DEMAND_MODULES])
    else:
        plan = ModulePlan([], {}, [], list(modules))
        boot = lab = ModulePlan([], {}, [], [])
    boot_order = [m for m in boot.order if m in plan.paths]
    lab_order = [m for m in lab.order if m in plan.paths and m not in boot_order]
    on_demand_order = [m for m in plan.order if m not in boot_order and m not in lab_order]
    plan.order = boot_order + lab_order + on_demand_order

    raw = io.BytesIO()
    w = CpioWriter(raw)
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run",
              "newroot", "cfg", "modules", "etc"):
        w.dir(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    with open(busybox, "rb") as f:
        w.file("bin/busybox", f.read(), 0o755)
    w.symlink("bin/sh", "busybox")
    w.file("init", init_text, 0o755)
    for name in plan.order:
        w.file("modules/%s.ko" % name, read_module(os.path.join(kernel.modules_dir, plan.paths[name])))
    w.file("modules/order", "".join("%s\n" % m for m in plan.order).encode())
    w.file("modules/order.boot", "".join("%s\n" % m for m in boot_order).encode())
    w.file("modules/order.lab", "".join("%s\n" % m for m in lab_order).encode())
    w.file("modules/order.ondemand", "".join("%s\n" % m for m in on_demand_order).encode())
    meta = {"release": kernel.release, "modules": plan.order, "builtin": plan.builtin,
            "missing": plan.missing, "built_at": int(time.time())}
    w.file("etc/overlaylab-initramfs", json.dumps(meta, indent=1).encode())
    w.close()

    fd, tmp = tempfile.mkstemp(prefix=".initramfs.", dir=os.path.dirname(os.path.abspath(dest)))
    with os.fdopen(fd, "wb") as f:
        if compress:
            f.write(gzip.compress(raw.getvalue(), compresslevel=6, mtime=0))
        else:
            f.write(raw.getvalue())
    os.replace(tmp, dest)
    os.chmod(dest, 0o644)
    if meta_path:
        from ..kernels.cache import write_json_atomic

        write_json_atomic(Path(meta_path), meta)
    return InitramfsInfo(dest, kernel.release, plan.order, plan.builtin, plan.missing,
                         os.path.getsize(dest))


def build_probe_initramfs(dest: str, marker: str) -> str:
    """A minimal image (busybox + an init that prints ``marker`` and powers off): the KVM probe."""
    raw = io.BytesIO()
    w = CpioWriter(raw)
    for d in ("bin", "dev", "proc"):
        w.dir(d)
    w.chardev("dev/console", 5, 1)
    with open(busybox_path(), "rb") as f:
        w.file("bin/busybox", f.read(), 0o755)
    w.file("init", ("#!/bin/busybox sh\n/bin/busybox echo %s\n/bin/busybox poweroff -f\n" % marker).encode(), 0o755)
    w.close()
    with open(dest, "wb") as f:
        f.write(gzip.compress(raw.getvalue(), compresslevel=1, mtime=0))
    return dest
