"""``overlaylab driver``: the bug reporter's worked example, end to end, as separate processes."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile

from overlaylab.mountutil import mounts_under


def _ol(home, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "overlaylab", "driver", "--home", home] + list(args),
                          capture_output=True, text=True, timeout=120, input=stdin)


def test_driver_cli_worked_example(backing_fs, tmp_path):
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "docker", "overlay")  # the root is made, as the daemon does
    img = tmp_path / "img"
    (img / "etc").mkdir(parents=True)
    (img / "greeting").write_text("hello\n")
    (img / "etc" / "hostname").write_text("base\n")
    layer = tmp_path / "base.tar"
    with tarfile.open(layer, "w") as tar:
        tar.add(str(img), arcname=".")
    assert _ol(home, "create", "base").stdout == "base\n"
    assert _ol(home, "apply", "base", str(layer)).stdout == "11\n"  # 6 + 5 bytes of payload
    assert _ol(home, "create", "ctr-init", "--parent", "base").returncode == 0
    assert _ol(home, "create", "ctr", "--parent", "ctr-init").returncode == 0
    merged = _ol(home, "mount", "ctr").stdout.strip()
    assert merged == os.path.join(home, "ctr", "merged") and os.path.ismount(merged)
    with open(os.path.join(merged, "etc", "hostname"), "w") as f:
        f.write("changed\n")
    os.unlink(os.path.join(merged, "greeting"))
    listing = _ol(home, "list").stdout
    assert "ctr       O        base        mounted" in listing
    assert _ol(home, "changes", "ctr", "--parent", "base").stdout == "C /etc\nC /etc/hostname\nD /greeting\n"
    out = tmp_path / "ctr.tar"
    assert _ol(home, "export", "ctr", "--parent", "base", "-o", str(out)).returncode == 0
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["etc", "etc/hostname", ".wh.greeting"]
    assert _ol(home, "diff-size", "ctr", "--parent", "base").stdout == "8\n"
    assert _ol(home, "status").stdout == "Backing Filesystem: tmpfs\n"
    assert '"MergedDir": "%s"' % merged in _ol(home, "metadata", "ctr").stdout
    # A new process has no reference counts: unmount takes the "non-mounted device" path.
    assert _ol(home, "unmount", "ctr").returncode == 0
    assert mounts_under(home) == []


def test_driver_cli_errors_are_one_line_and_nonzero(backing_fs):
    fs = backing_fs("tmpfs")
    home = os.path.join(fs.mountpoint, "overlay")
    for args, text in ((("remove", ".."), 'invalid layer id "..": must be a non-empty name without \'/\', \',\' or \':\''),
                       (("create", "x,lowerdir=/"), 'invalid layer id "x,lowerdir=/": must be a non-empty name'
                                                     ' without \'/\', \',\' or \':\''),
                       (("mount", "a:b"), 'invalid layer id "a:b": must be a non-empty name without \'/\', \',\' or \':\''),
                       (("create", "x", "--parent", "p,q"), 'invalid parent id "p,q": must be a non-empty name'
                                                           ' without \'/\', \',\' or \':\''),
                       (("mount", "nope"), "stat %s/nope: no such file or directory" % home),
                       (("create", "x", "--parent", "nope"), "lstat %s/nope: no such file or directory" % home)):
        res = _ol(home, *args)
        assert res.returncode == (2 if text.startswith("invalid") else 1), (args, res.returncode)  # 2: usage error
        assert res.stderr == "overlaylab: error: %s\n" % text
    res = _ol(home, "--uid-map", "bogus", "list")
    assert res.returncode == 2 and "CONTAINER_ID:HOST_ID:SIZE" in res.stderr
