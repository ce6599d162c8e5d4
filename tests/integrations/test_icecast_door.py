"""Icecast source requests, sans I/O: the heads real sources send, the answers, the body."""

from __future__ import annotations

import base64

import pytest

from earshot.integrations.common import Close, DoorError, Send
from earshot.integrations.icecast import (
    Body,
    BodyEnd,
    IcecastConnection,
    SourceRequested,
    parse_head,
    response,
)

AUTH = "Basic " + base64.b64encode(b"source:secret").decode()

# what ffmpeg 5.1 sends for `-f mp3 icecast://source:secret@HOST:PORT/kitchen?processors=vad`
FFMPEG_PUT = (
    "PUT /kitchen?processors=vad HTTP/1.1\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\n"
    "Expect: 100-continue\r\nConnection: close\r\nHost: 127.0.0.1:41723\r\n"
    "Content-Type: audio/mpeg\r\nIcy-MetaData: 1\r\nIce-Public: 0\r\n"
    f"Authorization: {AUTH}\r\n\r\n").encode()
# and with `-legacy_icecast 1 -content_type audio/ogg -ice_name Kitchen`
FFMPEG_SOURCE = (
    "SOURCE /kitchen HTTP/1.1\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\n"
    "Connection: close\r\nHost: 127.0.0.1:45839\r\nContent-Type: audio/ogg\r\n"
    "Icy-MetaData: 1\r\nIce-Name: Kitchen\r\nIce-Description: the kitchen mic\r\n"
    f"Ice-Public: 0\r\nAuthorization: {AUTH}\r\n\r\n").encode()


def head_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n")[0]


def test_ffmpegs_put_is_understood() -> None:
    r = parse_head(head_of(FFMPEG_PUT))
    assert (r.method, r.mount, r.name) == ("PUT", "/kitchen", "kitchen")
    assert (r.content_type, r.format) == ("audio/mpeg", "mp3")
    assert r.processors == ("vad",)
    assert (r.user, r.password, r.token) == ("source", "secret", "secret")
    assert r.expect_continue and r.content_length is None
    assert r.user_agent == "Lavf/59.27.100" and dict(r.ice) == {"public": "0"}
    assert r.client_info() == {"dialect": "icecast", "method": "PUT", "mount": "/kitchen",
                               "content_type": "audio/mpeg", "user_agent": "Lavf/59.27.100",
                               "ice": {"public": "0"}}


def test_the_legacy_source_method_and_ice_headers() -> None:
    r = parse_head(head_of(FFMPEG_SOURCE))
    assert (r.method, r.name, r.format, r.processors) == ("SOURCE", "kitchen", "ogg", None)
    assert not r.expect_continue
    assert dict(r.ice) == {"name": "Kitchen", "description": "the kitchen mic", "public": "0"}


@pytest.mark.parametrize("ctype, fmt", [
    ("audio/mpeg", "mp3"), ("audio/ogg; codecs=opus", "ogg"), ("application/ogg", "ogg"),
    ("audio/aac", "aac"), ("AUDIO/FLAC", "flac"), ("audio/x-flac", "flac")])
def test_content_types(ctype: str, fmt: str) -> None:
    r = parse_head(f"PUT /a HTTP/1.1\r\nContent-Type: {ctype}".encode())
    assert r.format == fmt


def test_a_source_without_content_type_is_mp3_as_icecast_assumes_but_a_put_is_refused(
        ) -> None:
    assert parse_head(b"SOURCE /a HTTP/1.0\r\nAuthorization: " + AUTH.encode()).format == "mp3"
    with pytest.raises(DoorError) as info:
        parse_head(b"PUT /a HTTP/1.1\r\nAuthorization: " + AUTH.encode())
    assert (info.value.status, info.value.code) == (400, "no_content_type")
    assert "audio/mpeg" in info.value.message


