"""Prometheus metrics, on a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from earshot.asr.scheduler import JobResult
    from earshot.cluster.bus.redis import RedisStreamsBus


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.streams_active = Gauge("earshot_streams_active", "Live streams", registry=r)
        self.streams_started = Counter(
            "earshot_streams_started", "Streams started or resumed", ["kind"], registry=r
        )
        self.frames_in = Counter(
            "earshot_frames_in", "Sample frames written to archives", registry=r
        )
        self.bytes_in = Counter("earshot_bytes_in", "Audio bytes received", registry=r)
        self.acks = Counter("earshot_acks", "Acks sent", registry=r)
        self.errors = Counter("earshot_errors", "Error events sent, by code", ["code"], registry=r)
        self.warnings = Counter(
            "earshot_warnings", "Warning events sent, by code", ["code"], registry=r
        )
        self.samples_fixed = Counter(
            "earshot_samples_fixed",
            "Float samples fixed on ingest (non_finite → 0, clipped → ±1)",
            ["kind"],
            registry=r,
        )
        self.processor_lag = Histogram(
            "earshot_processor_lag_seconds", "Processor lag reports, in seconds of audio",
            ["processor"], buckets=(0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.processor_dropped = Counter(
            "earshot_processor_dropped_seconds", "Audio skipped by lagging processors",
            ["processor"], registry=r)
        self.outbox_dropped = Counter(
            "earshot_outbox_dropped", "Messages dropped for clients that do not read",
            registry=r)
        self.asr_wait = Histogram(
            "earshot_asr_queue_wait_seconds", "Speech-to-text jobs: time in the queue",
            ["kind"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=r)
        self.asr_infer = Histogram(
            "earshot_asr_inference_seconds", "Speech-to-text jobs: decoding time",
            ["kind"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=r)
        self.asr_skipped = Counter(
            "earshot_asr_skipped_interims", "Interim decodes skipped as stale", registry=r)
        self.ack_latency = LoopHistogram(
            "earshot_ack_latency_seconds",
            "From receipt of the newest audio an ack covers to the ack being sent",
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
        r.register(self.ack_latency)
        self.streams_refused = Counter(
            "earshot_streams_refused", "New publishers refused at the door, by reason "
            "(full, overloaded, draining)", ["reason"], registry=r)
        self.admission_state = Gauge(
            "earshot_admission_state", "1 for the admission guard's current state "
            "(ok, full, overloaded, draining)", ["state"], registry=r)
        self.loop_lag = Gauge("earshot_loop_lag_seconds",
                              "Event-loop lag, smoothed over about 2 s", registry=r)
        self.ack_interval = Gauge("earshot_ack_interval_seconds", "Seconds of audio per "
                                  "ack batch now (stretches under load up to "
                                  "--ack-interval-max)", registry=r)
        self.ack_latency_recent = Gauge("earshot_ack_latency_recent_seconds",
                                        "Ack latency, smoothed over about 2 s", registry=r)
        self.storage_free = Gauge("earshot_storage_free_bytes",
                                  "Free space on the data directory's filesystem", registry=r)
        self.storage_state = Gauge("earshot_storage_state", "1 for the storage state "
                                   "(ok, low: below --min-free-space, full)", ["state"],
                                   registry=r)
        self.max_streams = Gauge("earshot_max_streams", "--max-streams (0: no limit, "
                                 "-1: auto, by the measured headroom)", registry=r)
        # --max-streams auto, --max-subscribers, REST limits (admission.py, guard.py)
        self.loop_cpu = Gauge("earshot_loop_cpu_cores", "CPU of the event-loop thread, "
                              "smoothed over about 2 s (cores)", registry=r)
        self.loop_wait = Gauge("earshot_loop_wait_cores", "Time the event-loop thread "
                               "waited for a CPU (runnable, not running), smoothed (cores)",
                               registry=r)
        self.process_cpu = Gauge("earshot_process_cpu_cores", "CPU of the gateway process, "
                                 "smoothed over about 2 s (cores)", registry=r)
        self.subscribers = Gauge("earshot_subscribers_active", "Live /ws/subscribe "
                                 "connections", registry=r)
        self.max_subscribers = Gauge("earshot_max_subscribers", "--max-subscribers "
                                     "(0: no limit)", registry=r)
        self.subscribers_refused = Counter("earshot_subscribers_refused", "Subscribers "
                                           "refused past --max-subscribers", registry=r)
        self.rest_in_flight = Gauge("earshot_rest_in_flight", "REST requests being "
                                    "served", registry=r)
        self.rest_refused = Counter("earshot_rest_refused", "REST requests refused (429), "
                                    "by limit (rate, concurrency, per_client; send_timeout: "
                                    "abandoned)", ["limit"], registry=r)

    def observe_asr(self, result: JobResult, skipped: bool) -> None:
        """Scheduler hook (called on its worker threads; prometheus metrics are thread-safe)."""
        if skipped:
            self.asr_skipped.inc()
            return
        kind = ("final" if result.request.final else
                "speculative" if result.request.speculative else "interim")
        self.asr_wait.labels(kind).observe(result.wait)
        self.asr_infer.labels(kind).observe(result.infer)


class LoopHistogram(Collector):
    """A Prometheus histogram observed by the event loop alone, once per ack of every
    stream: a bisect and a list increment (``prometheus_client.Histogram`` takes a lock
    per observation). Scrapes (any thread) read a copy of the counts."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [float(b) for b in buckets]
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        counts, total = list(self.counts), self.sum
        buckets, running = [], 0
        for bound, n in zip([*self.bounds, float("inf")], counts, strict=True):
            running += n
            buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=total)


