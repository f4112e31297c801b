"""WCAG AA for the HTML report: every outcome class's text on its background is >= 4.5:1, as
expected (pale tint, dark text) and not as expected (solid, white text); and the two looks of
one outcome differ, so "failed as expected" never reads as a new regression."""
from __future__ import annotations

import re

import pytest

from overlaylab.reports.html import CSS
from overlaylab.reports.model import OUTCOMES

AA = 4.5


def luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    chans = [int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in chans]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_contrast_formula_matches_known_values():
    assert contrast("#ffffff", "#000000") == pytest.approx(21.0)
    assert contrast("#ffffff", "#e08a1e") == pytest.approx(2.7, abs=0.05)   # the old REFUSED fill


VARS = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{3,6})", CSS))


def _resolve(value: str) -> str:
    value = value.strip().replace("!important", "").strip()
    m = re.fullmatch(r"var\(--([a-z-]+)\)", value)
    return VARS[m.group(1)] if m else value


def rule(selector: str) -> dict:
    """background and color of the CSS rule whose selector is exactly ``selector``."""
    m = re.search(r"(?:^|[\s}])%s\s*\{([^}]*)\}" % re.escape(selector), CSS)
    assert m, selector
    decl = dict((k.strip(), v.strip()) for k, v in (d.split(":", 1) for d in m.group(1).split(";") if ":" in d))
    return {k: _resolve(decl[k]) for k in ("background", "color") if k in decl}


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_outcome_classes_meet_wcag_aa(outcome):
    met, unmet = rule(".o-%s" % outcome), rule(".unmet.o-%s" % outcome)
    for look, r in (("as expected", met), ("not as expected", unmet)):
        ratio = contrast(r["color"], r["background"])
        assert ratio >= AA, "%s %s: %s on %s is %.2f:1" % (outcome, look, r["color"], r["background"], ratio)
    assert met["background"] != unmet["background"] and met["color"] != unmet["color"]
    # pale vs solid: a glance tells them apart (the fills' own contrast is large)
    assert contrast(met["background"], unmet["background"]) >= 3.0, outcome


def test_other_text_pairs_meet_wcag_aa():
    pairs = [(VARS["fg"], VARS["bg"]), (VARS["muted"], VARS["bg"]), (VARS["muted"], "#ffffff"),
             ("#5b6570", "#f2f4f6"),                      # td.none
             ("#1d232a", VARS["flaky"]), ("#1d232a", "#c9a400"),   # both FLAKY stripes
             ("#0a58ca", "#ffffff"), ("#0a58ca", VARS["bg"]),   # links
             (VARS["muted"], "#dfe5eb"), (VARS["fg"], "#eef1f4")]   # release in th.kernel, headers
    for fg, bg in pairs:
        assert contrast(fg, bg) >= AA, (fg, bg, contrast(fg, bg))
    assert rule("td.none") == {"background": "#f2f4f6", "color": "#5b6570"}