@pytest.mark.parametrize("head, status, code", [
    (b"PUT /a HTTP/1.1\r\nContent-Type: video/mp4", 415, "unsupported_content_type"),
    (b"PUT /a HTTP/1.1\r\nContent-Type: text/html", 415, "unsupported_content_type"),
    (b"GET /a HTTP/1.1", 405, "method_not_allowed"),
    (b"POST /a HTTP/1.1\r\nContent-Type: audio/mpeg", 405, "method_not_allowed"),
    (b"PUT /a ICE/1.0\r\nContent-Type: audio/mpeg", 400, "bad_request"),
    (b"PUT /a\r\nContent-Type: audio/mpeg", 400, "bad_request"),
    (b"PUT / HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT kitchen HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT /../etc HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT /a//b HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT /a%00b HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT /radio/live HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT /a%2Fb HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT /a%20b HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT /" + b"a" * 201 + b" HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT http://evil/a HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_mount"),
    (b"PUT /a?processors=vad;rm HTTP/1.1\r\nContent-Type: audio/mpeg", 400, "bad_processors"),
    (b"PUT /a HTTP/1.1\r\nContent-Type: audio/mpeg\r\nTransfer-Encoding: chunked", 400,
     "bad_request"),
    (b"PUT /a HTTP/1.1\r\nContent-Type: audio/mpeg\r\nContent-Length: -5", 400,
     "bad_request"),
    (b"PUT /a HTTP/1.1\r\nno colon here", 400, "bad_request"),
    (b"PUT /a HTTP/1.1\r\nContent-Type: audio/mpeg\r\nAuthorization: Basic !!!", 401,
     "bad_auth"),
])
def test_bad_heads_are_refused_with_their_status(head: bytes, status: int, code: str) -> None:
    with pytest.raises(DoorError) as info:
        parse_head(head)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message


def test_credentials_other_than_user_source_present_no_token() -> None:
    other = "Basic " + base64.b64encode(b"admin:secret").decode()
    r = parse_head(f"PUT /a HTTP/1.1\r\nContent-Type: audio/mpeg\r\nAuthorization: {other}"
                   .encode())
    assert r.user == "admin" and r.token is None
    assert parse_head(b"PUT /a HTTP/1.1\r\nContent-Type: audio/mpeg").token is None
    bearer = parse_head(b"PUT /a HTTP/1.1\r\nContent-Type: audio/mpeg\r\n"
                        b"Authorization: Bearer secret")
    assert bearer.token is None


def test_processors_by_comma_or_repeated_and_names_in_any_script() -> None:
    r = parse_head(b"PUT /live.mp3?processors=vad,level&processors=asr&x=1 HTTP/1.1\r\n"
                   b"Content-Type: audio/mpeg")
    assert r.name == "live.mp3" and r.processors == ("vad", "level", "asr")
    assert parse_head(b"PUT /k%C3%BCche_2 HTTP/1.1\r\nContent-Type: audio/mpeg"
                      ).name == "k\u00fcche_2"
    assert parse_head(b"PUT /a?processors= HTTP/1.1\r\nContent-Type: audio/mpeg"
                      ).processors == ()


def test_ice_values_are_kept_printable_and_bounded() -> None:
    r = parse_head(b"PUT /a HTTP/1.1\r\nContent-Type: audio/mpeg\r\nIce-Name: A\x07B "
                   + b"x" * 300)
    assert r.ice["name"].startswith("AB ") and len(r.ice["name"]) == 200


