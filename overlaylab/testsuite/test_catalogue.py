"""One test per profile x scenario on a testinfra host; outcomes map as in run's JUnit."""
from __future__ import annotations

from overlaylab.testsuite.plugin import cell_properties, report_cell


def test_cell_meets_expectation(lab_cell, record_property):
    for name, value in cell_properties(lab_cell):
        record_property(name, value)
    report_cell(lab_cell)