class BusCollector(Collector):
    """The Redis bus as Prometheus sees it, from what the bus last read (every 1.25 s):
    no Redis call at scrape time."""

    def __init__(self, bus: RedisStreamsBus, seconds_per_entry: Callable[[], float]) -> None:
        self.bus = bus
        self.seconds_per_entry = seconds_per_entry  # one log entry is one ack batch, now

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.bus.snapshot()
        yield GaugeMetricFamily("earshot_bus_up", "1 when Redis answers", value=int(s.up))
        yield CounterMetricFamily("earshot_bus_errors", "Bus operations that failed",
                                  value=s.errors)
        yield GaugeMetricFamily("earshot_bus_backlog_entries",
                                "Entries waiting to go onto Redis", value=s.backlog_entries)
        yield CounterMetricFamily("earshot_bus_dropped_entries",
                                  "Entries dropped from a full backlog",
                                  value=s.dropped_entries)
        lag = GaugeMetricFamily("earshot_bus_group_lag_entries",
                                "Log entries not yet read by a processor kind's group "
                                "(one entry is one ack batch)", labels=["processor"])
        pending = GaugeMetricFamily("earshot_bus_group_pending_entries",
                                    "Log entries read but not yet acknowledged",
                                    labels=["processor"])
        behind = GaugeMetricFamily("earshot_bus_group_lag_seconds",
                                   "How far a processor kind is behind the log, in seconds "
                                   "of audio (unread plus unacknowledged entries)",
                                   labels=["processor"])
        per_entry = self.seconds_per_entry()
        for kind, g in sorted(s.groups.items()):
            lag.add_metric([kind], g["lag"])
            pending.add_metric([kind], g["pending"])
            behind.add_metric([kind], (g["lag"] + g["pending"]) * per_entry)
        yield lag
        yield pending
        yield behind
        takeovers = CounterMetricFamily("earshot_bus_takeovers",
                                        "Partitions taken over from a worker that stopped",
                                        labels=["processor"])
        for name, n in sorted(s.counters.items()):
            if name.startswith("takeovers:"):
                takeovers.add_metric([name.split(":", 1)[1]], n)
        yield takeovers
        yield GaugeMetricFamily("earshot_redis_used_memory_bytes", "Redis used_memory",
                                value=s.used_memory)
