"""``overlaylab driver`` with hostile names, unsafe layers and signals, as separate processes:
quoted names, escaped error lines, ApplyDiff warnings, ``overlay.safe_apply``, SIGTERM."""
from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time

import pytest

SPOOF = "innocent\nD /etc/shadow"
OSC = "title\x1b]0;owned\x07"


def _ol(home, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "overlaylab", "driver", "--home", home] + list(args),
                          capture_output=True, timeout=120, input=stdin)


def _tar(path, entries):
    """entries: TarInfo-building tuples (name, type, data/linkname, mode, uid, xattrs)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode, uid, xattrs in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, 1500000000
            if xattrs:
                info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                                    for k, v in xattrs.items()}
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            tar.addfile(info)
    return str(path)


def test_changes_quote_spoofing_names_and_json_stays_exact(backing_fs, tmp_path):
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "overlay")
    layer = _tar(tmp_path / "base.tar", [("plain name", "file", b"1", 0o644, 0, None),
                                         (SPOOF, "file", b"2", 0o644, 0, None),
                                         (OSC, "file", b"3", 0o644, 0, None)])
    assert _ol(home, "create", "base").returncode == 0
    assert _ol(home, "apply", "base", layer).stdout == b"3\n"
    res = _ol(home, "changes", "base")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    # one line per change: the newline cannot fake a "D /etc/shadow" line, no ESC reaches a tty
    assert lines == ['A "/innocent\\nD "', 'A "/innocent\\nD /etc"', 'A "/innocent\\nD /etc/shadow"',
                     'A /plain name', 'A "/title\\x1b]0;owned\\a"']
    assert not any(line.startswith("D ") for line in lines)
    assert b"\x1b" not in res.stdout
    exact = json.loads(_ol(home, "changes", "base", "--json").stdout)
    assert {c["path"] for c in exact} == {"/plain name", "/innocent\nD ", "/innocent\nD /etc", "/" + SPOOF, "/" + OSC}
    assert {c["kind"] for c in exact} == {"A"}


def test_error_lines_escape_terminal_sequences(backing_fs):
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "overlay")
    res = _ol(home, "mount", OSC)
    assert res.returncode == 1
    assert res.stderr == ("overlaylab: error: stat %s/title\\x1b]0;owned\\a: no such file or directory\n"
                          % home).encode()
    res = _ol(home, "create", "x", "--parent", SPOOF)
    assert res.stderr.count(b"\n") == 1 and b"\\nD /etc/shadow" in res.stderr


def _parent_and_child(home, tmp_path, *opts):
    base = _tar(tmp_path / "p.tar", [("bin", "dir", "", 0o755, 0, None),
                                     ("bin/ping", "file", b"ping", 0o755, 0, None)])
    child = _tar(tmp_path / "c.tar", [("usr", "dir", "", 0o755, 0, None),
                                      ("usr/ping2", "hardlink", "bin/ping", 0o6777, 4242,
                                       {"user.hazard": b"1"})])
    run = lambda *a: _ol(home, *(list(opts) + list(a)))  # noqa: E731
    assert run("create", "parent").returncode == 0
    assert run("apply", "parent", base).returncode == 0
    assert run("create", "child", "--parent", "parent").returncode == 0
    return run("apply", "child", child, "--parent", "parent")


def test_apply_warns_when_a_hard_link_changes_the_parent_layer(backing_fs, tmp_path):
    """The reference's hazard is kept (pinned) and made visible."""
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "overlay")
    res = _parent_and_child(home, tmp_path)
    assert res.returncode == 0 and res.stdout == b"0\n", res.stderr
    assert res.stderr.decode() == (
        'overlaylab: warning: ApplyDiff child: hard link "/usr/ping2" -> "bin/ping" changes the parent '
        "layer's file too: the link's mode, owner, xattrs and times are set on the inode the parent shares "
        "(as moby v1.10.3's overlay ApplyDiff does; the option overlay.safe_apply=true copies the file first)\n")
    parent_ping = os.lstat(os.path.join(home, "parent", "root", "bin", "ping"))
    assert stat.S_IMODE(parent_ping.st_mode) == 0o6777 and parent_ping.st_uid == 4242  # the hazard
    assert os.getxattr(os.path.join(home, "parent", "root", "bin", "ping"), "user.hazard") == b"1"


def test_safe_apply_keeps_the_parent_layer_intact(backing_fs, tmp_path):
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "overlay")
    res = _parent_and_child(home, tmp_path, "--storage-opt", "overlay.safe_apply=true")
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    parent_ping = os.path.join(home, "parent", "root", "bin", "ping")
    st = os.lstat(parent_ping)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)
    assert "user.hazard" not in os.listxattr(parent_ping)
    child = os.lstat(os.path.join(home, "child", "root", "usr", "ping2"))
    assert (stat.S_IMODE(child.st_mode), child.st_uid) == (0o6777, 4242)
    assert child.st_ino == os.lstat(os.path.join(home, "child", "root", "bin", "ping")).st_ino != st.st_ino
    bad = _ol(home, "--storage-opt", "overlay.safe_apply=maybe", "status")
    assert bad.returncode == 1
    assert bad.stderr == (b'overlaylab: error: init %s: overlay: invalid value "maybe" for overlay.safe_apply '
                          b"(want true or false)\n" % home.encode())


