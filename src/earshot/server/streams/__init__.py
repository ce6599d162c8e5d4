"""Live streams: the hub (registry and life cycle), the batch path (where a byte becomes a
sample and an ack), each stream's writer (archive and acks), admission, the ack cadence,
free space, relay, voice cleanup, drains and restarts."""
