"""The ``earshot`` command: serve, send, stream, streams, tail.

Exit codes: 0 success, 1 unexpected failure, 2 usage or configuration error,
3 server unreachable, 4 refused by the server (auth, bad request, unknown stream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from earshot import __version__
from earshot.errors import (
    ClientError,
    ConfigError,
    EarshotError,
    MissingDependency,
    ProcessorError,
)
from earshot.urls import DEFAULT_URL, http_base, ws_url

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED = 0, 1, 2, 3, 4


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get("EARSHOT_" + name.upper(), default)


# -- serve --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from earshot.config import Settings, env_overrides
    from earshot.server.app import create_app

    opts = env_overrides()
    for key in ("host", "port", "data_dir", "token", "archive_format", "ack_interval",
                "max_message_bytes", "log_level", "max_lag", "drain_timeout", "asr_model",
                "asr_engine", "asr_device", "asr_compute_type", "asr_language",
                "asr_beam_size", "asr_workers", "asr_threads", "asr_batch"):
        value = getattr(args, key)
        if value is not None:
            opts[key] = value
    if args.no_auth:
        opts["no_auth"] = True
    if args.fsync:
        opts["fsync"] = True
    if args.processor:
        opts["processors"] = tuple(args.processor)
    settings = Settings(**opts)
    settings.check_exposure()
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    if settings.asr_model:
        console.print(f"loading speech-to-text model {escape(settings.asr_model)} …")
    app = create_app(settings)
    caps = app.state.capabilities
    console.print(
        f"[bold]earshot {__version__}[/] on http://{settings.host}:{settings.port} "
        f"— ingest ws://{settings.host}:{settings.port}/ws, data in {settings.data_dir.resolve()}"
    )
    console.print(f"  archive: {settings.archive_format}; auth: "
                  f"{'token' if settings.token else 'none (loopback only)'}")
    console.print(f"  processors: {', '.join(caps['processors'])} "
                  f"(default: {', '.join(caps['default_processors']) or 'none'})")
    if caps["asr"]["available"]:
        asr = caps["asr"]
        console.print(f"  speech-to-text: [green]{escape(str(asr['model']))}[/] "
                      f"({escape(str(asr['engine']))}, {settings.asr_device})")
        if asr.get("hint"):
            console.print(f"    {escape(asr['hint'])}")
    else:
        console.print(f"  speech-to-text: [yellow]unavailable[/] — {escape(caps['asr']['reason'])}")
    uvicorn.run(
        # no permessage-deflate: browsers offer it, and compressing acks and deflating
        # audio costs 30-80% more CPU for no gain on PCM (benchmarks/README)
        app, host=settings.host, port=settings.port, ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=max(16 << 20, settings.max_message_bytes * 2), log_level=settings.log_level,
        lifespan="on",
    )
    return EXIT_OK


# -- send / stream ------------------------------------------------------------------------
def _run_client(coro_factory: Callable[[], Any]) -> int:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True)
    try:
        return int(asyncio.run(coro_factory()) or 0)
    except KeyboardInterrupt:
        return 130
    except MissingDependency as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return EXIT_USAGE
    except ClientError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return exit_code(exc)


def exit_code(exc: ClientError) -> int:
    if exc.code == "unreachable":
        return EXIT_UNREACHABLE
    return EXIT_REFUSED if exc.code else EXIT_FAIL


def _summary(args: argparse.Namespace, result: dict[str, Any]) -> None:
    base = http_base(args.url)
    secs = result["frames"] / result["rate"]
    print(f"stream {result['stream']}: {result['frames']} frames ({secs:.2f} s) archived")
    print(f"audio: {base}/api/streams/{result['stream']}/audio")


def cmd_send(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from earshot.client import Reconnect, publish
    from earshot.sources import FileSource

    async def main() -> int:
        source = FileSource(args.file, realtime=args.realtime, format=args.format)
        total = source.info.frames or 0
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.percentage:>5.1f}%"), TimeRemainingColumn(),
                      transient=True, disable=args.quiet) as progress:
            task = progress.add_task(source.info.label, total=total)
            result = await publish(
                args.url, source, name=args.name, token=args.token,
                processors=args.processors, codec=args.codec, bitrate=args.bitrate,
                reconnect=Reconnect(attempts=args.retries),
                on_block=lambda pub, _b: progress.update(task, completed=pub.offset),
            )
        _summary(args, result)
        return EXIT_OK

    return _run_client(main)


def cmd_stream(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from earshot.client import Reconnect, publish
    from earshot.sources import FileSource, MicSource, block_level_db, list_devices

    if args.list_devices:
        try:
            for d in list_devices():
                print(f"{d['index']:>3}  {d['name']}  ({d['channels']} ch, {d['rate']:.0f} Hz)")
        except MissingDependency as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK

    async def main() -> int:
        if args.file:  # a file played as if it were a microphone
            source: Any = FileSource(args.file, realtime=True)
        else:
            source = MicSource(device=args.device, rate=args.rate, channels=args.channels)
        console = Console(stderr=True)
        console.print(f"streaming {source.info.label} at {source.info.rate} Hz — Ctrl-C to stop")
        with Live(console=console, transient=True, refresh_per_second=12,
                  auto_refresh=not args.quiet) as live:
            def on_block(pub: Any, block: Any) -> None:
                if not args.quiet:
                    live.update(level_bar(block_level_db(block), pub.offset / source.info.rate))

            task = asyncio.ensure_future(publish(
                args.url, source, name=args.name, token=args.token, processors=args.processors,
                codec=args.codec, bitrate=args.bitrate,
                reconnect=Reconnect(attempts=None), on_block=on_block,
            ))
            loop = asyncio.get_running_loop()
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
            result = await task
        _summary(args, result)
        return EXIT_OK

    return _run_client(main)


def level_bar(db: float, seconds: float, width: int = 40) -> str:
    filled = round(width * min(1.0, max(0.0, (db + 60.0) / 60.0)))
    return f"{seconds:8.2f} s  [{'#' * filled}{'.' * (width - filled)}] {db:6.1f} dBFS"


# -- streams / tail -----------------------------------------------------------------------
def _http(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        r = httpx.request(method, http_base(args.url) + path, headers=headers, timeout=10, **kw)
    except httpx.TransportError as exc:
        msg = f"cannot reach {http_base(args.url)}: {exc}"
        raise ClientError(msg, code="unreachable") from None
    if r.status_code >= 400:
        detail = r.json().get("detail") if "json" in r.headers.get("content-type", "") else r.text
        raise ClientError(f"HTTP {r.status_code}: {detail}", code=str(r.status_code))
    return r.json()


def cmd_streams(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    try:
        page = _http(args, "GET", "/api/streams", params={"limit": args.limit})
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    if args.json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    table = Table(title=f"{page['total']} stream(s)")
    table.add_column("id", no_wrap=True)
    for col in ("name", "state", "rate", "ch", "duration", "created"):
        table.add_column(col)
    import datetime as dt

    for s in page["streams"]:
        created = dt.datetime.fromtimestamp(s["created"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(s["id"], s["name"] or "", s["state"], str(s["rate"]), str(s["channels"]),
                      f"{s['duration']:.2f} s", created)
    Console().print(table)
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.markup import escape
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    url = ws_url(args.url, "/ws/subscribe", stream=args.stream)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    err = Console(stderr=True)
    quiet_types = {"spectrogram"} | (set() if args.levels else {"level"})

    async def main() -> int:
        board = TailBoard()
        try:
            async with connect(url, additional_headers=headers, max_size=None) as ws:
                with Live(board, console=err, auto_refresh=err.is_terminal,
                          refresh_per_second=10, transient=True) as live:
                    async for raw in ws:
                        if isinstance(raw, bytes):
                            continue
                        event = json.loads(raw)
                        kind = event.get("type")
                        if kind == "error" and "stream" not in event:
                            raise ClientError(event.get("message", "error"),
                                              code=event.get("code"))
                        if kind == "subscribed":
                            n = len(event["live"])
                            err.print(f"watching {escape(args.stream)}: {n} live stream(s)")
                            continue
                        board.update(event)
                        if kind not in quiet_types:
                            print(format_event(event), flush=True)
                        if err.is_terminal:
                            live.refresh()
        except (OSError, InvalidHandshake) as exc:
            raise ClientError(f"cannot reach {url}: {exc}", code="unreachable") from None
        except ConnectionClosed:
            pass
        return EXIT_OK

    return _run_client(main)


class TailBoard:
    """Per stream: a level bar and the speech state, drawn live on a terminal."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, event: dict[str, Any]) -> None:
        sid = event.get("stream")
        if not sid:
            return
        row = self.rows.setdefault(sid, {"db": -120.0, "speech": False, "t": 0.0})
        kind = event.get("type")
        if kind == "level":
            row["db"], row["t"] = event["rms"], event["t"]
        elif kind in ("speech_start", "speech_end"):
            row["speech"] = kind == "speech_start"
        elif kind == "stream_ended":
            self.rows.pop(sid, None)

    def __rich__(self) -> str:
        return "\n".join(
            f"{sid}  {level_bar(r['db'], r['t'], 30)}  "
            f"{'[bold green]speech[/]' if r['speech'] else '[dim]silence[/]'}"
            for sid, r in self.rows.items())


