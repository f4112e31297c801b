"""The graph driver fixtures for the two files still here (graphtest.py, test_graphtest.py).

They live in tests/graphdriver/conftest.py; this directory only waits for those two files to
move there too, after which it goes (see tests/test_layout.py's exceptions).
"""
from tests.graphdriver.conftest import driver, in_process_apply, make_driver  # noqa: F401  (fixtures)
