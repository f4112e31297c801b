"""The chrooted apply helper (moby v1.10.3 pkg/chrootarchive/diff_unix.go): result, error texts, temp dir clean-up."""
from __future__ import annotations

import io
import os
import stat

import pytest

from overlaylab.archive import (
    ArchiveError, TarOptions, apply_uncompressed_layer, changes_dirs, export_changes,
)
from overlaylab.archive.chroot import _exit_text, _go_json_error
from overlaylab.idtools import IDMap

from .helpers import dirent, hardlink, make_tar, reg, symlink


def no_temp_dirs(dest):
    return [n for n in os.listdir(dest) if n.startswith("temp-docker-extract")]


def test_apply_in_chroot(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    data = make_tar([dirent("etc/"), reg("etc/hostname", b"base\n"), reg("bin/sh", b"#!\n", 0o755),
                     symlink("link", "/etc/hostname"), hardlink("hl", "etc/hostname"),
                     reg(".wh..wh.plnk/1.2", b"plnk", 0o600), hardlink("copy", ".wh..wh.plnk/1.2")])
    size = apply_uncompressed_layer(str(dest), io.BytesIO(data))
    assert size == 5 + 3 + 4
    assert (dest / "etc" / "hostname").read_bytes() == b"base\n"
    assert os.readlink(dest / "link") == "/etc/hostname"
    assert os.path.samefile(dest / "hl", dest / "etc" / "hostname")
    assert (dest / "copy").read_bytes() == b"plnk"
    assert stat.S_IMODE(os.lstat(dest / "bin").st_mode) == 0o600  # implicit parent, umask 0
    assert stat.S_IMODE(os.lstat(dest / "bin" / "sh").st_mode) == 0o755
    assert os.lstat(dest / "etc").st_mtime_ns == 1500000000 * 10 ** 9
    assert no_temp_dirs(dest) == []


def test_chroot_applies_id_maps(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    maps = [IDMap(0, 200000, 1000)]
    apply_uncompressed_layer(str(dest), io.BytesIO(make_tar([reg("f", b"x", uid=3, gid=4)])),
                             TarOptions(maps, maps))
    st = os.lstat(dest / "f")
    assert (st.st_uid, st.st_gid) == (200003, 200004)


def test_chroot_error_text_and_no_temp_dir_left(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    hdr, body = reg("x", b"data")
    hdr.typeflag = ord("7")
    with pytest.raises(ArchiveError) as exc:
        apply_uncompressed_layer(str(dest), io.BytesIO(make_tar([reg("ok", b"1"), (hdr, body)])))
    assert str(exc.value) == ("ApplyLayer exit status 1 stdout:  stderr: "
                              "Unhandled tar header type 55\n")
    assert no_temp_dirs(dest) == []
    assert (dest / "ok").read_bytes() == b"1"


def test_chroot_breakout_text(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(ArchiveError) as exc:
        apply_uncompressed_layer(str(dest), io.BytesIO(make_tar([reg("../escape", b"x")])))
    # The reference says "outside of "/"" (its chroot's root); the port names the layer.
    assert str(exc.value) == ('ApplyLayer exit status 1 stdout:  stderr: '
                              '"../escape" is outside of "%s"' % dest)
    assert not (tmp_path / "escape").exists()
    assert no_temp_dirs(dest) == []


def test_chroot_go_error_text_from_filesystem(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    (dest / "file").write_bytes(b"")
    with pytest.raises(ArchiveError) as exc:
        apply_uncompressed_layer(str(dest), io.BytesIO(make_tar([reg("file/sub/x", b"1")])))
    assert str(exc.value) == ("ApplyLayer exit status 1 stdout:  stderr: "
                              "open %s/file/sub/x: not a directory" % dest)


def test_chroot_missing_dest(tmp_path):
    with pytest.raises(ArchiveError) as exc:
        apply_uncompressed_layer(str(tmp_path / "nope"), io.BytesIO(make_tar([reg("f")])))
    assert str(exc.value) == "ApplyLayer exit status 1 stdout:  stderr: no such file or directory"


def test_chroot_truncated_stream(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    data = make_tar([reg("f", b"x" * 3000)])[:1500]
    with pytest.raises(ArchiveError) as exc:
        apply_uncompressed_layer(str(dest), io.BytesIO(data))
    assert str(exc.value).endswith("stderr: unexpected EOF")
    assert no_temp_dirs(dest) == []


def test_chroot_fed_by_a_thread_pipe(tmp_path):
    """ApplyDiff's fallback feeds ExportChanges (a pipe written by a thread) to the helper."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(50):
        (src / "d" / ("f%02d" % i)).write_bytes(os.urandom(5000 + i))
    dest = tmp_path / "dest"
    dest.mkdir()
    stream = export_changes(str(src), changes_dirs(str(src), ""))
    try:
        size = apply_uncompressed_layer(str(dest), stream)
    finally:
        stream.close()
    assert size == sum(5000 + i for i in range(50))
    assert changes_dirs(str(dest), str(src)) == []


def test_json_and_exit_helpers():
    assert _go_json_error(b"") == "EOF"
    assert _go_json_error(b'{"layerSize":3}\n') is None
    assert _go_json_error(b"[1]").startswith("json: cannot unmarshal array")
    assert _exit_text(1) == "exit status 1"
    assert _exit_text(-9) == "signal: killed"


def test_chroot_error_texts_name_the_layer_not_the_chroot_root(tmp_path):
    """Inside the chroot every path starts at "/"; the texts carry the layer's real path."""
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(ArchiveError) as exc:  # a LinkError: both paths are the layer's
        apply_uncompressed_layer(str(dest), io.BytesIO(make_tar([hardlink("hl", "missing")])))
    assert str(exc.value).endswith("stderr: link %s/missing %s/hl: no such file or directory" % (dest, dest))
    with pytest.raises(ArchiveError) as exc:  # symlink: the target text stays as written
        apply_uncompressed_layer(str(dest), io.BytesIO(make_tar([reg("d", b""), symlink("d/s", "t")])))
    assert str(exc.value).endswith("stderr: symlink t %s/d/s: not a directory" % dest)


def test_chroot_symlink_above_the_layer_root_is_stored_and_warned(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    warnings = []
    size = apply_uncompressed_layer(
        str(dest), io.BytesIO(make_tar([dirent("a/"), symlink("a/up", "../../../etc/shadow"),
                                        symlink("a/ok", "../b"), symlink("abs", "/etc/shadow")])),
        TarOptions(warnings=warnings))
    assert size == 0
    assert os.readlink(dest / "a" / "up") == "../../../etc/shadow"  # kept: the reference stores it
    assert warnings == ['symlink "%s/a/up" -> "../../../etc/shadow" points above the layer root; stored as '
                        'the reference does (in its chroot the layer is "/", where moby v1.10.3\'s '
                        'createTarFile check cannot fire)' % dest]


@pytest.mark.parametrize("buffering", [0, -1])
def test_chroot_reads_an_open_file_itself_and_leaves_its_offset_at_the_end(tmp_path, buffering):
    """An open file (unbuffered, or buffered with nothing read ahead) is the child's stdin, as
    Go's exec hands an *os.File over: the shared offset ends where the child stopped reading
    (the end: it drains stdin), and members of 64 KiB and more go to their files by sendfile."""
    big = os.urandom(3 * 65536 + 17)
    layer = tmp_path / "layer.tar"
    layer.write_bytes(make_tar([reg("small", b"s" * 100), reg("big", big), reg("after", b"a")]) + bytes(4096))
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(layer, "rb", buffering=buffering) as f:
        size = apply_uncompressed_layer(str(dest), f)
        assert f.tell() == layer.stat().st_size and f.read() == b""
    assert size == 100 + len(big) + 1
    assert (dest / "big").read_bytes() == big and (dest / "after").read_bytes() == b"a"


def test_chroot_feeds_a_buffered_reader_that_read_ahead_through_the_pipe(tmp_path):
    """Bytes already in the reader's buffer would be lost to a child reading the descriptor:
    such a stream is fed through the pipe, from where the reader stands."""
    layer = tmp_path / "layer.tar"
    layer.write_bytes(b"junk!" + make_tar([reg("f", b"content")]))
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(layer, "rb") as f:
        assert f.read(5) == b"junk!"  # the reader has read (far) ahead of its position
        assert apply_uncompressed_layer(str(dest), f) == 7
    assert (dest / "f").read_bytes() == b"content"


def test_chroot_truncated_file_inside_a_large_member(tmp_path):
    """A layer file that ends inside a member sent by sendfile: unexpected EOF, nothing left behind."""
    layer = tmp_path / "layer.tar"
    layer.write_bytes(make_tar([reg("big", b"b" * (1 << 20))])[:512 + 300000])
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(layer, "rb", buffering=0) as f:
        with pytest.raises(ArchiveError) as exc:
            apply_uncompressed_layer(str(dest), f)
    assert str(exc.value) == "ApplyLayer exit status 1 stdout:  stderr: unexpected EOF"
    assert no_temp_dirs(dest) == []
