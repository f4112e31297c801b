"""``python -m overlaylab.agent``: the agent's command line (see :mod:`overlaylab.agent.main`)."""
import sys

from .bytecode import install

install()  # before the imports: a read-only tree (a qemu guest's) would compile them at every start

from .main import main  # noqa: E402

sys.exit(main())
