"""The guest code imports only the standard library and the port: what a target is shipped.

Every module under overlaylab/agent/ is followed through all its imports (module level and
inside functions, as the AST holds them); each project module reached must be one of
``overlaylab.agent.GUEST_PACKAGES``/``GUEST_MODULES`` and everything else the standard library.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import overlaylab
from overlaylab.agent import GUEST_MODULES, GUEST_PACKAGES

PACKAGE = Path(overlaylab.__file__).resolve().parent
#: tomllib's backport: agent/profiles.py falls back to it on Python < 3.11 (the zipapp ships a
#: shim of that name; qemu guests have the host's Python).
OPTIONAL_THIRD_PARTY = {"tomli"}


def _module_file(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    if (PACKAGE / rel / "__init__.py").is_file():
        return PACKAGE / rel / "__init__.py"
    return PACKAGE / (str(rel) + ".py")


def _imports(name: str):
    path = _module_file(name)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                mod = ".".join(parent + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            for alias in node.names:  # `from . import probes` names a module
                candidate = mod + "." + alias.name
                if candidate.startswith("overlaylab.") and _module_file(candidate).is_file():
                    yield candidate


def _closure(roots):
    seen, todo, outside = set(), list(roots), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dep in _imports(name):
            if dep == "overlaylab" or dep.startswith("overlaylab."):
                todo.append(dep)
            else:
                outside.setdefault(dep.split(".")[0], name)
    return seen, outside


def _agent_modules():
    """Every module of the agent package, by dotted name (a package by its own name)."""
    out = []
    for path in sorted((PACKAGE / "agent").rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(["overlaylab"] + parts))
    return out


def _allowed(name: str) -> bool:
    parts = name.split(".")
    if name == "overlaylab":
        return True
    return parts[1] in GUEST_PACKAGES or (len(parts) == 2 and parts[1] in GUEST_MODULES)


def test_the_agent_reaches_only_the_port_and_itself():
    modules, _ = _closure(_agent_modules())
    assert "overlaylab.agent.main" in modules and "overlaylab.graphdriver.overlay" in modules
    assert sorted(m for m in modules if not _allowed(m)) == []


def test_the_agent_needs_nothing_beyond_the_standard_library():
    _, outside = _closure(_agent_modules())
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    foreign = {top: where for top, where in outside.items() if top not in stdlib | OPTIONAL_THIRD_PARTY}
    assert foreign == {}


def test_the_closure_check_catches_a_host_import():
    # the checker itself: from a host module, host modules and third-party imports show up
    modules, outside = _closure(["overlaylab.lab.run"])
    assert "overlaylab.lab.runner" in modules and not _allowed("overlaylab.lab.runner")
    assert "overlaylab.agent.scenario" in modules and _allowed("overlaylab.agent.scenario")
    assert "tabulate" in outside  # lab.tables renders with it


@pytest.mark.parametrize("module", ["overlaylab.agent.main", "overlaylab.agent.scenarios"])
def test_the_guest_entry_points_import_in_a_bare_interpreter(module, tmp_path):
    """Only the shipped files on the path (what the Vagrant zipapp holds), no site-packages."""
    import shutil
    import subprocess
    from overlaylab.providers.vagrant import agent_zip_members
    for arcname, path in agent_zip_members():
        dest = tmp_path / arcname
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    res = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path[:0] = [%r]; import %s; "
                          "print(sorted(m for m in sys.modules if m.startswith('overlaylab.cli') or "
                          "m.startswith('overlaylab.lab')))" % (str(tmp_path), module)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
