"""``python -m cannonade`` = the ``cannonade`` command."""

import sys

from .cli import main

sys.exit(main())
