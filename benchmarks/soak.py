#!/usr/bin/env python3
"""Soak: N real-time streams with processors (``level`` and ``vad``) for M minutes.

Starts its own ``earshot serve`` and drives it with ``ingest_load.py``'s raw RFC 6455
client (one pre-masked frame per message, one scheduler per worker process). Measured:

* the server's RSS every ``--sample`` seconds (10), and its growth after the first minute
  (the sample at or after 60 s against the last one before the streams stop; must be < 5 %);
* its open file descriptors (``/proc/PID/fd``) at the same times (must stay flat);
* ack latency p99 per minute (client side: from sending the message holding the newest
  sample an ack covers to receiving that ack), over all streams;
* processors' lag (warnings, ``earshot_processor_dropped_seconds`` on ``/metrics``);
* every archive, read with soundfile, against its source sample for sample (the source is
  one 20 ms frame of a 440 Hz tone repeated; the archive is PCM16, so the source goes
  through the server's own f32 → s16 conversion first).

Results: ``benchmarks/results/soak-LABEL.json`` and ``soak-LABEL.png`` (RSS and fds over
time, ack p99 per minute). Needs ``pip install -e '.[server,bench]'``.

Examples::

    nice -n 10 python benchmarks/soak.py                       # 200 streams, 10 minutes
    nice -n 10 python benchmarks/soak.py --minutes 2 --streams 40 --label short
    python benchmarks/soak.py --table benchmarks/results/soak-*.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_load as il  # the client machinery

RESULTS = Path(__file__).resolve().parent / "results"
FD_SLACK = 4  # "flat": fds after the first minute within this (the samplers' own sockets)


# -- per-stream state that also keeps when each ack came (for per-minute percentiles) -----
class TimedState(il.StreamState):
    __slots__ = ("ack_t",)

    def __init__(self, idx: int, start_at: float, due_frames: int, spf: int) -> None:
        super().__init__(idx, start_at, due_frames, spf)
        self.ack_t = array("d")

    def on_ack(self, offset: int, now: float) -> None:
        n = len(self.ack_lat)
        super().on_ack(offset, now)
        if len(self.ack_lat) > n:
            self.ack_t.append(now)

    def result(self, seconds: float) -> dict[str, Any]:
        r = super().result(seconds)
        r["_ack_t"] = self.ack_t.tobytes()
        r["_ack_lat"] = array("d", self.ack_lat).tobytes()
        return r


il.StreamState = TimedState  # type: ignore[misc]  # the workers (forked) build these


# -- the fleet: ingest_load's worker processes, started and collected from here ------------
class Fleet:
    def __init__(self, cfg: dict[str, Any], procs: int) -> None:
        self.cfg = cfg
        self.procs = procs
        ctx = mp.get_context("fork")
        self.settled = ctx.Value("i", 0)
        start_at = ctx.Value("d", 0.0)
        go = ctx.Event()
        ready_q = ctx.Queue()
        self.out_q = ctx.Queue()
        self.workers = []
        n = cfg["streams"]
        for w in range(procs):
            idx = list(range(w, n, procs))
            p = ctx.Process(target=il.worker_main, name=f"soak-{w}",
                            args=(w, idx, cfg, self.settled, start_at, go, ready_q,
                                  self.out_q))
            p.start()
            self.workers.append(p)
        for _ in range(procs):
            ready_q.get(timeout=60)
        self.t_go = time.monotonic() + 0.3
        start_at.value = self.t_go
        go.set()
        self.results: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.got = 0

    def poll(self, timeout: float) -> bool:
        """Take what workers reported within ``timeout``; True when all have."""
        end = time.monotonic() + max(0.0, timeout)
        while self.got < self.procs:
            try:
                r = self.out_q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                return False
            self.got += 1
            self.results.extend(r["streams"])
            if r["error"]:
                self.errors.append(r["error"])
            if time.monotonic() >= end:
                break
        if self.got >= self.procs:
            for p in self.workers:
                p.join(10)
            self.results.sort(key=lambda s: s["idx"])
            return True
        return False


def fleet_config(args: argparse.Namespace, url: str, streams: int, seconds: float,
                 stagger: float, processors: list[str] | None) -> dict[str, Any]:
    spf = round(args.rate * args.frame_ms / 1000.0)
    return {"url": url, "streams": streams, "seconds": seconds, "frame_ms": args.frame_ms,
            "rate": args.rate, "channels": 1, "spf": spf,
            "due_frames": round(seconds * 1000.0 / args.frame_ms), "stagger": stagger,
            "client": "raw", "clock": "scheduled", "connect_timeout": 15.0,
            "stop_timeout": 60.0, "token": None, "uvloop": True, "processors": processors,
            "compression": None, "batch": True}  # as earshot's own clients ask


def server_args(log_level: str = "warning") -> argparse.Namespace:
    return argparse.Namespace(url=None, log_level=log_level, server_src=None,
                              server_pid=None, data_dir=None)


def cpu_pressure() -> dict[str, float] | None:
    """Linux PSI: the share of time some task waited for a CPU (avg10, avg60, %)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    kv = dict(p.split("=", 1) for p in line.split()[1:])
    return {k: float(kv[k]) for k in ("avg10", "avg60") if k in kv}


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def unpack_acks(results: list[dict[str, Any]]) -> tuple[array, array]:
    ts, lat = array("d"), array("d")
    for s in results:
        ts.frombytes(s.pop("_ack_t", b""))
        lat.frombytes(s.pop("_ack_lat", b""))
    return ts, lat


