"""A Debian kernel image made to boot faster under TCG: the ELF vmlinux inside the bzImage,
which qemu boots directly through its PVH entry note.

A Debian bzImage is xz-compressed and TCG spends ~5 s decompressing it before the kernel prints
anything. :func:`extract_vmlinux` finds the compressed payload as the kernel's
``scripts/extract-vmlinux`` does (scan for each compressor's magic, keep what decompresses to an
ELF); :func:`has_pvh_note` looks for the ``XEN_ELFNOTE_PHYS32_ENTRY`` note (18, linux
``include/xen/interface/elfnote.h``, emitted by ``arch/x86/platform/pvh/head.S``);
:func:`fast_boot_kernel` caches the result.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Optional

from .cache import cache_root, sha256_file

_COMPRESSIONS = (
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("gzip", b"\x1f\x8b\x08"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
)


def _decompress_first(data: bytes, kind: str, off: int) -> Optional[bytes]:
    import bz2
    import lzma
    import zlib

    try:
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
        if kind == "lzma":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data[off:])
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[off:])
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(data[off:])
        if kind == "zstd":
            p = subprocess.run(["zstd", "-dcq"], input=data[off:], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
            return p.stdout or None  # zstd complains about trailing data but writes the frame
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
        return None
    return None


def has_pvh_note(elf: bytes) -> bool:
    """True if an ELF64 vmlinux carries XEN_ELFNOTE_PHYS32_ENTRY (qemu can PVH-boot it)."""
    import struct

    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, _fl, off, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if ptype != 4:  # PT_NOTE
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12: pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def extract_vmlinux(vmlinuz: bytes) -> Optional[bytes]:
    """The uncompressed ELF kernel inside a bzImage (like scripts/extract-vmlinux), or None."""
    for kind, magic in _COMPRESSIONS:
        start = 0
        while True:
            off = vmlinuz.find(magic, start)
            if off < 0:
                break
            out = _decompress_first(vmlinuz, kind, off)
            if out and out[:4] == b"\x7fELF":
                return out
            start = off + 1
            if kind in ("lzma", "bzip2") and start > 1 << 20:
                break  # short magics: don't scan the whole image
    return None


def fast_boot_kernel(vmlinuz: str, cache_dir: Optional[os.PathLike] = None) -> str:
    """A kernel file that boots faster under TCG: the uncompressed vmlinux, booted via PVH.

    A Debian bzImage is xz-compressed; TCG spends ~5 s decompressing it before the kernel
    prints anything. qemu boots an ELF vmlinux with a PVH entry note directly. The extracted
    image is cached (``<cache>/pvh/``); without a PVH note, or if extraction fails, the
    bzImage itself is returned.
    """
    d = cache_root(cache_dir) / "pvh"
    key = sha256_file(vmlinuz)[:20]
    out = d / ("%s.elf" % key)
    none = d / ("%s.none" % key)
    if out.is_file():
        return str(out)
    if none.exists():
        return vmlinuz
    d.mkdir(parents=True, exist_ok=True)
    with open(vmlinuz, "rb") as f:
        elf = extract_vmlinux(f.read())
    if elf is None or not has_pvh_note(elf):
        none.touch()
        return vmlinuz
    fd, tmp = tempfile.mkstemp(prefix=".%s." % out.name, dir=str(d))  # parallel targets
    with os.fdopen(fd, "wb") as f:
        f.write(elf)
    os.replace(tmp, out)
    return str(out)