def test_responses() -> None:
    assert response(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert response(200) == b"HTTP/1.0 200 OK\r\nServer: earshot\r\n\r\n"
    r401 = response(401, "wrong token", realm="earshot")
    head, body = r401.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 401 Unauthorized\r\n")
    assert b'\r\nWWW-Authenticate: Basic realm="earshot"' in head
    assert b"Content-Length: 12" in head and body == b"wrong token\n"
    assert b"\r\nAllow: PUT, SOURCE" in response(405, "no")
    assert response(403, "Mountpoint in use").startswith(b"HTTP/1.0 403 Forbidden\r\n")


# --- the connection ---------------------------------------------------------------------


def test_put_with_expect_gets_100_continue_then_the_body_flows_untouched() -> None:
    c = IcecastConnection(now=0.0)
    assert c.receive(FFMPEG_PUT[:50], 0.01) == []
    [requested] = c.receive(FFMPEG_PUT[50:], 0.02)
    assert isinstance(requested, SourceRequested) and requested.request.name == "kitchen"
    assert c.accept(0.03) == [Send(b"HTTP/1.1 100 Continue\r\n\r\n")]
    body = bytes(range(256)) * 10
    assert c.receive(body[:1000], 0.05) == [Body(body[:1000])]
    assert c.receive(body[1000:], 0.06) == [Body(body[1000:])]
    assert c.received == len(body) and c.next_deadline is None
    assert c.tick(10.0) == []


def test_legacy_source_that_sends_at_once_never_gets_a_200() -> None:
    c = IcecastConnection(now=0.0)
    first = b"OggS\x00\x02" + bytes(100)
    [requested] = c.receive(FFMPEG_SOURCE + first, 0.01)
    assert isinstance(requested, SourceRequested)
    assert c.accept(0.02) == [Body(first)]  # the bytes that came with the head
    assert c.next_deadline is None and c.tick(5.0) == []
    assert c.receive(b"more", 0.1) == [Body(b"more")]


def test_legacy_source_that_waits_gets_its_200_after_the_delay() -> None:
    c = IcecastConnection(now=0.0, response_delay=0.25)
    c.receive(FFMPEG_SOURCE, 0.0)
    assert c.accept(0.01) == []
    assert c.next_deadline == pytest.approx(0.26)
    assert c.tick(0.2) == []
    assert c.tick(0.3) == [Send(b"HTTP/1.0 200 OK\r\nServer: earshot\r\n\r\n")]
    assert c.tick(1.0) == [] and c.receive(b"abc", 1.0) == [Body(b"abc")]


def test_a_body_before_the_delay_cancels_the_200() -> None:
    c = IcecastConnection(now=0.0)
    c.receive(FFMPEG_SOURCE, 0.0)
    c.accept(0.01)
    assert c.receive(b"OggS", 0.1) == [Body(b"OggS")]
    assert c.next_deadline is None and c.tick(1.0) == []


def test_bytes_arriving_while_the_glue_decides_are_kept_in_order() -> None:
    c = IcecastConnection(now=0.0)
    c.receive(FFMPEG_PUT + b"ab", 0.0)
    assert c.receive(b"cd", 0.01) == []
    assert c.accept(0.02) == [Send(response(100)), Body(b"abcd")]


def test_refusals_answer_and_close() -> None:
    c = IcecastConnection(now=0.0)
    c.receive(FFMPEG_PUT, 0.0)
    out = c.refuse(DoorError("unauthorized", "wrong token", status=401))
    assert out[1] == Close() and isinstance(out[0], Send)
    assert b'WWW-Authenticate: Basic realm="earshot"' in out[0].data
    assert c.receive(b"more", 0.1) == []
    bad = IcecastConnection(now=0.0)
    out = bad.receive(b"PUT /a HTTP/1.1\r\nContent-Type: video/mp4\r\n\r\n", 0.0)
    assert out[0] == Send(response(415, "Content-Type 'video/mp4' is not supported; send one "
                                        "of application/ogg, audio/aac, audio/aacp, "
                                        "audio/flac, audio/mp3, audio/mpeg, audio/ogg, "
                                        "audio/x-aac, audio/x-flac"))
    assert out[1] == Close()


def test_a_head_that_never_ends_or_never_comes() -> None:
    c = IcecastConnection(now=0.0, max_head=1000)
    out = c.receive(b"PUT /a HTTP/1.1\r\nX-Pad: " + b"a" * 2000, 0.0)
    assert isinstance(out[0], Send) and out[0].data.startswith(b"HTTP/1.0 431 ")
    slow = IcecastConnection(now=0.0, head_timeout=10.0)
    slow.receive(b"PUT /a HTT", 1.0)
    assert slow.tick(9.0) == []
    out = slow.tick(10.5)
    assert isinstance(out[0], Send) and out[0].data.startswith(b"HTTP/1.0 408 ")
    assert out[1] == Close()


def test_a_content_length_bounds_the_body() -> None:
    c = IcecastConnection(now=0.0)
    c.receive(b"PUT /a HTTP/1.1\r\nContent-Type: audio/mpeg\r\nExpect: 100-continue\r\n"
              b"Content-Length: 6\r\n\r\n", 0.0)
    c.accept(0.0)
    assert c.receive(b"abcd", 0.1) == [Body(b"abcd")]
    assert c.receive(b"efgh", 0.2) == [Body(b"ef"), BodyEnd()]
    assert c.receive(b"ij", 0.3) == []
