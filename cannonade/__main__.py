"""``python -m cannonade`` = the ``cannonade`` command."""

import sys

from cannonade.cli import main

sys.exit(main())
