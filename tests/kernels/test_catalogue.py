"""Catalogue entries and resolving a package pattern to the newest build."""
from __future__ import annotations

import pytest

from overlaylab.kernels import catalogue as C

APT_CACHE_SHOW = """\
Package: linux-image-6.1.0-47-amd64
Version: 6.1.170-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
SHA256: 1111111111111111111111111111111111111111111111111111111111111111
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-47-amd64_6.1.170-1_amd64.deb

Package: linux-image-6.1.0-50-amd64
Version: 6.1.176-1
Depends: kmod, linux-base (>= 4.3~)
SHA256: 7b5597492a0a65aee61985a492e6bcc3f2cde830072a0e3b3d8c7e1b90279bd3
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-amd64_6.1.176-1_amd64.deb

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.176-1
SHA256: 2222222222222222222222222222222222222222222222222222222222222222

Package: linux-image-6.1.0-9-amd64
Version: 6.1.27-1
SHA256: 3333333333333333333333333333333333333333333333333333333333333333
"""

SID_SHOW = """\
Package: linux-image-7.2.13+deb14-amd64
Version: 7.2.13-1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)
SHA256: 28dc3dd3c1446246ced2f9e4bf4e93475aae3815d03eaedebe20b168cb944b10
"""


@pytest.mark.parametrize("a,b,expected", [
    ("6.1.176-1", "6.1.170-1", 1),
    ("6.1.27-1", "6.1.176-1", -1),
    ("1.0~rc1-1", "1.0-1", -1),
    ("1:0.1", "2.0", 1),
    ("5.10.223-1", "5.10.223-1", 0),
    ("6.12.117-1", "6.12.107-1", 1),
    ("1.0-1+b1", "1.0-1", 1),
    ("1.0a", "1.0+", -1),
])
def test_debian_version_order(a, b, expected):
    got = C.compare_versions(a, b)
    assert (got > 0) - (got < 0) == expected


def test_pattern_resolves_to_newest_build_not_cloud_flavour():
    records = C.parse_apt_cache_show(APT_CACHE_SHOW)
    best = C.newest(records, r"linux-image-6\.1\.0-[0-9]+-amd64")
    assert best.package == "linux-image-6.1.0-50-amd64"
    assert best.version == "6.1.176-1"
    assert best.sha256.startswith("7b5597492a0a")


def test_matching_packages_is_a_whole_name_match():
    names = ["linux-image-6.1.0-50-amd64", "linux-image-6.1.0-50-amd64-dbg",
             "linux-image-6.1.0-50-amd64-unsigned", "linux-image-6.1.0-50-cloud-amd64",
             "linux-image-amd64"]
    assert C.matching_packages(r"linux-image-6\.1\.0-[0-9]+-amd64", names) == ["linux-image-6.1.0-50-amd64"]


def test_split_7x_package_pulls_binary_and_modules_parts():
    best = C.newest(C.parse_apt_cache_show(SID_SHOW), r"linux-image-7\.[0-9.]+\+deb[0-9]+-amd64")
    assert C.kernel_parts(best.depends) == ["linux-base-7.2.13+deb14-amd64",
                                            "linux-binary-7.2.13+deb14-amd64",
                                            "linux-modules-7.2.13+deb14-amd64"]
    assert C.kernel_parts(["linux-base", "kmod", "linux-base-amd64"]) == []
    deps = C.parse_depends("a | b (>= 1), c:any (= 2)")
    assert deps == [[("a", None), ("b", "(>= 1)")], [("c", "(= 2)")]]


def test_project_catalogue_has_the_lab_kernels():
    cat = C.load_catalogue()
    assert {"host", "debian-5.10", "debian-6.1", "debian-6.12", "debian-sid"} <= set(cat)
    assert cat["host"].kind == "host"
    suites = {n: e.suite for n, e in cat.items() if e.kind == "debian"}
    assert suites["debian-5.10"] == "bullseye" and suites["debian-6.1"] == "bookworm"
    assert suites["debian-6.12"] == "trixie" and suites["debian-sid"] == "sid"
    for e in cat.values():
        if e.kind == "debian":
            assert "cloud" not in e.package and e.package.endswith("-amd64")


def test_custom_and_deb_entries(tmp_path):
    text = """
[kernels.mine]
kind = "custom"
vmlinuz = "k/bzImage"
modules = "k/lib/modules/6.9.0"

[kernels.local]
kind = "deb"
deb = "debs/linux-image.deb"
"""
    cat = C.parse_catalogue(text, tmp_path)
    assert cat["mine"].vmlinuz == str(tmp_path / "k/bzImage")
    assert cat["local"].deb == (str(tmp_path / "debs/linux-image.deb"),)
    with pytest.raises(C.CatalogueError):
        C.parse_catalogue('[kernels.x]\nkind = "debian"\nsuite = "sid"\n')
    with pytest.raises(C.CatalogueError):
        C.parse_catalogue('[kernels.x]\nkind = "weird"\n')
