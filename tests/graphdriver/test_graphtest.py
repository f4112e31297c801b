"""moby's graph driver acceptance suite on overlay: the cases of overlaylab.graphdriver.graphtest.

Each case runs on tmpfs, ext4 and xfs (loop devices). Where the reference skips a case because of
the mtime bug (moby#21555), the suite's case makes the timestamps differ (the case that works);
the two ``*_mtime_bug_moby21555`` tests here demonstrate the bug deterministically.
"""
from __future__ import annotations

import os
import time

import pytest

from overlaylab.archive import ChangeKind
from overlaylab.graphdriver import graphtest
from overlaylab.graphdriver.graphtest import (
    Checks, GraphtestFailure, add_file, apply_upper_diff, check_file, check_file_removed, mounted,
    many_files_mismatches, random_id, stamp_layer, verify_file, write_file,
)


@pytest.mark.parametrize("case", graphtest.CASES, ids=[c.__name__ for c in graphtest.CASES])
def test_graphtest_case(case, driver):
    case(Checks(), driver)


def test_diff_apply_mtime_bug_moby21555(driver):
    """Same size, same second, 0 ns in the lower: the rewrite is invisible to the naive diff.

    The lower files get an mtime of a whole second (0 ns, what tar extraction gives); the
    rewritten upper files get the same second with non-zero ns. ``sameFsTimeSpec`` calls them
    equal, so the diff misses every rewrite and the applied layer keeps the old content.
    """
    second = (int(time.time()) - 100) * 10**9
    t = Checks()
    diff, diff_size, size = apply_upper_diff(
        t, driver, 10,
        stamp_base=lambda drv, layer: stamp_layer(drv, layer, second),
        stamp_upper=lambda drv, layer: stamp_layer(drv, layer, second + 123,
                                                   only=lambda n: n.startswith("file-") and n != "file-remove.txt"))
    assert size < diff_size, "the rewritten files were expected to be missed (moby#21555)"
    assert many_files_mismatches(driver, diff, 10, 3) == []  # old content: the rewrites never reached the diff
    check_file_removed(t, driver, diff, "file-remove.txt")


def test_changes_mtime_bug_moby21555(driver):
    """A same-size rewrite stamped with the lower's second is not a change (deterministic)."""
    base = random_id()
    upper = random_id()
    driver.create(base, "", "")
    add_file(driver, base, "f", b"12345678")
    stamp = int(time.time())
    with mounted(driver, base) as root:
        os.utime(os.path.join(root, "f"), ns=(stamp * 10**9, stamp * 10**9))  # tar-extracted: 0 ns
    driver.create(upper, base, "")
    with mounted(driver, upper) as merged:
        write_file(os.path.join(merged, "f"), b"87654321")
        os.utime(os.path.join(merged, "f"), ns=(stamp * 10**9 + 5, stamp * 10**9 + 5))
        # Same content size, a different second: that one is seen (the working case).
        write_file(os.path.join(merged, "g"), b"new")
    paths = {(c.path, c.kind) for c in driver.changes(upper, base)}
    assert ("/f", ChangeKind.MODIFY) not in paths, "moby#21555: a same-second, same-size rewrite is missed"
    assert ("/g", ChangeKind.ADD) in paths

    # The working case: a different second makes the same rewrite visible.
    with mounted(driver, upper) as merged:
        os.utime(os.path.join(merged, "f"), ns=((stamp + 1) * 10**9, (stamp + 1) * 10**9))
    paths = {(c.path, c.kind) for c in driver.changes(upper, base)}
    assert ("/f", ChangeKind.MODIFY) in paths


def test_helpers_detect_wrong_content(driver):
    """The suite's checks can fail: a wrong content, a file still there, a wrong mode are reported."""
    t = Checks()
    base = random_id()
    driver.create(base, "", "")
    add_file(driver, base, "x", b"one")
    with pytest.raises(AssertionError, match="x reads b'one', expected b'two'"):
        check_file(t, driver, base, "x", b"two")
    with pytest.raises(AssertionError, match="file still exists: x"):
        check_file_removed(t, driver, base, "x")
    with mounted(driver, base) as root:
        with pytest.raises(GraphtestFailure, match="mode 600, got 755") as failure:
            verify_file(t, root + "/x", 0o100600, 0, 0)
    assert failure.value.evidence["seen"]["path"] == root + "/x"


def test_checks_keep_notes_and_fail_with_the_evidence():
    t = Checks()
    t.note("seen", a=1)
    t.check(True, "never")
    with pytest.raises(GraphtestFailure) as failure:
        t.check([], "nothing there", entries=[])
    assert str(failure.value) == "nothing there (entries=[])"
    assert (t.log, t.evidence) == (["seen"], {"a": 1, "entries": []})


def test_a_scenario_context_is_the_suite_s_t(tmp_path):
    """The lab runs the same cases with its ScenarioContext: a failed check is a ScenarioFailure
    whose message is the check's, and the evidence lands in the context (the cell's record)."""
    from overlaylab.agent.scenario import ScenarioContext, ScenarioFailure
    ctx = ScenarioContext(str(tmp_path), {}, str(tmp_path))
    assert isinstance(ctx, Checks)
    with pytest.raises(ScenarioFailure) as failure:
        ctx.check(False, "New directory not empty", entries=["x"])
    assert str(failure.value) == "New directory not empty"
    assert ctx.evidence == {"entries": ["x"]}


def test_the_case_list_is_moby_s_in_order():
    """v1.10.3's three cases then v1.12.0's, each citing the moby function it ports."""
    assert [c.__name__ for c in graphtest.CASES] == [
        "driver_test_create_empty", "driver_test_create_base", "driver_test_create_snap",
        "driver_test_deep_layer_read", "driver_test_diff_apply", "driver_test_changes"]
    for case in graphtest.CASES:
        go_name = "DriverTest" + "".join(w.title() for w in case.__name__.split("_")[2:])
        assert "graphtest_unix.go ``%s``" % go_name in case.__doc__
