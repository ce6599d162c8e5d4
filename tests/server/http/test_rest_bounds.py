"""REST bounded per client (issue 19, item 8 and 7): the guard's per-address cap (a core,
time passed in), the RFC 5987 Content-Disposition, a source's start time."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

from earshot.server.http.audio_range import content_disposition, start_time
from earshot.server.http.guard import Guard, GuardCore, OriginPolicy, page_file
from earshot.storage.metadata import StreamRecord


def core(per_client: int = 2, total: int = 5) -> GuardCore:
    return GuardCore(OriginPolicy(), conn_rate=0, conn_burst=1, auth_fail_rate=0,
                     auth_fail_burst=1, max_rest_requests=total, max_rest_per_client=per_client)


def test_one_address_holds_at_most_its_share() -> None:
    g = core()
    assert g.enter_rest("a", 0) is None and g.enter_rest("a", 0) is None
    refused = g.enter_rest("a", 0)
    assert refused is not None and refused.status == 429 and refused.limit == "per_client"
    assert "2 requests in flight" in refused.message
    for addr in ("b", "b", "c"):
        assert g.enter_rest(addr, 0) is None
    assert g.enter_rest("d", 0) is not None  # the total (5) is reached
    g.leave_rest("a")
    assert g.rest_by_client == {"a": 1, "b": 2, "c": 1}
    assert g.enter_rest("a", 0) is None
    for addr in ("a", "a", "b", "b", "c"):
        g.leave_rest(addr)
    assert g.rest_by_client == {} and g.rest_in_flight == 0  # (no key kept per address)
    assert g.report()["refused"] == {"rate": 0, "concurrency": 1, "per_client": 1}


def test_the_page_s_files_are_rate_limited_but_never_held_in_flight() -> None:
    assert page_file("/") and page_file("/web/app.js") and page_file("/web/call/probe.js")
    assert not any(page_file(p) for p in ("/api/streams", "/v1/audio/transcriptions",
                                          "/metrics", "/webhook", "/web"))
    g = core(per_client=2, total=2)
    assert g.enter_rest("a", 0) is None and g.enter_rest("a", 0) is None
    assert g.enter_rest("a", 0) is not None  # an API call: the address's two places are held
    for _ in range(20):  # the page's modules, in parallel: only the rate applies
        assert g.enter_rest("a", 0, held=False) is None
    assert g.rest_in_flight == 2 and g.rest_by_client == {"a": 2}
    limited = GuardCore(OriginPolicy(), conn_rate=0, conn_burst=1, auth_fail_rate=0,
                        auth_fail_burst=1, rest_rate=1, rest_burst=3)
    assert [limited.enter_rest("a", 0, held=False) is None for _ in range(4)] == [
        True, True, True, False]


async def test_a_page_load_is_not_refused_while_the_address_s_api_places_are_taken() -> None:
    """Through the ASGI middleware: two slow API calls hold both of an address's places;
    the page and its modules are still served, a third API call is refused (429)."""
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].startswith("/api/"):
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = Guard(app, core(per_client=2, total=10))

    async def get(path: str) -> int:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        await guard({"type": "http", "path": path, "method": "GET", "client": ("10.0.0.1", 1),
                     "headers": [(b"host", b"127.0.0.1:8000")]}, receive, send)
        return int(sent[0]["status"])

    slow = [asyncio.create_task(get("/api/streams/x/audio")) for _ in range(2)]
    await asyncio.sleep(0.01)
    pages = await asyncio.gather(*(get(p) for p in ["/", *(f"/web/m{i}.js" for i in range(9))]))
    assert pages == [200] * 10
    assert await get("/api/streams") == 429
    release.set()
    assert await asyncio.gather(*slow) == [200, 200]
    assert await get("/api/streams") == 200


def test_content_disposition_is_latin1_safe_with_the_exact_name_in_filename_star() -> None:
    for name in ['Кухня "мик" 台所.wav', 'a"b\\c\r\n.wav', "plain.wav", ""]:
        header = content_disposition(name)
        header.encode("latin-1")  # a header value must be: was a 500
        fallback = header.split('filename="')[1].split('"; filename*=')[0]
        assert '"' not in fallback and "\\" not in fallback and fallback.isprintable()
        assert unquote(header.split("filename*=UTF-8''")[1]) == name
    assert content_disposition("x.srt") == "attachment; filename=\"x.srt\"; filename*=UTF-8''x.srt"


def test_a_source_starts_at_a_finite_captured_at_or_at_its_creation() -> None:
    def rec(client: dict[str, object]) -> StreamRecord:
        return StreamRecord(id="s", name="n", created=1000.0, format="s16",
                            archive_format="wav", rate=16000, channels=1, path="p",
                            token_hash="", client=client)

    assert start_time(rec({"captured_at": 900.5})) == 900.5
    assert start_time(rec({"captured_at": "900.5"})) == 900.5
    for bad in ("nan", "inf", "-inf", "soon", None, [1], 1e300, -5):
        assert start_time(rec({"captured_at": bad})) == 1000.0, bad
    assert start_time(rec({})) == 1000.0
