"""What `overlaylab run` says while it works: run.log in the run directory, lasting lines per
finished profile and target, on a terminal (a real pseudo-terminal) as well as in a pipe."""
from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time

import pytest

from overlaylab.lab.progress import ProgressDisplay, keep_path, phase, phase_progress, target_scope

from .test_run import lab_tmp  # noqa: F401  (a fixture: TMPDIR for the agent, cleaned up)

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
RUN_ARGS = ["run", "--provider", "local", "-p", "=tmpfs or =ext4", "-k", "=create-empty or =driver-init"]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "


def _run_dir(reports):
    runs = os.listdir(os.path.join(reports, "runs"))
    assert len(runs) == 1, runs
    return os.path.join(reports, "runs", runs[0])


def _lasting_lines_in(text):
    """The lines every run prints for good, whatever the terminal, in their order."""
    want = [r"target host up: kernel \S+ \(local\)",
            r"\[2/4\] host ext4 done in \d+\.\ds: 2 PASS",
            r"\[4/4\] host tmpfs done in \d+\.\ds: 2 PASS",
            r"target host done in \d+\.\ds: 4/4 cells, 4 PASS"]
    pos = 0
    for pattern in want:
        m = re.compile(pattern).search(text, pos)
        assert m, "%r not found (in order) in:\n%s" % (pattern, text)
        pos = m.end()


def test_run_log_has_a_timestamped_line_per_profile_and_target(tmp_path, lab_tmp):
    reports = str(tmp_path / "reports")
    r = subprocess.run(OVERLAYLAB + RUN_ARGS + ["--reports-dir", reports], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, TMPDIR=lab_tmp))
    assert r.returncode == 0, r.stderr
    with open(os.path.join(_run_dir(reports), "run.log")) as f:
        log = f.read()
    lines = log.splitlines()
    assert lines and all(re.match(STAMP, line) for line in lines), log
    _lasting_lines_in(log)
    assert re.search(STAMP + r"host: probes \(kernel facts\) \.\.\.$", log, re.M), log
    assert re.search(STAMP + r"host: probes done in \d+\.\ds", log, re.M), log
    # not a terminal: the same lines on stderr, without timestamps
    _lasting_lines_in(r.stderr)
    assert not re.search(STAMP, r.stderr)


class Screen:
    """Just enough of a terminal to replay rich's live display: text, CR, LF, cursor up/down,
    erase line; other escape sequences (colours, cursor visibility) change nothing on screen."""

    def __init__(self):
        self.rows = [[]]
        self.row = self.col = 0

    def feed(self, data: str) -> None:
        for m in re.finditer(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b[()][A-Za-z0-9]|\r|\n|[^\x1b\r\n]", data):
            tok = m.group(0)
            if tok == "\r":
                self.col = 0
            elif tok == "\n":
                self.row += 1
                self.col = 0
                while len(self.rows) <= self.row:
                    self.rows.append([])
            elif m.group(2):
                n = int(m.group(1)) if m.group(1).isdigit() else 1
                cmd = m.group(2)
                if cmd == "A":
                    self.row = max(0, self.row - n)
                elif cmd == "B":
                    self.row += n
                    while len(self.rows) <= self.row:
                        self.rows.append([])
                elif cmd == "K":
                    mode = int(m.group(1) or 0)
                    line = self.rows[self.row]
                    self.rows[self.row] = [] if mode == 2 else line[:self.col]
                elif cmd == "G":
                    self.col = n - 1
            elif not tok.startswith("\x1b"):
                line = self.rows[self.row]
                while len(line) < self.col:
                    line.append(" ")
                if self.col < len(line):
                    line[self.col] = tok
                else:
                    line.append(tok)
                self.col += 1

    def text(self) -> str:
        return "\n".join("".join(r).rstrip() for r in self.rows)


def test_terminal_keeps_the_lasting_lines_after_the_bar_ends(tmp_path, lab_tmp):
    reports = str(tmp_path / "reports")
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(OVERLAYLAB + RUN_ARGS + ["--reports-dir", reports], stdin=slave, stdout=slave,
                                stderr=slave, close_fds=True, env=dict(os.environ, TMPDIR=lab_tmp, TERM="xterm",
                                                                        COLUMNS="160", LINES="50"))
        os.close(slave)
        slave = -1
        chunks = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        rc = proc.wait(30)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert rc == 0, raw[-3000:]
    assert "\x1b[" in raw  # it really drew a live display
    screen = Screen()
    screen.feed(raw)
    final = screen.text()
    _lasting_lines_in(final)
    # the bar itself ends showing every cell done, then the tables follow
    assert re.search(r"^cells .* 4/4", final, re.M), final
    assert final.index("target host done in") < final.index("== host")


def test_display_without_terminal_shows_phases_and_bytes(tmp_path):
    out = io.StringIO()
    display = ProgressDisplay(6, str(tmp_path), {"k1": 6}, stream=out, tty=False)
    with target_scope("k1", display, str(tmp_path)):
        assert keep_path("console-%s.log") == str(tmp_path / "console-k1.log")
        with phase("fetch", "kernel k1") as state:
            phase_progress("fetch", 5 << 20, 10 << 20)
            state["detail"] = "cached"
        with pytest.raises(RuntimeError):
            with phase("boot", "tcg"):
                raise RuntimeError("no boot")
    assert keep_path("x") is None  # outside any scope
    with phase("fetch"):  # outside a scope: nothing happens, nothing raises
        phase_progress("fetch", 1)
    display("cell", {"kernel": "k1", "profile": "ext4", "outcome": "PASS", "met": True})
    display("cell", {"kernel": "k1", "profile": "ext4", "outcome": "FAIL", "met": False})
    display("profile-end", {"kernel": "k1", "profile": "ext4", "seconds": 2.5})
    display("target-end", {"kernel": "k1", "seconds": 9.0})
    display("cell", {"kernel": "k2", "profile": "ext4", "outcome": "ERROR", "met": False,
                     "error": "target k2 did not come up: guest kernel panicked\n--- console tail ---"})
    display("target-end", {"kernel": "k2", "seconds": 3.0})
    display.stop()
    text = out.getvalue()
    assert "target k2 done in 3.0s: 1 cells, 1 ERROR, 1 not as expected; " \
           "target k2 did not come up: guest kernel panicked\n" in text
    assert "k1: fetch (kernel k1) ..." in text
    assert re.search(r"k1: fetch done in \d+\.\ds \(cached\)", text)
    assert re.search(r"k1: boot FAILED in \d+\.\ds \(tcg\)", text)
    assert "[2/6] k1 ext4 done in 2.5s: 1 PASS, 1 FAIL, 1 not as expected" in text
    assert "target k1 done in 9.0s: 2/6 cells, 1 PASS, 1 FAIL, 1 not as expected" in text
    with open(tmp_path / "run.log") as f:
        logged = [re.sub("^" + STAMP, "", line) for line in f.read().splitlines()]
    assert logged == text.splitlines()
