"""Shared helpers of the archive tests: sample trees of the reference tests, tar building,
tree snapshots for "nothing outside dest changed" checks."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from overlaylab.archive.tarheader import Header, TarWriter

REG, DIR, SYMLINK = "reg", "dir", "symlink"


def write_file(path: str, data: bytes, mode: int) -> None:
    """``ioutil.WriteFile``: create with ``mode`` (subject to umask), keep an existing mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o777)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def create_sample_dir(root: str) -> None:
    """``createSampleDir`` of changes_test.go."""
    files = [
        (REG, "file1", "file1\n", 0o600), (REG, "file2", "file2\n", 0o666),
        (REG, "file3", "file3\n", 0o404), (REG, "file4", "file4\n", 0o600),
        (REG, "file5", "file5\n", 0o600), (REG, "file6", "file6\n", 0o600),
        (REG, "file7", "file7\n", 0o600), (DIR, "dir1", "", 0o740),
        (REG, "dir1/file1-1", "file1-1\n", 0o1444), (REG, "dir1/file1-2", "file1-2\n", 0o666),
        (DIR, "dir2", "", 0o700), (REG, "dir2/file2-1", "file2-1\n", 0o666),
        (REG, "dir2/file2-2", "file2-2\n", 0o666), (DIR, "dir3", "", 0o700),
        (REG, "dir3/file3-1", "file3-1\n", 0o666), (REG, "dir3/file3-2", "file3-2\n", 0o666),
        (DIR, "dir4", "", 0o700), (REG, "dir4/file3-1", "file4-1\n", 0o666),
        (REG, "dir4/file3-2", "file4-2\n", 0o666),
        (SYMLINK, "symlink1", "target1", 0o666), (SYMLINK, "symlink2", "target2", 0o666),
        (SYMLINK, "symlink3", root + "/file1", 0o666),
        (SYMLINK, "symlink4", root + "/symlink3", 0o666),
        (SYMLINK, "dirSymlink", root + "/dir1", 0o740),
    ]
    now = time.time_ns()
    for kind, rel, contents, perm in files:
        p = os.path.join(root, rel)
        if kind == DIR:
            os.makedirs(p, perm, exist_ok=True)
        elif kind == REG:
            write_file(p, contents.encode(), perm)
        else:
            os.symlink(contents, p)
        if kind != SYMLINK:
            os.utime(p, ns=(now, now))


def mutate_sample_dir(root: str) -> None:
    """``mutateSampleDir`` of changes_test.go."""
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    os.remove(j("file1"))
    subprocess.run(["rm", "-rf", j("dir1")], check=True)
    os.remove(j("symlink1"))
    write_file(j("file2"), b"fileNN\n", 0o777)
    os.remove(j("file3"))
    write_file(j("file3"), b"fileMM\n", 0o404)
    later = time.time_ns() + 10 ** 9
    os.utime(j("file4"), ns=(later, later))
    os.remove(j("file5"))
    os.makedirs(j("file5"), 0o666)
    write_file(j("filenew"), b"filenew\n", 0o777)
    os.makedirs(j("dirnew"), 0o766)
    os.symlink("targetnew", j("symlinknew"))
    os.remove(j("symlink2"))
    os.symlink("target2change", j("symlink2"))
    subprocess.run(["rm", "-rf", j("dir2")], check=True)
    write_file(j("dir2"), b"dir2\n", 0o777)
    later = time.time_ns() + 10 ** 9
    os.utime(j("dir3"), ns=(later, later))


def copy_dir(src: str, dst: str) -> None:
    """The reference tests' ``copyDir``: ``cp -a src dst``."""
    subprocess.run(["cp", "-a", src, dst], check=True)


def link_copy(src: str, dst: str) -> None:
    """Overlay's ``copyDir`` with hard links (docs/reference-behaviour.md#copydir-quirks): dirs recreated with their metadata,
    regular files hard-linked, symlinks recreated, times copied."""
    os.mkdir(dst)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = os.path.join(dst, rel) if rel != "." else dst
        for d in dirnames:
            s = os.path.join(dirpath, d)
            if os.path.islink(s):
                continue
            os.mkdir(os.path.join(out, d))
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            s, t = os.path.join(dirpath, name), os.path.join(out, name)
            st = os.lstat(s)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), t)
                os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            else:
                os.link(s, t)
    for dirpath, dirnames, _ in os.walk(src, topdown=False):
        for d in dirnames + ([] if dirpath != src else []):
            s = os.path.join(dirpath, d)
            if os.path.islink(s):
                continue
            t = os.path.join(dst, os.path.relpath(s, src))
            st = os.lstat(s)
            os.chown(t, st.st_uid, st.st_gid)
            os.chmod(t, stat.S_IMODE(st.st_mode))
            os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns))
    st = os.lstat(src)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def make_tar(entries: Iterable[Tuple[Header, bytes]], end: bool = True) -> bytes:
    """A tar of (header, body) pairs written with the package's writer."""
    out = io.BytesIO()
    w = TarWriter(out.write)
    for hdr, body in entries:
        w.write_header(hdr)
        w.write(body)
    if end:
        w.close()
    else:
        w._finish_entry()  # noqa: SLF001 - a stream without end-of-archive blocks
        w.flush()
    return out.getvalue()


def read_dir_contents(root: str) -> List[str]:
    """``readDirContents`` of diff_test.go: sorted walk, relative names, dirs with ``/``."""
    out: List[str] = []

    def walk(d: str, prefix: str) -> None:
        for name in sorted(os.listdir(d), key=os.fsencode):
            p = os.path.join(d, name)
            if os.path.isdir(p) and not os.path.islink(p):
                out.append(prefix + name + "/")
                walk(p, prefix + name + "/")
            else:
                out.append(prefix + name)

    walk(root, "")
    return out


def snapshot(root: str, exclude: Sequence[str] = ()) -> Dict[str, tuple]:
    """Everything below ``root`` (not following symlinks, skipping ``exclude`` subtrees):
    path -> (mode, uid, gid, size, mtime_ns, nlink, content hash or link target)."""
    excl = {os.path.abspath(e) for e in exclude}
    out: Dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in excl]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if p in excl:
                continue
            st = os.lstat(p)
            extra: Optional[str] = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                      st.st_nlink, extra)
    st = os.lstat(root)
    out[root] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def reg(name: str, body: bytes = b"", mode: int = 0o644, **kw) -> Tuple[Header, bytes]:
    return Header(name=name, mode=mode, typeflag=ord("0"), size=len(body),
                  mtime_ns=kw.pop("mtime_ns", 1500000000 * 10 ** 9), **kw), body


def dirent(name: str, mode: int = 0o755, **kw) -> Tuple[Header, bytes]:
    return Header(name=name, mode=mode, typeflag=ord("5"),
                  mtime_ns=kw.pop("mtime_ns", 1500000000 * 10 ** 9), **kw), b""


def symlink(name: str, target: str, **kw) -> Tuple[Header, bytes]:
    return Header(name=name, mode=0o777, typeflag=ord("2"), linkname=target,
                  mtime_ns=kw.pop("mtime_ns", 1500000000 * 10 ** 9), **kw), b""


def hardlink(name: str, target: str, mode: int = 0o644, **kw) -> Tuple[Header, bytes]:
    return Header(name=name, mode=mode, typeflag=ord("1"), linkname=target,
                  mtime_ns=kw.pop("mtime_ns", 1500000000 * 10 ** 9), **kw), b""
