"""References resolve: the code, tests, README and assets cite only what a reader can open.

No citation of documents the repository does not ship (numbered sections of an unshipped
specification, an unshipped design note); every scenario's ``reference`` names an upstream source
(a URL, an issue such as ``moby#21555`` or ``coreos/bugs#474``, or a section of this
repository's ``docs/``); and every ``docs/<file>.md#<anchor>`` cited anywhere exists.
"""
from __future__ import annotations

import importlib
import os
import re
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("overlaylab", "tests", "README.md", "vms", "scripts", "benchmarks")
SKIP_DIRS = {"__pycache__", ".venv", ".git", ".pytest_cache"}

SECTION = "\u00a7"   # written as an escape so this file does not match its own search
UNSHIPPED = re.compile(r"spec " + SECTION + "|" + SECTION + r"[0-9]|design" + r"\.md")
URL = re.compile(r"https?://[^\s)\"'>]+")
ISSUE = re.compile(r"(?<![\w/.-])(?:moby|[\w.-]+/[\w.-]+)#\d+\b")
DOC_ANCHOR = re.compile(r"\bdocs/([\w./-]+\.md)#([\w-]+)")


def _text_files(roots=SCANNED) -> Iterator[Tuple[str, str]]:
    for top in roots:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            walk = [(ROOT, [], [top])]
        else:
            walk = os.walk(path)
        for dirpath, dirnames, filenames in walk:
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if os.path.getsize(full) > 4 << 20:
                    continue
                with open(full, "rb") as f:
                    raw = f.read()
                if b"\0" in raw:
                    continue
                yield os.path.relpath(full, ROOT), raw.decode("utf-8", "replace")


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md_path: str) -> Set[str]:
    found: Set[str] = set()
    in_code = False
    with open(md_path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            elif not in_code and re.match(r"#{1,6} ", line):
                found.add(slug(line.lstrip("#")))
    return found


def _doc_anchors() -> Dict[str, Set[str]]:
    docs = os.path.join(ROOT, "docs")
    return {name: anchors(os.path.join(docs, name)) for name in sorted(os.listdir(docs)) if name.endswith(".md")}


def _catalogue():
    for name in ("overlaylab.agent.scenario", "overlaylab.agent.scenario"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        importlib.import_module(name.rsplit(".", 1)[0] + ".scenarios")
        return mod.all_scenarios()
    pytest.fail("no scenario catalogue to check")


def names_upstream_source(ref: str, known: Dict[str, Set[str]]) -> bool:
    """A URL, an issue (``moby#N``, ``owner/repo#N``) or an existing docs/ section."""
    docs_ok = [a for d, a in DOC_ANCHOR.findall(ref) if a in known.get(d, set())]
    return bool(URL.search(ref) or ISSUE.search(ref) or docs_ok)


def test_the_slug_follows_github():
    assert slug("Put, Remove, Status") == "put-remove-status"
    assert slug("copyDir quirks") == "copydir-quirks"
    assert slug("The `tar` layer") == "the-tar-layer"


def test_nothing_cites_unshipped_documents():
    hits: List[str] = []
    for rel, text in _text_files():
        for no, line in enumerate(text.splitlines(), 1):
            if UNSHIPPED.search(line):
                hits.append("%s:%d: %s" % (rel, no, line.strip()[:120]))
    assert not hits, "cite an upstream source or docs/ instead:\n" + "\n".join(hits)


def test_the_search_finds_what_it_must():
    # The guard above is only worth something if its pattern catches the old forms.
    for old in ("(spec " + SECTION + "2.3)", "(" + SECTION + "4.1)", "see design" + ".md"):
        assert UNSHIPPED.search(old), old
    assert not UNSHIPPED.search("Debian Policy 5.6.12")


def test_every_docs_anchor_cited_exists():
    known = _doc_anchors()
    assert "reference-behaviour.md" in known
    missing: List[str] = []
    for rel, text in list(_text_files()) + list(_text_files(("docs",))):
        for doc, anchor in DOC_ANCHOR.findall(text):
            if anchor not in known.get(doc, set()):
                missing.append("%s: docs/%s#%s" % (rel, doc, anchor))
    assert not missing, "\n".join(missing)


def test_links_inside_the_docs_resolve():
    docs = os.path.join(ROOT, "docs")
    known = _doc_anchors()
    bad: List[str] = []
    for name in known:
        with open(os.path.join(docs, name), encoding="utf-8") as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"https?://", target):
                continue
            page, _, anchor = target.partition("#")
            page = os.path.basename(page) if page else name
            if page not in known or (anchor and anchor not in known[page]):
                bad.append("%s: (%s)" % (name, target))
    assert not bad, "\n".join(bad)


def test_every_scenario_reference_names_an_upstream_source():
    known = _doc_anchors()
    catalogue = _catalogue()
    assert len(catalogue) >= 28
    bad: List[str] = []
    for sc in catalogue.values():
        ref = sc.reference
        if not names_upstream_source(ref, known):
            bad.append("%s: %s" % (sc.id, ref))
        if UNSHIPPED.search(ref):
            bad.append("%s cites an unshipped document: %s" % (sc.id, ref))
    assert not bad, "\n".join(bad)


def test_the_reference_check_rejects_a_bare_section_number():
    known = _doc_anchors()
    for ref in ("spec 2.3 case A", "docs/reference-behaviour.md" + "#no-such-section", "#17486"):
        assert not names_upstream_source(ref, known), ref
    for ref in ("coreos/bugs#474", "moby#21555", "docs/reference-behaviour.md#create",
                "https://github.com/moby/moby/blob/v1.10.3/daemon/graphdriver/overlay/overlay.go"):
        assert names_upstream_source(ref, known), ref
