"""The bus: how a stream's events reach whoever subscribed. In-process by default."""

from earshot.cluster.bus.memory import ALL, AudioItem, MemoryBus, Subscription

__all__ = ["ALL", "AudioItem", "MemoryBus", "Subscription"]
