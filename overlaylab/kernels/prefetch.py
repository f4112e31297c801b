"""Getting every VM kernel of a run before it starts (from the cache, else from Debian with apt)."""
from __future__ import annotations

import sys
import time
from typing import Callable, List, Optional, Sequence


def _stderr(text: str, err: bool = True) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def prefetch(kernels: Sequence[str], echo: Callable[..., None] = _stderr, refresh: bool = False, progress=None,
             run_dir: Optional[str] = None) -> List[str]:
    """Fetch (or find in the cache) every VM kernel of ``kernels``, one at a time so the apt
    state is never shared between threads; returns the ones that cannot be had (their cells
    become ERROR with the reason when the run reaches them). ``progress`` gets the fetch's
    phase events (lab/progress.py), with the kernel as the target."""
    import contextlib

    from ..kernels.fetch import KernelUnavailable, fetch_kernel
    from ..lab.progress import phase, target_scope
    missing = []
    for name in kernels:
        if name in ("host", "local"):
            continue
        start = time.monotonic()
        scope = target_scope(name, progress, run_dir) if progress else contextlib.nullcontext()
        try:
            with scope, phase("fetch", "kernel %s" % name) as state:
                image = fetch_kernel(name, refresh=refresh)
                state["detail"] = "%s, %s" % (image.release, image.package)
            echo("kernel %s: %s (%s) ready in %.1fs" % (name, image.release, image.package,
                                                        time.monotonic() - start), err=True)
        except KernelUnavailable as err:
            echo("kernel %s: %s" % (name, err), err=True)
            missing.append(name)
    return missing
