"""Replay of the archive-level steps of the reference trace (recorded
from the Go driver, ``tests/data/reference-trace``): the two image layers' ApplyDiff sizes, then Changes, Diff
and DiffSize of child-vs-base and of base-vs-nothing, compared with what Docker v1.10.3
answered. Overlay image layers are plain directories whose child starts as a hard-link copy
of the parent (docs/reference-behaviour.md#applydiff), so no mount is needed for these steps."""
from __future__ import annotations

import hashlib
import io
import json
import os

import pytest

from overlaylab.archive import (
    changes_dirs, changes_size, export_changes, sort_key, unpack_layer,
)
from overlaylab.archive.tarheader import Header
from overlaylab.archive.tarreader import TarReader

from .helpers import link_copy, make_tar

# The copy shipped with the tests (tests/data/reference-trace), so a checkout is self-contained.
TRACE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "reference-trace")
MODES = {"file": 0o644, "dir": 0o755, "symlink": 0o777, "hardlink": 0o644, "fifo": 0o644}
FLAGS = {"file": "0", "dir": "5", "symlink": "2", "hardlink": "1", "fifo": "6"}


def load(name):
    path = os.path.join(TRACE, name)
    with open(path) as f:
        return f.read()


def scenario_tar(label):
    doc = json.loads(load("scenario.json"))
    ops = doc["ops"] if isinstance(doc, dict) else doc
    op = next(o for o in ops if o["op"] == "mktar" and o["out"].endswith("/%s.tar" % label))
    entries = []
    for e in op["entries"]:
        kind = e.get("type", "file")
        body = e.get("content", "").encode() if kind == "file" else b""
        mode = int(e["mode"], 8) if "mode" in e else MODES[kind]
        entries.append((Header(name=e["name"], mode=mode, typeflag=ord(FLAGS[kind]),
                               size=len(body), linkname=e.get("linkname", ""),
                               mtime_ns=e.get("mtime", 1500000000) * 10 ** 9,
                               uid=e.get("uid", 0), gid=e.get("gid", 0)), body))
    return make_tar(entries)


def results(i):
    for line in load("results-ext4.jsonl").splitlines():
        doc = json.loads(line)
        if doc["i"] == i:
            return doc["result"]
    raise KeyError(i)


def entries_of(stream):
    try:
        data = stream.read()
    finally:
        stream.close()
    out = []
    reader = TarReader(io.BytesIO(data))
    while True:
        h = reader.next()
        if h is None:
            break
        body = reader.read()
        e = {"name": h.name, "typeflag": chr(h.typeflag) if h.typeflag else "0",
             "mode": "%o" % h.mode, "uid": h.uid, "gid": h.gid, "size": h.size,
             "linkname": h.linkname, "format": "USTAR" if h.format == "posix" else h.format,
             "mtime": h.mtime_ns // 10 ** 9}
        if h.typeflag in (0, ord("0")):
            e["sha256"] = hashlib.sha256(body).hexdigest()
        out.append(e)
    return out


def normalise(ref_entries):
    keys = ("name", "typeflag", "mode", "uid", "gid", "size", "format", "sha256")
    out = []
    for e in ref_entries:
        d = {k: e.get(k) for k in keys}
        d["linkname"] = e.get("linkname", "")
        if ".wh." not in e["name"]:
            d["mtime"] = e["mtime"]
        out.append(d)
    return out


def strip(entries):
    keys = ("name", "typeflag", "mode", "uid", "gid", "size", "format", "sha256", "linkname")
    return [{k: (e.get(k) if k != "linkname" else e.get(k, "")) for k in keys}
            | ({"mtime": e["mtime"]} if ".wh." not in e["name"] else {}) for e in entries]


@pytest.fixture
def layers(tmp_path):
    base = str(tmp_path / "base")
    os.mkdir(base)
    base_size = unpack_layer(base, io.BytesIO(scenario_tar("base")))
    child = str(tmp_path / "child")
    link_copy(base, child)
    child_size = unpack_layer(child, io.BytesIO(scenario_tar("child")))
    return base, child, base_size, child_size


def test_apply_diff_sizes(layers):
    _, _, base_size, child_size = layers
    assert base_size == results(5) == 41
    assert child_size == results(8) == 21


def test_changes_child_vs_base(layers):
    base, child, _, _ = layers
    got = [{"kind": c.kind.letter, "path": c.path}
           for c in sorted(changes_dirs(child, base), key=sort_key)]
    assert got == results(36)["sorted"]


def test_diff_child_vs_base_entries(layers):
    base, child, _, _ = layers
    got = entries_of(export_changes(child, changes_dirs(child, base)))
    assert strip(got) == normalise(results(37)["entries"])


def test_diff_base_full_entries(layers):
    base, _, _, _ = layers
    got = entries_of(export_changes(base, changes_dirs(base, "")))
    ref = results(38)
    assert strip(got) == normalise(ref["entries"])
    assert [{"kind": c.kind.letter, "path": c.path}
            for c in sorted(changes_dirs(base, ""), key=sort_key)] == results(39)["sorted"]


def test_diff_size_child_vs_base(layers):
    base, child, _, _ = layers
    assert changes_size(child, changes_dirs(child, base)) == results(40) == 21


def test_diff_byte_count_matches(layers):
    base, _, _, _ = layers
    stream = export_changes(base, changes_dirs(base, ""))
    try:
        data = stream.read()
    finally:
        stream.close()
    assert len(data) == results(38)["bytes"]