def cmd_worker(args: argparse.Namespace) -> int:
    import logging
    import signal

    from earshot.client import Reconnect
    from earshot.processors.registry import parse_cli_spec, resolve
    from earshot.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ref, options = parse_cli_spec(args.processor)
    spec = resolve(ref, options)  # raises ProcessorError → exit 2 with the reason

    async def main() -> int:
        worker = Worker(args.url, spec, stream=args.stream, token=args.token, name=args.name,
                        reconnect=Reconnect(attempts=args.retries))
        task = asyncio.ensure_future(worker.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return EXIT_OK

    return _run_client(main)


def cmd_listen(args: argparse.Namespace) -> int:
    from earshot.listen import Listener

    async def main() -> int:
        listener = Listener(args.url, args.stream, codec=args.codec, token=args.token,
                            out=args.out, play=args.out is None or args.play,
                            seconds=args.seconds)
        stats = await listener.run()
        s = stats.summary()
        print(f"listened to {s['seconds']:.2f} s of {s['stream']}: delay p50 "
              f"{s['delay_p50_ms']:.0f} ms, p99 {s['delay_p99_ms']:.0f} ms; concealed "
              f"{s['concealed_ms']:.0f} ms; {s['bytes_in']} bytes received", file=sys.stderr)
        return EXIT_OK

    return _run_client(main)


def format_event(event: dict[str, Any]) -> str:
    kind = event.get("type", "?")
    t = event.get("t")
    stamp = f"{t:9.3f}s" if isinstance(t, int | float) else " " * 10
    rest = {k: v for k, v in event.items() if k not in {"type", "t", "stream"}}
    return f"{event.get('stream', '-')} {stamp} {kind:<14} {json.dumps(rest)}"


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earshot", description="Self-hosted real-time audio server")
    p.add_argument("--version", action="version", version=f"earshot {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server (options also from EARSHOT_* variables)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000)")
    s.add_argument("--data-dir", type=Path, help="archives and metadata (default ./earshot-data)")
    s.add_argument("--token", help="require this bearer token on every request")
    s.add_argument("--no-auth", action="store_true",
                   help="allow listening beyond loopback without a token")
    s.add_argument("--archive-format", choices=["wav", "wav-f32", "flac", "ogg"],
                   help="archive encoding (default wav = PCM16; ogg = Ogg Opus)")
    s.add_argument("--fsync", action="store_true", help="fsync before every ack (power-loss safe)")
    s.add_argument("--ack-interval", type=float, help="seconds of audio per ack (default 0.1)")
    s.add_argument("--max-message-bytes", type=int, help="largest accepted message (1 MiB)")
    s.add_argument("--processor", action="append", metavar="SPEC",
                   help="offer this processor and run it on every stream by default "
                        "(repeatable): a built-in (level, spectrogram, vad) or "
                        "package.module:Class, with options: vad,threshold=0.6")
    s.add_argument("--max-lag", type=float,
                   help="seconds a processor may fall behind before it skips audio (10)")
    s.add_argument("--drain-timeout", type=float,
                   help="seconds processors get to finish after a stream stops (10)")
    s.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    a = s.add_argument_group("speech-to-text (built in: pocketsphinx, English; far better: "
                             "pip install 'earshot[asr]' and --asr-model small.en)")
    a.add_argument("--asr-model", help="faster-whisper model name (downloaded on first use "
                                       "where there is internet) or local model directory")
    a.add_argument("--asr-engine", help="pocketsphinx (default without --asr-model), "
                                        "faster-whisper (default with it), "
                                        "package.module:Class, or none (off)")
    a.add_argument("--asr-device", choices=["cpu", "cuda", "auto"], help="default cpu")
    a.add_argument("--asr-compute-type", help="e.g. int8, float16 (default: the model's)")
    a.add_argument("--asr-language", help="e.g. en (default: detect)")
    a.add_argument("--asr-beam-size", type=int, help="beam size for finals (default 5)")
    a.add_argument("--asr-workers", type=int, help="decoding threads (default 1)")
    a.add_argument("--asr-threads", type=int, help="CPU threads per decode (0: library default)")
    a.add_argument("--asr-batch", type=int, help="most streams' utterances decoded in one call "
                                                 "(0: the engine's, 8 for faster-whisper; 1: off)")
    s.set_defaults(func=cmd_serve)

    def client_opts(c: argparse.ArgumentParser) -> None:
        c.add_argument("--url", default=_env("url", DEFAULT_URL),
                       help=f"server ingest URL (default {DEFAULT_URL}, or EARSHOT_URL)")
        c.add_argument("--token", default=_env("token"), help="bearer token (or EARSHOT_TOKEN)")

    def codec_opts(c: argparse.ArgumentParser) -> None:
        c.add_argument("--codec", choices=["pcm", "opus"], default="pcm",
                       help="pcm (lossless, default) or opus (~30 kbit/s; 8/12/16/24/48 kHz)")
        c.add_argument("--bitrate", type=int, default=32000, help="opus bitrate (32000)")

    c = sub.add_parser("send", help="send a sound file as a stream")
    c.add_argument("file", type=Path)
    client_opts(c)
    pace = c.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="pace like a live source")
    pace.add_argument("--fast", dest="realtime", action="store_false",
                      help="as fast as the server acknowledges (default)")
    c.add_argument("--format", choices=["s16", "f32"],
                   help="wire format (default: s16 for 16-bit files, else f32)")
    c.add_argument("--name", help="stream name (default: the file name)")
    c.add_argument("--processors", nargs="*", help="processors to run on the stream")
    c.add_argument("--retries", type=int, default=30, help="reconnect attempts (default 30)")
    codec_opts(c)
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_send)

    m = sub.add_parser("stream", help="stream the microphone until Ctrl-C")
    client_opts(m)
    m.add_argument("--device", type=lambda v: int(v) if v.isdigit() else v,
                   help="input device index or name")
    m.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    m.add_argument("--rate", type=int, help="sample rate (default: the device's)")
    m.add_argument("--channels", type=int, default=1)
    m.add_argument("--name", help="stream name")
    m.add_argument("--processors", nargs="*", help="processors to run on the stream")
    m.add_argument("--file", type=Path, help="play this file in real time instead of a mic")
    codec_opts(m)
    m.add_argument("-q", "--quiet", action="store_true", help="no level bar")
    m.set_defaults(func=cmd_stream)

    ls = sub.add_parser("streams", help="list streams")
    client_opts(ls)
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_streams)

    t = sub.add_parser("tail", help="print a stream's live events ('*' for all streams)")
    t.add_argument("stream")
    client_opts(t)
    t.add_argument("--levels", action="store_true", help="also print every level event")
    t.set_defaults(func=cmd_tail)
    li = sub.add_parser("listen", help="hear a live stream (jitter buffer), or record it")
    li.add_argument("stream")
    client_opts(li)
    li.add_argument("--out", type=Path, help="write what is heard to this WAV file")
    li.add_argument("--play", action="store_true", help="also play it with --out")
    li.add_argument("--codec", choices=["pcm", "opus"], default="pcm",
                    help="what to receive: pcm (default) or opus (~30 kbit/s)")
    li.add_argument("--seconds", type=float, help="stop after this much audio")
    li.set_defaults(func=cmd_listen)

    w = sub.add_parser("worker", help="run a processor on a server's live audio, remotely")
    w.add_argument("processor", help="package.module:Class (or a built-in), with options: "
                                     "mypkg.vad:MyVad,threshold=0.6")
    client_opts(w)
    w.add_argument("--stream", default="*", help="stream id, or * for every stream (default)")
    w.add_argument("--name", help="worker name shown in its events")
    w.add_argument("--retries", type=int, default=None,
                   help="give up after this many failed reconnects (default: never)")
    w.set_defaults(func=cmd_worker)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, MissingDependency, ProcessorError) as exc:
        print(f"earshot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EarshotError as exc:
        print(f"earshot: {exc}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
