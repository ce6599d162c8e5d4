"""Deprecated alias of :mod:`earshot.client.listen` (moved in 0.2; this name goes in 0.3)."""

import warnings

from earshot.client.listen import *  # noqa: F403
from earshot.client.listen import __all__  # noqa: F401

warnings.warn("earshot.listen moved to earshot.client.listen; import it from there "
              "(the old name goes in the next release)", DeprecationWarning, stacklevel=2)
