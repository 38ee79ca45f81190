"""``python -m insightron_watchd.cli``: the command line, as the console script runs it."""

import sys

from .main import main

sys.exit(main())
