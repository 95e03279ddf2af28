"""Bearer tokens: who may read which workspace's usage over HTTP (JWT, PyJWT).

A token is a JWT for the audience ``meterwatch`` with an expiry and a ``scope``:

- ``workspace``: ``workspaces`` names the workspaces it may read (at least one), ``metrics``
  optionally the metrics (absent: all), ``billing`` whether its holder may manage billing;
- ``service``: operators and workers; reads everything, including ``/metrics`` and the routes
  workers ask each other on.

Tokens are signed with ``METERWATCH_AUTH_SECRET`` (HS256, no ``kid``), which is also what
``meterwatch token`` and the workers themselves sign with, or by a key of
``METERWATCH_AUTH_JWKS`` named by the token's ``kid`` (RS256, EdDSA, ES256, or HS256 ``oct``
keys), so keys can be rotated by publishing a new key beside the old one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

if TYPE_CHECKING:
    from .config import Settings

AUDIENCE = "meterwatch"
WORKSPACE = "workspace"
SERVICE = "service"
# Clocks of the issuer and the worker may differ a little.
LEEWAY = timedelta(seconds=30)
# Shorter secrets make HS256 guessable offline from any one token.
MIN_SECRET_BYTES = 32


class TokenError(ValueError):
    """A token that proves nothing: the reason is one line, safe to show to its holder."""


class KeyConfigError(ValueError):
    """The configured keys cannot be used: one line for the operator."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    subject: str
    service: bool
    workspaces: frozenset[str] = frozenset()
    metrics: frozenset[str] | None = None  # None: every metric
    billing: bool = False
    expires: int = 0  # epoch seconds

    def may_read(self, workspace_id: str) -> bool:
        return self.service or workspace_id in self.workspaces

    def may_read_metric(self, metric: str) -> bool:
        return self.service or self.metrics is None or metric in self.metrics


class Keys:
    """The keys tokens are checked with, and the secret this process signs with (if any)."""

    def __init__(self, secret: bytes | None = None, jwks: jwt.PyJWKSet | None = None) -> None:
        if secret is None and jwks is None:
            raise KeyConfigError("no key to check tokens with")
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            raise KeyConfigError(f"METERWATCH_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        self.secret = secret
        self.jwks = {key.key_id: key for key in jwks.keys} if jwks is not None else {}

    @classmethod
    def load(cls, secret: str | None, jwks_path: str | None) -> Keys:
        jwks = None
        if jwks_path is not None:
            try:
                jwks = jwt.PyJWKSet.from_json(Path(jwks_path).read_text(encoding="utf-8"))
            except (OSError, jwt.PyJWKSetError, jwt.InvalidKeyError, json.JSONDecodeError) as error:
                raise KeyConfigError(f"METERWATCH_AUTH_JWKS: cannot use {jwks_path}: {error}") from None
            if any(key.key_id is None for key in jwks.keys):
                raise KeyConfigError(f'METERWATCH_AUTH_JWKS: every key in {jwks_path} needs a "kid"')
        return cls(secret.encode() if secret is not None else None, jwks)

    def verify(self, token: str, now: datetime) -> Grant:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenError("not a token") from None
        kid = header.get("kid")
        if kid is None:
            if self.secret is None:
                raise TokenError("the token names no key (kid)")
            key, algorithms = self.secret, ["HS256"]
        else:
            found = self.jwks.get(kid)
            if found is None:
                raise TokenError("the token's key (kid) is not known here")
            key, algorithms = found.key, [found.algorithm_name]
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=AUDIENCE,
                # The expiry is judged below, against ``now``, not against this process's clock.
                options={"require": ["exp", "aud", "scope"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as error:
            raise TokenError(f"the token is not valid: {error}") from None
        expires = claims["exp"]
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise TokenError("the token is not valid: exp must be a number")
        if expires + LEEWAY.total_seconds() <= now.timestamp():
            raise TokenError("the token has expired")
        return _grant(claims)

    def mint(self, now: datetime, ttl: timedelta, **claims: Any) -> str:
        """A token signed with the secret (``claims`` as for :func:`mint`)."""
        if self.secret is None:
            raise KeyConfigError("METERWATCH_AUTH_SECRET is not set: there is no key to sign with")
        return mint(self.secret, now, ttl, **claims)


def mint(
    secret: bytes,
    now: datetime,
    ttl: timedelta,
    *,
    workspaces: Iterable[str] = (),
    metrics: Iterable[str] | None = None,
    billing: bool = False,
    service: bool = False,
    subject: str = "meterwatch",
) -> str:
    listed = sorted(set(workspaces))
    if service == bool(listed):
        raise ValueError("a token is either a service token or names workspaces")
    claims: dict[str, object] = {
        "aud": AUDIENCE,
        "sub": subject,
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "scope": SERVICE if service else WORKSPACE,
    }
    if not service:
        claims["workspaces"] = listed
        claims["billing"] = billing
        if metrics is not None:
            claims["metrics"] = sorted(set(metrics))
    return jwt.encode(claims, secret, algorithm="HS256")


def _grant(claims: dict[str, Any]) -> Grant:
    subject = claims.get("sub")
    subject = subject if isinstance(subject, str) else ""
    expires = int(claims["exp"])
    scope = claims["scope"]
    if scope == SERVICE:
        return Grant(subject, service=True, billing=True, expires=expires)
    if scope != WORKSPACE:
        raise TokenError(f"unknown scope {scope!r:.40}")
    workspaces = claims.get("workspaces")
    if not isinstance(workspaces, list) or not workspaces or not all(isinstance(w, str) for w in workspaces):
        raise TokenError("a workspace token must list its workspaces")
    metrics = claims.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise TokenError("metrics must be a list of metric names")
    billing = claims.get("billing", False)
    if not isinstance(billing, bool):
        raise TokenError("billing must be true or false")
    return Grant(
        subject,
        service=False,
        workspaces=frozenset(workspaces),
        metrics=None if metrics is None else frozenset(metrics),
        billing=billing,
        expires=expires,
    )


def keys_for(settings: Settings) -> Keys | None:
    """The keys the settings name; None with ``METERWATCH_AUTH=off``. Raises KeyConfigError."""
    if settings.auth == "off":
        return None
    secret = settings.auth_secret.get_secret_value() if settings.auth_secret is not None else None
    if secret is None and settings.auth_jwks is None:
        raise KeyConfigError(
            "no key to check tokens with: set METERWATCH_AUTH_SECRET (and optionally METERWATCH_AUTH_JWKS), "
            "or METERWATCH_AUTH=off to serve HTTP to anyone who reaches the port"
        )
    if secret is None:
        raise KeyConfigError(
            "METERWATCH_AUTH_JWKS needs METERWATCH_AUTH_SECRET beside it: workers sign what they ask each other with it"
        )
    return Keys.load(secret, settings.auth_jwks)
