from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def kernel_61():
    """debian-6.1 from the user's cache (fetched once; skipped when no network and no cache)."""
    from overlaylab.kernels import KernelUnavailable, fetch_kernel

    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("apt-get/dpkg-deb missing")
    try:
        return fetch_kernel("debian-6.1")
    except KernelUnavailable as e:
        pytest.skip(str(e))
