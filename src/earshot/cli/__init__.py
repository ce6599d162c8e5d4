"""The ``earshot`` command: serve, send, stream, streams, tail.

Exit codes: 0 success, 1 unexpected failure, 2 usage or configuration error,
3 server unreachable, 4 refused by the server (auth, bad request, unknown stream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from earshot import __version__
from earshot.cli.term import console as _console
from earshot.client.urls import DEFAULT_URL, http_base, ws_url
from earshot.errors import (
    ClientError,
    ConfigError,
    EarshotError,
    MissingDependency,
    ProcessorError,
)
from earshot.ranges import (
    CHANNELS,
    COUNT,
    OPUS_BITRATE,
    SAMPLE_RATE,
    SECONDS,
    Range,
    server_url,
    size_arg,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED = 0, 1, 2, 3, 4


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get("EARSHOT_" + name.upper(), default)


# -- serve --------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    require_server_extra()
    import uvicorn

    from earshot.config import env_overrides, load_config_file, merge_settings, settings_to_json
    from earshot.config.cli import cli_overrides
    from earshot.redact import uvicorn_log_config
    from earshot.server.http import headtimeout
    from earshot.server.http.app import create_app
    from earshot.server.ingest.lane import EarshotWebSocketProtocol

    config = args.config or os.environ.get("EARSHOT_CONFIG")
    file_opts = load_config_file(config) if config else {}
    settings = merge_settings(file_opts, env_overrides(), cli_overrides(args))
    srv, tls = settings.server, settings.tls
    settings.check_exposure()
    from earshot.client.transport import check_server_tls

    check_server_tls(tls.certfile, tls.keyfile)
    from rich.markup import escape

    from earshot.server.netcheck import check_bindable

    check_bindable(srv.host, srv.port)  # before announcing anything
    if settings.archive.format == "ogg":  # encoded at stop: fail now, not per stream
        from earshot.codec.opus import import_av

        import_av()  # MissingDependency → exit 2 with the install hint
    from earshot.dsp.cleanup import check_available, parse_filters

    check_available(parse_filters(settings.processing.filters))  # denoise without [cleanup]
    console = _console(stderr=True)
    if srv.log_level == "debug":  # every effective setting, secrets masked, on one line
        print(f"earshot settings: {settings_to_json(settings, redact=True)}", file=sys.stderr,
              flush=True)
    if settings.asr.model:
        console.print(f"loading speech-to-text model {escape(settings.asr.model)} …")
    app = create_app(settings)
    caps = app.state.capabilities
    s = "s" if tls.certfile else ""
    console.print(
        f"[bold]earshot {__version__}[/] on http{s}://{srv.host}:{srv.port} "
        f"— ingest ws{s}://{srv.host}:{srv.port}/ws, data in {srv.data_dir.resolve()}"
    )
    console.print(f"  archive: {settings.archive.format}; auth: "
                  f"{'token' if caps['auth'] else 'none (loopback only)'}")
    console.print(f"  processors: {', '.join(caps['processors'])} "
                  f"(default: {', '.join(caps['default_processors']) or 'none'})")
    if caps["asr"]["available"]:
        asr = caps["asr"]
        console.print(f"  speech-to-text: [green]{escape(str(asr['model']))}[/] "
                      f"({escape(str(asr['engine']))}, {settings.asr.device})")
        if asr.get("hint"):
            console.print(f"    {escape(asr['hint'])}")
    else:
        console.print(f"  speech-to-text: [yellow]unavailable[/] — {escape(caps['asr']['reason'])}")
    if settings.mqtt.url:
        from earshot.integrations.mqtt import parse_mqtt_url

        console.print(f"  mqtt: events to {escape(parse_mqtt_url(settings.mqtt.url).display)}"
                      "/<stream>/<type>")
    target: Any = app
    if srv.processes > 1:  # the supervisor binds the port; each process a gateway
        from earshot.server.http.app import SETTINGS_ENV

        os.environ[SETTINGS_ENV] = settings_to_json(settings)
        target = "earshot.server.http.app:app_from_env"
        console.print(f"  gateways: {srv.processes} processes on one port")
    os.environ[headtimeout.ENV] = str(settings.security.header_timeout)  # (every gateway's)
    uvicorn.run(
        # no permessage-deflate: browsers offer it, and compressing acks and deflating
        # audio costs 30-80% more CPU for no gain on PCM (benchmarks/README)
        target, factory=srv.processes > 1, workers=srv.processes,
        host=srv.host, port=srv.port, ws=EarshotWebSocketProtocol,
        ws_per_message_deflate=False,
        # a message past --max-message-bytes is refused (message_too_large) by the session;
        # the margin lets it get that far, so the client hears why
        ws_max_size=settings.ingest.max_message_bytes + (64 << 10),
        http=headtimeout.protocol(),  # --header-timeout
        log_level=srv.log_level, lifespan="on",
        # bounded exit on SIGTERM
        timeout_graceful_shutdown=math.ceil(settings.processing.drain_timeout) + 5,
        # hardening: TLS, X-Forwarded-* only from --forwarded-allow-ips, no secrets in logs
        ssl_certfile=tls.certfile, ssl_keyfile=tls.keyfile,
        proxy_headers=bool(settings.security.forwarded_allow_ips),
        forwarded_allow_ips=settings.security.forwarded_allow_ips or "",
        log_config=uvicorn_log_config(srv.log_level, [settings.security.token or "",
                                                      settings.security.token_secret or ""]),
    )
    return EXIT_OK


SERVER_MODULES = ("fastapi", "uvicorn", "onnxruntime", "prometheus_client")


def require_server_extra() -> None:
    """``earshot serve`` on a client-only install: say which extra to install."""
    import importlib.util

    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependency(
            f"earshot serve needs the server extra ({', '.join(missing)} not installed): "
            "pip install 'earshot[server]'")


# -- send / stream ------------------------------------------------------------------------
def _run_client(coro_factory: Callable[[], Any]) -> int:
    from rich.markup import escape

    err = _console(stderr=True)
    try:
        return int(asyncio.run(coro_factory()) or 0)
    except KeyboardInterrupt:
        return 130
    except MissingDependency as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return EXIT_USAGE
    except ClientError as exc:
        from earshot.redact import redact

        err.print(f"[red]error:[/] {escape(redact(str(exc)))}")  # (a URL may carry ?token=)
        return exit_code(exc)


def exit_code(exc: ClientError) -> int:
    if exc.code == "unreachable":
        return EXIT_UNREACHABLE
    if exc.code == "spool_full":  # capture stopped; what it had was delivered
        return EXIT_FAIL
    return EXIT_REFUSED if exc.code else EXIT_FAIL


def _ssl(args: argparse.Namespace) -> Any:
    """The TLS context for a wss:// or https:// --url (None for plain ws://)."""
    from earshot.client.transport import client_ssl

    if not str(args.url).lower().startswith(("wss:", "https:")):
        return None
    return client_ssl(getattr(args, "cafile", None))


