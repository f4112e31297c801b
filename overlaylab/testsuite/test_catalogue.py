from __future__ import annotations


def test_cell_meets_expectation(lab_cell):
    expected = "%s (%s)" % (lab_cell["expected"], lab_cell.get("expected_why") or "default")
    assert lab_cell["outcome"] == lab_cell["expected"], (
        "got %s, expected %s: %s\nevidence: %s" % (lab_cell["outcome"], expected, lab_cell.get("error"),
                                                    lab_cell.get("evidence")))
