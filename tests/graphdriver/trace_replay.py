"""Replays ``shared/reference-trace/scenario.json`` (the op language of OPS.md) through the port.

Each op produces one record shaped like the reference's JSON lines, with paths normalised the
same way (``{backing}``, ``{tmp}``), so a test can compare record by record.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from typing import Any, Dict, List, Optional

from overlaylab.goerrors import LinkError, PathError, is_exist, is_not_exist
from overlaylab.graphdriver import overlay
from overlaylab.agent.probes import getdents64
from overlaylab.mountutil import mounts_under

TYPE_NAMES = {
    stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
    stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}
TAR_TYPES = {b"0": "file", b"\0": "file", b"1": "hardlink", b"2": "symlink", b"3": "char",
             b"4": "block", b"5": "dir", b"6": "fifo"}


def make_tar(path: str, entries: List[Dict[str, Any]]) -> int:
    """``mktar``: defaults mtime 1500000000, uid/gid 0, modes as OPS.md says."""
    defaults = {"file": "0644", "dir": "0755", "symlink": "0777", "hardlink": "0644", "fifo": "0644"}
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for e in entries:
            kind = e.get("type", "file")
            info = tarfile.TarInfo(e["name"])
            info.type = kinds[kind]
            info.mode = int(e.get("mode", defaults[kind]), 8)
            info.mtime = e.get("mtime", 1500000000)
            info.uid, info.gid = e.get("uid", 0), e.get("gid", 0)
            info.uname = info.gname = ""
            info.linkname = e.get("linkname", "")
            data = e.get("content", "").encode() if kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return len(entries)


def tree(path: str) -> List[Dict[str, Any]]:
    """``tree``: lstat walk in bytewise order with the fields OPS.md lists."""
    out: List[Dict[str, Any]] = []
    inodes: Dict[int, str] = {}

    def visit(full: str, rel: str) -> None:
        st = os.lstat(full)
        fmt = stat.S_IFMT(st.st_mode)
        e: Dict[str, Any] = {"path": rel, "type": TYPE_NAMES.get(fmt, "?"), "mode": "%o" % st.st_mode,
                             "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink}
        if fmt == stat.S_IFREG:
            with open(full, "rb") as f:
                data = f.read()
            e["size"] = len(data)
            e["sha256"] = hashlib.sha256(data).hexdigest()
            if len(data) <= 64:
                e["content"] = data.decode("utf-8", "replace")
        elif fmt == stat.S_IFLNK:
            e["linkname"] = os.readlink(full)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            e["rdev"] = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        if fmt != stat.S_IFDIR:
            if st.st_ino in inodes:
                e["same_inode_as"] = inodes[st.st_ino]
            else:
                inodes[st.st_ino] = rel
        try:
            names = [n for n in os.listxattr(full, follow_symlinks=False) if n.startswith("trusted.")]
        except OSError:
            names = []
        if names:
            e["xattrs"] = {n: "" for n in sorted(names)}
        out.append(e)
        if fmt == stat.S_IFDIR:
            # Raw getdents like Go: glibc's readdir turns ENOENT (a removed dir) into EOF.
            try:
                children = sorted((n for n, _ in getdents64(full) if n not in (".", "..")), key=os.fsencode)
            except OSError as err:
                out[-1] = {"path": full, "walk_error": "readdirent %s: %s" % (full, PathError("x", full, err.errno).strerror)}
                return
            for name in children:
                visit(os.path.join(full, name), name if rel == "." else rel + "/" + name)

    visit(path, ".")
    return out


def tar_entries(data: bytes) -> List[Dict[str, Any]]:
    entries = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            flag = info.type
            e: Dict[str, Any] = {
                "name": info.name + ("/" if info.type == tarfile.DIRTYPE and not info.name.endswith("/") else ""),
                "typeflag": "0" if flag in (b"\0", b"0") else flag.decode(),
                "type": TAR_TYPES.get(flag, "?"), "mode": "%o" % info.mode, "uid": info.uid,
                "gid": info.gid, "size": info.size, "mtime": int(info.mtime),
                "format": "PAX" if info.pax_headers else "USTAR",
            }
            if info.linkname:
                e["linkname"] = info.linkname
            if info.isreg() and info.type != tarfile.LNKTYPE:
                body = tar.extractfile(info).read()
                e["sha256"] = hashlib.sha256(body).hexdigest()
            entries.append(e)
    return entries


class Replayer:
    """Runs ops against one driver home; ``backing`` is the mount of the backing filesystem."""

    def __init__(self, backing: str, tmp: str, out_dir: str):
        self.backing = backing
        self.tmp = tmp
        self.env = {"OVL_HOME": backing, "OUT_DIR": out_dir}
        self.driver = None
        self.home = ""
        self.mnt: Dict[str, str] = {}

    def subst(self, value: Any) -> Any:
        if isinstance(value, str):
            for k, v in self.env.items():
                value = value.replace("{env:%s}" % k, v)
            value = value.replace("{tmp}", self.tmp).replace("{home}", self.home)
            for layer, path in self.mnt.items():
                value = value.replace("{mnt:%s}" % layer, path)
            return value
        if isinstance(value, list):
            return [self.subst(v) for v in value]
        if isinstance(value, dict):
            return {k: self.subst(v) for k, v in value.items()}
        return value

    def normalise(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(self.backing, "{backing}").replace(self.tmp, "{tmp}")
        if isinstance(value, list):
            return [self.normalise(v) for v in value]
        if isinstance(value, dict):
            return {k: self.normalise(v) for k, v in value.items()}
        return value

    def run(self, i: int, op: Dict[str, Any]) -> Dict[str, Any]:
        op = self.subst(op)
        rec: Dict[str, Any] = {"i": i, "op": op["op"]}
        for key in ("id", "parent", "label"):
            if key in op:
                rec[key] = op[key]
        try:
            result = getattr(self, "op_" + op["op"])(op)
            rec["ok"] = True
            if result is not None:
                rec["result"] = result
        except (OSError, ValueError, Exception) as err:  # noqa: B014 - every error is an answer
            rec["ok"] = False
            rec["error"] = str(err)
            if isinstance(err, OSError) and err.errno:
                rec["errno"] = err.errno
                rec["errno_name"] = errno.errorcode.get(err.errno, "")
            # as the Go harness writes them: present only when true
            if is_not_exist(err):
                rec["is_not_exist"] = True
            if is_exist(err):
                rec["is_exist"] = True
        return self.normalise(rec)

    # driver ops
    def op_init(self, op):
        self.driver = overlay.init(op["home"], op.get("options", ()))
        self.home = op["home"]
        return {"driver": str(self.driver), "home": op["home"]}

    def op_status(self, op):
        return [list(row) for row in self.driver.status()]

    def op_create(self, op):
        self.driver.create(op["id"], op.get("parent", ""), op.get("mount_label", ""))

    def op_get(self, op):
        path = self.driver.get(op["id"], op.get("mount_label", ""))
        self.mnt[op["id"]] = path
        return path

    def op_put(self, op):
        self.driver.put(op["id"])

    def op_exists(self, op):
        return self.driver.exists(op["id"])

    def op_remove(self, op):
        self.driver.remove(op["id"])

    def op_get_metadata(self, op):
        return self.driver.get_metadata(op["id"])

    def op_cleanup(self, op):
        self.driver.cleanup()

    def op_apply_diff(self, op):
        with open(op["tar"], "rb") as f:
            return self.driver.apply_diff(op["id"], op["parent"], f)

    def op_diff(self, op):
        stream = self.driver.diff(op["id"], op["parent"])
        try:
            data = stream.read()
        finally:
            stream.close()
        if op.get("out"):
            with open(op["out"], "wb") as f:
                f.write(data)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "entries": tar_entries(data)}

    def op_changes(self, op):
        changes = self.driver.changes(op["id"], op["parent"])
        raw = [{"kind": c.kind.letter, "path": c.path} for c in changes]
        return {"raw_order": raw, "sorted": sorted(raw, key=lambda c: (c["path"], c["kind"]))}

    def op_diff_size(self, op):
        return self.driver.diff_size(op["id"], op["parent"])

    # helper ops
    def op_mktar(self, op):
        return {"entries": make_tar(op["out"], op["entries"]), "out": op["out"]}

    def op_tree(self, op):
        return tree(op["path"])

    def op_mounts(self, op):
        lines = [m.line for m in mounts_under(op.get("path", self.home))]
        return lines or None

    def op_fs(self, op):
        action, path = op["action"], op["path"]
        try:
            if action == "write":
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, op.get("content", "").encode())
                finally:
                    os.close(fd)
            elif action == "read":
                with open(path, "rb") as f:
                    return f.read().decode()
            elif action == "mkdir":
                os.mkdir(path, 0o755)
            elif action == "remove":
                try:
                    os.unlink(path)
                except IsADirectoryError:
                    os.rmdir(path)
            elif action == "remove_all":
                from overlaylab.graphdriver.copy import remove_all
                remove_all(path)
            else:
                raise ValueError("fs action %s not replayed" % action)
        except (PathError, LinkError):
            raise
        except OSError as err:
            raise PathError("open", path, err.errno) from None
        return None

    def op_sleep(self, op):
        time.sleep(op["ms"] / 1000.0)


def load_scenario(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        data = json.load(f)
    return data["ops"] if isinstance(data, dict) else data


def load_results(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
