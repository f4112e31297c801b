"""moby's graph driver acceptance suite on overlay: 1.10.3's three tests and 1.12's additions.

Each runs on tmpfs, ext4 and xfs (loop devices). Where the reference skips a test because of
the mtime bug (moby#21555), two versions exist here: one that makes the timestamps differ
(the case that works) and one that demonstrates the bug deterministically.
"""
from __future__ import annotations

import io
import os
import time

import pytest

from overlaylab.archive import ChangeKind

from .graphtest import (
    add_directory, add_file, add_many_files, add_many_layers, change_many_files, check_changes,
    check_file, check_file_removed, check_many_files, check_many_layers, create_base, random_id,
    read_dir, remove_all, verify_base, verify_file,
)


# 1.10.3 --------------------------------------------------------------------------------------
def test_create_empty(driver):
    driver.create("empty", "", "")
    assert driver.exists("empty"), "Newly created image doesn't exist"
    d = driver.get("empty", "")
    verify_file(d, 0o040755, 0, 0)
    assert read_dir(d) == [], "New directory not empty"
    driver.put("empty")
    driver.remove("empty")
    assert not driver.exists("empty")


def test_create_base(driver):
    create_base(driver, "Base")
    verify_base(driver, "Base")
    driver.remove("Base")


def test_create_snap(driver):
    create_base(driver, "Base")
    driver.create("Snap", "Base", "")
    verify_base(driver, "Snap")  # through the mounted overlay
    assert not os.path.ismount(os.path.join(driver.home, "Snap", "merged")), "verifyBase's Put must unmount"
    driver.remove("Snap")
    driver.remove("Base")


# 1.12 -----------------------------------------------------------------------------------------
def test_deep_layer_read_50(driver):
    base = random_id()
    driver.create(base, "", "")
    add_file(driver, base, "testfile.txt", b"test content")
    top = add_many_layers(driver, base, 50)
    check_many_layers(driver, top, 50)
    check_file(driver, top, "testfile.txt", b"test content")
    # Overlay v1: every layer above the first is Create case C, a deep copy of the upper.
    upper = os.path.join(driver.home, top, "upper")
    assert sorted(os.listdir(upper)) == sorted(["top-id"] + ["layer-%d" % i for i in range(1, 51)])


def _stamp_files(driver, layer, ns, only=lambda name: True):
    """Set the mtime (and atime) of every file of the layer to ``ns`` nanoseconds."""
    d = driver.get(layer, "")
    try:
        for dirpath, _, filenames in os.walk(d):
            for name in filenames:
                if only(name):
                    os.utime(os.path.join(dirpath, name), ns=(ns, ns))
    finally:
        driver.put(layer)


def _backdate(driver, layer, seconds=10):
    """Move every file of the layer into the past so a rewrite is never in the same tick."""
    _stamp_files(driver, layer, int((time.time() - seconds) * 1e9))


def _diff_apply(driver, file_count, stamp_base=_backdate, stamp_upper=None):
    base = random_id()
    upper = random_id()
    driver.create(base, "", "")
    add_many_files(driver, base, file_count, 3)
    add_file(driver, base, "file-remove.txt", b"This file should get removed in upper!")
    add_directory(driver, base, "var/lib")
    stamp_base(driver, base)
    driver.create(upper, base, "")
    add_many_files(driver, upper, file_count, 6)
    if stamp_upper:
        stamp_upper(driver, upper)
    remove_all(driver, upper, "file-remove.txt", "var/lib")
    diff_size = driver.diff_size(upper, "")

    diff = random_id()
    driver.create(diff, base, "")
    check_many_files(driver, diff, file_count, 3)
    check_file(driver, diff, "file-remove.txt", b"This file should get removed in upper!")
    stream = driver.diff(upper, base)
    try:
        arch = stream.read()
    finally:
        stream.close()
    size = driver.apply_diff(diff, base, io.BytesIO(arch))
    return diff, diff_size, size


