"""Error classes as Go has them (moby v1.10.3): an errno, and ``os.IsNotExist``/``IsExist``
true, only where Go returns a wrapped syscall error (``*os.PathError``, ``*os.LinkError``,
``*os.SyscallError``, ``syscall.Errno``); a bare text where Go formats one (``fmt.Errorf``,
``errors.New``). Each row is made by a real call on a real filesystem.

A replay of random ops against the Go driver diverged on exactly the first rows: Get of a layer
whose lowerdir is gone, and Diff / Changes / DiffSize against such a parent, answer
``error creating overlay mount to …: no such file or directory`` — a ``fmt.Errorf`` in
overlay.go's Get, so ``os.IsNotExist`` is false there.
"""
from __future__ import annotations

import errno
import io
import os
import re

import pytest

from overlaylab.archive import ArchiveError, TarOptions, apply_layer_in_process
from overlaylab.goerrors import GoError, LinkError, PathError, SyscallError, is_exist, is_not_exist
from overlaylab.graphdriver import overlay

from ..archive.helpers import hardlink, make_tar, reg


def _driver_cases(driver):
    """(label, call, text regex, is_not_exist, is_exist, errno, Go type)"""
    h = re.escape(driver.home)
    mount_enoent = r"^error creating overlay mount to %s/ctr/merged: no such file or directory$" % h
    return [
        ("get, lowerdir missing", lambda: driver.get("ctr"), mount_enoent, False, False, None, "*errors.errorString"),
        ("diff, parent's lowerdir missing", lambda: driver.diff("img2", "ctr"), mount_enoent,
         False, False, None, "*errors.errorString"),
        ("changes, parent's lowerdir missing", lambda: driver.changes("img2", "ctr"), mount_enoent,
         False, False, None, "*errors.errorString"),
        ("diff_size, parent's lowerdir missing", lambda: driver.diff_size("img2", "ctr"), mount_enoent,
         False, False, None, "*errors.errorString"),
        ("get, unknown id", lambda: driver.get("nope"), r"^stat %s/nope: no such file or directory$" % h,
         True, False, errno.ENOENT, "*os.PathError"),
        ("diff, unknown parent", lambda: driver.diff("img2", "nope"), r"^stat %s/nope: no such file or directory$" % h,
         True, False, errno.ENOENT, "*os.PathError"),
        ("changes, unknown parent", lambda: driver.changes("img2", "nope"),
         r"^stat %s/nope: no such file or directory$" % h, True, False, errno.ENOENT, "*os.PathError"),
        ("create, unknown parent", lambda: driver.create("x", "nope"),
         r"^lstat %s/nope: no such file or directory$" % h, True, False, errno.ENOENT, "*os.PathError"),
        ("metadata, shape O without lower-id", lambda: driver.get_metadata("broken"),
         r"^open %s/broken/lower-id: no such file or directory$" % h, True, False, errno.ENOENT, "*os.PathError"),
        ("apply_diff, breakout in the chrooted helper",
         lambda: driver.apply_diff("img3", "", io.BytesIO(make_tar([reg("../x", b"x")]))),
         r'^ApplyLayer exit status 1 stdout:  stderr: "\.\./x" is outside of "%s/img3/root"$' % h,
         False, False, None, "*errors.errorString"),
    ]


def _check(label, call, text, not_exist, exist, code, go_type):
    with pytest.raises(Exception) as info:
        call()
    err = info.value
    assert re.match(text, str(err)), (label, str(err))
    assert is_not_exist(err) is not_exist, (label, type(err))
    assert is_exist(err) is exist, (label, type(err))
    assert getattr(err, "errno", None) == code, (label, type(err))
    if go_type == "*errors.errorString":
        assert isinstance(err, GoError) and not isinstance(err, OSError), (label, type(err))
    elif go_type == "*os.PathError":
        assert isinstance(err, PathError), (label, type(err))
    elif go_type == "*os.LinkError":
        assert isinstance(err, LinkError), (label, type(err))
    else:
        assert isinstance(err, SyscallError), (label, type(err))


def test_driver_error_classes_match_go(make_driver):
    driver = make_driver("tmpfs")
    driver.create("img")
    driver.create("img2")
    driver.create("ctr", "img")
    driver.remove("img")  # ctr's lowerdir is gone
    os.mkdir(os.path.join(driver.home, "broken"))
    driver.create("img3")
    for case in _driver_cases(driver):
        _check(*case)


def test_mount_error_keeps_the_kernel_errno_as_evidence_only(make_driver):
    driver = make_driver("tmpfs")
    driver.create("img")
    driver.create("ctr", "img")
    driver.remove("img")
    with pytest.raises(overlay.MountError) as info:
        driver.get("ctr")
    assert not isinstance(info.value, OSError)
    assert info.value.wrapped_errno == errno.ENOENT  # what the lab records as evidence
    assert "ctr" not in driver.proto.active


def test_remove_while_mounted_is_a_path_error_with_ebusy(make_driver):
    driver = make_driver("tmpfs")
    driver.create("img")
    driver.create("ctr", "img")
    driver.get("ctr")
    try:
        _check("remove while mounted", lambda: driver.remove("ctr"),
               r"^unlinkat %s/ctr/merged: device or resource busy$" % re.escape(driver.home),
               False, False, errno.EBUSY, "*os.PathError")
    finally:
        driver.put("ctr")


def test_init_on_a_missing_parent_is_a_bare_errno(tmp_path):
    """statfs's ``syscall.Errno`` (no op, no path): IsNotExist is true, as in Go."""
    _check("init, parent missing", lambda: overlay.init(str(tmp_path / "no" / "overlay")),
           r"^no such file or directory$", True, False, errno.ENOENT, "syscall.Errno")


