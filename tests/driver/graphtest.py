"""Helpers of moby's ``graphtest`` (1.10.3 harness, 1.12 ``testutil.go``), ported (docs/reference-behaviour.md#graphtest).

``random_content`` only needs to agree with itself (not with Go's math/rand stream).
"""
from __future__ import annotations

import errno
import os
import random
import stat
import uuid
from typing import List

from overlaylab.archive import Change, ChangeKind


def random_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex chars, like stringid.GenerateRandomID


def random_content(size: int, seed: int) -> bytes:
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, "little") if size else b""


def verify_file(path: str, mode: int, uid: int, gid: int) -> None:
    """``verifyFile``: stat (follows symlinks) and compare type, perms, special bits, owner."""
    st = os.stat(path)
    assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(mode), "Expected %s type 0x%x, got 0x%x" % (
        path, stat.S_IFMT(mode), stat.S_IFMT(st.st_mode))
    assert st.st_mode & 0o777 == mode & 0o777, "Expected %s mode %o, got %o" % (path, mode & 0o777, st.st_mode & 0o777)
    for bit, name in ((stat.S_ISVTX, "sticky"), (stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid")):
        assert st.st_mode & bit == mode & bit, "Expected %s %s 0x%x, got 0x%x" % (path, name, mode & bit, st.st_mode & bit)
    assert st.st_uid == uid, "%s no owned by uid %d" % (path, uid)
    assert st.st_gid == gid, "%s not owned by gid %d" % (path, gid)


def read_dir(path: str) -> List[str]:
    return [n for n in os.listdir(path) if n != "lost+found"]


def create_base(driver, name: str) -> None:
    """``createBase``: umask 0; ``a subdir`` 01705 owned 1:2; ``a file`` 04222 with ``Some data``."""
    old = os.umask(0)
    try:
        driver.create(name, "", "")
        d = driver.get(name, "")
        try:
            sub = os.path.join(d, "a subdir")
            os.mkdir(sub, 0o705 | stat.S_ISVTX)
            os.chown(sub, 1, 2)
            fd = os.open(os.path.join(d, "a file"), os.O_WRONLY | os.O_CREAT, 0o222 | stat.S_ISUID)
            try:
                os.write(fd, b"Some data")
            finally:
                os.close(fd)
        finally:
            driver.put(name)
    finally:
        os.umask(old)


def verify_base(driver, name: str) -> None:
    d = driver.get(name, "")
    try:
        verify_file(os.path.join(d, "a subdir"), stat.S_IFDIR | 0o705 | stat.S_ISVTX, 1, 2)
        verify_file(os.path.join(d, "a file"), stat.S_IFREG | 0o222 | stat.S_ISUID, 0, 0)
        assert len(read_dir(d)) == 2, "Unexpected files in base image"
    finally:
        driver.put(name)


def _write(path: str, data: bytes, mode: int = 0o755) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def add_file(driver, layer: str, name: str, content: bytes) -> None:
    d = driver.get(layer, "")
    try:
        _write(os.path.join(d, name), content)
    finally:
        driver.put(layer)


def add_directory(driver, layer: str, name: str) -> None:
    d = driver.get(layer, "")
    try:
        os.makedirs(os.path.join(d, name), 0o755, exist_ok=True)
    finally:
        driver.put(layer)


def add_files(driver, layer: str, seed: int) -> None:
    d = driver.get(layer, "")
    try:
        _write(os.path.join(d, "file-a"), random_content(64, seed))
        os.makedirs(os.path.join(d, "dir-b"), 0o755, exist_ok=True)
        _write(os.path.join(d, "dir-b", "file-b"), random_content(128, seed + 1))
        _write(os.path.join(d, "file-c"), random_content(128 * 128, seed + 2))
    finally:
        driver.put(layer)


def remove_all(driver, layer: str, *names: str) -> None:
    import shutil
    d = driver.get(layer, "")
    try:
        for name in names:
            p = os.path.join(d, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)
    finally:
        driver.put(layer)


def check_file(driver, layer: str, name: str, content: bytes) -> None:
    d = driver.get(layer, "")
    try:
        with open(os.path.join(d, name), "rb") as f:
            assert f.read() == content, "%s: content mismatch" % name
    finally:
        driver.put(layer)


def check_file_removed(driver, layer: str, name: str) -> None:
    d = driver.get(layer, "")
    try:
        try:
            os.stat(os.path.join(d, name))
        except OSError as err:
            assert err.errno == errno.ENOENT
            return
        raise AssertionError("file still exists: %s" % name)
    finally:
        driver.put(layer)


def add_many_files(driver, layer: str, count: int, seed: int) -> None:
    d = driver.get(layer, "")
    try:
        for i in range(0, count, 100):
            sub = os.path.join(d, "directory-%d" % i)
            os.makedirs(sub, 0o755, exist_ok=True)
            for j in range(100):
                if i + j >= count:
                    break
                _write(os.path.join(sub, "file-%d" % (i + j)), random_content(64, seed + i + j))
    finally:
        driver.put(layer)


def change_many_files(driver, layer: str, count: int, seed: int) -> List[Change]:
    d = driver.get(layer, "")
    changes: List[Change] = []
    try:
        for i in range(0, count, 100):
            archive_root = "/directory-%d" % i
            changes.append(Change(archive_root, ChangeKind.MODIFY))
            for j in range(100):
                if i + j >= count:
                    break
                if j % 3 == 0:
                    name = "file-%d" % (i + j)
                    _write(os.path.join(d, archive_root[1:], name), random_content(64, seed + i + j))
                    changes.append(Change(archive_root + "/" + name, ChangeKind.MODIFY))
                elif j % 3 == 1:
                    name = "file-%d-%d" % (seed, i + j)
                    _write(os.path.join(d, archive_root[1:], name), random_content(64, seed + i + j))
                    changes.append(Change(archive_root + "/" + name, ChangeKind.ADD))
                else:
                    name = "file-%d" % (i + j)
                    os.unlink(os.path.join(d, archive_root[1:], name))
                    changes.append(Change(archive_root + "/" + name, ChangeKind.DELETE))
    finally:
        driver.put(layer)
    return changes


def check_many_files(driver, layer: str, count: int, seed: int) -> None:
    d = driver.get(layer, "")
    try:
        for i in range(0, count, 100):
            for j in range(100):
                if i + j >= count:
                    break
                with open(os.path.join(d, "directory-%d" % i, "file-%d" % (i + j)), "rb") as f:
                    assert f.read() == random_content(64, seed + i + j)
    finally:
        driver.put(layer)


def check_changes(expected: List[Change], actual: List[Change]) -> None:
    assert len(expected) == len(actual), "unexpected number of changes, expected %d, got %d" % (
        len(expected), len(actual))
    key = lambda c: (c.path, int(c.kind))  # noqa: E731
    for e, a in zip(sorted(expected, key=key), sorted(actual, key=key)):
        assert (e.path, e.kind) == (a.path, a.kind), "Changes mismatch: %s != %s" % (e, a)


def add_layer_files(driver, layer: str, parent: str, i: int) -> None:
    d = driver.get(layer, "")
    try:
        _write(os.path.join(d, "top-id"), layer.encode())
        ld = os.path.join(d, "layer-%d" % i)
        os.makedirs(ld, 0o755, exist_ok=True)
        _write(os.path.join(ld, "layer-id"), layer.encode())
        _write(os.path.join(ld, "parent-id"), parent.encode())
    finally:
        driver.put(layer)


def add_many_layers(driver, base: str, count: int) -> str:
    last = base
    for i in range(1, count + 1):
        layer = random_id()
        driver.create(layer, last, "")
        add_layer_files(driver, layer, last, i)
        last = layer
    return last


def check_many_layers(driver, layer: str, count: int) -> None:
    d = driver.get(layer, "")
    try:
        with open(os.path.join(d, "top-id"), "rb") as f:
            assert f.read() == layer.encode()
        expected = layer
        for i in range(count, 0, -1):
            ld = os.path.join(d, "layer-%d" % i)
            with open(os.path.join(ld, "layer-id"), "rb") as f:
                assert f.read() == expected.encode(), "layer-%d has the wrong layer id" % i
            with open(os.path.join(ld, "parent-id"), "rb") as f:
                expected = f.read().decode()
    finally:
        driver.put(layer)
