"""Who may do what: credentials in, a :class:`Principal` out, and one check per action.

Every door (the ingest WebSocket, ``/ws/subscribe``, REST, and each foreign protocol)
asks the same two questions the same way::

    principal = authenticate(settings.security, presented)   # AuthError: unauthorized
    principal.require(Scope.PUBLISH, name="kitchen")          # AuthError: forbidden

A server without ``--token`` is open (loopback only, or ``--no-auth``): everyone is a
principal with every scope. With ``--token`` the token is the admin secret: it grants
every scope. (Scoped, signed tokens are issued from it: see :func:`authenticate`.)
"""

from __future__ import annotations

import enum
import fnmatch
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from earshot.errors import EarshotError
from earshot.wire.codes import Code


class Scope(enum.StrEnum):
    """What a credential may do."""

    PUBLISH = "publish"  # open and resume streams (ingest, and every foreign protocol)
    LISTEN = "listen"  # subscribe to events and audio, download audio and transcripts
    WORKER = "worker"  # post processors' events back for streams
    ADMIN = "admin"  # delete, replay, configuration, metrics, minting tokens


ALL_SCOPES = frozenset(Scope)


class AuthError(EarshotError):
    """A request without valid credentials (``unauthorized``) or beyond their scope
    (``forbidden``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status for this refusal."""
        return 401 if self.code == Code.UNAUTHORIZED else 403


@dataclass(frozen=True, slots=True)
class Principal:
    """Whoever presented the credentials, and what they may do."""

    subject: str  # "anonymous", "admin", or a token's subject
    scopes: frozenset[Scope]
    names: str | None = None  # a glob of stream names the grant is limited to (None: any)
    processors: frozenset[str] | None = None  # worker: the processor kinds (None: any)
    expires: float | None = None  # Unix time after which the grant is void

    def allows(self, scope: Scope, *, name: str | None = None,
               processor: str | None = None) -> bool:
        """Whether this principal may act in ``scope`` on a stream called ``name`` (None:
        no name, which a name-limited grant does not cover) for ``processor``."""
        if Scope.ADMIN in self.scopes:
            return True
        if scope not in self.scopes:
            return False
        if self.names is not None and (name is None or
                                       not fnmatch.fnmatchcase(name, self.names)):
            return False
        return not (self.processors is not None and processor is not None
                    and processor not in self.processors)

    def require(self, scope: Scope, *, name: str | None = None,
                processor: str | None = None) -> None:
        """:meth:`allows`, or :class:`AuthError` (``forbidden``) saying what is missing."""
        if self.allows(scope, name=name, processor=processor):
            return
        what = f"the {scope} scope"
        if name is not None and scope in self.scopes:
            what += f" for stream name {name!r}"
        if processor is not None and scope in self.scopes:
            what += f" for processor {processor!r}"
        raise AuthError(Code.FORBIDDEN, f"this token does not grant {what}")


OPEN = Principal("anonymous", ALL_SCOPES)
ADMIN = Principal("admin", ALL_SCOPES)


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request carries: ``Authorization: Bearer T`` or ``?token=T``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return query.get("token")


def token_ok(expected: str | None, presented: str | None) -> bool:
    """True when no token is configured, or the presented one matches (constant time)."""
    if not expected:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def authenticate(security: Any, presented: str | None) -> Principal:
    """The principal ``presented`` (a token, or None) stands for on a server configured
    with ``security`` (:class:`earshot.config.SecuritySettings`); :class:`AuthError`
    (``unauthorized``) when it stands for nobody."""
    expected = security.token
    if not expected:
        return OPEN
    if presented is None:
        raise AuthError(Code.UNAUTHORIZED, "this server needs a token")
    if token_ok(expected, presented):
        return ADMIN
    raise AuthError(Code.UNAUTHORIZED, "wrong token")
