"""``earshot call ROOM``: join a call from the command line.

Microphone in, speaker out by default (``pip install 'earshot[mic,call]'``). ``--file F``
plays a file as the microphone, in real time, and leaves once it has been sent and
``--linger`` seconds more have passed; ``--out heard.wav`` records what this participant
heard, from joining to leaving, on its own clock (48 kHz, gaps as silence). Room events
are printed as JSON lines on stdout (``room``, ``joined``, ``left``, ``speaking``,
``silent``, ``muted``, ``unmuted``, ``ended``); ``--levels`` adds the level readings.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from earshot.errors import ClientError, MissingDependency

__all__ = ["add_call", "cmd_call"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 4
ROOM_EVENTS = ("room", "joined", "left", "speaking", "silent", "muted", "unmuted", "ended")


def _switch(value: str) -> bool:
    v = value.lower()
    if v in ("on", "true", "1", "yes"):
        return True
    if v in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


def _seconds(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 <= v < 86400:
        raise argparse.ArgumentTypeError(f"seconds must be 0..86400, got {value}")
    return v


def add_call(sub: Any, client_opts: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``call`` subcommand (its parser and options)."""
    c = sub.add_parser("call", help="join a call: microphone in, speaker out (or a file in, "
                                    "a WAV out)")
    c.add_argument("room", help="room name: 1-64 of A-Z a-z 0-9 . _ -")
    client_opts(c)
    c.add_argument("--name", help="your name in the room (default: your user name)")
    c.add_argument("--file", type=Path, help="play this file as the microphone, in real "
                                             "time, then leave")
    c.add_argument("--out", type=Path, help="record what you hear to this WAV file (48 kHz)")
    c.add_argument("--linger", type=_seconds, default=2.0,
                   help="with --file: seconds to stay after the file has been sent (2)")
    c.add_argument("--seconds", type=_seconds, help="leave after this long (default: with "
                                                    "--file, its length plus --linger)")
    for flag, what in (("aec", "echo cancellation"), ("agc", "automatic gain control"),
                       ("ns", "noise suppression")):
        c.add_argument(f"--{flag}", type=_switch, metavar="on|off",
                       help=f"{what} of your microphone (default: on for a microphone, off "
                            "for --file)")
    c.add_argument("--rate", type=int, help="the stream's rate (default: the file's, or "
                                            "48000 for a microphone)")
    c.add_argument("--processor", action="append", metavar="NAME",
                   help="a processor on your stream (repeat for several; default: vad, which "
                        "gives the room's speaking/silent; asr for the call's transcript)")
    c.add_argument("--levels", action="store_true", help="also print the levels events")
    c.add_argument("--min-delay", type=_seconds, default=0.02, metavar="SECONDS",
                   help="the least the jitter buffer holds before playing (0.02: it grows by "
                        "itself when packets come late; more for a bot on a busy machine, "
                        "whose --out then has fewer gaps)")
    c.set_defaults(func=cmd_call)


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        x, rate = sf.read(str(path), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from None
    if x.shape[1] > 1:
        x = x.astype(np.float32).mean(axis=1).round().astype(np.int16)[:, None]
    return x[:, 0], int(rate)


def cmd_call(args: argparse.Namespace) -> int:
    try:
        return int(asyncio.run(_main(args)) or 0)
    except KeyboardInterrupt:
        return 130
    except MissingDependency as exc:
        print(f"earshot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        print(f"earshot: {exc}", file=sys.stderr)
        return EXIT_REFUSED if exc.code else EXIT_FAIL


async def _main(args: argparse.Namespace) -> int:
    from earshot.client.call import MIX_RATE, Call
    from earshot.rooms.echo import RATES

    name = args.name or _default_name()
    samples: np.ndarray | None = None
    rate = args.rate or MIX_RATE
    if args.file is not None:
        samples, file_rate = _read_file(args.file)
        if args.rate and args.rate != file_rate:
            import soxr

            samples = soxr.resample(samples.astype(np.float32) / 32768, file_rate, args.rate)
        else:
            rate = file_rate
    default = args.file is None
    aec, agc, ns = (default if v is None else v for v in (args.aec, args.agc, args.ns))
    if (aec or agc or ns) and rate not in RATES:
        raise ClientError(f"echo cancellation, AGC and NS run at {RATES} Hz; give --rate")
    mic = None
    pos = 0
    if samples is not None:
        src = samples

        def mic(n: int) -> np.ndarray | None:
            nonlocal pos
            chunk = src[pos:pos + n]
            pos += len(chunk)
            return chunk if len(chunk) else None

    def show(e: dict[str, Any]) -> None:
        kind = e.get("type")
        if kind in ROOM_EVENTS or (args.levels and kind == "levels"):
            print(json.dumps(e), flush=True)
        elif kind in ("error", "warning"):
            print(f"earshot: {kind} {e.get('code')}: {e.get('message')}", file=sys.stderr)

    player = None if args.file is not None or args.out is not None else _Speaker()
    processors = tuple(args.processor) if args.processor else ("vad",)
    call = Call(args.url, args.room, name, rate=rate, token=args.token, aec=aec, agc=agc,
                ns=ns, mic=mic, processors=processors, on_event=show, record=args.out is not None,
                on_audio=player.play if player is not None else None,
                min_delay=args.min_delay)
    await call.join()
    try:
        if samples is not None:
            length = len(samples) / rate + args.linger
            limit = args.seconds if args.seconds is not None else length
            await asyncio.sleep(limit)
        else:
            await _microphone(call, rate, args.seconds)
        frames = await call.leave()
    finally:
        await call.close()
        if player is not None:
            player.close()
        if args.out is not None:
            import soundfile as sf

            sf.write(str(args.out), call.heard(), MIX_RATE, subtype="PCM_16")
    st = call.jb.stats
    print(f"left {args.room} as {name}: sent {frames / rate:.2f} s (stream {call.stream}), "
          f"heard {call.ticks * 0.02:.2f} s (concealed {st.concealed_ms:.0f} ms, "
          f"{st.accelerated_frames} frames skipped to catch up, {st.late} late), "
          f"{call.reconnects} reconnects", file=sys.stderr)
    return EXIT_OK


def _default_name() -> str:
    try:
        return getpass.getuser()[:48] or f"guest-{secrets.token_hex(2)}"
    except (KeyError, OSError):
        return f"guest-{secrets.token_hex(2)}"


async def _microphone(call: Any, rate: int, seconds: float | None) -> None:
    from earshot.client.sources import MicSource

    source = MicSource(rate=rate, channels=1)

    async def feed() -> None:
        async for block in source:
            call.send(block)

    task = asyncio.create_task(feed())
    try:
        if seconds is None:
            await task
        else:
            await asyncio.wait_for(asyncio.shield(task), seconds)
    except TimeoutError:
        pass
    finally:
        task.cancel()


class _Speaker:
    """The mix to the default output device (sounddevice), 20 ms at a time."""

    def __init__(self) -> None:
        from earshot.client.sources import import_sounddevice

        sd = import_sounddevice("speaker output")
        self.stream = sd.OutputStream(samplerate=48000, channels=1, dtype="float32",
                                      blocksize=960, latency="low")
        self.stream.start()

    def play(self, frame: np.ndarray) -> None:
        self.stream.write(frame.reshape(-1, 1))

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()
