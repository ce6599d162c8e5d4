"""Secrets stay out of logs (issue 12, must-show 6): the patterns, the log filter and the
client's errors. (A real server's output: tests/e2e/test_redact_server.py.)"""

from __future__ import annotations

import logging

import pytest

from earshot.redact import MASK, RedactFilter, redact

T = "Tk-9f2c81e7d4b0a6"


@pytest.mark.parametrize(("text", "gone"), [
    (f'127.0.0.1:5 - "GET /api/streams?token={T} HTTP/1.1" 200', T),
    (f'"WebSocket /ws/subscribe?stream=*&token={T}&audio=s16" [accepted]', T),
    (f"Authorization: Bearer {T}", T),
    (f"headers={{'authorization': 'Bearer {T}'}}", T),
    (f'{{"type":"start","token":"{T}","rate":16000}}', T),
    (f'{{"type":"ready","resume_token":"{T}"}}', T),
    (f"ws://h/ws?resume_token={T}#x", T),
])
def test_redact_patterns(text: str, gone: str) -> None:
    out = redact(text)
    assert gone not in out and MASK in out
    assert out.replace(MASK, "") != ""


def test_redact_literal_secret_and_keeps_the_rest() -> None:
    assert redact(f"odd place {T} here", [T]) == f"odd place {MASK} here"
    assert redact('"GET /api/streams?limit=5&offset=0 HTTP/1.1"') == \
        '"GET /api/streams?limit=5&offset=0 HTTP/1.1"'
    assert redact("GET /ws?stream=abc&token=T2&audio=s16") == \
        f"GET /ws?stream=abc&token={MASK}&audio=s16"
    assert redact("x", ["", "a"]) == "x"  # empty or tiny secrets never mask everything


async def test_client_errors_never_carry_the_token() -> None:
    from earshot.client import Publisher, Reconnect
    from earshot.errors import ClientError
    from helpers import free_port

    url = f"ws://127.0.0.1:{free_port()}/ws?token={T}"  # nobody listens there
    pub = Publisher(url, rate=16000, reconnect=Reconnect(initial=0.01, first_attempts=0))
    with pytest.raises(ClientError) as exc:
        await pub.start()
    assert exc.value.code == "unreachable" and T not in str(exc.value)
    assert f"token={MASK}" in str(exc.value)


def test_filter_redacts_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("earshot.test.redact")
    handler = logging.StreamHandler()
    records: list[str] = []
    handler.emit = lambda r: records.append(handler.format(r))  # type: ignore[method-assign]
    handler.addFilter(RedactFilter([T]))
    logger.addHandler(handler)
    try:
        logger.warning('%s - "GET %s HTTP/1.1" %d', ("127.0.0.1", 5), f"/x?token={T}", 200)
        try:
            raise ValueError(f"bad url ws://h/ws?token=abc{T}")
        except ValueError:
            logger.exception("failed for %s", T)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 2 and all(T not in r for r in records), records
    assert "/x?token=[redacted]" in records[0] and "200" in records[0]
    assert "ValueError: bad url" in records[1]
