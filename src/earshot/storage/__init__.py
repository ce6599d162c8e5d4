"""Durable storage: per-stream archives and the metadata store."""
