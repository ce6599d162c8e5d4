#!/usr/bin/env python3
"""How many real-time publishers ``earshot serve --max-streams auto`` admits, and whether any
admitted stream degraded.

Starts its own server with ``--max-streams auto`` (and the default ``--max-loop-lag 0.5``,
``--max-ack-latency 1``, ``--max-cpu``), then ramps ``--streams`` real-time publishers
(``ingest_load.py``'s raw client) evenly over ``--ramp`` seconds; each sends ``--ramp`` +
``--hold`` seconds of audio, so every admitted stream is live at once for the last
``--hold`` seconds of the ramp's end. Newcomers the server refuses (``server_full``, 1013)
are counted and not retried.

An admitted stream is **degraded** when any of: its ack latency p99 (client side) is over
``--ack-p99-ms`` (250), either real-time ratio (audio sent by the deadline, audio acked by the
deadline) is under ``--held-ratio`` (0.98), a processor fell behind (a warning, or
``earshot_processor_dropped_seconds`` on ``/metrics``), it failed after being admitted, or its
archive (read with soundfile) is not exactly its source. The result is the number admitted,
and whether none of them degraded. ``/healthz``'s headroom figures are sampled every 2 s.

Results are appended to ``benchmarks/results/admission.jsonl``::

    nice -n 10 python benchmarks/bench_admission.py --streams 300 --ramp 50 --hold 20
    python benchmarks/bench_admission.py --table
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_load as il  # the client machinery
import soak  # its fleet, archive check and metrics helpers

RESULTS = Path(__file__).resolve().parent / "results" / "admission.jsonl"


def run(args: argparse.Namespace) -> dict[str, Any]:
    il.raise_nofile()
    # the guard on (ingest_load's server turns it off for raw capacity), auto admission
    os.environ["EARSHOT_MAX_STREAMS"] = "auto"
    os.environ["EARSHOT_MAX_CPU"] = str(args.max_cpu)
    os.environ["EARSHOT_MAX_LOOP_LAG"] = "0.5"
    os.environ["EARSHOT_MAX_ACK_LATENCY"] = "1.0"
    procs = [p for p in args.processors.split(",") if p] if args.processors != "none" else []
    loadavg_before, psi_before = os.getloadavg(), soak.cpu_pressure()
    server = il.Server(soak.server_args())
    try:
        server.wait_up()
        assert server.data_dir is not None
        seconds = args.ramp + args.hold
        cfg = soak.fleet_config(args, server.url, args.streams, seconds, args.ramp, procs)
        fleet = soak.Fleet(cfg, args.procs or il.default_procs(args.streams, "raw"))
        samples: list[dict[str, Any]] = []
        next_sample = fleet.t_go
        end_of_ramp_hold = fleet.t_go + seconds - 0.5
        while not fleet.poll(next_sample - time.monotonic()):
            now = time.monotonic()
            if now < next_sample:
                continue
            next_sample = max(next_sample + 2.0, now + 2.0 / 2)  # no catch-up burst
            if now > end_of_ramp_hold:
                continue
            try:
                adm = json.loads(server.http_get("/healthz")[1])["admission"]
            except (OSError, ValueError, KeyError):
                continue
            head = adm.get("headroom") or {}
            samples.append({"t": round(now - fleet.t_go, 1), "state": adm["state"],
                            "held": adm["held"], "loop_lag": adm["loop_lag"],
                            "ack_latency": adm["ack_latency"],
                            "loop_cpu": head.get("loop_cpu"),
                            "loop_wait": head.get("loop_wait"),
                            "process_cpu": head.get("process_cpu"),
                            "per_stream_cpu": head.get("per_stream_cpu")})
            s = samples[-1]
            print(f"  t={s['t']:5.0f}s held={s['held']:4d} {s['state']:10s} "
                  f"loop_cpu={s['loop_cpu']} loop_wait={s['loop_wait']} "
                  f"process_cpu={s['process_cpu']} "
                  f"lag={s['loop_lag']} ack={s['ack_latency']}", flush=True)
        results = fleet.results
        soak.unpack_acks(results)
        try:
            mtext = server.http_get("/metrics")[1].decode()
        except OSError:
            mtext = ""
        arch = soak.check_exact(server.data_dir, results, cfg)
        not_exact = {b["stream"] for b in arch["not_exact"]}
        refused = [s for s in results if (s["failure"] or "").startswith("error:server_full")]
        admitted = [s for s in results if s["stream"]]
        degraded = []
        for s in admitted:
            why = []
            if s["failure"]:
                why.append(s["failure"])
            if s["rt_client"] < args.held_ratio or s["rt_server"] < args.held_ratio:
                why.append(f"rt {s['rt_client']}/{s['rt_server']}")
            if (s["ack_p99_ms"] or 0) > args.ack_p99_ms:
                why.append(f"ack p99 {s['ack_p99_ms']} ms")
            if s["warnings"]:
                why.append("warnings " + ",".join(s["warnings"]))
            if s["stream"] in not_exact:
                why.append("archive not exact")
            if why:
                degraded.append({"idx": s["idx"], "why": why})
        other = [s for s in results if not s["stream"] and s not in refused]
        dropped = soak.metric_sum(mtext, "earshot_processor_dropped_seconds_total")
        ack_all = [s["ack_p99_ms"] for s in admitted if s["ack_p99_ms"] is not None]
        peak = max(samples, key=lambda s: s["held"]) if samples else {}
        return {
            "tool": "benchmarks/bench_admission.py",
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
            "attempted": args.streams, "ramp_s": args.ramp, "hold_s": args.hold,
            "rate": args.rate, "frame_ms": args.frame_ms, "processors": procs,
            "max_cpu": args.max_cpu, "ack_p99_threshold_ms": args.ack_p99_ms,
            "held_ratio": args.held_ratio,
            "admitted": len(admitted), "refused": len(refused),
            "failed_to_start_otherwise": len(other),
            "degraded": len(degraded), "degraded_examples": degraded[:5],
            "processor_dropped_s": round(dropped, 3),
            "archives_exact": arch["all_exact"],
            "worst_stream_ack_p99_ms": max(ack_all, default=None),
            "highest_n_no_degradation": len(admitted) if not degraded and arch["all_exact"]
            and dropped == 0 else None,
            "first_refusal_at_s": next((s["t"] for s in samples if s["state"] != "ok"),
                                       None),
            "at_peak": peak,
            "samples": samples,
            "machine": {"cpus": os.cpu_count(), "nice": os.nice(0), "shared": args.shared,
                        "loadavg_before": [round(x, 2) for x in loadavg_before],
                        "cpu_pressure_before": psi_before,
                        "cpu_pressure_after": soak.cpu_pressure(),
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "code": il.code_fingerprint(),
            "worker_errors": fleet.errors,
        }
    finally:
        server.stop(keep=False)


def table(records: list[dict[str, Any]]) -> str:
    head = ("| attempted over ramp | processors | --max-cpu | admitted | refused | degraded "
            "| worst ack p99 ms | loop / process CPU at peak (cores) | archives exact "
            "| CPU pressure (PSI avg60) |\n"
            "|---|---|---:|---:|---:|---:|---:|---|:---|---:|")
    rows = []
    for r in records:
        p = r.get("at_peak") or {}
        rows.append(
            f"| {r['attempted']} over {r['ramp_s']:g} s (+{r['hold_s']:g} s held) | "
            f"{'+'.join(r['processors']) or 'none'} | {r['max_cpu']:g} | "
            f"**{r['admitted']}** | {r['refused']} | {r['degraded']} | "
            f"{r['worst_stream_ack_p99_ms']} | {p.get('loop_cpu')} / {p.get('process_cpu')} | "
            f"{'yes' if r['archives_exact'] else 'no'} | "
            f"{(r['machine'].get('cpu_pressure_before') or {}).get('avg60', '?')} % |")
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=300, help="publishers attempted")
    ap.add_argument("--ramp", type=float, default=50.0, help="seconds over which they come")
    ap.add_argument("--hold", type=float, default=20.0,
                    help="seconds all admitted streams are live together")
    ap.add_argument("--processors", default="level", help="asked for in each start")
    ap.add_argument("--max-cpu", type=float, default=0.8)
    ap.add_argument("--ack-p99-ms", type=float, default=250.0)
    ap.add_argument("--held-ratio", type=float, default=0.98)
    ap.add_argument("--rate", type=int, default=48000)
    ap.add_argument("--frame-ms", type=float, default=20.0)
    ap.add_argument("--procs", type=int, default=0, help="client worker processes")
    ap.add_argument("--shared", action="store_true",
                    help="record that the machine was shared with other work")
    ap.add_argument("--table", action="store_true", help="print the README table")
    args = ap.parse_args(argv)
    if args.table:
        recs = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
        print(table(recs))
        return 0
    rec = run(args)
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(table([rec]))
    print(f"appended to {RESULTS}")
    return 0 if rec["degraded"] == 0 and rec["archives_exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
