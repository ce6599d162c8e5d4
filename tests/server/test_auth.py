"""Principals and scopes, without sockets."""

from __future__ import annotations

import pytest

from earshot.config import Settings
from earshot.server.auth import ADMIN, OPEN, AuthError, Principal, Scope, authenticate


def test_an_open_server_grants_everything_and_a_token_server_needs_the_token() -> None:
    assert authenticate(Settings().security, None) is OPEN
    secured = Settings.of(token="s3cret").security
    assert authenticate(secured, "s3cret") is ADMIN
    for bad in (None, "nope", ""):
        with pytest.raises(AuthError) as e:
            authenticate(secured, bad)
        assert (e.value.code, e.value.status) == ("unauthorized", 401)


def test_scopes_names_and_processors() -> None:
    p = Principal("t", frozenset({Scope.PUBLISH, Scope.LISTEN}), names="kitchen/*")
    assert p.allows(Scope.PUBLISH, name="kitchen/mic")
    assert not p.allows(Scope.PUBLISH, name="garage")
    assert not p.allows(Scope.PUBLISH)  # a name-limited grant does not cover unnamed streams
    assert not p.allows(Scope.WORKER, name="kitchen/mic")
    w = Principal("w", frozenset({Scope.WORKER}), processors=frozenset({"vad"}))
    assert w.allows(Scope.WORKER, processor="vad") and not w.allows(Scope.WORKER,
                                                                     processor="asr")
    with pytest.raises(AuthError, match="worker scope for processor 'asr'") as e:
        w.require(Scope.WORKER, processor="asr")
    assert (e.value.code, e.value.status) == ("forbidden", 403)
    assert ADMIN.allows(Scope.WORKER, name="x", processor="y")
