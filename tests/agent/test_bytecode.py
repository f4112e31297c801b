"""The agent's bytecode cache for a read-only source tree (a qemu guest's 9p share)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from overlaylab.agent.bytecode import cache_dir, install

from .conftest import requires_root

#: imports a module of a package in a read-only tree, with the agent's cache installed, and
#: prints where its bytecode went
_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import pkg
    from overlaylab.agent.bytecode import install
    print(install(pkg.__path__[0], sys.argv[2]))
    import pkg.mod
    print(pkg.mod.VALUE)
""")


def _tree(tmp_path, value):
    src = tmp_path / "src" / "pkg"
    src.mkdir(parents=True, exist_ok=True)
    (src / "__init__.py").write_text("")
    (src / "mod.py").write_text("VALUE = %r\n" % value)
    return src


def _import(tmp_path, src):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(src.parent), str(tmp_path / "tmp")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    return out.stdout.split()


@requires_root
def test_a_read_only_tree_gets_its_bytecode_from_the_private_cache(tmp_path):
    (tmp_path / "tmp").mkdir()
    src = _tree(tmp_path, "one")
    # a read-only bind mount of the tree, as the guest's 9p share is
    subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(src)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(src)], check=True)
    try:
        where, value = _import(tmp_path, src)
        assert value == "one"
        cached = [os.path.join(d, f) for d, _, fs in os.walk(where) for f in fs]
        assert any(path.endswith(".pyc") and "mod" in os.path.basename(path) for path in cached)
        assert not os.path.exists(src / "__pycache__")
        assert _import(tmp_path, src) == [where, "one"]  # read back
    finally:
        subprocess.run(["umount", str(src)], check=True)
    (src / "mod.py").write_text("VALUE = 'two, longer'\n")  # the source changed: compiled again
    subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(src)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(src)], check=True)
    try:
        assert _import(tmp_path, src)[1] == "two,"
    finally:
        subprocess.run(["umount", str(src)], check=True)


def test_a_writable_tree_is_left_as_python_has_it(tmp_path):
    assert install(str(_tree(tmp_path, "x")), str(tmp_path)) is None
    assert install(str(tmp_path / "agent.pyz" / "overlaylab"), str(tmp_path)) is None  # not a directory


def test_a_cache_directory_others_could_write_is_not_used(tmp_path):
    assert cache_dir(str(tmp_path)) == str(tmp_path / ("overlaylab-pycache-%d" % os.getuid()))
    os.chmod(cache_dir(str(tmp_path)), 0o777)
    assert cache_dir(str(tmp_path)) is None
    link_base = tmp_path / "other"
    link_base.mkdir()
    os.symlink(str(tmp_path / "elsewhere"), str(link_base / ("overlaylab-pycache-%d" % os.getuid())))
    assert cache_dir(str(link_base)) is None


@requires_root
def test_a_tree_the_host_precompiled_is_read_as_is_and_not_compiled_again(tmp_path):
    """precompile() writes the tree's own __pycache__ (the host, before a guest starts): the
    read-only tree's reader then has its bytecode and writes none to its private cache."""
    from overlaylab.agent.bytecode import precompile
    (tmp_path / "tmp").mkdir()
    src = _tree(tmp_path, "pre")
    assert precompile(str(src)) is True
    assert sorted(os.listdir(src / "__pycache__")) == sorted(
        "%s.%s.pyc" % (m, sys.implementation.cache_tag) for m in ("__init__", "mod"))
    subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(src)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(src)], check=True)
    try:
        assert precompile(str(src)) is False  # read-only: nothing to write
        where, value = _import(tmp_path, src)
        assert value == "pre"
        assert [f for _, _, fs in os.walk(where) for f in fs] == []  # nothing compiled
    finally:
        subprocess.run(["umount", str(src)], check=True)
