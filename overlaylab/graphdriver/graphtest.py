"""moby's graph driver acceptance suite, ported once (``daemon/graphdriver/graphtest``).

v1.10.3 ``graphtest_unix.go`` has three tests (``DriverTestCreateEmpty``, ``DriverTestCreateBase``,
``DriverTestCreateSnap``); v1.12.0 adds ``DriverTestDeepLayerRead``, ``DriverTestDiffApply`` and
``DriverTestChanges`` with the helpers of ``testutil.go`` (docs/reference-behaviour.md#graphtest).
Both the pytest suite (tests/driver/test_graphtest.py) and the lab's scenarios (run inside
targets by the agent) call the cases here, so this module imports only the standard library and
the port, never pytest.

A case is a plain function ``case(t, driver)``: ``t`` plays Go's ``*testing.T`` and has two
methods, ``check(condition, message, **evidence)`` (fail with ``message`` unless ``condition``)
and ``note(message, **evidence)`` (keep something seen): :class:`Checks`, whose failure is a
:class:`GraphtestFailure` (an ``AssertionError``), or the agent's ``ScenarioContext`` (a
``Checks`` too), which files the notes and evidence in the scenario's record.

Where the reference skips a case on overlay because of the mtime bug (moby#21555), the case here
first moves the lower layer's files into the past so that a rewrite never falls in their time
tick (:func:`backdate`). ``random_content`` only has to agree with itself, not with Go's
``math/rand`` stream.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import shutil
import stat
import tarfile
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from ..mountutil import mounts_under


class GraphtestFailure(AssertionError):
    """A case's check did not hold; ``evidence`` is what was seen."""

    def __init__(self, message: str, evidence: Optional[Dict[str, Any]] = None):
        self.evidence = dict(evidence or {})
        detail = ", ".join("%s=%r" % kv for kv in sorted(self.evidence.items()))
        super().__init__("%s (%s)" % (message, detail) if detail else message)


class Checks:
    """The ``t`` of a case: notes and the evidence of a failed check are kept, a failed check
    raises :meth:`failure` (the agent's ``ScenarioContext`` is a ``Checks`` with its own)."""

    def __init__(self) -> None:
        self.log: List[str] = []
        self.evidence: Dict[str, Any] = {}

    def note(self, message: str, **evidence: Any) -> None:
        self.log.append(message)
        self.evidence.update(evidence)

    def check(self, condition: Any, message: str, **evidence: Any) -> None:
        """Fail with ``message`` unless ``condition`` holds."""
        if not condition:
            self.evidence.update(evidence)
            raise self.failure(message, evidence)

    def failure(self, message: str, evidence: Dict[str, Any]) -> AssertionError:
        return GraphtestFailure(message, evidence)


# files and layers ---------------------------------------------------------------------------

def random_id() -> str:
    """A random 64-hex-character layer id (moby v1.10.3 pkg/stringid GenerateRandomID)."""
    return uuid.uuid4().hex + uuid.uuid4().hex


def random_content(size: int, seed: int) -> bytes:
    """moby v1.12.0 graphtest/testutil.go ``randomContent``: deterministic bytes for a seed."""
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, "little") if size else b""


@contextlib.contextmanager
def mounted(driver, layer_id: str, mount_label: str = "") -> Iterator[str]:
    """``Get`` … ``Put`` (the reference's ``driver.Get`` then ``defer driver.Put``)."""
    path = driver.get(layer_id, mount_label)
    try:
        yield path
    finally:
        driver.put(layer_id)


def write_file(path: str, data: bytes = b"", mode: int = 0o644, truncate: bool = True) -> None:
    """``ioutil.WriteFile``: create with ``mode`` (through the umask), write ``data``."""
    if isinstance(data, str):
        data = data.encode()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_dir(path: str) -> List[str]:
    """moby v1.10.3 graphtest_unix.go ``readDir``: the entries without ``lost+found``, sorted."""
    return sorted(n for n in os.listdir(path) if n != "lost+found")


def tar_bytes(stream) -> bytes:
    """Read a whole (Diff) stream; the stream is closed."""
    try:
        return stream.read()
    finally:
        stream.close()


def stamp_tree(root: str, ns: int, only: Callable[[str], bool] = lambda name: True) -> int:
    """Set atime and mtime of every non-directory below ``root`` to ``ns``; returns how many."""
    n = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if only(name) and not os.path.islink(p):
                os.utime(p, ns=(ns, ns))
                n += 1
    return n


