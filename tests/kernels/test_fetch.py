"""Fetching and caching kernels: layouts, the offline index, one-line failures."""
from __future__ import annotations

import json
import os
import struct
import time

import pytest

from overlaylab.kernels import cache as K
from overlaylab.kernels import fetch as F
from overlaylab.kernels.catalogue import KernelEntry


def fake_bzimage(path, release="6.1.0-50-amd64"):
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x400)  # version string at 0x400 + 0x200
    text = ("%s (builder@example.invalid) #1 SMP" % release).encode() + b"\0"
    data[0x600:0x600 + len(text)] = text
    path.write_bytes(bytes(data))
    return path


def test_bzimage_release_reads_the_setup_header(tmp_path):
    assert F.bzimage_release(fake_bzimage(tmp_path / "vmlinuz")) == "6.1.0-50-amd64"
    (tmp_path / "junk").write_bytes(b"x" * 100)
    assert F.bzimage_release(tmp_path / "junk") is None


def test_literal_prefix_for_apt_cache_pkgnames():
    assert F.literal_prefix(r"linux-image-6\.1\.0-[0-9]+-amd64") == "linux-image-6"
    assert F.literal_prefix(r"^linux-image-7\.[0-9.]+\+deb[0-9]+-amd64") == "linux-image-7"
    assert F.literal_prefix(r"linux-image-amd64?") == "linux-image-amd6"


def test_locate_old_layout(tmp_path):
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "lib/modules/5.10.0-32-amd64/kernel").mkdir(parents=True)
    fake_bzimage(root / "boot/vmlinuz-5.10.0-32-amd64", "5.10.0-32-amd64")
    rel, vmlinuz, moddir = F.locate_kernel(root)
    assert rel == "5.10.0-32-amd64"
    assert vmlinuz.endswith("boot/vmlinuz-5.10.0-32-amd64")
    assert moddir.endswith("lib/modules/5.10.0-32-amd64")


def test_locate_usr_lib_modules_layout(tmp_path):
    root = tmp_path / "root"
    d = root / "usr/lib/modules/7.2.13+deb14-amd64"
    (d / "kernel").mkdir(parents=True)
    fake_bzimage(d / "vmlinuz", "7.2.13+deb14-amd64")
    rel, vmlinuz, moddir = F.locate_kernel(root)
    assert (rel, vmlinuz, moddir) == ("7.2.13+deb14-amd64", str(d / "vmlinuz"), str(d))


def _fake_cached_kernel(cache, name="debian-6.1", suite="bookworm", pattern=r"linux-image-6\.1\.0-[0-9]+-amd64"):
    kdir = K.kernels_dir(cache) / K.kernel_dir_name("linux-image-6.1.0-50-amd64", "ab" * 32)
    (kdir / "root/boot").mkdir(parents=True)
    (kdir / "root/lib/modules/6.1.0-50-amd64").mkdir(parents=True)
    fake_bzimage(kdir / "root/boot/vmlinuz-6.1.0-50-amd64")
    img = K.KernelImage(name=name, release="6.1.0-50-amd64", vmlinuz=str(kdir / "root/boot/vmlinuz-6.1.0-50-amd64"),
                        modules_dir=str(kdir / "root/lib/modules/6.1.0-50-amd64"),
                        package="linux-image-6.1.0-50-amd64", sha256="ab" * 32, version="6.1.176-1", suite=suite)
    K.write_json_atomic(kdir / "kernel.json", img.to_json())
    K.KernelIndex(cache).put(name, {"suite": suite, "pattern": pattern, "package": img.package,
                                    "sha256": img.sha256, "dir": str(kdir)})
    return img


def test_cached_kernel_is_served_offline(tmp_path):
    img = _fake_cached_kernel(tmp_path)
    entry = KernelEntry("debian-6.1", "debian", suite="bookworm", package=r"linux-image-6\.1\.0-[0-9]+-amd64")
    # no apt sources at all: any attempt to use the network would fail
    got = F.fetch_kernel(entry, cache_dir=tmp_path, etc_apt=str(tmp_path / "no-apt"))
    assert got == img


def test_no_mirror_and_no_cache_is_one_line_kernel_unavailable(tmp_path):
    entry = KernelEntry("debian-x", "debian", suite="bookworm", package=r"linux-image-9\.9-amd64")
    with pytest.raises(F.KernelUnavailable) as ei:
        F.fetch_kernel(entry, cache_dir=tmp_path, etc_apt=str(tmp_path / "no-apt"))
    assert "\n" not in str(ei.value)
    assert str(ei.value).startswith("kernel debian-x unavailable:")


def test_refresh_without_network_falls_back_to_the_cache(tmp_path):
    img = _fake_cached_kernel(tmp_path)
    entry = KernelEntry("debian-6.1", "debian", suite="bookworm", package=r"linux-image-6\.1\.0-[0-9]+-amd64")
    got = F.fetch_kernel(entry, cache_dir=tmp_path, refresh=True, etc_apt=str(tmp_path / "no-apt"))
    assert got.package == img.package


def test_custom_entry_and_missing_files(tmp_path):
    mods = tmp_path / "lib/modules/6.9.0-test"
    mods.mkdir(parents=True)
    vmlinuz = fake_bzimage(tmp_path / "bzImage", "6.9.0-test")
    img = F.fetch_kernel(KernelEntry("mine", "custom", vmlinuz=str(vmlinuz), modules=str(mods)), tmp_path)
    assert img.release == "6.9.0-test" and img.kind == "custom" and len(img.sha256) == 64
    with pytest.raises(F.KernelUnavailable):
        F.fetch_kernel(KernelEntry("gone", "custom", vmlinuz=str(tmp_path / "nope")), tmp_path)
    with pytest.raises(F.KernelUnavailable):
        F.fetch_kernel(KernelEntry("gone", "deb", deb=(str(tmp_path / "nope.deb"),)), tmp_path)


def test_host_kernel_resolution_is_clear_either_way():
    try:
        img = F.resolve_host_kernel()
    except F.KernelUnavailable as e:
        assert os.uname().release in str(e) and "\n" not in str(e)
    else:
        assert img.release == os.uname().release and os.path.isfile(img.vmlinuz)


def test_xdg_cache_home_is_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert K.cache_root() == tmp_path / "overlaylab"
    assert K.cache_root(tmp_path / "x") == tmp_path / "x"


@pytest.mark.slow
def test_fetch_debian_61_cold_is_cached_and_warm_is_instant(kernel_61):
    t0 = time.monotonic()
    again = F.fetch_kernel("debian-6.1")
    assert time.monotonic() - t0 < 2.0
    assert again == kernel_61
    assert kernel_61.release.startswith("6.1.")
    assert os.path.isfile(os.path.join(kernel_61.modules_dir, "modules.dep"))  # depmod ran
    assert os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(kernel_61.modules_dir))))) \
        .startswith(kernel_61.package + "_" + kernel_61.sha256[:12])
    index = json.loads((K.kernels_dir() / "index.json").read_text())
    assert index["entries"]["debian-6.1"]["package"] == kernel_61.package
