"""Deprecated alias of :mod:`earshot.client.sources` (moved in 0.2; this name goes in 0.3)."""

import warnings

from earshot.client.sources import *  # noqa: F403
from earshot.client.sources import __all__  # noqa: F401

warnings.warn("earshot.sources moved to earshot.client.sources; import it from there "
              "(the old name goes in the next release)", DeprecationWarning, stacklevel=2)