def stamp_layer(driver, layer_id: str, ns: int, only: Callable[[str], bool] = lambda name: True) -> int:
    """:func:`stamp_tree` on a layer's mounted view."""
    with mounted(driver, layer_id) as path:
        return stamp_tree(path, ns, only)


def backdate(driver, layer_id: str, seconds: int = 10) -> None:
    """Move every file of a layer into the past, so a rewrite is never in the same time tick."""
    stamp_layer(driver, layer_id, int((time.time() - seconds) * 1e9))


def kind_letter(kind: Any) -> str:
    """``C``/``A``/``D`` for a ChangeKind (Modify=0, Add=1, Delete=2)."""
    text = str(kind)
    if text in ("C", "A", "D"):
        return text
    try:
        return "CAD"[int(kind)]
    except (TypeError, ValueError, IndexError):
        return text[:1].upper()


def change_pairs(changes: Iterable[Any]) -> List[Tuple[str, str]]:
    """Changes as sorted ``(path, kind letter)`` pairs."""
    return sorted((c.path, kind_letter(c.kind)) for c in changes)


# v1.10.3 graphtest_unix.go helpers ----------------------------------------------------------

def verify_file(t, path: str, mode: int, uid: int, gid: int) -> None:
    """moby v1.10.3 graphtest_unix.go ``verifyFile``: stat (follows symlinks); type, perms,
    sticky/setuid/setgid bits and owner."""
    st = os.stat(path)
    seen = {"path": path, "mode": "%o" % st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
    t.check(stat.S_IFMT(st.st_mode) == stat.S_IFMT(mode),
            "Expected %s type 0x%x, got 0x%x" % (path, stat.S_IFMT(mode), stat.S_IFMT(st.st_mode)), seen=seen)
    t.check(st.st_mode & 0o777 == mode & 0o777,
            "Expected %s mode %o, got %o" % (path, mode & 0o777, st.st_mode & 0o777), seen=seen)
    for bit, name in ((stat.S_ISVTX, "sticky"), (stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid")):
        t.check(st.st_mode & bit == mode & bit,
                "Expected %s %s 0x%x, got 0x%x" % (path, name, mode & bit, st.st_mode & bit), seen=seen)
    t.check(st.st_uid == uid, "%s no owned by uid %d" % (path, uid), seen=seen)
    t.check(st.st_gid == gid, "%s not owned by gid %d" % (path, gid), seen=seen)


def create_base(driver, name: str) -> None:
    """moby v1.10.3 graphtest_unix.go ``createBase`` (umask 0): ``a subdir`` 01705 owned 1:2,
    ``a file`` 04222 holding ``Some data``."""
    old = os.umask(0)
    try:
        driver.create(name, "", "")
        with mounted(driver, name) as d:
            sub = os.path.join(d, "a subdir")
            os.mkdir(sub, 0o705 | stat.S_ISVTX)
            os.chown(sub, 1, 2)
            write_file(os.path.join(d, "a file"), b"Some data", 0o222 | stat.S_ISUID)
    finally:
        os.umask(old)


def verify_base(t, driver, name: str) -> str:
    """moby v1.10.3 graphtest_unix.go ``verifyBase``: what :func:`create_base` made, and only
    that, through ``Get(name)``. Returns the path ``Get`` gave."""
    with mounted(driver, name) as d:
        verify_file(t, os.path.join(d, "a subdir"), stat.S_IFDIR | 0o705 | stat.S_ISVTX, 1, 2)
        verify_file(t, os.path.join(d, "a file"), stat.S_IFREG | 0o222 | stat.S_ISUID, 0, 0)
        entries = read_dir(d)
        t.check(len(entries) == 2, "Unexpected files in base image", entries=entries, view=d)
        return d


# v1.12.0 testutil.go helpers ----------------------------------------------------------------

def add_file(driver, layer_id: str, name: str, content: bytes) -> None:
    """moby v1.12.0 graphtest/testutil.go ``addFile`` (mode 0755)."""
    with mounted(driver, layer_id) as d:
        write_file(os.path.join(d, name), content, 0o755)


def add_directory(driver, layer_id: str, name: str) -> None:
    """moby v1.12.0 graphtest/testutil.go ``addDirectory`` (``MkdirAll`` 0755)."""
    with mounted(driver, layer_id) as d:
        os.makedirs(os.path.join(d, name), 0o755, exist_ok=True)


def remove_all(driver, layer_id: str, *names: str) -> None:
    """moby v1.12.0 graphtest/testutil.go ``removeAll`` (``os.RemoveAll`` of each name)."""
    with mounted(driver, layer_id) as d:
        for name in names:
            p = os.path.join(d, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)


def check_file(t, driver, layer_id: str, name: str, content: bytes) -> None:
    """moby v1.12.0 graphtest/testutil.go ``checkFile``."""
    with mounted(driver, layer_id) as d:
        got = read_file(os.path.join(d, name))
    t.check(got == content, "%s reads %r, expected %r" % (name, got[:64], content[:64]))


def check_file_removed(t, driver, layer_id: str, name: str) -> None:
    """moby v1.12.0 graphtest/testutil.go ``checkFileRemoved``: ``stat`` fails with ENOENT."""
    with mounted(driver, layer_id) as d:
        try:
            os.lstat(os.path.join(d, name))
            code = 0
        except OSError as err:
            code = err.errno
    t.check(code == errno.ENOENT, "file still exists: %s" % name, errno=code)


def add_many_files(driver, layer_id: str, count: int, seed: int) -> None:
    """moby v1.12.0 graphtest/testutil.go ``addManyFiles``: ``directory-<i>/file-<i+j>``, 100 a
    directory, 64 random bytes each, mode 0755."""
    with mounted(driver, layer_id) as d:
        for i in range(0, count, 100):
            sub = os.path.join(d, "directory-%d" % i)
            os.makedirs(sub, 0o755, exist_ok=True)
            for j in range(min(100, count - i)):
                write_file(os.path.join(sub, "file-%d" % (i + j)), random_content(64, seed + i + j), 0o755)


def change_many_files(driver, layer_id: str, count: int, seed: int) -> List[Tuple[str, str]]:
    """moby v1.12.0 graphtest/testutil.go ``changeManyFiles``: rewrite (C), add (A) and delete
    (D) in turn; returns the expected changes as ``(path, kind letter)``."""
    expected: List[Tuple[str, str]] = []
    with mounted(driver, layer_id) as d:
        for i in range(0, count, 100):
            root = "/directory-%d" % i
            expected.append((root, "C"))
            for j in range(min(100, count - i)):
                if j % 3 == 0:
                    name = "file-%d" % (i + j)
                    write_file(os.path.join(d, root[1:], name), random_content(64, seed + i + j), 0o755)
                    expected.append((root + "/" + name, "C"))
                elif j % 3 == 1:
                    name = "file-%d-%d" % (seed, i + j)
                    write_file(os.path.join(d, root[1:], name), random_content(64, seed + i + j), 0o755)
                    expected.append((root + "/" + name, "A"))
                else:
                    name = "file-%d" % (i + j)
                    os.unlink(os.path.join(d, root[1:], name))
                    expected.append((root + "/" + name, "D"))
    return expected


def many_files_mismatches(driver, layer_id: str, count: int, seed: int) -> List[str]:
    """moby v1.12.0 graphtest/testutil.go ``checkManyFiles``, as the list of the files whose
    content is not the expected one (or that cannot be read)."""
    bad: List[str] = []
    with mounted(driver, layer_id) as d:
        for i in range(0, count, 100):
            for j in range(min(100, count - i)):
                rel = "directory-%d/file-%d" % (i, i + j)
                try:
                    if read_file(os.path.join(d, rel)) != random_content(64, seed + i + j):
                        bad.append(rel)
                except OSError as err:
                    bad.append("%s (%s)" % (rel, errno.errorcode.get(err.errno, str(err.errno))))
    return bad


def add_layer_files(driver, layer_id: str, parent: str, i: int) -> None:
    """moby v1.12.0 graphtest/testutil.go ``addLayerFiles``: ``top-id`` and
    ``layer-<i>/{layer-id,parent-id}``."""
    with mounted(driver, layer_id) as d:
        write_file(os.path.join(d, "top-id"), layer_id.encode(), 0o755)
        ld = os.path.join(d, "layer-%d" % i)
        os.makedirs(ld, 0o755, exist_ok=True)
        write_file(os.path.join(ld, "layer-id"), layer_id.encode(), 0o755)
        write_file(os.path.join(ld, "parent-id"), parent.encode(), 0o755)


def add_many_layers(driver, base: str, count: int) -> str:
    """moby v1.12.0 graphtest/testutil.go ``addManyLayers``: ``count`` layers on ``base``;
    returns the top one."""
    last = base
    for i in range(1, count + 1):
        layer = random_id()
        driver.create(layer, last, "")
        add_layer_files(driver, layer, last, i)
        last = layer
    return last


def check_many_layers(t, driver, layer_id: str, count: int) -> str:
    """moby v1.12.0 graphtest/testutil.go ``checkManyLayers``: follow the ``parent-id`` chain
    down through the top layer's view; returns the id the chain ends at."""
    with mounted(driver, layer_id) as path:
        t.check(read_file(os.path.join(path, "top-id")) == layer_id.encode(), "top-id is not the top layer's id")
        expected = layer_id
        for i in range(count, 0, -1):
            got = read_file(os.path.join(path, "layer-%d" % i, "layer-id")).decode()
            t.check(got == expected, "layer-%d/layer-id is %s, expected %s" % (i, got, expected), layer=i)
            expected = read_file(os.path.join(path, "layer-%d" % i, "parent-id")).decode()
    return expected


# the cases ----------------------------------------------------------------------------------

def driver_test_create_empty(t, driver) -> None:
    """moby v1.10.3 graphtest_unix.go ``DriverTestCreateEmpty``: a parentless layer exists, its
    root is an empty 0755 directory owned 0:0 (and Get of it mounts nothing), Remove deletes it."""
    driver.create("empty", "", "")
    t.check(driver.exists("empty"), "Newly created image doesn't exist")
    with mounted(driver, "empty") as path:
        t.note("Get(empty) = %s" % path, view=path)
        verify_file(t, path, stat.S_IFDIR | 0o755, 0, 0)
        entries = read_dir(path)
        t.check(entries == [], "New directory not empty", entries=entries)
        left = [m.mountpoint for m in mounts_under(driver.home)]
        t.check(not left, "Get of a root layer mounted something", mounts=left)
    driver.remove("empty")
    t.check(not driver.exists("empty"), "the layer still exists after Remove")


def driver_test_create_base(t, driver) -> None:
    """moby v1.10.3 graphtest_unix.go ``DriverTestCreateBase``: createBase then verifyBase on a
    root layer, then Remove."""
    create_base(driver, "Base")
    view = verify_base(t, driver, "Base")
    t.note("verified through %s" % view)
    driver.remove("Base")
    t.check(not driver.exists("Base"), "the layer still exists after Remove")


def driver_test_create_snap(t, driver) -> None:
    """moby v1.10.3 graphtest_unix.go ``DriverTestCreateSnap``: verifyBase through a child
    layer's mounted overlay (``merged``), which verifyBase's Put unmounts again."""
    create_base(driver, "Base")
    driver.create("Snap", "Base", "")
    view = verify_base(t, driver, "Snap")
    merged = os.path.join(driver.home, "Snap", "merged")
    t.note("verified through %s" % view, view=view)
    t.check(view == merged, "Get(Snap) did not return the merged dir", view=view)
    t.check(not os.path.ismount(merged), "verifyBase's Put did not unmount the snapshot")
    driver.remove("Snap")
    driver.remove("Base")
    t.check(not driver.exists("Snap") and not driver.exists("Base"), "layers still exist after Remove")


DEEP_LAYER_COUNT = 50  # moby v1.12.0 overlay_test.go TestOverlay50LayerRead


def driver_test_deep_layer_read(t, driver, count: int = DEEP_LAYER_COUNT) -> None:
    """moby v1.12.0 graphtest_unix.go ``DriverTestDeepLayerRead``: ``count`` layers stacked on a
    base with ``testfile.txt``; every layer's files and the base's file read through the top.

    On overlay v1 every layer above the first is Create case C, a deep copy of its parent's
    upper: the top layer's upper holds every layer's files (checked here as well)."""
    base = random_id()
    driver.create(base, "", "")
    add_file(driver, base, "testfile.txt", b"test content")
    top = add_many_layers(driver, base, count)
    bottom = check_many_layers(t, driver, top, count)
    t.check(bottom == base, "the chain does not end at the base layer")
    with mounted(driver, top) as path:
        content = read_file(os.path.join(path, "testfile.txt"))
    t.check(content == b"test content", "testfile.txt through the top reads %r" % content)
    upper = sorted(os.listdir(os.path.join(driver.home, top, "upper")))
    want = sorted(["top-id"] + ["layer-%d" % i for i in range(1, count + 1)])
    t.note("top layer's upper has %d entries (a deep copy of every layer below)" % len(upper),
           top_upper_entries=len(upper))
    t.check(upper == want, "the top layer's upper is not the accumulated copy",
            missing=sorted(set(want) - set(upper)), extra=sorted(set(upper) - set(want)))


DIFF_APPLY_FILES = 10  # moby v1.12.0 overlay_test.go TestOverlayDiffApply10Files
DELETE_FILE, DELETE_FILE_CONTENT, DELETE_DIR = "file-remove.txt", b"This file should get removed in upper!", "var/lib"

LayerStamp = Callable[[Any, str], Any]


def apply_upper_diff(t, driver, file_count: int, stamp_base: Optional[LayerStamp] = backdate,
                     stamp_upper: Optional[LayerStamp] = None) -> Tuple[str, int, int]:
    """The set-up of ``DriverTestDiffApply`` (moby v1.12.0 graphtest_unix.go): a base with
    ``file_count`` files, a file and a directory; an upper that rewrites the files and removes
    the other two; ``Diff(upper, base)`` applied to a new layer ``diff`` on the base.

    ``stamp_base`` / ``stamp_upper`` (``(driver, layer)``) run after each layer is written: the
    default moves the base into the past (moby#21555). Returns ``(diff, DiffSize(upper, ""),
    ApplyDiff's size)``."""
    base, upper, diff = random_id(), random_id(), random_id()
    driver.create(base, "", "")
    add_many_files(driver, base, file_count, 3)
    add_file(driver, base, DELETE_FILE, DELETE_FILE_CONTENT)
    add_directory(driver, base, DELETE_DIR)
    if stamp_base:
        stamp_base(driver, base)
    driver.create(upper, base, "")
    add_many_files(driver, upper, file_count, 6)
    if stamp_upper:
        stamp_upper(driver, upper)
    remove_all(driver, upper, DELETE_FILE, DELETE_DIR)
    diff_size = driver.diff_size(upper, "")
    driver.create(diff, base, "")
    bad = many_files_mismatches(driver, diff, file_count, 3)
    t.check(not bad, "the new layer on base does not show base's files", files=bad)
    check_file(t, driver, diff, DELETE_FILE, DELETE_FILE_CONTENT)
    arch = tar_bytes(driver.diff(upper, base))
    names = sorted(m.name for m in tarfile.open(fileobj=io.BytesIO(arch), mode="r:"))
    size = driver.apply_diff(diff, base, io.BytesIO(arch))
    t.note("DiffSize(upper, \"\") = %d, ApplyDiff size = %d" % (diff_size, size),
           diff_size=diff_size, apply_size=size, diff_entries=names)
    return diff, diff_size, size


def driver_test_diff_apply(t, driver, file_count: int = DIFF_APPLY_FILES) -> None:
    """moby v1.12.0 graphtest_unix.go ``DriverTestDiffApply`` (skipped upstream on overlay for
    moby#21555; here the base is backdated): the applied diff has upper's content, neither the
    removed file nor the removed directory, and ApplyDiff's size is DiffSize's."""
    diff, diff_size, size = apply_upper_diff(t, driver, file_count)
    t.check(size == diff_size, "Apply diff size different, got %d, expected %d" % (size, diff_size))
    bad = many_files_mismatches(driver, diff, file_count, 6)
    t.check(not bad, "files in the applied layer do not have upper's content", files=bad)
    for name in (DELETE_FILE, DELETE_DIR):
        check_file_removed(t, driver, diff, name)


def driver_test_changes(t, driver) -> None:
    """moby v1.12.0 graphtest_unix.go ``DriverTestChanges`` (skipped upstream on overlay for
    moby#21555; here the base is backdated): Changes(upper, base) after changeManyFiles is
    exactly the expected changes; Changes(base, "") is all Adds."""
    base, upper = random_id(), random_id()
    driver.create(base, "", "")
    add_many_files(driver, base, 20, 3)
    backdate(driver, base)
    driver.create(upper, base, "")
    expected = sorted(change_many_files(driver, upper, 20, 6))
    got = change_pairs(driver.changes(upper, base))
    t.note("%d changes" % len(got), changes=["%s %s" % (k, p) for p, k in got])
    t.check(len(expected) == len(got), "unexpected number of changes, expected %d, got %d" % (len(expected), len(got)),
            missing=sorted(set(expected) - set(got)), unexpected=sorted(set(got) - set(expected)))
    t.check(expected == got, "Changes differ from the expected ones",
            missing=sorted(set(expected) - set(got)), unexpected=sorted(set(got) - set(expected)))
    everything = change_pairs(driver.changes(base, ""))
    t.check(everything and all(k == "A" for _, k in everything), "Changes(base, \"\") is not all Adds",
            base_changes=everything[:10])


#: The suite, in the reference's order: v1.10.3's three cases, then v1.12.0's.
CASES: Tuple[Callable[..., None], ...] = (
    driver_test_create_empty,
    driver_test_create_base,
    driver_test_create_snap,
    driver_test_deep_layer_read,
    driver_test_diff_apply,
    driver_test_changes,
)
