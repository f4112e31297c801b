"""Where the project is: computed here once (source checkout or editable install).

``PACKAGE_DIR`` is the ``overlaylab`` package, ``PROJECT_ROOT`` the directory holding it (the
repository: ``vms/``, ``reports/``); targets that share the host's files put it on PYTHONPATH.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
