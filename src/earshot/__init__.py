"""earshot: a self-hosted real-time audio server."""

from earshot.errors import EarshotError

__all__ = ["EarshotError", "__version__"]
__version__ = "0.1.0"
