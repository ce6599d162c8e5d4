"""The bus: how a stream's events reach whoever subscribed. In-process by default."""

from earshot.bus.memory import MemoryBus, Subscription

__all__ = ["MemoryBus", "Subscription"]
