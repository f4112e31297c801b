"""Words for one-line errors, shared by the CLI and the domain: "did you mean", why root.

No click here: the lab's own modules (matrix selection, the run) raise errors carrying these
texts and the CLI turns them into usage errors.
"""
from __future__ import annotations

import difflib
import os
from typing import Iterable, List, Optional


def _edits(a: str, b: str) -> int:
    """Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> List[str]:
    """The closest of ``candidates`` (difflib's pick, ranked by fewest edits, then by equal
    length: ``debian-6.2`` -> ``debian-6.1`` before ``debian-6.12``)."""
    close = difflib.get_close_matches(word, list(candidates), n=max(n, 6), cutoff=0.6)
    close.sort(key=lambda c: (_edits(word, c), abs(len(c) - len(word))))
    return close[:n]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean debian-6.1?)`` or ``""``."""
    close = close_matches(word, candidates)
    return " (did you mean %s?)" % " or ".join(close) if close else ""


ROOT_WHY = ("the lab makes real filesystems: it needs root to set up loop devices, run mkfs on them, "
            "mount them and overlay mounts on top (and to share / with qemu guests)")


DRIVER_ROOT_WHY = ("the driver mounts overlays, chowns layers to the mapped root ids and applies layers "
                   "chrooted, as dockerd does")


def root_problem(command: str, why: str = ROOT_WHY) -> Optional[str]:
    """Why ``command`` cannot run as this user (one line), or None when running as root."""
    if os.geteuid() == 0:
        return None
    return ("%s needs root (running as uid %d): %s; run it as root, e.g. with sudo"
            % (command, os.geteuid(), why))
