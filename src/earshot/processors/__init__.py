"""Stream processors: the API (:class:`Processor`, :class:`Chunk`) and the built-ins."""

from earshot.processors.base import Chunk, Event, Processor, StreamInfo

__all__ = ["Chunk", "Event", "Processor", "StreamInfo"]
