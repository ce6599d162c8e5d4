"""REST bounded per client (issue 19, item 8 and 7): the guard's per-address cap (a core,
time passed in), the RFC 5987 Content-Disposition, a source's start time."""

from __future__ import annotations

from urllib.parse import unquote

from earshot.server.http.audio_range import content_disposition, start_time
from earshot.server.http.guard import GuardCore, OriginPolicy
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
