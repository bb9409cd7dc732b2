"""``python -m taskgate_worker MODULE:ATTR`` (see :mod:`taskgate_worker.cli`)."""

import sys

from .cli import main

sys.exit(main())
