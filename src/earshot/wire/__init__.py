"""Sans-I/O protocol cores shared by the server and the clients: the ingest protocol
(:mod:`~earshot.wire.ingest`) and every error and close code (:mod:`~earshot.wire.codes`).
No sockets, no asyncio: bytes and text in, outputs out."""
