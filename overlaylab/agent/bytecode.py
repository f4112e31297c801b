"""Bytecode for the agent where its source tree is read-only.

A qemu guest runs the agent from the host's tree over a read-only 9p share: Python cannot write
``__pycache__`` there, so every agent process compiled every module it imports again (about 4 s
per start under TCG; a VM may start the agent more than once: after a crash, a resumed run).
:func:`install` keeps the project's bytecode in a private directory of the target instead
(``<tmp>/overlaylab-pycache-<uid>/<source path>c``): the first process compiles and writes it,
the next ones read it. Bytecode the tree does have (``__pycache__``, written by a host) is still
read; sources are checked against their bytecode as always (mtime and size), so an edited
module is compiled again. Nothing changes where the tree is writable, or not a directory (the
zipapp a remote host runs).

:func:`precompile`, run by the host before a guest starts, writes the tree's own ``__pycache__``
(``compileall``, as the host's interpreter compiles): a guest then compiles nothing at all, not
even in its first agent process (its private cache starts empty at every boot).

Standard library only: the agent runs this inside a target.
"""
from __future__ import annotations

import os
import stat
import sys
import tempfile
from importlib.machinery import (BYTECODE_SUFFIXES, EXTENSION_SUFFIXES, SOURCE_SUFFIXES, ExtensionFileLoader,
                                 FileFinder, SourceFileLoader, SourcelessFileLoader)
from typing import Optional

#: the ``overlaylab`` package directory
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_dir(base: Optional[str] = None) -> Optional[str]:
    """``<tmp>/overlaylab-pycache-<uid>``, made private to this user; None when it exists but is
    not (someone else's, a symlink, open to others): bytecode from there would be run."""
    path = os.path.join(base or tempfile.gettempdir(), "overlaylab-pycache-%d" % os.getuid())
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def install(package_dir: str = PACKAGE_DIR, base: Optional[str] = None) -> Optional[str]:
    """Keep the bytecode of the modules under ``package_dir`` in :func:`cache_dir` when
    ``package_dir`` is a directory this process cannot write; returns that directory, or None
    when nothing was changed. Call it before the imports it is meant to speed up."""
    if not os.path.isdir(package_dir) or os.access(package_dir, os.W_OK):
        return None
    where = cache_dir(base)
    if where is None:
        return None

    class CachingLoader(SourceFileLoader):
        """Reads and writes a module's bytecode in ``where`` (the tree's own as a fallback)."""

        def get_data(self, path: str) -> bytes:
            if path.endswith(tuple(BYTECODE_SUFFIXES)):
                try:
                    return super().get_data(os.path.join(where, path.lstrip(os.sep)))
                except OSError:
                    pass
            return super().get_data(path)

        def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:
            super().set_data(os.path.join(where, path.lstrip(os.sep)), data, _mode=_mode)

    hook = FileFinder.path_hook((ExtensionFileLoader, EXTENSION_SUFFIXES), (CachingLoader, SOURCE_SUFFIXES),
                                (SourcelessFileLoader, BYTECODE_SUFFIXES))

    def project_hook(path: str) -> FileFinder:
        if path == package_dir or path.startswith(package_dir + os.sep):
            return hook(path)
        raise ImportError("not the project's")  # the next hook's

    sys.path_hooks.insert(0, project_hook)
    for path in [p for p in sys.path_importer_cache if p == package_dir or p.startswith(package_dir + os.sep)]:
        del sys.path_importer_cache[path]  # the finders of packages imported already
    # SourceLoader writes bytecode only when this is off; the tree's other readers (the
    # standard library, which has its bytecode) are not written to, and a write that fails is
    # ignored as always
    sys.dont_write_bytecode = False
    return where


def precompile(package_dir: str = PACKAGE_DIR) -> bool:
    """Write the bytecode of every module under ``package_dir`` into its ``__pycache__`` (what
    is current already is only checked: a stat per module); True when every module compiled.
    The host calls it before it boots a guest that runs the agent from this tree."""
    if not os.path.isdir(package_dir) or not os.access(package_dir, os.W_OK):
        return False
    import compileall  # the host's: not at the agent's every start
    return bool(compileall.compile_dir(package_dir, quiet=2))
