"""Planned restarts: drain the publishers on SIGTERM/SIGINT before uvicorn closes anything.

Left alone, uvicorn answers SIGTERM by closing every WebSocket with 1012 at once, before
the application hears of it; audio received but not yet acknowledged is then written
without the client being told. So the application wraps uvicorn's own signal handlers
(installed before the lifespan starts): the first SIGTERM or SIGINT first runs the hub's
drain (new streams and resumes refused, every publisher's audio written and acknowledged,
``shutting_down`` and close 1001, streams left resumable), bounded by a timeout, and only
then hands the signal to uvicorn, which stops as before. A second signal goes to uvicorn at
once (a second Ctrl-C still forces the exit).

The streams held at shutdown are written to ``DATA_DIR/held-at-shutdown.json``; the next
start keeps their slots (``--max-streams``) for a while, so resumes are admitted first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from earshot.wire.codes import Code

if TYPE_CHECKING:
    from earshot.server.streams.hub import Hub
    from earshot.server.streams.live import LiveStream

log = logging.getLogger("earshot")

HELD_FILE = "held-at-shutdown.json"
DRAIN_TIMEOUT = 8.0  # seconds the drain may take before uvicorn stops anyway
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def drain_on_signals(drain: Callable[[], Awaitable[object]],
                     timeout: float) -> Callable[[], None]:
    """Wrap the current handlers of SIGTERM and SIGINT; returns a function restoring them.

    Does nothing off the main thread (signals can only be handled there)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    state: dict[str, Any] = {"task": None}

    def hand_on(sig: int, frame: Any) -> None:
        prev = previous.get(sig)
        if callable(prev):
            prev(sig, frame)
        elif prev == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    async def run(sig: int, frame: Any) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(drain(), timeout)
        except TimeoutError:
            log.warning("drain did not finish within %g s; stopping anyway", timeout)
        except Exception:
            log.exception("drain failed; stopping anyway")
        log.info("drained in %.2f s", time.monotonic() - started)
        hand_on(sig, frame)

    def start(sig: int, frame: Any) -> None:
        if state["task"] is None:
            state["task"] = loop.create_task(run(sig, frame), name="earshot-drain")
        else:
            hand_on(sig, frame)  # a second signal: uvicorn's own behaviour

    def handler(sig: int, frame: Any) -> None:
        if state["task"] is not None:
            hand_on(sig, frame)
            return
        loop.call_soon_threadsafe(start, sig, frame)

    for sig in SIGNALS:
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, prev)

    return restore


def write_held(data_dir: Path, stream_ids: list[str]) -> None:
    """Remember the streams held at a planned shutdown (for the next start)."""
    path = data_dir / HELD_FILE
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps({"at": time.time(), "streams": stream_ids}))
        tmp.replace(path)


def read_held(data_dir: Path, grace: float) -> tuple[list[str], float]:
    """The streams held at the last planned shutdown and the seconds of grace left for
    them; the file is consumed. ``([], 0)`` when there is none (or it is unreadable)."""
    path = data_dir / HELD_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], 0.0
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    try:
        ids = [str(s) for s in raw["streams"]]
        left = grace - max(0.0, time.time() - float(raw["at"]))
    except (KeyError, TypeError, ValueError):
        return [], 0.0
    return (ids, left) if left > 0 else ([], 0.0)


async def drain(hub: Hub, timeout: float = 5.0) -> list[str]:
    """A planned shutdown (SIGTERM/SIGINT): refuse new streams and resumes, write and
    acknowledge what every publisher sent, tell it ``shutting_down`` (close 1001; it stops
    taking audio from then on) and leave its stream resumable. Streams being stopped
    finish their stop. Returns the streams that were held."""
    hub.admission.draining = True
    hub.load.show(hub.live, hub.clock())
    held = [lv for lv in hub.live.values()
            if lv.owner is not None and lv.detaching is None]

    async def tell(live: LiveStream) -> None:
        owner = live.owner
        if owner is None or live.detaching is not None:
            return
        await hub.flush(live)
        with contextlib.suppress(Exception):
            await owner.kick(Code.SHUTTING_DOWN, "the server is restarting; resume shortly")

    deadline = hub.clock() + timeout
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(tell(lv) for lv in held)), timeout)
        # a resume that was under way when the drain began
        late = [lv for lv in hub.live.values() if lv.owner is not None
                and lv.detaching is None and lv not in held]
        held += late
        await asyncio.wait_for(asyncio.gather(*(tell(lv) for lv in late)),
                               max(0.1, deadline - hub.clock()))
    while hub.live and hub.clock() < deadline:  # each session detaches as it closes
        await asyncio.sleep(0.02)
    ids = [lv.id for lv in held]
    if hub.settings.server.processes == 1 and not hub.bus.remote:  # one gateway, its own dir
        write_held(hub.settings.server.data_dir, ids)
    log.info("drained %d stream(s) for a restart; they stay resumable", len(ids))
    return ids
