"""Deprecated alias of :mod:`earshot.client.transport` (moved in 0.2; this name goes in 0.3)."""

import warnings

from earshot.client.transport import *  # noqa: F403
from earshot.client.transport import __all__  # noqa: F401

warnings.warn("earshot.transport moved to earshot.client.transport; import it from there "
              "(the old name goes in the next release)", DeprecationWarning, stacklevel=2)