def test_apply_warns_about_a_symlink_above_the_layer_root(backing_fs, tmp_path):
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "overlay")
    layer = _tar(tmp_path / "l.tar", [("a", "dir", "", 0o755, 0, None),
                                      ("a/up", "symlink", "../../etc/shadow", 0o777, 0, None)])
    assert _ol(home, "create", "l").returncode == 0
    res = _ol(home, "apply", "l", layer)
    assert res.returncode == 0
    assert os.readlink(os.path.join(home, "l", "root", "a", "up")) == "../../etc/shadow"  # kept
    assert res.stderr.decode() == (
        'overlaylab: warning: ApplyDiff l: symlink "%s/l/root/a/up" -> "../../etc/shadow" points above the '
        'layer root; stored as the reference does (in its chroot the layer is "/", where moby v1.10.3\'s '
        "createTarFile check cannot fire)\n" % home)


# SIGTERM -------------------------------------------------------------------------------------

def _tar_bytes(n, prefix):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            info = tarfile.TarInfo("%s/f%05d" % (prefix, i))
            info.size, info.mtime = 512, 1500000000
            tar.addfile(info, io.BytesIO(bytes(512)))
    return buf.getvalue()


def _temp_left(home):
    left = []
    for top, dirs, files in os.walk(home):
        left += [os.path.join(top, n) for n in dirs + files
                 if n.startswith(("tmproot", "temp-docker-extract", ".safe-apply-"))]
    return left


def _wait_for(cond, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    pytest.fail("timed out waiting for %s" % what)


def _sigterm_mid_apply(home, layer_id, parent, data, started):
    """Feed half of ``data`` through a pipe, wait until ``started()``, SIGTERM the CLI (the
    pipe stays open: the command must not wait for the rest), return (rc, stderr)."""
    args = [sys.executable, "-m", "overlaylab", "driver", "--home", home, "apply", layer_id, "-"]
    if parent:
        args += ["--parent", parent]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(data[:len(data) // 2])
        proc.stdin.flush()
        _wait_for(started, "the apply to be under way")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        err = proc.stderr.read()
        return rc, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def test_sigterm_mid_apply_of_a_base_layer_leaves_no_temp_dir_in_the_layer(backing_fs, tmp_path):
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "overlay")
    assert _ol(home, "create", "base").returncode == 0
    root = os.path.join(home, "base", "root")
    data = _tar_bytes(6000, "big")

    def started():
        names = os.listdir(root)
        return any(n.startswith("temp-docker-extract") for n in names) and os.path.isdir(os.path.join(root, "big")) \
            and len(os.listdir(os.path.join(root, "big"))) > 100

    rc, err = _sigterm_mid_apply(home, "base", "", data, started)
    assert rc == 143 and err == b"overlaylab: terminated\n", err
    assert _temp_left(home) == []  # the temp dir would otherwise become image content
    assert len(os.listdir(os.path.join(root, "big"))) < 6000  # it really was mid-way


@pytest.mark.parametrize("phase", ["copy", "extract"])
def test_sigterm_mid_native_apply_removes_tmproot_and_keeps_the_layer(backing_fs, tmp_path, phase):
    """SIGTERM while the parent's files are hard-linked into tmproot* (copy) or while the
    chrooted helper extracts into it (extract): tmproot* goes, the layer stays as it was."""
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "overlay")
    assert _ol(home, "create", "parent").returncode == 0
    assert _ol(home, "apply", "parent", "-", stdin=_tar_bytes(8000, "lib")).returncode == 0
    assert _ol(home, "create", "child", "--parent", "parent").returncode == 0
    before = sorted(os.listdir(os.path.join(home, "child")))
    assert before == ["lower-id", "merged", "upper", "work"]

    def started():
        tmp = [n for n in os.listdir(os.path.join(home, "child")) if n.startswith("tmproot")]
        if phase == "copy":
            return bool(tmp)
        return bool(tmp) and any(n.startswith("temp-docker-extract")
                                 for n in os.listdir(os.path.join(home, "child", tmp[0])))

    rc, err = _sigterm_mid_apply(home, "child", "parent", _tar_bytes(6000, "app"), started)
    assert rc == 143 and err == b"overlaylab: terminated\n", err
    assert _temp_left(home) == []
    assert sorted(os.listdir(os.path.join(home, "child"))) == before  # the layer is as it was
    assert len(os.listdir(os.path.join(home, "parent", "root", "lib"))) == 8000


def test_lab_cli_error_lines_escape_terminal_sequences(tmp_path):
    """The other CLIs' ``overlaylab: error: …`` lines too (here ``compare`` echoing a name it was given)."""
    res = subprocess.run([sys.executable, "-m", "overlaylab", "compare", "--reports-dir", str(tmp_path),
                          str(tmp_path / "run\nError: fake\x1b]0;owned\x07")], capture_output=True, timeout=120)
    assert res.returncode != 0
    assert b"\x1b" not in res.stderr and b"\x07" not in res.stderr, res.stderr
    assert b"run\\nError: fake\\x1b]0;owned\\a" in res.stderr, res.stderr
    assert res.stderr.startswith(b"overlaylab compare: error: ") and res.stderr.count(b"\n") == 1  # one line