def _summary(args: argparse.Namespace, result: dict[str, Any], *,
             announced: bool = False) -> None:
    base = http_base(args.url)
    secs = result["frames"] / result["rate"]
    print(f"stream {result['stream']}: {result['frames']} frames ({secs:.2f} s) archived")
    if not announced:  # else the URL was printed when the stream started
        print(f"audio: {base}/api/streams/{result['stream']}/audio")


def _announce(args: argparse.Namespace, stream_id: str, what: str,
              write: Callable[[str], None]) -> None:
    """The stream id and its archive URL, as soon as the server is ready, so that ``listen``
    and ``tail`` can be used on the stream while it is being sent."""
    write(f"stream {stream_id}: {what}")
    write(f"audio: {http_base(args.url)}/api/streams/{stream_id}/audio")


def cmd_send(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from earshot.client import Reconnect, publish
    from earshot.client.sources import FileSource

    async def main() -> int:
        source = FileSource(args.file, realtime=args.realtime, format=args.format)
        total = source.info.frames or 0
        err = _console(stderr=True)
        # the bar lives on stderr, and only on a terminal: stdout carries just the results
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.percentage:>5.1f}%"), TimeRemainingColumn(),
                      console=err, transient=True, redirect_stdout=False,
                      redirect_stderr=False, disable=args.quiet or not err.is_terminal,
                      ) as progress:
            task = progress.add_task(escape(source.info.label), total=total)

            def write(line: str) -> None:
                if progress.live.is_started and sys.stdout.isatty():  # above the live bar
                    progress.console.print(line, markup=False, highlight=False)
                else:
                    print(line, flush=True)

            announced = False

            def on_block(pub: Any, _block: Any) -> None:
                nonlocal announced
                if not announced and pub.stream_id is not None:
                    announced = True
                    _announce(args, pub.stream_id, f"sending {source.info.label} "
                              f"({total / source.info.rate:.2f} s)", write)
                progress.update(task, completed=pub.offset)

            result = await publish(
                args.url, source, name=args.name, token=args.token,
                processors=args.processors, codec=args.codec, bitrate=args.bitrate,
                reconnect=Reconnect(attempts=args.retries), on_block=on_block,
                ssl=_ssl(args),
            )
        _summary(args, result, announced=announced)
        return EXIT_OK

    return _run_client(main)


