"""Adapters from other ecosystems onto the ingest and event layer, one module each (MQTT)."""
