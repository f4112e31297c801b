"""Fixtures of the archive tests (they run as root on the real filesystem of ``tmp_path``)."""
from __future__ import annotations

import pytest

from tests.needs import need_root

from .helpers import snapshot


@pytest.fixture(autouse=True)
def _need_root():
    need_root("the archive tests (chown, mknod, chroot, security xattrs)")


@pytest.fixture
def jail(tmp_path):
    """``(dest, check)``: an empty ``dest`` next to a sentinel tree; ``check()`` asserts
    nothing outside ``dest`` changed."""
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / "hello").write_bytes(b"hello, sentinel\n")
    (outside / "sub").mkdir()
    (outside / "sub" / "f").write_bytes(b"f\n")
    before = snapshot(str(tmp_path), exclude=[str(dest)])

    def check() -> None:
        after = snapshot(str(tmp_path), exclude=[str(dest)])
        assert after == before, "something outside dest changed"

    return str(dest), check