def cmd_stream(args: argparse.Namespace) -> int:
    from rich.live import Live
    from rich.text import Text

    from earshot.client import Reconnect, publish
    from earshot.client.sources import FileSource, MicSource, block_level_db, list_devices

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
            source: Any = FileSource(args.file, realtime=True, rate=args.rate,
                                     channels=args.channels)
        else:
            source = MicSource(device=args.device, rate=args.rate, channels=args.channels or 1)
        console = _console(stderr=True)  # no 80-column wrap in a pipe
        console.print(f"streaming {source.info.label} at {source.info.rate} Hz — Ctrl-C to stop")
        with Live(console=console, transient=True, refresh_per_second=12,
                  auto_refresh=not args.quiet) as live:
            def on_block(pub: Any, block: Any) -> None:
                if not args.quiet:
                    live.update(Text(level_bar(block_level_db(block),  # text, not markup
                                               pub.offset / source.info.rate)))

            spool = _open_spool(args) if args.spool else None
            task = asyncio.ensure_future(publish(
                args.url, source, name=args.name, token=args.token, processors=args.processors,
                codec=args.codec, bitrate=args.bitrate,
                reconnect=Reconnect(attempts=None), on_block=on_block, spool=spool, ssl=_ssl(args),
                on_event=_spool_reporter(console) if spool else None,
            ))
            loop = asyncio.get_running_loop()
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
            if spool is None:
                result = await task
            else:
                try:
                    result = await task
                except asyncio.CancelledError:  # a second Ctrl-C while delivering
                    left = spool.status()
                    console.print(f"{left['pending_seconds']:.2f} s of audio wait in "
                                  f"{spool.path}: earshot spool {spool.path} --flush")
                    spool.close()
                    return 130
                spool.close()
        _summary(args, result)
        return EXIT_OK

    return _run_client(main)


def _open_spool(args: argparse.Namespace) -> Any:
    from earshot.client.spool import Spool

    return Spool(args.spool, max_bytes=args.spool_size, when_full=args.when_full,
                 fsync=args.spool_fsync)


