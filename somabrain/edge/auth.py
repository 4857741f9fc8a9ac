"""Bearer tokens: verification (the edge), signing (the dev node and ``somabrain token``).

Tokens are JWTs. Claims:

``sub``      who the caller is (free text, logged)
``tenants``  the tenants the token may act for (a list; ``"*"`` means any tenant). A single
             ``tenant`` string is accepted too. May be empty when ``scopes`` is not: such a
             token opens only the routes its scopes open (``somabrain token --scope metrics``
             for a Prometheus scraper, which should read no tenant's memories)
``scopes``   a list (or an OAuth-style space-separated ``scope`` string); ``admin`` opens
             ``/admin/*``, ``metrics`` opens ``/metrics``; ``admin`` implies ``metrics``
             (``IMPLIED_SCOPES``)
``exp``      required; ``iat``, ``iss`` and ``aud`` are checked when configured

HS256 (the default) signs with a shared secret: ``auth.secret``, or the file
``auth.secret_file``, or, for the dev node, a random secret generated once into
``<data-dir>/dev-secret`` (mode 0600) and reused by every later start and by
``somabrain token --data-dir``. RS256 and EdDSA verify with a PEM public key from the config;
signing them needs the matching private key.

A request names its tenant with ``X-Tenant-ID`` (or the body's ``tenant``); without one, a
token for exactly one tenant acts for that tenant.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt

from ..config import AuthSettings
from ..tenancy import valid_tenant
from .errors import HTTPError

__all__ = [
    "DEV_SECRET_FILE",
    "IMPLIED_SCOPES",
    "Authenticator",
    "Principal",
    "TokenIssuer",
    "dev_secret",
]

DEV_SECRET_FILE = "dev-secret"
ANY_TENANT = "*"
_CACHE_LIMIT = 4096

#: Scopes that a scope grants besides itself. An operator's admin token must not need a second
#: token to read the node's metrics; the converse does not hold (a scraper's token opens
#: nothing else). Applied once, when a ``Principal`` is made, so a scope check stays one lookup.
IMPLIED_SCOPES: dict[str, frozenset[str]] = {"admin": frozenset({"metrics"})}


def dev_secret(data_dir: str | os.PathLike[str]) -> bytes:
    """The dev node's HS256 secret: read from ``<data_dir>/dev-secret``, created on first use.

    Created with ``O_EXCL`` and mode 0600 and fsynced, so two processes starting at once
    agree on one secret and a crash never leaves a half-written one behind.

    ``data_dir`` must exist (the node creates it): a secret made in a mistyped directory would
    sign tokens that no node accepts. Raises ``FileNotFoundError`` when it does not.
    """
    path = Path(data_dir) / DEV_SECRET_FILE
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"data dir {path.parent} does not exist (a node creates it when it starts)"
        )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):
            secret = path.read_bytes().strip()
            if secret:
                return secret
            if time.time() - path.stat().st_mtime > 5.0:
                break  # empty for a while: its creator crashed before writing it. Take over.
            time.sleep(0.01)  # another process is writing it right now
    else:
        os.close(fd)
    secret = secrets.token_urlsafe(48).encode()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(secret + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return secret


def _read(value: str, file: str) -> str:
    if value:
        return value
    if file:
        return Path(file).read_text("utf-8").strip()
    return ""


def _as_set(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise _unauthorized("invalid_token", f"token claim {name!r} must be a list of strings")


class Principal:
    """Who a verified token speaks for.

    ``scopes`` are the token's own (what policies and audit records see); ``granted`` adds
    what they imply (``IMPLIED_SCOPES``) and is what a route's scope is checked against.
    """

    __slots__ = ("expires_at", "granted", "scopes", "subject", "tenants")

    def __init__(
        self, subject: str, tenants: frozenset[str], scopes: frozenset[str], expires_at: float
    ) -> None:
        self.subject = subject
        self.tenants = tenants
        self.scopes = scopes
        self.granted = scopes.union(*(IMPLIED_SCOPES.get(scope, ()) for scope in scopes))
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"<Principal {self.subject!r} tenants={sorted(self.tenants)}>"

    def resolve_tenant(self, requested: str | None) -> str:
        """The tenant of a request (``X-Tenant-ID`` or the body's ``tenant``), checked."""
        if requested is not None:
            if not valid_tenant(requested):
                raise HTTPError(
                    400,
                    "invalid_tenant",
                    "tenant ids are 1-64 letters, digits, '_', '.' or '-'",
                    field="X-Tenant-ID",
                )
            if requested in self.tenants or ANY_TENANT in self.tenants:
                return requested
            raise HTTPError(
                403, "tenant_forbidden", f"this token does not grant tenant {requested!r}"
            )
        if not self.tenants:
            raise _no_tenant()
        if len(self.tenants) == 1:
            (only,) = self.tenants
            if only != ANY_TENANT:
                return only
        raise HTTPError(
            400,
            "tenant_required",
            "this token grants several tenants: pick one with the X-Tenant-ID header",
            field="X-Tenant-ID",
        )

    def authorize(self, scope: str) -> None:
        """Check a route's ``scope`` (see ``Route.scope``): a named scope must be granted;
        ``""`` (any token for a tenant) needs a token that grants some tenant."""
        if scope:
            self.require_scope(scope)
        elif not self.tenants:
            raise _no_tenant()

    def require_scope(self, scope: str) -> None:
        if scope not in self.granted:
            raise HTTPError(403, "insufficient_scope", f"this endpoint needs the {scope!r} scope")


def _no_tenant() -> HTTPError:
    return HTTPError(
        403,
        "tenant_forbidden",
        "this token grants no tenant (only its scopes' routes, e.g. /metrics)",
    )


def _unauthorized(code: str, message: str) -> HTTPError:
    return HTTPError(401, code, message, headers=((b"www-authenticate", b"Bearer"),))


class Authenticator:
    """Verifies bearer tokens; verified tokens are cached (expiry is checked on every use)."""

    def __init__(self, settings: AuthSettings, data_dir: str | os.PathLike[str] | None) -> None:
        self.settings = settings
        self.algorithm = settings.algorithm
        self.key: Any
        if settings.algorithm == "HS256":
            secret = _read(settings.secret, settings.secret_file)
            if not secret:
                if data_dir is None:
                    raise ValueError("HS256 needs auth.secret, auth.secret_file or a data dir")
                secret = dev_secret(data_dir).decode()
            self.key = secret
        else:
            pem = _read(settings.public_key, settings.public_key_file)
            if not pem:
                raise ValueError(f"{settings.algorithm} needs auth.public_key(_file)")
            self.key = jwt.algorithms.get_default_algorithms()[settings.algorithm].prepare_key(pem)
        self._options: dict[str, Any] = {"require": ["exp"]}
        self._cache: dict[str, Principal] = {}

    @property
    def can_sign(self) -> bool:
        return self.algorithm == "HS256"

    def issuer(self) -> TokenIssuer:
        if not self.can_sign:
            raise ValueError(f"{self.algorithm} tokens are signed with a private key")
        return TokenIssuer(self.key, "HS256", self.settings)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value, or a 401 ``HTTPError``."""
        if not authorization:
            raise _unauthorized("missing_token", "send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized(
                "invalid_token", "the Authorization header must be 'Bearer <token>'"
            )
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at + self.settings.leeway >= time.time():
                return cached
            del self._cache[token]
            raise _unauthorized("token_expired", "the token has expired")
        principal = self.verify(token)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = principal
        return principal

    def verify(self, token: str) -> Principal:
        settings = self.settings
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=settings.audience or None,
                issuer=settings.issuer or None,
                leeway=settings.leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token_expired", "the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized("invalid_token", f"the token is not valid: {exc}") from None
        tenants = claims.get("tenants")
        if tenants is None and isinstance(claims.get("tenant"), str):
            tenants = [claims["tenant"]]
        tenant_set = _as_set(tenants, "tenants")
        bad = sorted(t for t in tenant_set if t != ANY_TENANT and not valid_tenant(t))
        if bad:  # tenant ids become actor and file names: never let an odd one through
            raise _unauthorized("invalid_token", f"the token names invalid tenant ids: {bad}")
        scopes = _as_set(claims.get("scopes", claims.get("scope")), "scopes")
        if not tenant_set and not scopes:
            raise _unauthorized(
                "invalid_token", "the token grants no tenant ('tenants' claim) and no scope"
            )
        exp = claims["exp"]
        if not isinstance(exp, int | float):
            raise _unauthorized("invalid_token", "the 'exp' claim must be a number")
        return Principal(str(claims.get("sub", "")), tenant_set, scopes, float(exp))


class TokenIssuer:
    """Signs tokens the edge accepts (HS256 with the node's secret, or a private key)."""

    def __init__(self, key: Any, algorithm: str, settings: AuthSettings) -> None:
        self.key = key
        self.algorithm = algorithm
        self.settings = settings

    def issue(
        self,
        tenants: Iterable[str],
        *,
        scopes: Iterable[str] = (),
        ttl: float | None = None,
        subject: str = "dev",
        now: float | None = None,
    ) -> str:
        tenant_list = sorted(set(tenants))
        for tenant in tenant_list:
            if tenant != ANY_TENANT and not valid_tenant(tenant):
                raise ValueError(f"invalid tenant id {tenant!r}")
        scope_list = sorted(set(scopes))
        if not tenant_list and not scope_list:
            raise ValueError("a token needs at least one tenant or one scope")
        issued = time.time() if now is None else now
        claims: dict[str, Any] = {
            "sub": subject,
            "tenants": tenant_list,
            "scopes": scope_list,
            "iat": int(issued),
            "exp": int(issued + (self.settings.token_ttl if ttl is None else ttl)),
        }
        if self.settings.issuer:
            claims["iss"] = self.settings.issuer
        if self.settings.audience:
            claims["aud"] = self.settings.audience
        return jwt.encode(claims, self.key, algorithm=self.algorithm)
