"""The one rule for what a test may skip.

A missing *tool* (a program, a Python module, a downloadable kernel, root) is the machine's
fault, not the code's: ``scripts/setup`` installs every tool a test needs, so on a developer's
half-set-up machine the test is skipped with the reason, but where ``CI`` is set (any
non-empty value but ``0``/``false``) it *fails*, so CI can never pass without running it.

Only what the *kernel* cannot do (xfs V4 on a kernel without ``CONFIG_XFS_SUPPORT_V4``) is a
legitimate skip everywhere: use :func:`kernel_cannot` for that, and say which kernel feature.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

import pytest

SETUP_HINT = "scripts/setup installs it"
SBIN = ":/usr/sbin:/sbin:/usr/local/sbin"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """Skip (locally) or fail (under CI) because something a test needs is not there."""
    if in_ci():
        pytest.fail("CI is set and %s; a test never skips for a missing tool under CI (%s)"
                    % (reason, SETUP_HINT), pytrace=False)
    pytest.skip(reason)


def need(ok: bool, reason: str) -> None:
    """``need(cond, "why it is needed")``: :func:`missing` unless ``ok``."""
    if not ok:
        missing(reason)


def which(name: str) -> Optional[str]:
    return shutil.which(name, path=os.environ.get("PATH", "") + SBIN)


def need_tool(name: str, package: Optional[str] = None) -> str:
    """The path of program ``name``; skipped locally / failed under CI when it is missing."""
    path = which(name)
    if path is None:
        missing("%s is not installed (Debian package %s)" % (name, package or name))
    return path  # type: ignore[return-value]


def need_module(name: str, package: Optional[str] = None):
    """``importorskip`` under the same rule."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing("Python module %s is not importable (%s): %s" % (name, package or name, err))


def need_root(what: str) -> None:
    need(os.geteuid() == 0, "%s needs root" % what)


def kernel_cannot(reason: str) -> None:
    """A legitimate skip everywhere, CI included: the running kernel lacks a feature."""
    pytest.skip("this kernel cannot: %s" % reason)


def backing_fs_unavailable(err) -> None:
    """Skip for a :class:`BackingFsUnavailable` only when the kernel refused the mount;
    a failed mkfs/losetup/image is a missing or broken tool and follows :func:`missing`."""
    if getattr(err, "step", None) == "mount":
        kernel_cannot("mount profile %s: %s" % (err.profile, err))
    missing("profile %s could not be made: %s" % (getattr(err, "profile", "?"), err))
