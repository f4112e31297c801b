"""Reports of a run directory: markdown, HTML, JUnit XML, JSON summary, KCIDB (:mod:`.kcidb`,
on request only: it needs the optional kcidb-io); baselines and
regressions (:mod:`.compare`); the run index (:mod:`.history`); bug bundles (:mod:`.bundle`).

``write_all(run_path)`` writes ``report.md``, ``report.html``, ``junit.xml`` and
``summary.json`` into the run directory (``overlaylab run`` does so at the end of every run).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

from ..lab.results import Run, load_run
from .model import RunReport

FILES = {"markdown": "report.md", "html": "report.html", "junit": "junit.xml", "json": "summary.json"}


def renderers() -> Dict[str, Callable[[RunReport], str]]:
    from . import html, junit, kcidb, markdown, summary_json
    from .compare import render_baseline
    return {"markdown": markdown.render, "html": html.render, "junit": junit.render, "json": summary_json.render,
            "baseline": render_baseline, "kcidb": kcidb.render}


def render(rep: RunReport, fmt: str) -> str:
    return renderers()[fmt](rep)


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_all(run_path: str, out_dir: Optional[str] = None, run: Optional[Run] = None,
              formats=("markdown", "html", "junit", "json"), rep: Optional[RunReport] = None) -> List[str]:
    """Write the reports of the run at ``run_path`` (into the run directory by default), from
    ``rep`` when the caller has folded the run already."""
    if rep is None:
        rep = RunReport.from_run(run if run is not None else load_run(run_path))
    out_dir = out_dir or run_path
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for fmt in formats:
        path = os.path.join(out_dir, FILES[fmt])
        _write(path, render(rep, fmt))
        written.append(path)
    return written


__all__ = ["FILES", "RunReport", "render", "renderers", "write_all"]
