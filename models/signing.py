"""Signed commands: an HMAC-SHA256 of a ``usage.control`` record's value, in a record header.

With ``METERWATCH_COMMAND_KEYS`` set, every command must carry the header
``meterwatch-signature: kid=<key id>,hmac-sha256=<hex digest of the value's bytes>``, made with
the key of that id. The digest covers the value exactly as sent, so every field of the command
(its actor's ``billing_permission`` included) is vouched for by whoever holds the key: nothing
is canonicalised, nothing can be added beside it. The record's key must be the command's
``workspace_id`` (``contract_id`` for a subscription), ``issued_at`` must be within
``METERWATCH_COMMAND_MAX_AGE`` of when the record reached Kafka, and a ``command_id`` is applied
once (``core/command_replay.py``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

HEADER = "meterwatch-signature"
MIN_KEY_BYTES = 32


class SignatureRejected(ValueError):
    """Why a command's signature proves nothing: ``code: text``, for ``command-results``."""


def parse_keys(text: str) -> dict[str, bytes]:
    """``kid:secret[,kid:secret…]`` as ``{kid: secret}``; ValueError says what is wrong."""
    keys: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        kid, separator, secret = entry.partition(":")
        if not separator or not kid or not secret:
            raise ValueError("expected key-id:secret[,key-id:secret]")
        if len(secret.encode()) < MIN_KEY_BYTES:
            raise ValueError(f"the secret of key {kid!r} must be at least {MIN_KEY_BYTES} bytes")
        if kid in keys:
            raise ValueError(f"key {kid!r} is given twice")
        keys[kid] = secret.encode()
    if not keys:
        raise ValueError("expected key-id:secret[,key-id:secret]")
    return keys


def signature_header(value: bytes, key_id: str, secret: bytes) -> tuple[str, bytes]:
    """The header a producer sends with ``value``."""
    digest = hmac.new(secret, value, hashlib.sha256).hexdigest()
    return HEADER, f"kid={key_id},hmac-sha256={digest}".encode()


def check_signature(value: bytes | None, headers: Sequence[tuple[str, bytes]], keys: Mapping[str, bytes]) -> str:
    """The key id that signed ``value``; raises SignatureRejected."""
    found = [raw for name, raw in headers or () if name == HEADER]
    if not found:
        raise SignatureRejected(f"unsigned: the command carries no {HEADER} header")
    if len(found) > 1:
        raise SignatureRejected(f"bad_signature: more than one {HEADER} header")
    try:
        fields = dict(part.split("=", 1) for part in found[0].decode("ascii").split(","))
    except (UnicodeDecodeError, ValueError):
        raise SignatureRejected(f"bad_signature: {HEADER} is not kid=…,hmac-sha256=…") from None
    kid, digest = fields.get("kid"), fields.get("hmac-sha256")
    if kid is None or digest is None or set(fields) != {"kid", "hmac-sha256"}:
        raise SignatureRejected(f"bad_signature: {HEADER} is not kid=…,hmac-sha256=…")
    secret = keys.get(kid)
    if secret is None:
        raise SignatureRejected(f"unknown_key: no command key {kid[:64]!r}")
    expected = hmac.new(secret, value or b"", hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest.lower()):
        raise SignatureRejected("bad_signature: the signature does not match the command")
    return kid
