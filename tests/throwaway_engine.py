"""A throwaway scenario of group ``engine`` for tests of the engine axis (issue #12) that must not
depend on which engine scenarios the catalogue holds: it does nothing, so it PASSes wherever its
engine runs.

:func:`registered` adds it to this process's catalogue for a ``with`` block; :func:`site_dir`
writes a ``sitecustomize.py`` that registers it in every process with that directory on
``PYTHONPATH`` — CLI subprocesses, and (through the local provider's agent PYTHONPATH) their
agents.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from overlaylab.agent.scenario import REGISTRY, Scenario, all_scenarios, scenario

THROWAWAY = "throwaway-engine-noop"
_ARGS = (THROWAWAY, "a throwaway engine scenario of the tests: does nothing", "tests/throwaway_engine.py", "engine")

SITECUSTOMIZE = """\
import os
from overlaylab.agent.scenario import REGISTRY, scenario
if %(sid)r not in REGISTRY:
    scenario(*%(args)r, needs_mount=False, timeout=30.0)(lambda ctx: None)
import overlaylab.providers.local as _local
_here = os.path.dirname(os.path.abspath(__file__))
if not _local.PROJECT_ROOT.startswith(_here + os.pathsep):
    _local.PROJECT_ROOT = _here + os.pathsep + _local.PROJECT_ROOT
""" % {"sid": THROWAWAY, "args": _ARGS}


@contextlib.contextmanager
def registered() -> Iterator[Scenario]:
    """THROWAWAY in this process's catalogue (after every real scenario) for the block."""
    all_scenarios()
    scenario(*_ARGS, needs_mount=False, timeout=30.0)(lambda ctx: None)
    try:
        yield REGISTRY[THROWAWAY]
    finally:
        del REGISTRY[THROWAWAY]


def site_dir(parent: str) -> str:
    """``parent/site`` holding the sitecustomize.py that registers THROWAWAY: for PYTHONPATH."""
    d = os.path.join(parent, "site")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "sitecustomize.py"), "w", encoding="utf-8") as f:
        f.write(SITECUSTOMIZE)
    return d