def test_diff_apply_10_files(driver):
    diff, diff_size, size = _diff_apply(driver, 10)
    assert size == diff_size, "Apply diff size different, got %d, expected %d" % (size, diff_size)
    check_many_files(driver, diff, 10, 6)
    check_file_removed(driver, diff, "file-remove.txt")
    check_file_removed(driver, diff, "var/lib")


def test_diff_apply_mtime_bug_moby21555(driver):
    """Same size, same second, 0 ns in the lower: the rewrite is invisible to the naive diff.

    The lower files get an mtime of a whole second (0 ns, what tar extraction gives); the
    rewritten upper files get the same second with non-zero ns. ``sameFsTimeSpec`` calls them
    equal, so the diff misses every rewrite and the applied layer keeps the old content.
    """
    second = (int(time.time()) - 100) * 10**9
    diff, diff_size, size = _diff_apply(
        driver, 10,
        stamp_base=lambda drv, layer: _stamp_files(drv, layer, second),
        stamp_upper=lambda drv, layer: _stamp_files(drv, layer, second + 123,
                                                    only=lambda n: n.startswith("file-") and n != "file-remove.txt"))
    assert size < diff_size, "the rewritten files were expected to be missed (moby#21555)"
    check_many_files(driver, diff, 10, 3)  # old content: the rewrites never reached the diff
    check_file_removed(driver, diff, "file-remove.txt")


def test_changes(driver):
    base = random_id()
    upper = random_id()
    driver.create(base, "", "")
    add_many_files(driver, base, 20, 3)
    _backdate(driver, base)
    driver.create(upper, base, "")
    expected = change_many_files(driver, upper, 20, 6)
    assert len(expected) == 21  # 1 dir Modify + 7 Modify + 7 Add + 6 Delete
    check_changes(expected, driver.changes(upper, base))


def test_changes_mtime_bug_moby21555(driver):
    """A same-size rewrite stamped with the lower's second is not a change (deterministic)."""
    base = random_id()
    upper = random_id()
    driver.create(base, "", "")
    add_file(driver, base, "f", b"12345678")
    stamp = int(time.time())
    root = driver.get(base, "")
    os.utime(os.path.join(root, "f"), ns=(stamp * 10**9, stamp * 10**9))  # tar-extracted: 0 ns
    driver.put(base)
    driver.create(upper, base, "")
    merged = driver.get(upper, "")
    try:
        with open(os.path.join(merged, "f"), "wb") as f:
            f.write(b"87654321")
        os.utime(os.path.join(merged, "f"), ns=(stamp * 10**9 + 5, stamp * 10**9 + 5))
        # Same content size, a different second: that one is seen (the working case).
        with open(os.path.join(merged, "g"), "wb") as f:
            f.write(b"new")
    finally:
        driver.put(upper)
    paths = {(c.path, c.kind) for c in driver.changes(upper, base)}
    assert ("/f", ChangeKind.MODIFY) not in paths, "moby#21555: a same-second, same-size rewrite is missed"
    assert ("/g", ChangeKind.ADD) in paths

    # The working case: a different second makes the same rewrite visible.
    merged = driver.get(upper, "")
    try:
        os.utime(os.path.join(merged, "f"), ns=((stamp + 1) * 10**9, (stamp + 1) * 10**9))
    finally:
        driver.put(upper)
    paths = {(c.path, c.kind) for c in driver.changes(upper, base)}
    assert ("/f", ChangeKind.MODIFY) in paths


def test_helpers_detect_wrong_content(driver):
    """The ported helpers can fail: a wrong layer id or content is reported."""
    base = random_id()
    driver.create(base, "", "")
    add_file(driver, base, "x", b"one")
    with pytest.raises(AssertionError):
        check_file(driver, base, "x", b"two")
    with pytest.raises(AssertionError):
        check_file_removed(driver, base, "x")
    with pytest.raises(AssertionError):
        verify_file(driver.get(base, "") + "/x", 0o100600, 0, 0)
    driver.put(base)
