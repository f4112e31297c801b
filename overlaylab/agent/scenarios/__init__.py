"""The scenario catalogue: importing this package registers every scenario.

Groups (one module each):

- ``lifecycle``     Create/Get/Put/Remove/Status as the daemon uses them (moby's graphtest, the init layer; docs/reference-behaviour.md#daemon-use)
- ``diff``          Diff/Changes/DiffSize/ApplyDiff and what layer tars carry through them
- ``quirks``        reference oddities the port keeps; PASS = the quirk reproduces as specified
                    (``hazards``: the native ApplyDiff's hard-link hazard and ``overlay.safe_apply``)
- ``failure-class`` the known field failures (docs/reference-behaviour.md#field-failures), each at a small scale; each checks the
                    healthy behaviour, so it FAILs where the kernel/fs breaks it, and its
                    expectation says so where that is the known behaviour
- ``breakage``      overlay breakages users hit (moby, containers/storage, podman, buildkit issues), each a
                    small real reproduction with overlay mounts on the backing fs and, where the
                    issue has one, its passing counterpart; expectations from probed features
- ``engine``        engine-neutral scenarios, written once against the storage engine adapter
                    (``ctx.engine``) and run on every engine: the port and the living drivers

Scenarios make their own layers (Create + ApplyDiff of tars built in the scratch dir, or Get
and writing files) on a fresh driver root and must stay fast (a few seconds each on a small
loop filesystem).
"""
from __future__ import annotations

from . import lifecycle, diffs, quirks, hazards, failure_classes, breakages, engine  # noqa: F401  (registration order)

__all__ = ["lifecycle", "diffs", "quirks", "hazards", "failure_classes", "breakages", "engine"]
