"""Scale-out: the bus (in-process or Redis Streams), the Redis log workers with their
partition leases (:mod:`~earshot.cluster.consumer`), remote WebSocket workers
(:mod:`~earshot.cluster.worker`) and the recognition of replayed events
(:mod:`~earshot.cluster.dedup`)."""
