"""``python -m nnqmc``: the command line, as the ``nnqmc`` command runs it."""

import sys

from .cli import main

sys.exit(main())
