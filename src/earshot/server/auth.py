"""Who may do what: credentials in, a :class:`Principal` out, and one check per action.

Every door (the ingest WebSocket, ``/ws/subscribe``, REST, and each foreign protocol)
asks the same two questions the same way::

    principal = authenticate(settings.security, presented)   # AuthError: unauthorized
    principal.require(Scope.PUBLISH, name="kitchen")          # AuthError: forbidden

A server without ``--token`` (and without ``--token-secret``) is open (loopback only, or
``--no-auth``): everyone is a principal with every scope. With ``--token`` the token is the
admin secret: it grants every scope.

**Scoped tokens** are JWTs (HS256, PyJWT) signed with the server's token secret
(``--token-secret``; by default derived from ``--token``: :func:`secret_of`), minted by
:func:`mint` (``earshot token create``, ``POST /api/tokens``). Claims: ``scope`` (a list of
:class:`Scope`), ``names`` (a glob of stream names), ``processors`` (worker: processor
kinds), ``path`` (a signed URL: the one path it opens), ``exp`` (required). Verifying one
is a signature check and a few dictionary reads: no database, so every gateway verifies
any token on its own.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

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
    path: str | None = None  # a signed URL's grant: only this request path

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


ALGORITHM = "HS256"
ISSUER = "earshot"
SECRET_CONTEXT = b"earshot scoped tokens v1"
MAX_TTL = 10 * 365 * 86400.0
SIGNED_URL_TTL = 300.0  # seconds a signed download link (``?sig=``) stays valid


def auth_on(security: Any) -> bool:
    """Whether the server needs credentials (``--token`` or ``--token-secret`` set)."""
    return bool(security.token or security.token_secret)


@functools.lru_cache(maxsize=8)
def _derive(token: str) -> bytes:
    return hmac.new(token.encode(), SECRET_CONTEXT, hashlib.sha256).digest()


def secret_of(security: Any) -> bytes | None:
    """The key scoped tokens are signed with: HMAC-SHA256 of a fixed context keyed by
    ``--token-secret``, else by ``--token`` (so rotating ``--token`` voids every scoped
    token made from it); None on an open server (which mints nothing)."""
    if security.token_secret:  # (stretched to the 32 bytes HS256 wants, however long)
        return _derive(str(security.token_secret))
    if security.token:
        return _derive(str(security.token))
    return None


def mint(secret: bytes, scopes: Iterable[Scope | str], *, ttl: float,
         names: str | None = None, processors: Iterable[str] | None = None,
         path: str | None = None, subject: str = "token", now: float | None = None) -> str:
    """A signed token granting ``scopes`` (limited to stream ``names``, worker
    ``processors``, or one request ``path``) for ``ttl`` seconds; ValueError for a bad
    scope or ttl."""
    chosen = sorted({Scope(str(s)) for s in scopes})  # ValueError: not a scope
    if not chosen:
        raise ValueError("a token needs at least one scope")
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 second and {MAX_TTL:.0f} seconds")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "sub": subject, "iat": issued,
                              "exp": issued + max(1, round(ttl)),
                              "scope": [str(s) for s in chosen]}
    if names is not None:
        claims["names"] = names
    if processors is not None:
        claims["processors"] = sorted(set(processors))
    if path is not None:
        claims["path"] = path
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


VERIFIED_CACHE = 1024  # tokens verified lately (a client's every request presents its own)
_verified: dict[tuple[bytes, str], Principal] = {}


def verify(secret: bytes, token: str, *, leeway: float = 0.0) -> Principal:
    """The principal a scoped token stands for; :class:`AuthError` (``unauthorized``) when
    it is not signed with ``secret``, malformed, or expired. A token verified lately is
    looked up (its expiry still checked), so a client's repeated requests pay for the
    signature once; refused tokens are never remembered."""
    known = _verified.get((secret, token))
    if known is not None and known.expires is not None:
        if time.time() < known.expires + leeway:
            return known
        del _verified[secret, token]
        raise AuthError(Code.UNAUTHORIZED, "token expired")
    principal = _verify(secret, token, leeway)
    if len(_verified) >= VERIFIED_CACHE:
        _verified.pop(next(iter(_verified)))  # the oldest
    _verified[secret, token] = principal
    return principal


def _verify(secret: bytes, token: str, leeway: float) -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], issuer=ISSUER,
                            leeway=leeway, options={"require": ["exp", "scope"]})
    except jwt.ExpiredSignatureError:
        raise AuthError(Code.UNAUTHORIZED, "token expired") from None
    except jwt.InvalidTokenError:
        raise AuthError(Code.UNAUTHORIZED, "invalid token") from None
    raw = claims.get("scope")
    names, procs, path = claims.get("names"), claims.get("processors"), claims.get("path")
    try:
        scopes = frozenset(Scope(s) for s in raw) if isinstance(raw, list) else None
    except ValueError:
        scopes = None
    if (not scopes or not (names is None or isinstance(names, str))
            or not (path is None or isinstance(path, str))
            or not (procs is None or (isinstance(procs, list)
                                      and all(isinstance(p, str) for p in procs)))):
        raise AuthError(Code.UNAUTHORIZED, "invalid token claims")
    return Principal(str(claims.get("sub", "token")), scopes, names=names,
                     processors=frozenset(procs) if procs is not None else None,
                     expires=float(claims["exp"]), path=path)


def authenticate(security: Any, presented: str | None, path: str | None = None) -> Principal:
    """The principal ``presented`` (a token, or None) stands for on a server configured
    with ``security`` (:class:`earshot.config.SecuritySettings`); :class:`AuthError`
    (``unauthorized``) when it stands for nobody: the admin token (``--token``, compared
    in constant time) or a scoped token signed with :func:`secret_of`."""
    if not auth_on(security):
        return OPEN
    if presented is None or not presented:
        raise AuthError(Code.UNAUTHORIZED, "this server needs a token")
    expected = security.token
    if expected and token_ok(expected, presented):
        return ADMIN
    secret = secret_of(security)
    if secret is not None and presented.count(".") == 2:
        principal = verify(secret, presented)
        if principal.path is not None and path != principal.path:
            raise AuthError(Code.FORBIDDEN, "a signed URL's token opens only its own URL")
        return principal
    raise AuthError(Code.UNAUTHORIZED, "wrong token")


def authenticate_request(security: Any, headers: Mapping[str, str],
                         query: Mapping[str, str], path: str | None = None) -> Principal:
    """:func:`authenticate` for an HTTP request or WebSocket handshake: the bearer token or
    ``?token=``, or a signed URL's ``?sig=`` (valid only for the ``path`` it names)."""
    sig = query.get("sig")
    presented = presented_token(headers, query)
    if sig is not None and presented is None and auth_on(security):
        secret = secret_of(security)
        assert secret is not None
        principal = verify(secret, sig)
        if principal.path is None or principal.path != path:
            raise AuthError(Code.FORBIDDEN, "this signed URL is for another path")
        return principal
    return authenticate(security, presented, path)


class Pending:
    """Connections not yet authenticated (an ingest socket that brought no credentials in
    its handshake, until its first start), counted
    per client address and in total, so silent sockets cannot pile up: :meth:`enter` says
    why one more is refused (None: admitted), :meth:`leave` when it starts or goes."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total, self.per_address = total, per_address
        self.held = 0
        self.by_address: dict[str, int] = {}

    def enter(self, address: str) -> str | None:
        if self.held >= self.total:
            return f"{self.held} connections are waiting to authenticate (--max-preauth)"
        mine = self.by_address.get(address, 0)
        if mine >= self.per_address:
            return (f"{mine} connections from {address} are waiting to authenticate "
                    "(--max-preauth-per-address)")
        self.held += 1
        self.by_address[address] = mine + 1
        return None

    def leave(self, address: str) -> None:
        mine = self.by_address.get(address, 0)
        if mine <= 0:
            return
        self.held -= 1
        if mine == 1:
            del self.by_address[address]
        else:
            self.by_address[address] = mine - 1
