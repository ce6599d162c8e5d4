"""The ingest WebSocket: the session (the thin asyncio layer around
:class:`earshot.wire.ingest.IngestConnection`) and the direct lane inside uvicorn's
``data_received``."""
