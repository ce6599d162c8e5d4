"""The gateway: the ingest lane (:mod:`~earshot.server.ingest`), the live streams and
their life cycle (:mod:`~earshot.server.streams`), where events go
(:mod:`~earshot.server.events`), and the HTTP application (:mod:`~earshot.server.http`)."""
