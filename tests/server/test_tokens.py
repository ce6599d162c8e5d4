"""Scoped tokens (JWT, HS256): minted, verified without a database, refused when expired,
tampered or signed by another secret; signed URLs; the pre-auth count (no sockets)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from earshot.config import Settings
from earshot.server.auth import (
    ADMIN,
    AuthError,
    Pending,
    Scope,
    authenticate,
    authenticate_request,
    mint,
    secret_of,
    verify,
)
from earshot.wire.codes import metric_code

SECURED = Settings.of(token="admin-secret").security


def _refused(security: object, token: str | None, code: str = "unauthorized") -> str:
    with pytest.raises(AuthError) as e:
        authenticate(security, token)
    assert e.value.code == code and e.value.status == (401 if code == "unauthorized" else 403)
    return e.value.message


def test_a_minted_token_stands_for_its_claims() -> None:
    secret = secret_of(SECURED)
    assert secret is not None and len(secret) == 32
    token = mint(secret, ["worker", "listen"], ttl=60, names="kitchen/*",
                 processors=["vad"], subject="pi-3")
    p = authenticate(SECURED, token)
    assert p.scopes == {Scope.WORKER, Scope.LISTEN} and p.subject == "pi-3"
    assert (p.names, p.processors, p.path) == ("kitchen/*", frozenset({"vad"}), None)
    assert p.expires is not None and 55 < p.expires - time.time() <= 61
    assert p.allows(Scope.LISTEN, name="kitchen/mic")
    assert not p.allows(Scope.LISTEN, name="garage") and not p.allows(Scope.PUBLISH,
                                                                        name="kitchen/mic")
    assert p.allows(Scope.WORKER, name="kitchen/mic", processor="vad")
    assert not p.allows(Scope.WORKER, name="kitchen/mic", processor="asr")
    assert authenticate(SECURED, "admin-secret") is ADMIN  # --token stays the admin secret


def test_expired_tampered_and_foreign_tokens_are_unauthorized() -> None:
    secret = secret_of(SECURED)
    assert secret is not None
    old = mint(secret, ["admin"], ttl=10, now=time.time() - 60)
    assert _refused(SECURED, old) == "token expired"
    good = mint(secret, ["listen"], ttl=60)
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["scope"] = ["admin"]  # a listener makes itself admin
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _refused(SECURED, f"{head}.{forged}.{sig}") == "invalid token"
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    assert _refused(SECURED, f"{head}.{body}.{flipped}") == "invalid token"
    other = secret_of(Settings.of(token="another-server").security)
    assert other is not None
    assert _refused(SECURED, mint(other, ["admin"], ttl=60)) == "invalid token"
    alg_none = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert _refused(SECURED, f"{alg_none}.{body}.") == "invalid token"  # unsigned
    for bad in (None, "", "nope", "a.b.c"):
        _refused(SECURED, bad)


def test_the_secret_is_the_token_secret_or_derived_from_the_token() -> None:
    both = Settings.of(token="t", token_secret="s").security
    only_secret = Settings.of(token_secret="s").security
    assert secret_of(both) == secret_of(only_secret) != secret_of(Settings.of(token="t").security)
    assert secret_of(Settings().security) is None
    assert authenticate(Settings().security, None).scopes == frozenset(Scope)  # open server
    token = mint(secret_of(only_secret), ["publish"], ttl=60)  # type: ignore[arg-type]
    assert authenticate(only_secret, token).scopes == {Scope.PUBLISH}
    _refused(only_secret, None)  # a token secret alone makes the server need credentials
    rotated = Settings.of(token="t2").security  # rotating --token voids its scoped tokens
    _refused(rotated, mint(secret_of(Settings.of(token="t").security), ["listen"],  # type: ignore[arg-type]
                           ttl=60))
    with pytest.raises(ValueError):
        mint(b"k" * 32, ["root"], ttl=60)
    with pytest.raises(ValueError):
        mint(b"k" * 32, ["listen"], ttl=0)


def test_a_signed_url_opens_its_own_path_only() -> None:
    secret = secret_of(SECURED)
    assert secret is not None
    path = "/api/streams/abc123/audio"
    sig = mint(secret, ["listen"], ttl=30, path=path)
    p = authenticate_request(SECURED, {}, {"sig": sig}, path)
    assert p.path == path and p.scopes == {Scope.LISTEN}
    with pytest.raises(AuthError) as e:
        authenticate_request(SECURED, {}, {"sig": sig}, "/api/streams/other1/audio")
    assert e.value.code == "forbidden"
    with pytest.raises(AuthError) as e:  # nor as a bearer token anywhere else
        authenticate(SECURED, sig)
    assert e.value.code == "forbidden"
    with pytest.raises(AuthError) as e:
        authenticate_request(SECURED, {}, {"sig": mint(secret, ["listen"], ttl=1,
                                                       path=path, now=time.time() - 10)}, path)
    assert (e.value.code, e.value.message) == ("unauthorized", "token expired")
    assert verify(secret, sig).path == path


def test_unauthenticated_connections_are_counted_per_address_and_in_total() -> None:
    pending = Pending(total=3, per_address=2)
    assert pending.enter("a") is None and pending.enter("a") is None
    assert "per-address" in (pending.enter("a") or "")
    assert pending.enter("b") is None
    assert "--max-preauth" in (pending.enter("c") or "")
    pending.leave("a")
    assert pending.enter("c") is None
    for addr in ("a", "b", "c", "c"):
        pending.leave(addr)
    assert pending.held == 0 and pending.by_address == {}


def test_metric_labels_come_from_the_codes() -> None:
    assert metric_code("storage_full") == "storage_full"
    assert {metric_code(f"invented_{i}") for i in range(50)} == {"other"}
    assert metric_code(None) == metric_code(["x"]) == "other"


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    from earshot.server import auth

    secret = secret_of(SECURED)
    assert secret is not None
    token = mint(secret, ["listen"], ttl=60)
    first = authenticate(SECURED, token)
    assert authenticate(SECURED, token) is first  # remembered: no second signature check
    later = time.time() + 120
    monkeypatch.setattr(auth.time, "time", lambda: later)
    assert _refused(SECURED, token) == "token expired"
    assert (secret, token) not in auth._verified
