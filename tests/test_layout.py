"""The layout holds: only overlaylab/cli/ knows click, and tests/ mirrors the packages it tests.

The CLI is one layer on top; everything under it (the agent that runs in a guest, the driver
port, the lab, the providers, the reports) is called from Python as well and must not pull in
the CLI's library. A test directory is named after the package it tests, so a reader finds the
tests of ``overlaylab/x/y`` in ``tests/x/y``.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "overlaylab")
TESTS = os.path.join(ROOT, "tests")

# Directories under tests/ that mirror no package, each with the reason.
NOT_A_PACKAGE: Dict[str, str] = {
    "data": "recorded reference data (the Go driver's trace), not tests",
}


def _python_files(top: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return found


def _imports_click(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(name == "click" or name.startswith("click.") for name in names):
            return True
    return False


def test_only_the_cli_imports_click():
    cli = os.path.join(PACKAGE, "cli") + os.sep
    files = _python_files(PACKAGE)
    assert len(files) > 50  # the scan really saw the package
    offenders = [os.path.relpath(p, ROOT) for p in files if not p.startswith(cli) and _imports_click(p)]
    assert offenders == [], "click outside overlaylab/cli/: %s" % offenders
    assert _imports_click(os.path.join(cli, "__init__.py"))  # and the check would see one


def _test_dirs() -> List[str]:
    found = []
    for dirpath, dirnames, _ in os.walk(TESTS):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__"
                             and os.path.relpath(os.path.join(dirpath, d), TESTS) not in NOT_A_PACKAGE)
        found += [os.path.relpath(os.path.join(dirpath, d), TESTS) for d in dirnames]
    return found


def test_every_test_directory_mirrors_a_package():
    dirs = _test_dirs()
    assert "agent" in dirs and os.path.join("providers", "vagrant") in dirs
    orphans = [d for d in dirs if not os.path.isfile(os.path.join(PACKAGE, d, "__init__.py"))]
    assert orphans == [], "tests/ directories with no overlaylab/ package of that name: %s" % orphans


def test_the_exceptions_are_still_needed():
    """An exception that no longer exists (the directory went) is removed from the list."""
    gone = [d for d in NOT_A_PACKAGE if not os.path.isdir(os.path.join(TESTS, d))]
    assert gone == [], "drop from NOT_A_PACKAGE: %s" % gone


def _readme_layout() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("\n## Layout"):]
    return section[:section.index("\n```\n", section.index("```") + 3)]


def test_the_readme_layout_names_every_module():
    import re
    layout = _readme_layout()
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", layout))
    unnamed = []
    for path in _python_files(PACKAGE):
        rel = os.path.relpath(path, PACKAGE)
        stem = os.path.splitext(os.path.basename(rel))[0]
        package = os.path.dirname(rel)
        if stem == "__init__":
            continue
        if stem not in words or (package and os.path.basename(package) not in words):
            unnamed.append(rel)
    assert unnamed == [], "README.md's Layout section does not name: %s" % unnamed
    assert "graphdriver" in words and "overlay" in words  # the check reads the real section
