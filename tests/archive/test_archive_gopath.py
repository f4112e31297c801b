"""Go's filepath.Clean/Join/Dir/Base semantics (https://pkg.go.dev/path/filepath, Go 1.5)."""
from __future__ import annotations

import pytest

from overlaylab.archive import gopath


@pytest.mark.parametrize("path,want", [
    ("", "."), (".", "."), ("/", "/"), ("//", "/"), ("//a//b/", "/a/b"), ("a/", "a"),
    ("./a/./b", "a/b"), ("a/../..", ".."), ("../../a", "../../a"), ("/../a", "/a"),
    ("a/b/../../../c", "../c"), ("..//x/..", ".."), ("abc/def/../ghi", "abc/ghi"),
])
def test_clean(path, want):
    assert gopath.clean(path) == want


def test_join_dir_base():
    assert gopath.join("/dest", "/../victim/hello") == "/victim/hello"
    assert gopath.join("/tmp/x/dest", "/../victim") == "/tmp/x/victim"
    assert gopath.join("", "") == ""
    assert gopath.dirname("a") == "." and gopath.dirname("/a") == "/"
    assert gopath.dirname("a/b/") == "a/b"
    assert gopath.basename("a/b/") == "b" and gopath.basename("") == "."
    assert gopath.basename("///") == "/"
    assert gopath.split("a/b/c") == ("a/b/", "c")
    assert gopath.is_within("/d", "/d/x") and gopath.is_within("/d", "/d")
    assert not gopath.is_within("/d", "/d2/x") and gopath.is_within("/", "/anything")
