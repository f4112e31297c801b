"""``python -m overlaylab.agent``: the agent's command line (see :mod:`overlaylab.agent.main`)."""
import sys

from .main import main

sys.exit(main())
