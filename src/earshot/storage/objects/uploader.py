"""The thin driver: an :class:`UploadQueue` run against a store from an asyncio loop.

Uploads run in a small thread pool of their own (``concurrency`` threads), never on the
event loop and never in its default executor; :meth:`Uploader.submit` only queues, so the
ingest path that calls it never waits for the store. :meth:`Uploader.start` checks the
store at once and says clearly what is wrong (missing bucket, refused credentials,
unreachable endpoint), but a store that fails its check does not stop anything: the state
shows in :meth:`Uploader.report` (``/healthz`` degraded, ``/metrics``), uploads are retried
with backoff, and they go through once the store is right.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from earshot.storage.objects.queue import UploadJob, UploadQueue
from earshot.storage.objects.s3 import ObjectStoreError, UploadResult

log = logging.getLogger("earshot.storage.objects")


class Store(Protocol):
    @property
    def where(self) -> str: ...

    def check(self) -> None: ...

    def upload(self, path: str, name: str) -> UploadResult: ...


OnUploaded = Callable[[UploadJob, UploadResult], Any]


class Uploader:
    def __init__(self, store: Store, queue: UploadQueue | None = None, *,
                 on_uploaded: OnUploaded | None = None, check_timeout: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.queue = queue if queue is not None else UploadQueue()
        self.on_uploaded = on_uploaded
        self.check_timeout = check_timeout  # start-up is never held longer by the store
        self.clock = clock
        self.state = "unknown"  # "ok", or an ObjectStoreError reason
        self.error: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=self.queue.concurrency,
                                        thread_name_prefix="earshot-upload")
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Event | None = None

    # -- life --------------------------------------------------------------------------------
    async def start(self, *, check: bool = True) -> None:
        """Check the store (a clear error in the log and the report if it fails: nothing
        else is stopped), then start uploading."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        if check:
            await self.check()
        self._task = asyncio.create_task(self._run(), name="earshot-uploader")

    async def check(self) -> bool:
        assert self._loop is not None
        try:
            await asyncio.wait_for(self._loop.run_in_executor(self._pool, self.store.check),
                                   self.check_timeout)
        except (ObjectStoreError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                exc = ObjectStoreError("unreachable", f"{self.store.where} did not answer "
                                       f"within {self.check_timeout:g} s")
            self._set_state(exc.reason, exc.message)
            log.error("archive store %s: %s (archives stay on local disk and are uploaded "
                      "once it works)", self.store.where, exc.message)
            return False
        self._set_state("ok", None)
        log.info("archive store %s: ok", self.store.where)
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; wait up to ``timeout`` for uploads under way. What is still
        queued stays on local disk (the caller queues it again at the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running:
            await asyncio.wait(list(self._running), timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the caller's side -------------------------------------------------------------------
    def submit(self, job: UploadJob) -> None:
        """Queue a closed file (from the loop's thread): returns at once."""
        self.queue.add(job, self.clock())
        if self._idle is not None:
            self._idle.clear()
        if self._wake is not None:
            self._wake.set()

    def submit_threadsafe(self, job: UploadJob) -> None:
        """Queue a closed file from any thread."""
        assert self._loop is not None, "start() first"
        self._loop.call_soon_threadsafe(self.submit, job)

    def retry_now(self) -> int:
        """Every job waiting out a backoff is due now (the store works again)."""
        moved = self.queue.retry_now(self.clock())
        if moved and self._wake is not None:
            self._wake.set()
        return moved

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Until nothing is queued or under way (tests, an orderly shutdown)."""
        assert self._idle is not None, "start() first"
        if len(self.queue) == 0:
            return
        self._idle.clear()
        await asyncio.wait_for(self._idle.wait(), timeout)

    def report(self) -> dict[str, Any]:
        """For /healthz (``degraded`` when the store fails or uploads are being retried)
        and /metrics."""
        q = self.queue.report(self.clock())
        return {"store": self.store.where, "state": self.state, "error": self.error,
                "degraded": self.state != "ok" or q["retrying"] > 0, **q}

    # -- the loop ----------------------------------------------------------------------------
    def _set_state(self, state: str, error: str | None) -> None:
        self.state, self.error = state, error

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            now = self.clock()
            while (job := self.queue.take(now)) is not None:
                task = asyncio.create_task(self._upload(job))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if len(self.queue) == 0:
                self._idle.set()
            wait = self.queue.next_due(self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _upload(self, job: UploadJob) -> None:
        assert self._loop is not None and self._wake is not None
        try:
            result = await self._loop.run_in_executor(self._pool, self.store.upload,
                                                      job.path, job.name)
        except ObjectStoreError as exc:
            delay = self.queue.failed(job.name, self.clock(), exc.message,
                                      permanent=not exc.transient)
            if exc.transient:
                self._set_state(exc.reason, exc.message)
                log.warning("upload of %s failed, retrying in %.1f s: %s", job.name, delay,
                            exc.message)
            else:
                log.error("upload of %s dropped: %s", job.name, exc.message)
        except Exception as exc:  # a bug or an unforeseen library error: retried, logged
            delay = self.queue.failed(job.name, self.clock(), repr(exc))
            self._set_state("error", repr(exc))
            log.exception("upload of %s failed, retrying in %.1f s", job.name, delay)
        else:
            self.queue.succeeded(job.name, self.clock())
            self._set_state("ok", None)
            if self.on_uploaded is not None:
                try:
                    done = self.on_uploaded(job, result)
                    if inspect.isawaitable(done):
                        await done
                except Exception:
                    log.exception("after uploading %s", job.name)
        finally:
            self._wake.set()
