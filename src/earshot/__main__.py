"""``python -m earshot``: the ``earshot`` command."""

import sys

from earshot.cli import main

sys.exit(main())
