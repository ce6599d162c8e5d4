"""Deprecated alias of :mod:`earshot.client.jitter` (moved in 0.2; this name goes in 0.3)."""

import warnings

from earshot.client.jitter import *  # noqa: F403
from earshot.client.jitter import __all__  # noqa: F401

warnings.warn("earshot.jitter moved to earshot.client.jitter; import it from there "
              "(the old name goes in the next release)", DeprecationWarning, stacklevel=2)
