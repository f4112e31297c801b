"""Kernel health per cell (issue #14, agent/health.py): the log-line classifier and the taint
decoder on real kernel lines, and on the host a cell during which the kernel log gets a WARNING
line is marked while an uneventful one is not."""
from __future__ import annotations

import pytest

from overlaylab.agent import health
from overlaylab.agent.scenario import Scenario, run_scenario
from overlaylab.agent.shell import KernelLogCursor
from tests import health_scenarios

# Headlines as the kernel prints them (kernel/panic.c __warn, lockdep.c, hung_task.c,
# rcu/tree_stall.h, watchdog.c, arch/x86/mm/fault.c, traps.c), with dmesg's time stamps.
REAL_LINES = [
    ("[  154.320133] WARNING: CPU: 1 PID: 2345 at fs/overlayfs/copy_up.c:1028 ovl_copy_up_one+0x5b2/0x6a0 [overlay]",
     "warning"),
    ("[   12.000001] WARNING: at fs/overlayfs/super.c:100 ovl_fill_super+0x1/0x2()", "warning"),
    ("[ 1602.117383] WARNING: possible circular locking dependency detected", "lockdep"),
    ("[   88.410012] WARNING: possible recursive locking detected", "lockdep"),
    ("[  310.000000] WARNING: suspicious RCU usage", "lockdep"),
    ("[  245.760215] INFO: task kworker/u4:2:1234 blocked for more than 122 seconds.", "hung_task"),
    ("[  999.210019] rcu: INFO: rcu_preempt self-detected stall on CPU", "rcu_stall"),
    ("[  999.210019] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu_stall"),
    ("[   56.789012] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [overlay:431]", "soft_lockup"),
    ("[   33.112233] BUG: kernel NULL pointer dereference, address: 0000000000000008", "bug"),
    ("[   33.112300] kernel BUG at fs/overlayfs/inode.c:501!", "bug"),
    ("[   33.112301] BUG: KASAN: use-after-free in ovl_dentry_upper+0x20/0x40", "bug"),
    ("[   33.112400] Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops"),
    ("[   41.000100] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP",
     "gpf"),
    ("[   41.000100] Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000",
     "gpf"),
    ("[   77.000000] Kernel panic - not syncing: sysrq triggered crash", "panic"),
]

ORDINARY_LINES = [
    "[    5.123456] overlayfs: upper fs does not support tmpfile.",
    "[    5.123999] overlayfs: fs on '/tmp/x/lower' does not support file handles, falling back to xino=off.",
    "[    6.000000] EXT4-fs (loop0): mounted filesystem 1c3d2e9a-0000 r/w with ordered data mode. Quota mode: none.",
    "[    6.100000] XFS (loop1): Deprecated V4 format (crc=0) will not be supported after September 2030.",
    "[    7.000000] loop0: detected capacity change from 0 to 1048576",
    "[    8.000000] ------------[ cut here ]------------",
    "[    9.000000] audit: type=1400 audit(1700000000.000:2): apparmor=\"STATUS\" operation=\"profile_load\"",
    "[   10.000000] sysrq: Trigger a crash",
]


@pytest.mark.parametrize("line,kind", REAL_LINES)
def test_classify_line_names_the_kind_of_each_kernel_health_headline(line, kind):
    assert health.classify_line(line) == kind


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_classify_line_leaves_ordinary_kernel_lines_alone(line):
    assert health.classify_line(line) is None


def test_kernel_warnings_keeps_the_headlines_of_a_warn_splat_not_its_trace():
    splat = ["[  1.0] ------------[ cut here ]------------", REAL_LINES[0][0],
             "[  1.1] Modules linked in: overlay ext4", "[  1.2] CPU: 1 PID: 2345 Comm: cp Not tainted 6.1.0-18-amd64",
             "[  1.3] Call Trace:", "[  1.4]  <TASK>", "[  1.5]  ovl_copy_up_flags+0x10/0x20 [overlay]",
             "[  1.6] ---[ end trace 0000000000000000 ]---"]
    assert health.kernel_warnings(splat) == [{"kind": "warning", "line": REAL_LINES[0][0]}]


@pytest.mark.parametrize("value,letters", [
    (0, []), (1, ["P"]), (512, ["W"]), (1 | 512 | 4096 | 8192, ["P", "W", "O", "E"]),
    (128 | 16384, ["D", "L"]), (1 << 18, ["N"]), (1 << 19, ["J"]), (1 << 21, ["bit21"]),
])
def test_decode_taint_gives_the_kernels_letters(value, letters):
    assert health.decode_taint(value) == letters


def test_a_new_taint_bit_marks_a_cell_with_its_meaning_and_both_values():
    mark = health.cell_health([], 512, 512 | 16384)
    assert mark == {"kernel_warnings": [], "taint_before": {"value": 512, "flags": ["W"]},
                    "taint_after": {"value": 16896, "flags": ["W", "L"]}, "new_taint": ["L: soft lockup occurred"]}


def test_a_quiet_log_and_unchanged_taint_leave_no_mark():
    assert health.cell_health(ORDINARY_LINES, 4096, 4096) is None
    assert health.cell_health([], None, None) is None  # taint unreadable: nothing to compare


def test_a_warning_line_marks_a_cell_even_with_unchanged_taint():
    mark = health.cell_health(ORDINARY_LINES + [REAL_LINES[2][0]], 0, 0)
    assert mark["kernel_warnings"] == [{"kind": "lockdep", "line": REAL_LINES[2][0]}]
    assert "new_taint" not in mark and mark["taint_after"] == {"value": 0, "flags": []}


def test_a_cell_during_which_the_kernel_logs_a_warning_is_marked_though_it_passed(tmp_path):
    # The scenario writes a WARNING-shaped line to /dev/kmsg: the real kernel log the agent's
    # cursor reads, so this is the agent's whole mechanism on the host kernel, and harmless (a
    # user write only logs: no taint, no real warning; the line says who wrote it).
    warn = Scenario("health-kmsg-warning", "logs a WARNING line", "tests/health_scenarios.py", "quirks",
                    health_scenarios._warn, needs_mount=False)
    with KernelLogCursor() as klog:
        assert klog.source == "/dev/kmsg"
        cell = run_scenario(warn, str(tmp_path), {}, str(tmp_path), kernel_log=klog)
    assert cell.outcome.value == "PASS"
    ours = [w for w in cell.health["kernel_warnings"] if health_scenarios.WARNING_LINE in w["line"]]
    assert [w["kind"] for w in ours] == ["warning"]
    record = cell.to_record("tmpfs", "health-kmsg-warning", "quirks").to_json()
    assert record["health"] == cell.health and record["outcome"] == "PASS"
    assert any(health_scenarios.WARNING_LINE in line for line in record["evidence"]["dmesg"])


def test_an_uneventful_cell_on_a_kernel_with_steady_taint_is_not_marked(tmp_path):
    before = health.read_taint()
    assert before is not None  # /proc/sys/kernel/tainted, read only
    quiet = Scenario("health-quiet", "does nothing", "tests/agent/test_health.py", "quirks", lambda ctx: None,
                     needs_mount=False)
    with KernelLogCursor() as klog:
        cell = run_scenario(quiet, str(tmp_path), {}, str(tmp_path), kernel_log=klog)
    assert health.read_taint() == before
    assert cell.outcome.value == "PASS" and cell.health is None
    assert "health" not in cell.to_record("tmpfs", "health-quiet", "quirks").to_json()
