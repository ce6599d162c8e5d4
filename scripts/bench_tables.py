"""The benchmark tables of docs/benchmarks.md, regenerated from ``benchmarks/results/``.

Each function below reads one results file (the current run of one benchmark; older runs
stay in git history) and returns a Markdown table. ``scripts/docs_regions.py`` puts them
between ``<!-- generated:bench.NAME -->`` markers, and the docs build (docs/hooks.py) does
the same, so the page never shows numbers its results files do not hold.

    python scripts/bench_tables.py            # print every table
    python scripts/bench_tables.py soak       # one
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _load(name: str) -> Any:
    path = RESULTS / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def _table(head: list[str], align: str, rows: list[list[str]]) -> str:
    """``align``: one letter per column, l (left) or r (right)."""
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _n(x: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{unit}"


# -- ingest -------------------------------------------------------------------------------
HOTPATH = "hotpath-cadence.json"
HOTPATH_KINDS = {  # the kinds bench_hotpath.py runs, in the order shown
    "bare": "bare `websockets` discard server (`benchmarks/bare_servers.py`)",
    "starlette": "bare uvicorn + Starlette discard endpoint",
    "none": "**earshot, archive + acks** (`\"processors\": []`)",
    "level": "**earshot defaults** (archive + acks; `level` on demand, nobody watching)",
    "level-named": "earshot, the sender names `level` (`\"processors\": [\"level\"]`: "
                   "every reading made and sent in the acks)",
}


def ingest_vs_bare() -> str:
    summary = next(r for r in _load(HOTPATH) if r.get("summary"))
    rows = []
    for kind, label in HOTPATH_KINDS.items():
        v = summary["kinds"][kind]
        ack = ("—" if v["ack_p50_ms"] is None
               else f"{v['ack_p50_ms']:.1f} / {v['ack_p99_ms']:.1f} ms")
        rows.append([label, _n(v["server_cpu_pct_per_stream"], ".3f", " %"),
                     _n(v["server_ratio"], ".2f"), _n(v["client_cpu_pct_per_stream"], ".3f", " %"),
                     _n(v["client_ratio"], ".2f"), ack, _n(v["rss_mb"], ".0f", " MB")])
    return _table([f"server, N = {summary['streams']}", "server CPU per stream", "x bare",
                   "load client CPU per stream", "x bare", "ack p50 / p99", "RSS"],
                  "lrrrrrr", rows)


COMPAT = "hotpath-compat.json"  # bench_hotpath.py --compat: the same rounds, five kinds
COMPAT_KINDS = {
    "bare": ("native protocol", "bare `websockets` discard server"),
    "none": ("native protocol", "**earshot, archive + acks**"),
    "level": ("native protocol", "**earshot defaults** (archive + acks; `level` on demand, "
              "nobody watching)"),
    "level-named": ("native protocol", "earshot, the sender names `level` (every reading "
                    "made and sent in the acks)"),
    "bare-compat": ("classic snippet", "bare `websockets` discard server"),
    "compat": ("classic snippet", "**earshot defaults** (compatibility mode)"),
    "compat-level": ("classic snippet", "earshot, `?processors=level` (every reading, each "
                     "its own message)"),
}


def ingest_compat() -> str:
    summary = next(r for r in _load(COMPAT) if r.get("summary"))
    rows = []
    for kind, (client, label) in COMPAT_KINDS.items():
        v = summary["kinds"][kind]
        rows.append([client, label, _n(v["server_cpu_pct_per_stream"], ".3f", " %"),
                     _n(v["server_ratio"], ".2f"), _n(v.get("server_ratio_per_round"), ".2f"),
                     _n(v["client_cpu_pct_per_stream"], ".3f", " %"),
                     _n(v["rss_mb"], ".0f", " MB")])
    return _table(["client", f"server, N = {summary['streams']}", "server CPU per stream",
                   "x its bare", "x its bare, per round", "load client CPU per stream", "RSS"],
                  "llrrrrr", rows)


def ingest_capacity() -> str:
    records = _load(HOTPATH)
    summary = next(r for r in records if r.get("summary"))
    level = summary["kinds"]["level"]
    rows = [[str(summary["streams"]),
             f"{summary['streams']}/{summary['streams']}"
             + (", exact" if level["archives_exact"] else ""),
             _n(level["server_cpu_pct_per_stream"], ".3f", " %"),
             f"{level['ack_p50_ms']:.1f} / {level['ack_p99_ms']:.1f} ms",
             "—", _n(level["rss_mb"], ".0f", " MB")]]
    for r in (r for r in records if r.get("capacity")):
        held = f"{r['held']}/{r['streams']}"
        if r["held"] < r["streams"]:
            held += f" ({r['streams'] - r['held']} starts timed out), the {r['held']}"
        held += " exact" if r["archives_exact"] else " NOT exact"
        rows.append([str(r["streams"]), held, _n(r["server_cpu_pct_per_stream"], ".3f", " %"),
                     f"{r['ack_p50_ms']:.0f} / {r['ack_p99_ms']:.0f} ms",
                     _n(r["start_max_ms"] / 1000, ".1f", " s"),
                     _n(r["server_rss_mb"], ".0f", " MB")])
    return _table(["N", "held", "server CPU per stream", "ack p50 / p99", "start max", "RSS"],
                  "rlrrrr", rows)


def bare_capacity() -> str:
    rows = [[str(r["streams"]), f"{r['held']}/{r['streams']}", _n(r["server_cpu_pct"], ".1f", " %"),
             _n(r["server_cpu_pct_per_stream"], ".3f", " %"), _n(r["server_rss_mb"], ".0f", " MB")]
            for r in _load("bare-capacity.jsonl")]
    return _table(["bare `websockets` server, N", "held", "server CPU", "CPU per stream", "RSS"],
                  "rrrrr", rows)


def client_cost() -> str:
    s = next(r for r in _load("client-cadence.json") if r.get("summary"))
    cpu = s["client_cpu_pct_per_stream"]
    return _table([f"{s['streams']} `Publisher`s in one process, sending to", "CPU per stream",
                   "x bare"], "lrr",
                  [["bare `websockets` server", _n(cpu["bare"], ".3f", " %"), "1.00"],
                   ["earshot", _n(cpu["earshot"], ".3f", " %"), _n(s["ratio"], ".2f")]])


def ingest_profile() -> str:
    data = _load("profile-hotpath2-100.summary.json")
    rows = [[name, _n(pct, ".1f")] for name, _samples, pct in data["buckets"] if pct >= 0.5]
    return _table([f"step ({data['samples']} busy samples of the event loop)", "%"], "lr", rows)


# -- processors ---------------------------------------------------------------------------
def processors() -> str:
    rows = []
    for r in _load("processors.json"):
        name = " + ".join(f"`{p}`" for p in r["processors"].split("+"))
        rows.append([name, f"{r['us_per_chunk']:.1f} µs per {r['chunk_ms']} ms",
                     _n(r["cpu_percent_per_stream"], ".2f"), f"≈ {r['streams_per_core']:.0f}"])
    return _table(["processor (48 kHz stream)", "cost", "% of one core per stream",
                   "streams per core"], "lrrr", rows)


def vad_core() -> str:
    by: dict[int, dict[str, Any]] = {}
    for r in _load("vad-batch-core.json"):
        by.setdefault(r["streams"], {})[r["path"]] = r
    rows = [[str(n), f"{p['alone']['us_per_window']:.0f} µs",
             f"{p['batched']['us_per_window']:.0f} µs",
             f"{p['alone']['core_pct_per_stream']:.2f} % → "
             f"{p['batched']['core_pct_per_stream']:.2f} %"]
            for n, p in sorted(by.items())]
    return _table(["streams", "per 32 ms window, one stream at a time", "batched",
                   "% of a core per stream"], "rrrr", rows)


def vad_pipelines() -> str:
    by: dict[tuple[int, float], dict[str, Any]] = {}
    for r in _load("vad-streams.json"):
        by.setdefault((r["streams"], r["busy"]), {})[r["label"]] = r
    rows = []
    for (n, busy), p in sorted(by.items()):
        b, a = p.get("before"), p["after"]
        label = f"{n}" + (f" (loop {busy:.0%} busy)" if busy else "")
        kept = (f"{a['wall_s']:.1f} s for {a['seconds']:g} s, "
                f"VAD {a['vad_lag_s_at_end']:.1f} s behind")
        if b is None:
            rows.append([label, "—", f"{a['cpu_pct_per_stream']:.2f} %", "—",
                         f"— / {a['loop_cpu_pct_per_stream']:.2f} %", "—", kept])
            continue
        rows.append([label, f"{b['cpu_pct_per_stream']:.2f} %", f"{a['cpu_pct_per_stream']:.2f} %",
                     f"{b['cpu_pct_per_stream'] / a['cpu_pct_per_stream']:.1f}x",
                     f"{b['loop_cpu_pct_per_stream']:.2f} / {a['loop_cpu_pct_per_stream']:.2f} %",
                     f"{b['wall_s']:.1f} s for {b['seconds']:g} s", kept])
    return _table(["streams", "CPU per stream, before", "after", "ratio",
                   "of which event loop, before / after", "fed in (before)", "fed in (after)"],
                  "rrrrrll", rows)


def level_vad_servers() -> str:
    rows = []
    for r in sorted(_load("level-vad-cadence.jsonl"),
                    key=lambda r: (r["streams"], "server_src" not in r["code"])):
        code = "before" if "server_src" in r["code"] else "now"  # --server-src: older code
        lag = r.get("processor_lag_max_s")
        vad = ("not recorded" if lag is None
               else ("kept up" if lag == 0 else f"up to {lag:.1f} s behind")
               + f", {r['processor_dropped_s']:g} s dropped")
        rows.append([str(r["streams"]), code, f"{r['held']}/{r['streams']}",
                     _n(r["server_cpu_pct"], ".0f"),
                     f"{r['ack_p50_ms']:.1f} / {r['ack_p99_ms']:.0f}",
                     _n(r["server_rss_mb"], ".0f"),
                     vad, "yes" if r["archives_exact"] else "NO"])
    return _table(["streams", "code", "held", "server CPU %", "ack p50 / p99 ms", "RSS MB",
                   "VAD", "archives exact"], "rlrrrrll", rows)


def vad_profile() -> str:
    data = _load("profile-vad-after-100.vad.json")
    rows = [[f"`{name}`", _n(pct, ".1f")] for name, _n_, pct in data["vad_off_loop_top"]
            if pct >= 0.5]
    return _table([f"off the loop: {data['vad_off_loop_samples']} samples of the VAD batcher", "%"],
                  "lr", rows)


# -- audio --------------------------------------------------------------------------------
def relay_fanout() -> str:
    by: dict[int, dict[str, Any]] = {}
    for r in _load("relay.jsonl"):
        if "codec" in r:
            by.setdefault(r["listeners"], {})[r["codec"]] = r
    rows = [[str(n), f"{c['s16']['held']}/{n}", _n(c["s16"]["server_cpu_percent"], ".1f", " %"),
             f"{c['opus']['held']}/{n}", _n(c["opus"]["server_cpu_percent"], ".1f", " %"),
             f"{c['s16']['bytes_per_second']:.0f} / {c['opus']['bytes_per_second']:.0f}"]
            for n, c in sorted(by.items())]
    return _table(["listeners", "PCM (s16) held", "server CPU", "Opus held", "server CPU",
                   "bytes/s per listener (PCM / Opus)"], "rrrrrr", rows)


def relay_jitter() -> str:
    rows = []
    for r in _load("relay.jsonl"):
        if "stalls" in r:
            what = ("0-60 ms per packet, plus a 300 ms stall every 3 s" if r["stalls"]
                    else "0-60 ms per packet")
            rows.append([what, f"{r['jitter_delay_p50_ms']:.0f} ms",
                         f"{r['jitter_delay_p99_ms']:.0f} ms", f"{r['concealed_ms']:.0f} ms"])
    return _table(["injected network jitter", "buffered delay p50", "p99", "concealed"],
                  "lrrr", rows)


def cleanup() -> str:
    rows = [[f"`{r['filters']}`", f"{r['rate'] // 1000} kHz", _n(r["median_us"]), _n(r["p90_us"]),
             _n(r["core_share_pct"], ".2f", " %"), f"{r['latency_ms']:g} ms"]
            for r in _load("cleanup.json")["results"]]
    return _table(["filters", "rate", "median µs", "p90 µs", "one core", "latency"],
                  "lrrrrr", rows)


def spool_capture() -> str:
    rows = []
    for r in _load("spool.json")["capture"]:
        stream = f"{r['rate'] // 1000} kHz {r['format']} mono"
        disk = "—" if not r["disk_bytes_per_hour"] else f"{r['disk_bytes_per_hour'] / 1e6:.1f} MB"
        where = r["policy"] if "memory" in r["policy"] else f"spool, `{r['policy']}`"
        where += " (default)" if r["policy"] == "interval" else ""
        rows.append([stream, where, f"{r['cpu_us_per_block']:.1f} µs",
                     f"{r['ratio_to_memory']:.1f}", f"{r['cpu_us_per_block'] / 200:.3f}", disk])
    return _table(["stream", "where", "CPU per 20 ms block", "x memory", "% of a core per stream",
                   "disk per hour of audio"], "llrrrr", rows)


def spool_delivery() -> str:
    d = _load("spool.json")["delivery"]
    return _table([f"{d['audio_seconds'] / 60:g} min of {d['rate'] // 1000} kHz {d['format']}",
                   "seconds of audio delivered per second", "wall time"], "lrr",
                  [["`earshot send file.wav` (baseline)", f"{d['send_x_realtime']:.0f} x real time",
                    f"{d['send_wall_s']:.1f} s"],
                   ["`earshot spool DIR --flush`",
                    f"{d['flush_x_realtime']:.0f} x real time "
                    f"({d['ratio_flush_to_send']:.1f} x send)", f"{d['flush_wall_s']:.1f} s"]])


# -- storage ------------------------------------------------------------------------------
def metadata() -> str:
    last = _load("metadata.jsonl")[-1]
    stores = ["sqlite", "postgres", "postgres-nocheck", "postgres-async-commit"]
    rows = [[c["call"]] + [f"{c[s]['p50_us']:.0f} / {c[s]['p99_us']:.0f}" for s in stores]
            for c in last["calls"]]
    return _table(["call (µs, p50 / p99)", "SQLite", "PostgreSQL (as shipped)",
                   "PostgreSQL, no pool check", "PostgreSQL, `synchronous_commit=off`"],
                  "lrrrr", rows) + (f"\n\nRun {last['when']}, {last['rounds']} rounds, "
                                    f"load average {last['load_avg_1min']:.0f}.")


def parts() -> str:
    d = _load("parts.json")
    rows = [[f"{float(size):g}" + (" (one file)" if float(size) == 0 else ""), str(w["parts"]),
             f"{w['us_per_batch']:.0f}", _n(d["read_mb_s"].get(size), ".0f")]
            for size, w in d["write"].items()]
    return _table(["`--archive-part`", "parts",
                   f"µs per {d['batch_ms']} ms batch (`Archive.append`)",
                   "whole-stream read (`iter_frames`), MB/s"], "rrrr", rows)


# -- cluster, bridges ---------------------------------------------------------------------
def cluster_latency() -> str:
    rows = []
    for r in (r for r in _load("cluster.jsonl") if r["bench"] == "latency"):
        cpu = r["cpu_pct_per_stream"]
        redis = r["mode"] == "redis"
        rows.append(["Redis Streams" if redis else "in-process",
                     f"{r['p50_ms']:.1f} / {r['p99_ms']:.0f} ms", f"{cpu['gateway']:.2f} %",
                     f"{cpu['worker']:.2f} %" if redis else "—",
                     f"{cpu['redis']:.2f} %" if redis else "—",
                     f"{r['redis_mb_per_stream_minute']:.2f} MB" if redis else "—"])
    return _table(["bus (100 streams, 16 kHz, `level`)", "level latency p50 / p99",
                   "CPU per stream: gateway", "worker", "redis-server",
                   "Redis memory per stream-minute"], "lrrrrr", rows)


def cluster_capacity() -> str:
    records = _load("cluster.jsonl")
    rows = []
    for best in (r for r in records if r["bench"] == "capacity-best"):
        runs = [r for r in records if r["bench"] == "capacity" and r["config"] == best["config"]]
        at100 = next((r for r in runs if r["streams"] == 100), None)
        nxt = next((r for r in runs if r["streams"] > best["held"]), None)
        rows.append([best["config"], str(best["held"]),
                     f"{nxt['held']} of {nxt['streams']} held" if nxt else "—",
                     _n(at100 and at100["gateway_cpu_pct_per_stream"], ".2f", " %")])
    return _table(["configuration", "highest N held (all exact)", "at the next step",
                   "gateway CPU per stream at 100"], "lrlr", rows)


def mqtt() -> str:
    records = _load("mqtt.jsonl")
    without = {r["streams"]: r for r in records if r.get("mqtt") is False}
    rows = []
    for r in (r for r in records if r.get("mqtt") is True):
        base = without[r["streams"]]
        cost = (r["server_cpu_per_s"] - base["server_cpu_per_s"]) / r["received_per_s"] * 1e6
        rows.append([str(r["streams"]), f"{r['received_per_s']:.0f}",
                     f"{r['events_received']} of {r['events_published']}", str(r["events_dropped"]),
                     f"{r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} ms",
                     f"{base['server_cpu_per_s']:.3f} → {r['server_cpu_per_s']:.3f} cores",
                     f"{cost:.0f} µs"])
    table = _table(["streams", "level events/s received", "of published", "dropped",
                    "latency p50 / p99", "server CPU without → with `--mqtt`",
                    "bridge cost per event"], "rrrrlll", rows)
    burst = next((r for r in records if "burst" in r), None)
    if burst:
        table += (f"\n\nFed as fast as the event loop goes (`--burst {burst['burst']}`), one "
                  f"bridge handed {burst['handed_per_s']} events/s to paho and the subscriber "
                  f"received {burst['received_per_s']}/s, at "
                  f"{burst['process_cpu_us_per_event']:.0f} µs of CPU per event, "
                  f"{burst['dropped']} dropped.")
    return table


# -- hardening ----------------------------------------------------------------------------
def guard() -> str:
    g = _load("guard.json")
    m = g["per_message_ns"]
    return _table(["what", "cost"], "ll", [
        ["each message the server sends through ASGI, via the Guard middleware's send wrapper",
         f"+{m['guard'] - m['bare']} ns ({m['bare']} → {m['guard']} ns against the same app "
         "unwrapped, side by side)"],
        ["each handshake: Host, Origin, both token buckets", f"{g['per_handshake_us']:.1f} µs"],
        ["each log line through the redaction filter",
         f"{g['per_log_line_us_plain']:.1f} µs without a credential, "
         f"{g['per_log_line_us_token']:.1f} µs with `?token=`"]])


SOAK = "soak-200x10min-cadence.json"


def soak() -> str:
    r = _load(SOAK)
    a = r["archives"]
    return _table(["run", "streams", "processors", "minutes", "held",
                   "RSS at 1 min → end (growth)", "fds after 1 min", "ack p99 ms per minute",
                   "dropped s", "archives exact"], "lrlrrllllr", [[
        r["label"], str(r["streams"]), "+".join(r["processors"]), f"{r['minutes']:g}",
        f"{r['held']}/{r['streams']}",
        f"{r['rss']['baseline_mb']} → {r['rss']['final_mb']} MB ({r['rss']['growth_pct']:+.1f} %)",
        f"{r['fds']['min_after_1min']}-{r['fds']['max_after_1min']}",
        " / ".join(str(round(m["ack_p99_ms"])) for m in r["per_minute"]),
        f"{r['processor_dropped_s']:g}", f"{'yes' if a['all_exact'] else 'no'} "
                                         f"({a['exact']}/{a['checked']})"]])


def admission() -> str:
    rows = []
    for r in sorted(_load("admission.jsonl"), key=lambda r: r["machine"].get("shared", False)):
        p = r.get("at_peak") or {}
        m = r["machine"]
        where = "shared machine, nice 19" if m.get("shared") else "quiet machine"
        rows.append([f"{r['attempted']} over {r['ramp_s']:g} s (+{r['hold_s']:g} s held), {where}",
                     "+".join(r["processors"]), f"{r['max_cpu']:g}", f"**{r['admitted']}**",
                     str(r["refused"]), str(r["degraded"]), f"{r['worst_stream_ack_p99_ms']:.0f}",
                     f"{_n(p.get('loop_cpu'), '.3f')} / {_n(p.get('process_cpu'), '.3f')}",
                     "yes" if r["archives_exact"] else "no",
                     f"{(m.get('cpu_pressure_before') or {}).get('avg60', '?')} %"])
    return _table(["attempted over ramp", "processors", "--max-cpu", "admitted", "refused",
                   "degraded", "worst ack p99 ms", "loop / process CPU at peak (cores)",
                   "archives exact", "CPU pressure (PSI avg60)"], "llrrrrrlll", rows)



# -- speech-to-text: speaking streams per box ------------------------------------------------
SPEAKING = {  # bench_speaking.py --json files, in the order shown
    "speaking-pocketsphinx.json": "pocketsphinx, two passes (default)",
    "speaking-pocketsphinx-incremental.json": "pocketsphinx, `--asr-final incremental`",
    "speaking-whisper-batch8.json": "tiny Whisper, `--asr-batch 8`",
    "speaking-whisper-batch1.json": "tiny Whisper, `--asr-batch 1`",
}


def speaking() -> str:
    rows = []
    for name, label in SPEAKING.items():
        run = _load(name)
        for r in run["rows"]:
            per = r.get("cpu_per_stream", r["server_cpu_cores"] / r["streams"])
            rows.append([label, str(r["streams"]), "yes" if r["held"] else "no",
                         f"{r['final_p50_s']:.2f} / {r['final_p95_s']:.2f} / "
                         f"{r['final_max_s']:.2f}",
                         str(r["finals_missing"]),
                         f"{r['interims']} ({r['interims_skipped']})", str(r["lag_events"]),
                         str(r["dropped_events"]),
                         f"{r['server_cpu_cores']:.2f} ({per:.3f})",
                         f"{r['load_after']:.1f}"])
        rows.append([f"{label}: highest N held", f"**{run['highest_held'] or 'none'}**",
                     "", "", "", "", "", "", "", f"run {run.get('date', '?')}"])
    return _table(["engine", "N", "held", "final p50 / p95 / max s", "missing",
                   "interims (skipped)", "lag events", "dropped",
                   "server CPU cores (per stream)", "load"], "lrlrrrrrrr", rows)

TABLES: dict[str, Callable[[], str]] = {
    "ingest-vs-bare": ingest_vs_bare,
    "ingest-compat": ingest_compat,
    "ingest-capacity": ingest_capacity,
    "bare-capacity": bare_capacity,
    "client": client_cost,
    "ingest-profile": ingest_profile,
    "processors": processors,
    "vad-core": vad_core,
    "vad-pipelines": vad_pipelines,
    "level-vad-servers": level_vad_servers,
    "vad-profile": vad_profile,
    "relay-fanout": relay_fanout,
    "relay-jitter": relay_jitter,
    "cleanup": cleanup,
    "spool-capture": spool_capture,
    "spool-delivery": spool_delivery,
    "metadata": metadata,
    "parts": parts,
    "cluster-latency": cluster_latency,
    "cluster-capacity": cluster_capacity,
    "mqtt": mqtt,
    "guard": guard,
    "soak": soak,
    "admission": admission,
    "speaking": speaking,
}


if __name__ == "__main__":
    for name in sys.argv[1:] or list(TABLES):
        print(f"<!-- {name} -->\n{TABLES[name]()}\n")
