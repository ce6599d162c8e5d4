"""``python -m earshot.cli``: the ``earshot`` command."""

import sys

from earshot.cli import main

sys.exit(main())
