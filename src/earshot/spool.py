"""Deprecated alias of :mod:`earshot.client.spool` (moved in 0.2; this name goes in 0.3)."""

import warnings

from earshot.client.spool import *  # noqa: F403
from earshot.client.spool import __all__  # noqa: F401

warnings.warn("earshot.spool moved to earshot.client.spool; import it from there "
              "(the old name goes in the next release)", DeprecationWarning, stacklevel=2)
