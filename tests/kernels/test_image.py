"""The fast-boot kernel image: the ELF vmlinux found inside a bzImage, and its PVH note."""
from __future__ import annotations

import gzip
import lzma
import struct

from overlaylab.kernels import image as I


def elf_with_notes(*notes):
    """A minimal ELF64 with one PT_NOTE segment holding ``(name, type)`` notes."""
    body = b""
    for name, ntype in notes:
        n = name + b"\0"
        desc = b"\0" * 4
        body += struct.pack("<III", len(n), len(desc), ntype) + n.ljust((len(n) + 3) & ~3, b"\0") + desc
    phoff, phentsize = 64, 56
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0)
    note_off = phoff + phentsize
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(body), len(body), 4)
    return header + phdr + body


def test_pvh_note_is_the_xen_phys32_entry_note():
    assert I.has_pvh_note(elf_with_notes((b"GNU", 3), (b"Xen", 18)))
    assert not I.has_pvh_note(elf_with_notes((b"Xen", 17), (b"Linux", 18)))
    assert not I.has_pvh_note(b"MZ not an elf at all")


def test_the_elf_is_found_behind_a_setup_header_whatever_the_compressor():
    elf = elf_with_notes((b"Xen", 18)) + b"kernel text" * 100
    for packed in (gzip.compress(elf), lzma.compress(elf, format=lzma.FORMAT_XZ)):
        assert I.extract_vmlinux(b"\x00setup code\x1f\x8b but no gzip" + packed + b"\0" * 64) == elf
    assert I.extract_vmlinux(b"nothing compressed in here") is None


def test_fast_boot_kernel_caches_the_elf_or_keeps_the_bzimage(tmp_path):
    elf = elf_with_notes((b"Xen", 18))
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(b"setup" + gzip.compress(elf))
    fast = I.fast_boot_kernel(str(bz), tmp_path / "cache")
    assert fast != str(bz) and open(fast, "rb").read() == elf
    assert I.fast_boot_kernel(str(bz), tmp_path / "cache") == fast  # cached
    plain = tmp_path / "no-pvh"
    plain.write_bytes(b"setup" + gzip.compress(elf_with_notes((b"GNU", 3))))
    assert I.fast_boot_kernel(str(plain), tmp_path / "cache") == str(plain)


def test_pvh_extraction_of_a_real_kernel(kernel_61, tmp_path):
    fast = I.fast_boot_kernel(kernel_61.vmlinuz, tmp_path)
    assert fast != kernel_61.vmlinuz
    with open(fast, "rb") as f:
        assert I.has_pvh_note(f.read())
    assert I.fast_boot_kernel(kernel_61.vmlinuz, tmp_path) == fast  # cached
