"""The lab initramfs: module plan (deps, softdeps, aliases, built-ins), decompression, cpio."""
from __future__ import annotations

import lzma
import stat
import subprocess

from tests.needs import need_tool

from overlaylab.kernels.cache import KernelImage
from overlaylab.vm import initramfs as I

MODULES_DEP = """\
kernel/fs/xfs/xfs.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/lib/libcrc32c.ko.xz:
kernel/crypto/crc32c_generic.ko.zst:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/fs/overlayfs/overlay.ko:
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
"""
SOFTDEP = """\
softdep libcrc32c pre: crc32c
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep xfs post: not-there
"""
ALIAS = """\
alias crc32c crc32c_intel
alias crc32c crc32c_generic
alias crypto-crc32c crc32c_generic
alias fs-overlay overlay
"""
BUILTIN = "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/block/virtio_blk.ko\n"


def make_tree(root):
    mdir = root / "lib/modules/6.1.0-test"
    for line in MODULES_DEP.splitlines():
        rel = line.split(":")[0]
        p = mdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        payload = ("\x7fELF module %s" % I.module_name(rel)).encode()
        if rel.endswith(".xz"):
            p.write_bytes(lzma.compress(payload, format=lzma.FORMAT_XZ))
        elif rel.endswith(".zst"):
            need_tool("zstd")
            p.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=payload, stdout=subprocess.PIPE,
                                         check=True).stdout)
        else:
            p.write_bytes(payload)
    (mdir / "modules.dep").write_text(MODULES_DEP)
    (mdir / "modules.softdep").write_text(SOFTDEP)
    (mdir / "modules.alias").write_text(ALIAS)
    (mdir / "modules.builtin").write_text(BUILTIN)
    return mdir


def test_plan_orders_softdeps_before_their_users_and_skips_builtins(tmp_path):
    tree = I.ModuleTree.load(str(make_tree(tmp_path)))
    plan = I.plan_modules(tree, ["virtio_pci", "9pnet_virtio", "9p", "overlay", "ext4", "xfs", "btrfs"])
    order = plan.order
    assert plan.builtin == ["virtio_pci"]
    assert plan.missing == ["btrfs"]
    for before, after in [("9pnet", "9pnet_virtio"), ("9pnet", "9p"), ("netfs", "9p"),
                          ("crc32c_generic", "jbd2"), ("jbd2", "ext4"), ("mbcache", "ext4"),
                          ("crc32c_intel", "libcrc32c"), ("crc32c_generic", "libcrc32c"),
                          ("libcrc32c", "xfs")]:
        assert order.index(before) < order.index(after), (before, after, order)
    assert len(order) == len(set(order))


def test_build_decompresses_every_module_and_lists_load_order(tmp_path):
    mdir = make_tree(tmp_path)
    kernel = KernelImage("t", "6.1.0-test", str(tmp_path / "vmlinuz"), str(mdir))
    info = I.build_initramfs(kernel, dest=str(tmp_path / "initrd.gz"),
                             modules=["9pnet_virtio", "9p", "overlay", "xfs"])
    entries = {name: (mode, data) for name, mode, data in I.read_cpio(open(info.path, "rb").read())}
    assert stat.S_ISREG(entries["init"][0]) and entries["init"][0] & 0o111
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    assert stat.S_ISCHR(entries["dev/console"][0])
    kos = [n for n in entries if n.startswith("modules/") and ".ko" in n]
    assert kos and all(n.endswith(".ko") for n in kos)          # nothing compressed left
    assert entries["modules/xfs.ko"][1] == b"\x7fELF module xfs"
    order = entries["modules/order"][1].decode().split()
    assert order == info.modules
    boot = entries["modules/order.boot"][1].decode().split()
    lab = entries["modules/order.lab"][1].decode().split()
    on_demand = entries["modules/order.ondemand"][1].decode().split()
    assert boot + lab + on_demand == order and "9p" in boot and "overlay" in lab
    # xfs (and what only it needs) waits for the kernel's own request at its first mount
    assert "xfs" in on_demand and "libcrc32c" in on_demand and "xfs" not in lab
    assert order.index("libcrc32c") < order.index("xfs")