def _spool_reporter(console: Any) -> Callable[[dict[str, Any]], None]:
    def report(ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "spool_dropped":
            console.print(f"[yellow]spool full:[/] dropped {ev['seconds']:.2f} s of "
                          f"unsent audio (frames {ev['start']}..{ev['end']} of {ev['entry']})")
        elif kind == "spool_delivered":
            console.print(f"delivered spooled {ev['entry']} as stream {ev['stream']}")
        elif kind == "ready":
            console.print(f"stream {ev['stream']}: connected, server holds {ev['offset']} frames")
    return report


def cmd_spool(args: argparse.Namespace) -> int:
    from earshot.client.spool import Spool

    if not args.dir.is_dir():
        print(f"error: no spool at {args.dir}", file=sys.stderr)
        return EXIT_FAIL
    spool = Spool(args.dir)
    try:
        if not args.flush:
            status = spool.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_spool(status)
            return EXIT_OK
        from earshot.client import Reconnect
        from earshot.client.spooled import flush

        held: list[str] = []

        def delivered(entry: Any, sid: str | None) -> None:
            frames = entry.written
            print(f"{entry.id}: {frames} frames ({frames / entry.rate:.2f} s) delivered"
                  + (f" as stream {sid}" if sid else " (nothing to send)"))

        async def main() -> int:
            await flush(spool, args.url, token=args.token,
                        reconnect=Reconnect(attempts=args.retries), on_delivered=delivered,
                        skip=lambda e: held.append(e.id))
            if held:
                print(f"not flushed, held by a running capture: {', '.join(held)}",
                      file=sys.stderr)
                return EXIT_FAIL
            return EXIT_OK

        return _run_client(main)
    finally:
        spool.close()


def _print_spool(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    entries = status["entries"]
    table = Table(title=f"{status['spool']}: {len(entries)} stream(s), "
                        f"{status['pending_seconds']:.2f} s waiting, {status['bytes']} bytes")
    for col in ("entry", "name", "state", "rate", "ch", "waiting", "bytes", "stream", "dropped"):
        table.add_column(col)
    for e in entries:
        table.add_row(e["entry"], e["name"] or "", e["state"], str(e["rate"]),
                      str(e["channels"]), f"{e['pending_seconds']:.2f} s", str(e["bytes"]),
                      e["stream"] or "(not created yet)",
                      f"{e['dropped_frames'] / e['rate']:.2f} s" if e["dropped_frames"] else "")
    Console().print(table)


def level_bar(db: float, seconds: float, width: int = 40) -> str:
    filled = round(width * min(1.0, max(0.0, (db + 60.0) / 60.0)))
    return f"{seconds:8.2f} s  [{'#' * filled}{'.' * (width - filled)}] {db:6.1f} dBFS"


# -- streams / tail -----------------------------------------------------------------------
def _http(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    from earshot.client.rest import request_json  # the standard library: no extra needed

    return request_json(args.url, path, token=args.token, method=method, context=_ssl(args),
                        **kw)


def cmd_replay(args: argparse.Namespace) -> int:
    """POST /api/streams/ID/replay: a processor over a finished stream's archive."""
    from urllib.parse import quote

    try:
        result = _http(args, "POST", f"/api/streams/{quote(args.stream)}/replay",
                       params={"processor": args.processor}, timeout=args.timeout)
    except ClientError as exc:
        print(f"earshot replay: {exc}", file=sys.stderr)
        return exit_code(exc)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for e in result["events"]:
        if e.get("type") not in ("level", "spectrogram") or args.all:
            print(format_event(e))
    from collections import Counter

    kinds = Counter(e.get("type", "?") for e in result["events"])
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no events"
    print(f"replayed {args.stream} through {args.processor}: {summary}", file=sys.stderr)
    return EXIT_OK


def cmd_streams(args: argparse.Namespace) -> int:
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
    _console().print(table)
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from rich.live import Live
    from rich.markup import escape
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    from earshot.client.transport import handshake_refusal, ws_options

    url = ws_url(args.url, "/ws/subscribe", stream=args.stream)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    err = _console(stderr=True)
    quiet_types = {"spectrogram"} | (set() if args.levels else {"level"})
    one = args.stream != "*"

    async def main() -> int:
        board = TailBoard()
        try:
            async with connect(url, additional_headers=headers, max_size=None,
                               **ws_options(url, _ssl(args))) as ws:
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
                            live_ids = {s["stream"] for s in event["live"]}
                            if one and args.stream not in live_ids:
                                # subscribed first, so nothing is missed if it goes live now
                                done = await asyncio.to_thread(_tail_not_live, args, err)
                                if done is not None:
                                    return done
                                continue
                            what = f"{len(live_ids)} live stream(s)" if not one else "live"
                            err.print(f"watching {escape(args.stream)}: {what}")
                            continue
                        board.update(event)
                        if kind not in quiet_types:
                            print(format_event(event), flush=True)
                        if err.is_terminal:
                            live.refresh()
                        if one and kind == "stream_ended" and event.get("state") == "finished":
                            err.print(f"stream {escape(args.stream)} finished")
                            return EXIT_OK
        except (OSError, InvalidHandshake) as exc:
            refused = handshake_refusal(exc)
            if refused is not None:
                raise ClientError(f"{url}: {refused.message}", code=refused.code) from None
            raise ClientError(f"cannot reach {url}: {exc}", code="unreachable") from None
        except ConnectionClosed:
            pass
        return EXIT_OK

    return _run_client(main)


def _tail_not_live(args: argparse.Namespace, err: Any) -> int | None:
    """``tail ID`` of a stream that is not live: unknown (an error, exit 4), finished (print
    what is stored of its events, exit 0), or interrupted (None: keep waiting for a resume)."""
    from rich.markup import escape

    sid = args.stream
    try:
        rec = _http(args, "GET", f"/api/streams/{urllib_quote(sid)}")
    except ClientError as exc:
        if exc.code == "404":
            raise ClientError(f"no stream {sid!r} on {http_base(args.url)} (earshot streams "
                              "lists them)", code="unknown_stream") from None
        raise
    state = rec.get("state")
    if state == "live":  # it went live between the subscription and this question
        err.print(f"watching {escape(sid)}: live")
        return None
    if state != "finished":
        err.print(f"stream {escape(sid)} is {escape(str(state))}, not live: waiting for it to "
                  "be resumed (Ctrl-C to stop)")
        return None
    stored = _stored_events(args, sid)
    summary = f"stream {escape(sid)} is finished ({rec.get('duration', 0):.2f} s)"
    if not stored:
        err.print(f"{summary}; nothing of its events is stored (no speech segments, no "
                  "transcripts). Its audio: "
                  f"{escape(http_base(args.url))}/api/streams/{escape(sid)}/audio")
        return EXIT_OK
    err.print(f"{summary}; its stored events:")
    for event in stored:
        print(format_event(event), flush=True)
    return EXIT_OK


def _stored_events(args: argparse.Namespace, sid: str) -> list[dict[str, Any]]:
    """What the server keeps of a finished stream's events: speech segments and final
    transcripts, as the events that announced them, in stream time."""
    q = urllib_quote(sid)
    events: list[dict[str, Any]] = [
        {"type": "segment", "stream": sid, "t": seg["end"], **seg}
        for seg in _http(args, "GET", f"/api/streams/{q}/segments").get("segments", [])]
    events += [
        {"type": "transcript", "stream": sid, "t": f.get("end"), "final": True,
         "segment": f.get("segment"), "start": f.get("start"), "end": f.get("end"),
         "text": f.get("text")}
        for f in _http(args, "GET", f"/api/streams/{q}/transcript")]
    return sorted(events, key=lambda e: (e["t"] or 0.0, e["type"]))


def urllib_quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


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

    def __rich__(self) -> Any:
        from rich.text import Text

        # the bar is plain text: "[####...]" would be taken for a markup tag and vanish
        return Text("\n").join(
            Text.assemble(f"{sid}  {level_bar(r['db'], r['t'], 30)}  ",
                          ("speech", "bold green") if r["speech"] else ("silence", "dim"))
            for sid, r in self.rows.items())


def _run_log_worker(args: argparse.Namespace, specs: list[Any]) -> int:
    from earshot.cluster.bus.redis import redis_module
    from earshot.cluster.consumer import LogWorker

    redis_module()
    if not 0.5 <= args.lease_ttl <= 600:
        raise ConfigError("--lease-ttl must be between 0.5 and 600 seconds")

    bridge = _worker_mqtt(args)
    return _run_until_signal(lambda: LogWorker(
        args.bus, specs, name=args.name, lease_ttl=args.lease_ttl,
        retention=args.bus_retention, start_from=args.start_from, mqtt=bridge).run())


def _worker_mqtt(args: argparse.Namespace) -> Any:
    """``earshot worker --mqtt URL``: the bridge for its processors' events (or None)."""
    if not args.mqtt:
        return None
    from earshot.integrations.mqtt import MqttBridge, paho_module

    paho_module()  # MissingDependency → exit 2 with the install hint
    return MqttBridge(args.mqtt, role="worker",
                      cafile=str(args.cafile) if args.cafile else None)


def _run_until_signal(make: Callable[[], Any]) -> int:
    """Run a worker's coroutine until it ends or SIGINT/SIGTERM cancels it."""
    import signal

    async def main() -> int:
        task = asyncio.ensure_future(make())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return EXIT_OK

    return _run_client(main)


def _worker_asr(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    """``earshot worker asr``: the speech-to-text engine and model, loaded as ``serve`` does."""
    from earshot.asr.loading import load_asr
    from earshot.config import env_overrides, merge_settings
    from earshot.config.cli import cli_overrides
    from earshot.processors.builtin.asr import Asr
    from earshot.processors.registry import ProcessorSpec

    settings = merge_settings(env=env_overrides(groups=["asr"]), cli=cli_overrides(args, ["asr"]))
    loaded = load_asr(settings)
    if loaded.scheduler is None:
        raise ConfigError(f"cannot run asr: {loaded.reason}")
    cls = type("Asr", (Asr,), {"scheduler": loaded.scheduler})
    spec = ProcessorSpec(cls, options, "asr")
    spec.make()
    return spec


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from earshot.client import Reconnect
    from earshot.cluster.worker import Worker
    from earshot.processors.registry import parse_cli_spec, resolve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    specs = [_worker_asr(args, opts) if ref == "asr" else resolve(ref, opts)
             for ref, opts in map(parse_cli_spec, args.processor)]  # ProcessorError → 2
    if args.bus:
        return _run_log_worker(args, specs)
    if len(specs) > 1:
        raise ConfigError("one processor per worker with --url; several need --bus")
    spec = specs[0]
    bridge = _worker_mqtt(args)  # (a bad --mqtt URL: exit 2 before connecting anywhere)

    return _run_until_signal(lambda: Worker(
        args.url, spec, stream=args.stream, token=args.token, name=args.name,
        reconnect=Reconnect(attempts=args.retries), ssl=_ssl(args), mqtt=bridge).run())


def cmd_listen(args: argparse.Namespace) -> int:
    from earshot.client.listen import Listener

    async def main() -> int:
        listener = Listener(args.url, args.stream, codec=args.codec, token=args.token,
                            out=args.out, play=args.out is None or args.play,
                            seconds=args.seconds, ssl=_ssl(args))
        stats = await listener.run()
        s = stats.summary()
        if s["recorded"]:  # --out alone: every frame from the first heard to the end
            start = (s["first_offset"] or 0) / max(s["rate"], 1)
            print(f"recorded {s['seconds']:.2f} s of {s['stream']} (from {start:.2f} s into "
                  f"it) to {args.out}: concealed {s['concealed_ms']:.0f} ms (audio the relay "
                  f"dropped); arrival delay p50 {s['delay_p50_ms']:.0f} ms, p99 "
                  f"{s['delay_p99_ms']:.0f} ms; {s['bytes_in']} bytes received",
                  file=sys.stderr)
            return EXIT_OK
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
def asr_options(p: argparse.ArgumentParser) -> None:
    """The speech-to-text options, the same for ``serve`` and ``worker`` (from the settings'
    ``asr`` group, :mod:`earshot.config.groups`)."""
    from earshot.config.cli import add_settings_options

    add_settings_options(p, ["asr"])


def build_parser() -> argparse.ArgumentParser:
    from earshot.config.cli import CONFIG_HELP, add_settings_options

    p = argparse.ArgumentParser(prog="earshot", description="Self-hosted real-time audio server")
    p.add_argument("--version", action="version", version=f"earshot {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server (options also from EARSHOT_* variables)")
    s.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    add_settings_options(s)  # every setting's option, by group (earshot.config)
    s.set_defaults(func=cmd_serve)

    def client_opts(c: argparse.ArgumentParser) -> None:
        c.add_argument("--url", default=_env("url", DEFAULT_URL), type=server_url,
                       help=f"server ingest URL (default {DEFAULT_URL}, or EARSHOT_URL)")
        c.add_argument("--token", default=_env("token"), help="bearer token (or EARSHOT_TOKEN)")
        c.add_argument("--cafile", default=_env("cafile"), type=Path,
                       help="trust only these CA certificates (PEM) for wss:// and https:// "
                            "(default: the system's trust store; or EARSHOT_CAFILE)")

    def codec_opts(c: argparse.ArgumentParser) -> None:
        c.add_argument("--codec", choices=["pcm", "opus"], default="pcm",
                       help="pcm (lossless, default) or opus (~30 kbit/s; 8/12/16/24/48 kHz)")
        c.add_argument("--bitrate", type=OPUS_BITRATE, default=32000,
                       help="opus bitrate (32000)")

    from earshot.cli.call import add_call

    add_call(sub, client_opts)  # `earshot call ROOM` (cli/call.py)
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
    c.add_argument("--retries", type=COUNT, default=30, help="reconnect attempts (default 30)")
    codec_opts(c)
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_send)

    m = sub.add_parser("stream", help="stream the microphone until Ctrl-C")
    client_opts(m)
    m.add_argument("--device", type=lambda v: int(v) if v.isdigit() else v,
                   help="input device index or name")
    m.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    m.add_argument("--rate", type=SAMPLE_RATE,
                   help="stream sample rate (default: the device's); the device is opened "
                        "at its own rate and resampled with soxr")
    m.add_argument("--channels", type=CHANNELS,
                   help="stream channels (default 1 for a microphone, the file's for "
                        "--file); mixed down properly, (L+R)/2")
    m.add_argument("--name", help="stream name")
    m.add_argument("--processors", nargs="*", help="processors to run on the stream")
    m.add_argument("--file", type=Path, help="play this file in real time instead of a mic")
    m.add_argument("--spool", type=Path, metavar="DIR",
                   help="store and forward: keep unacknowledged audio in this directory, "
                        "deliver it whenever the server is reachable (delivers what an "
                        "earlier run left first)")
    m.add_argument("--spool-size", type=size_arg, default=1 << 30, metavar="SIZE",
                   help="spool limit, all entries together (default 1G)")
    m.add_argument("--when-full", choices=["drop-oldest", "stop"], default="drop-oldest",
                   help="spool full: drop the oldest unsent audio and report it (default), "
                        "or stop capture")
    m.add_argument("--spool-fsync", choices=["interval", "always", "never"],
                   default="interval", help="spool durability: fsync every second "
                                            "(default), every block, or never")
    codec_opts(m)
    m.add_argument("-q", "--quiet", action="store_true", help="no level bar")
    m.set_defaults(func=cmd_stream)

    sp = sub.add_parser("spool", help="show what a spool holds; --flush delivers it")
    sp.add_argument("dir", type=Path)
    client_opts(sp)
    sp.add_argument("--flush", action="store_true",
                    help="deliver everything (oldest first), exit 0 once all is acknowledged")
    sp.add_argument("--json", action="store_true", help="print the status as JSON")
    sp.add_argument("--retries", type=int, default=30,
                    help="reconnect attempts before giving up with --flush (default 30)")
    sp.set_defaults(func=cmd_spool)

    ls = sub.add_parser("streams", help="list streams")
    client_opts(ls)
    ls.add_argument("--limit", type=Range(int, 1, 500), default=50,
                    help="how many, newest first (default 50, at most 500)")
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
    li.add_argument("--out", type=Path, help="record to this WAV file: every frame from now to "
                                             "the stream's end (with --play: what is heard)")
    li.add_argument("--play", action="store_true", help="also play it with --out")
    li.add_argument("--codec", choices=["pcm", "opus"], default="pcm",
                    help="what to receive: pcm (default) or opus (~30 kbit/s)")
    li.add_argument("--seconds", type=SECONDS, help="stop after this much audio")
    li.set_defaults(func=cmd_listen)

    rp = sub.add_parser("replay", help="run a processor over a finished stream's archive; "
                                       "its events are published and stored like live ones")
    rp.add_argument("stream")
    rp.add_argument("--processor", required=True, help="e.g. vad (a processor the server "
                                                       "offers)")
    client_opts(rp)
    rp.add_argument("--json", action="store_true", help="print the whole result as JSON")
    rp.add_argument("--all", action="store_true", help="also print level/spectrogram events")
    rp.add_argument("--timeout", type=SECONDS, default=600.0, help="seconds to wait (600)")
    rp.set_defaults(func=cmd_replay)

    w = sub.add_parser("worker", help="run processors on live audio: from the Redis log "
                                      "(--bus), or from one server (--url)")
    w.add_argument("processor", nargs="+",
                   help="built-in name or package.module:Class, with options: "
                        "mypkg.vad:MyVad,threshold=0.6 (several with --bus)")
    w.add_argument("--bus", default=_env("bus"),
                   help="redis://HOST:PORT/DB: consume the cluster's audio log in consumer "
                        "groups, one per processor kind (or EARSHOT_BUS)")
    w.add_argument("--from", dest="start_from", choices=["latest", "oldest"],
                   default="latest", help="with --bus, a new processor kind starts at the "
                   "live edge (default) or at the oldest entry still on the log")
    w.add_argument("--bus-retention", type=SECONDS, default=60.0,
                   help="with --bus, seconds the events it publishes stay on Redis (60)")
    w.add_argument("--lease-ttl", type=SECONDS, default=3.0,
                   help="with --bus, seconds before a dead worker's streams are taken over")
    asr_options(w)
    client_opts(w)
    w.add_argument("--stream", default="*", help="stream id, or * for every stream (default)")
    w.add_argument("--name", help="worker name shown in its events")
    w.add_argument("--retries", type=COUNT, default=None,
                   help="give up after this many failed reconnects (default: never)")
    w.add_argument("--mqtt", metavar="URL", default=_env("mqtt"),
                   help="also publish its processors' events to an MQTT broker, as "
                        "`earshot serve --mqtt` does (or EARSHOT_MQTT; mqtts:// trusts "
                        "--cafile when given)")
    w.set_defaults(func=cmd_worker)
    from earshot.cli.token import add_parser as add_token_parser

    add_token_parser(sub)  # earshot token create (cli/token.py)
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
