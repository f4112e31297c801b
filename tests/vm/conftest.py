from __future__ import annotations


import pytest

from tests.needs import missing, need_tool


@pytest.fixture(scope="session")
def kernel_61():
    """debian-6.1 from the user's cache (fetched once; skipped when no network and no cache)."""
    from overlaylab.kernels import KernelUnavailable, fetch_kernel

    need_tool("apt-get", "apt")
    need_tool("dpkg-deb", "dpkg")
    try:
        return fetch_kernel("debian-6.1")
    except KernelUnavailable as e:
        missing(str(e))