@pytest.mark.parametrize("label,entries,text,not_exist,exist,code,go_type", [
    ("hard link to a missing target", [hardlink("hl", "missing")],
     r"^link {d}/missing {d}/hl: no such file or directory$", True, False, errno.ENOENT, "*os.LinkError"),
    ("a file below a file", [reg("f", b""), reg("f/sub/x", b"1")],
     r"^open {d}/f/sub/x: not a directory$", False, False, errno.ENOTDIR, "*os.PathError"),
    ("breakout", [reg("../x", b"")], r'^"\.\./x" is outside of "{d}"$', False, False, None, "*errors.errorString"),
    ("truncated tar", None, r"^unexpected EOF$", False, False, None, "*errors.errorString"),
    ("xattr the kernel refuses", "xattr", r'^lsetxattr {d}/odd xattr "bogus\.ns" \(1-byte value\): operation not supported$',
     False, False, errno.EOPNOTSUPP, "syscall.Errno"),
])
def test_archive_error_classes_match_go(tmp_path, label, entries, text, not_exist, exist, code, go_type):
    dest = tmp_path / "layer"
    dest.mkdir()
    if entries is None:
        data = make_tar([reg("f", b"x" * 3000)])[:1500]
    elif entries == "xattr":
        hdr, body = reg("odd", b"")
        hdr.xattrs = {"bogus.ns": b"x"}
        data = make_tar([(hdr, body)])
    else:
        data = make_tar(entries)
    _check(label, lambda: apply_layer_in_process(str(dest), io.BytesIO(data), TarOptions()),
           text.format(d=re.escape(str(dest))), not_exist, exist, code, go_type)


def test_archive_errors_are_go_strings():
    assert issubclass(ArchiveError, GoError) and not issubclass(ArchiveError, OSError)
    err = ArchiveError("Unhandled tar header type 55\n")
    assert not is_not_exist(err) and not is_exist(err) and getattr(err, "errno", None) is None


def test_is_exist_follows_go_for_wrapped_errors():
    """Go 1.5's IsExist: EEXIST or ENOTEMPTY inside a PathError/LinkError/SyscallError."""
    assert is_exist(LinkError("link", "/a", "/b", errno.EEXIST))
    assert is_exist(PathError("rename", "/a", errno.ENOTEMPTY))
    assert is_exist(SyscallError(errno.EEXIST))
    assert not is_exist(GoError("mkdir /a: file exists"))  # a text that only says so
    assert not is_not_exist(GoError("no such file or directory"))


# Names in human output (the driver CLI's quoting) -----------------------------------------------

@pytest.mark.parametrize("name,quoted", [
    ("/etc/hostname", "/etc/hostname"),                         # plain names stay as they are
    ("/a b/c-d_e.f", "/a b/c-d_e.f"),
    ("/café/日本", "/café/日本"),                                  # printable UTF-8 is kept, as %q does
    ("/innocent\nD /etc/shadow", '"/innocent\\nD /etc/shadow"'),
    ("/t\x1b]0;owned\x07", '"/t\\x1b]0;owned\\a"'),
    ("/csi\x1b[2J", '"/csi\\x1b[2J"'),
    ("/c1\x9b", '"/c1\\u009b"'),
    ("/bad" + b"\xff".decode("utf-8", "surrogateescape"), '"/bad\\xff"'),
    ('/q"uote', '"/q\\"uote"'),                                 # a quote would make it ambiguous
    ("/back\\slash", '"/back\\\\slash"'),
    ("/zw\u200b", '"/zw\\u200b"'),
])
def test_quote_name_only_when_needed(name, quoted):
    from overlaylab.goerrors import quote_name
    assert quote_name(name) == quoted


def test_safe_text_escapes_controls_without_quoting():
    from overlaylab.goerrors import safe_text
    assert safe_text("stat /h/nope: no such file or directory") == "stat /h/nope: no such file or directory"
    assert safe_text("open /a\nb\x1b[31m: x") == "open /a\\nb\\x1b[31m: x"
    assert safe_text('say "hi" \\ ok') == 'say "hi" \\ ok'


@pytest.mark.parametrize("raised,expect_type,code", [
    (PathError("lstat", "/l/gone", errno.ENOENT), PathError, errno.ENOENT),
    (RuntimeError("boom"), ArchiveError, None),
])
def test_a_tar_producer_error_reaches_the_reader_with_its_class(raised, expect_type, code):
    """``io.Pipe``'s ``CloseWithError`` hands the same error to the reader: errno included."""
    from overlaylab.archive import TarStream

    def produce(writer, stop):
        raise raised

    stream = TarStream(produce, "test-producer")
    try:
        with pytest.raises(Exception) as info:
            while stream.read(1 << 16):
                pass
    finally:
        stream.close()
    assert isinstance(info.value, expect_type) and getattr(info.value, "errno", None) == code
    assert is_not_exist(info.value) is (code == errno.ENOENT)


def test_a_failing_layer_stream_passes_its_go_error_through_the_tar_reader(tmp_path):
    """``tar.Reader`` returns its reader's error as it is (here an export pipe's PathError)."""
    class Failing(io.RawIOBase):
        def readable(self):
            return True

        def read(self, n=-1):
            raise PathError("read", "/l/upper/f", errno.EIO)

    with pytest.raises(PathError) as info:
        apply_layer_in_process(str(tmp_path), Failing(), TarOptions())
    assert str(info.value) == "read /l/upper/f: input/output error" and info.value.errno == errno.EIO