def test_cached_build_is_reused(tmp_path):
    mdir = make_tree(tmp_path)
    kernel = KernelImage("t", "6.1.0-test", str(tmp_path / "vmlinuz"), str(mdir), sha256="cd" * 32)
    a = I.build_initramfs(kernel, modules=["overlay"], cache_dir=tmp_path / "cache")
    b = I.build_initramfs(kernel, modules=["overlay"], cache_dir=tmp_path / "cache")
    assert not a.cached and b.cached and a.path == b.path


def test_cpio_writer_round_trip(tmp_path):
    import io
    buf = io.BytesIO()
    w = I.CpioWriter(buf)
    w.dir("a")
    w.file("a/f", b"12345", 0o600)
    w.symlink("a/l", "f")
    w.close()
    got = I.read_cpio(buf.getvalue())
    assert [(n, d) for n, _, d in got] == [("a", b""), ("a/f", b"12345"), ("a/l", b"f")]
    need_tool("cpio")  # the real cpio agrees
    (tmp_path / "x.cpio").write_bytes(buf.getvalue())
    out = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(tmp_path / "x.cpio", "rb"),
                         stdout=subprocess.PIPE, check=True).stdout.decode().split()
    assert out == ["a", "a/f", "a/l"]


def test_modinfo_fallback_without_modules_dep(tmp_path):
    """A hand-made modules dir (no depmod) still gets its deps from .modinfo."""
    def elf_with_modinfo(info: bytes) -> bytes:
        import struct
        shstr = b"\0.modinfo\0.shstrtab\0"
        body_off = 64
        modinfo_off = body_off
        shstr_off = modinfo_off + len(info)
        shoff = (shstr_off + len(shstr) + 7) & ~7
        hdr = bytearray(64)
        hdr[:6] = b"\x7fELF\x02\x01"
        struct.pack_into("<Q", hdr, 0x28, shoff)
        struct.pack_into("<HHH", hdr, 0x3A, 64, 3, 2)
        data = bytearray(hdr) + info + shstr
        data += b"\0" * (shoff - len(data))
        data += b"\0" * 64
        data += struct.pack("<IIQQQQ", 1, 1, 0, 0, modinfo_off, len(info)) + b"\0" * 24
        data += struct.pack("<IIQQQQ", 10, 3, 0, 0, shstr_off, len(shstr)) + b"\0" * 24
        return bytes(data)

    mdir = tmp_path / "mods"
    (mdir / "kernel").mkdir(parents=True)
    (mdir / "kernel/a.ko").write_bytes(elf_with_modinfo(b"depends=b\0softdep=pre: c\0"))
    (mdir / "kernel/b.ko.xz").write_bytes(lzma.compress(elf_with_modinfo(b"depends=\0")))
    (mdir / "kernel/c.ko").write_bytes(elf_with_modinfo(b"alias=crc-c\0"))
    tree = I.ModuleTree.load(str(mdir))
    assert I.plan_modules(tree, ["a"]).order == ["c", "b", "a"]


def test_real_debian_61_initramfs(kernel_61, tmp_path):
    info = I.build_initramfs(kernel_61, dest=str(tmp_path / "initrd.gz"))
    names = [n for n, _, _ in I.read_cpio(open(info.path, "rb").read())]
    kos = [n[len("modules/"):-3] for n in names if n.endswith(".ko")]
    assert not [n for n in names if n.endswith((".ko.xz", ".ko.zst", ".ko.gz"))]
    for m in ("overlay", "9p", "9pnet", "9pnet_virtio", "virtio_blk", "virtio_net", "ext4", "xfs",
              "btrfs", "loop", "fuse"):
        assert m in kos or m in info.builtin, m
    assert info.modules.index("libcrc32c") < info.modules.index("xfs")
    assert info.modules.index("crc32c_generic") < info.modules.index("libcrc32c")
    assert not info.missing
    assert info.size < 12 * 1024 * 1024