def per_minute(ts: array, lat: array, t_go: float) -> list[dict[str, Any]]:
    bins: dict[int, list[float]] = {}
    for t, x in zip(ts, lat, strict=True):
        bins.setdefault(int((t - t_go) // 60), []).append(x)
    return [{"minute": m + 1, "acks": len(v), "ack_p50_ms": il.rnd(il.pct(v, 50), 2),
             "ack_p99_ms": il.rnd(il.pct(v, 99), 2), "ack_max_ms": il.rnd(max(v), 2)}
            for m, v in sorted(bins.items()) if m >= 0]


def expected_frame(cfg: dict[str, Any]) -> Any:
    """One message's samples as the archive holds them (PCM16, the server's conversion)."""
    import numpy as np

    from earshot.audio import f32_to_s16

    x = np.frombuffer(il.audio_payload(cfg["spf"], 1, cfg["rate"]), dtype="<f4")
    return f32_to_s16(x.reshape(-1, 1)).samples.reshape(-1)


def check_exact(data_dir: Path, results: list[dict[str, Any]],
                cfg: dict[str, Any]) -> dict[str, Any]:
    """Every started stream's archive, read back with soundfile, equals its source."""
    import numpy as np
    import soundfile as sf

    frame = expected_frame(cfg)
    spf = len(frame)
    ok, bad = 0, []
    for s in results:
        sid = s["stream"]
        if not sid:
            continue
        path = data_dir / "streams" / f"{sid}.wav"
        try:
            y, rate = sf.read(str(path), dtype="int16", always_2d=True)
        except Exception as exc:  # report, never crash the soak
            bad.append({"stream": sid, "why": f"unreadable: {exc}"[:120]})
            continue
        want = s["frames_sent"]
        y = y[:, 0]
        exact = (rate == cfg["rate"] and len(y) == want and want % spf == 0
                 and bool(np.all(y.reshape(-1, spf) == frame)))
        if exact:
            ok += 1
        else:
            bad.append({"stream": sid, "frames": len(y), "sent": want, "rate": rate})
    checked = sum(1 for s in results if s["stream"])
    return {"checked": checked, "exact": ok, "not_exact": bad[:10],
            "all_exact": checked > 0 and ok == checked}


def plot(rec: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = rec["samples"]
    t = [s["t"] / 60.0 for s in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8.5), sharex=True)
    ax1.plot(t, [s["rss_mb"] for s in samples], marker="o", ms=3, color="tab:blue")
    ax1.set_ylabel("server RSS (MB)")
    base = rec["rss"]["baseline_mb"]
    if base:
        ax1.axhline(base * 1.05, ls="--", color="tab:red", lw=1, label="baseline + 5 %")
        ax1.legend(loc="lower right")
    ax1.set_ylim(bottom=0)
    ax2.plot(t, [s["fds"] for s in samples], marker="o", ms=3, color="tab:green")
    ax2.set_ylabel("open file descriptors")
    ax2.set_ylim(bottom=0)
    mins = rec["per_minute"]
    ax3.bar([m["minute"] - 0.5 for m in mins], [m["ack_p99_ms"] or 0 for m in mins],
            width=0.8, color="tab:orange")
    ax3.set_ylabel("ack latency p99 (ms)")
    ax3.set_xlabel("minutes since the streams started")
    for ax in (ax1, ax2, ax3):
        ax.axvline(1.0, ls=":", color="grey", lw=1)
        ax.grid(alpha=0.3)
    fig.suptitle(f"earshot soak: {rec['streams']} real-time streams, "
                 f"{'+'.join(rec['processors'])}, {rec['minutes']:g} min "
                 f"(RSS growth after 1 min {rec['rss']['growth_pct']} %)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    il.raise_nofile()
    seconds = args.minutes * 60.0
    procs = [p for p in args.processors.split(",") if p]
    loadavg_before, psi_before = os.getloadavg(), cpu_pressure()
    server = il.Server(server_args(args.log_level))
    rec: dict[str, Any] = {}
    try:
        server.wait_up()
        cfg = fleet_config(args, server.url, args.streams, seconds, args.stagger, procs)
        assert server.pid is not None and server.data_dir is not None
        fleet = Fleet(cfg, args.procs or il.default_procs(args.streams, "raw"))
        samples: list[dict[str, Any]] = []
        cpu_prev: tuple[float, float] | None = None
        next_sample = fleet.t_go
        end_of_audio = fleet.t_go + seconds - 1.0  # the first stream stops at t_go + seconds
        while not fleet.poll(next_sample - time.monotonic()):
            now = time.monotonic()
            if now < next_sample:
                continue
            next_sample = max(next_sample + args.sample, now + args.sample / 2)  # no catch-up burst
            if now > end_of_audio:  # streams are stopping: the steady state is over
                continue
            rss, _ = server.rss()
            cpu = server.cpu_time()
            cpu_pct = None
            if cpu is not None and cpu_prev is not None:
                cpu_pct = (cpu - cpu_prev[0]) / (now - cpu_prev[1]) * 100.0
            if cpu is not None:
                cpu_prev = (cpu, now)
            try:
                live = json.loads(server.http_get("/healthz")[1]).get("live_streams")
            except (OSError, ValueError):
                live = None
            samples.append({"t": round(now - fleet.t_go, 1), "rss_mb": il.rnd(rss, 1),
                            "fds": open_fds(server.pid), "cpu_pct": il.rnd(cpu_pct, 1),
                            "live_streams": live})
            print(f"  t={samples[-1]['t']:6.0f}s rss={samples[-1]['rss_mb']} MB "
                  f"fds={samples[-1]['fds']} cpu={samples[-1]['cpu_pct']}% live={live}",
                  flush=True)
        results = fleet.results
        ts, lat = unpack_acks(results)
        try:
            mtext = server.http_get("/metrics")[1].decode()
        except OSError:
            mtext = ""
        arch = check_exact(server.data_dir, results, cfg)

        after = [s for s in samples if s["t"] >= 60.0 and s["rss_mb"] is not None]
        base = after[0]["rss_mb"] if after else None
        last = after[-1]["rss_mb"] if after else None
        growth = il.rnd((last - base) / base * 100.0, 2) if base and last else None
        fds_after = [s["fds"] for s in after if s["fds"] is not None]
        failed = [s for s in results if s["failure"]]
        held = [s for s in results if not s["failure"] and s["rt_client"] >= 0.9
                and s["rt_server"] >= 0.9]
        warnings: dict[str, int] = {}
        for s in results:
            for w in s["warnings"]:
                warnings[w] = warnings.get(w, 0) + 1
        rec = {
            "tool": "benchmarks/soak.py",
            "label": args.label,
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
            "streams": args.streams, "minutes": args.minutes, "processors": procs,
            "rate": args.rate, "frame_ms": args.frame_ms, "sample_s": args.sample,
            "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in
                                                                    loadavg_before],
                        "cpu_pressure_before": psi_before, "cpu_pressure_after": cpu_pressure(),
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                        "nice": os.nice(0), "shared": args.shared},
            "code": il.code_fingerprint(),
            "held": len(held), "failed": len(failed),
            "failure_reasons": sorted({s["failure"] for s in failed})[:10],
            "rt_server_min": min((s["rt_server"] for s in results), default=None),
            "ack_p50_ms": il.rnd(il.pct(list(lat), 50), 2),
            "ack_p99_ms": il.rnd(il.pct(list(lat), 99), 2),
            "per_minute": per_minute(ts, lat, fleet.t_go),
            "rss": {"baseline_mb": base, "final_mb": last, "growth_pct": growth,
                    "max_after_1min_mb": max((s["rss_mb"] for s in after), default=None),
                    "ok": growth is not None and growth < 5.0},
            "fds": {"at_1min": fds_after[0] if fds_after else None,
                    "min_after_1min": min(fds_after, default=None),
                    "max_after_1min": max(fds_after, default=None),
                    "flat": bool(fds_after) and max(fds_after) - min(fds_after) <= FD_SLACK},
            "processor_warnings": warnings,
            "processor_dropped_s": round(metric_sum(
                mtext, "earshot_processor_dropped_seconds_total"), 3),
            "archives": arch,
            "samples": samples,
            "worker_errors": fleet.errors,
        }
        rec["ok"] = bool(rec["rss"]["ok"] and rec["fds"]["flat"] and arch["all_exact"]
                         and not failed and len(held) == args.streams)
        return rec
    finally:
        server.stop(keep=False)


def table(records: list[dict[str, Any]]) -> str:
    head = ("| run | streams | processors | minutes | held | RSS at 1 min → end (growth) "
            "| fds after 1 min | ack p99 ms per minute | dropped s | archives exact |\n"
            "|---|---:|---|---:|---:|---|---|---|---:|:---|")
    rows = []
    for r in records:
        a = r["archives"]
        rows.append(
            f"| {r['label']} | {r['streams']} | {'+'.join(r['processors'])} | "
            f"{r['minutes']:g} | {r['held']}/{r['streams']} | "
            f"{r['rss']['baseline_mb']} → {r['rss']['final_mb']} MB "
            f"({r['rss']['growth_pct']:+} %) | "
            f"{r['fds']['min_after_1min']}-{r['fds']['max_after_1min']} | "
            f"{' / '.join(str(m['ack_p99_ms']) for m in r['per_minute'])} | "
            f"{r['processor_dropped_s']} | "
            f"{'yes' if a['all_exact'] else 'no'} ({a['exact']}/{a['checked']}) |")
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--processors", default="level,vad",
                    help="asked for in every stream's start (comma-separated)")
    ap.add_argument("--rate", type=int, default=16000)
    ap.add_argument("--frame-ms", type=float, default=20.0)
    ap.add_argument("--stagger", type=float, default=10.0, help="spread stream starts (s)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--procs", type=int, default=0, help="client worker processes")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--label", default=None, help="results name (default: NxM)")
    ap.add_argument("--shared", action="store_true",
                    help="record that the machine was shared with other work")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the README table")
    args = ap.parse_args(argv)
    if args.table:
        print(table([json.loads(Path(p).read_text()) for p in args.table]))
        return 0
    args.label = args.label or f"{args.streams}x{args.minutes:g}min"
    rec = run(args)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{args.label}.json"
    out.write_text(json.dumps(rec, indent=1) + "\n")
    png = out.with_suffix(".png")
    plot(rec, png)
    print(table([rec]))
    print(f"wrote {out} and {png}; {'OK' if rec['ok'] else 'NOT OK'}")
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
