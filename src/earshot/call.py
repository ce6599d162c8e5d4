"""Calls from Python: ``from earshot.call import Call`` (see :mod:`earshot.client.call`)."""

from earshot.client.call import MIX_RATE, Call

__all__ = ["MIX_RATE", "Call"]
