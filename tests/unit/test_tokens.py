"""Bearer tokens: what a token grants, and every way a token that proves nothing is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from meterwatch.config import load_settings

from meterwatch.tokens import AUDIENCE, KeyConfigError, Keys, TokenError, keys_for, mint

SECRET = b"0123456789abcdef0123456789abcdef-test"
NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)

RSA_OLD = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_NEW = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED = ed25519.Ed25519PrivateKey.generate()
EC = ec.generate_private_key(ec.SECP256R1())


def public_jwk(private: Any, kid: str) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid}


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    jwks = {"keys": [public_jwk(RSA_OLD, "rsa-2025"), public_jwk(RSA_NEW, "rsa-2026"), public_jwk(ED, "ed"),
                     public_jwk(EC, "ec")]}  # fmt: skip
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(jwks))
    return Keys.load(SECRET.decode(), str(path))


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "aud": AUDIENCE,
        "sub": "portal",
        "exp": int((NOW + HOUR).timestamp()),
        "scope": "workspace",
        "workspaces": ["ws_a"],
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def test_a_workspace_token_grants_its_workspaces_and_metrics_only(keys: Keys) -> None:
    token = mint(SECRET, NOW, HOUR, workspaces=["ws_a", "ws_b"], metrics=["sms"], billing=True)
    grant = keys.verify(token, NOW)
    assert grant.may_read("ws_a") and grant.may_read("ws_b") and not grant.may_read("ws_c")
    assert grant.may_read_metric("sms") and not grant.may_read_metric("email")
    assert grant.billing and not grant.service
    assert grant.expires == int((NOW + HOUR).timestamp())


def test_a_service_token_reads_everything(keys: Keys) -> None:
    grant = keys.verify(mint(SECRET, NOW, HOUR, service=True), NOW)
    assert grant.service and grant.may_read("ws_anything") and grant.may_read_metric("email")


def test_without_metrics_a_workspace_token_reads_every_metric(keys: Keys) -> None:
    grant = keys.verify(mint(SECRET, NOW, HOUR, workspaces=["ws_a"]), NOW)
    assert grant.may_read_metric("fin_resolutions") and not grant.billing


@pytest.mark.parametrize(
    ("kid", "private", "algorithm"),
    [("rsa-2025", RSA_OLD, "RS256"), ("rsa-2026", RSA_NEW, "RS256"), ("ed", ED, "EdDSA"), ("ec", EC, "ES256")],
)
def test_tokens_of_every_published_key_are_accepted_by_kid(keys: Keys, kid: str, private: Any, algorithm: str) -> None:
    token = jwt.encode(claims(workspaces=["ws_k"]), private, algorithm=algorithm, headers={"kid": kid})
    assert keys.verify(token, NOW).workspaces == {"ws_k"}


def forged_with_public_key_as_hmac_secret() -> str:
    # The classic confusion: HS256 "signed" with the RSA public key, naming the RSA key's kid.
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-2026"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    pem = RSA_NEW.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "not a token"),
        ("not.a.token", "not a token"),
        (jwt.encode(claims(), b"another-secret-of-thirty-two-bytes!!", algorithm="HS256"), "not valid"),
        (jwt.encode(claims(exp=int((NOW - 2 * HOUR).timestamp())), SECRET, algorithm="HS256"), "expired"),
        (jwt.encode(claims(exp=None), SECRET, algorithm="HS256"), "not valid"),
        (jwt.encode(claims(exp="tomorrow"), SECRET, algorithm="HS256"), "not valid"),
        (jwt.encode(claims(aud="another-service"), SECRET, algorithm="HS256"), "not valid"),
        (jwt.encode(claims(aud=None), SECRET, algorithm="HS256"), "not valid"),
        (jwt.encode(claims(scope=None), SECRET, algorithm="HS256"), "not valid"),
        (jwt.encode(claims(scope="admin"), SECRET, algorithm="HS256"), "unknown scope"),
        (jwt.encode(claims(workspaces=[]), SECRET, algorithm="HS256"), "must list its workspaces"),
        (jwt.encode(claims(workspaces="ws_a"), SECRET, algorithm="HS256"), "must list its workspaces"),
        (jwt.encode(claims(metrics="sms"), SECRET, algorithm="HS256"), "metrics must be a list"),
        (jwt.encode(claims(billing="yes"), SECRET, algorithm="HS256"), "billing must be"),
        (jwt.encode(claims(), None, algorithm="none"), "not valid"),
        (jwt.encode(claims(), RSA_NEW, algorithm="RS256", headers={"kid": "rsa-retired"}), "not known here"),
        (jwt.encode(claims(), RSA_NEW, algorithm="RS256"), "not valid"),  # no kid: checked with the secret
        (jwt.encode(claims(), RSA_OLD, algorithm="RS256", headers={"kid": "rsa-2026"}), "not valid"),
        (jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "ed"}), "not valid"),
        (forged_with_public_key_as_hmac_secret(), "not valid"),
    ],
)
def test_a_token_that_proves_nothing_is_refused_with_its_reason(keys: Keys, token: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        keys.verify(token, NOW)


def test_a_little_clock_skew_is_tolerated_and_no_more(keys: Keys) -> None:
    token = mint(SECRET, NOW, HOUR, workspaces=["ws_a"])
    assert keys.verify(token, NOW + HOUR + timedelta(seconds=20)).may_read("ws_a")
    with pytest.raises(TokenError, match="expired"):
        keys.verify(token, NOW + HOUR + timedelta(seconds=40))


def test_settings_without_a_key_are_refused() -> None:
    with pytest.raises(KeyConfigError, match="no key to check tokens with"):
        keys_for(load_settings({}))


def test_a_key_set_that_is_not_one_is_refused() -> None:
    with pytest.raises(KeyConfigError, match="METERWATCH_AUTH_JWKS: cannot use"):
        keys_for(load_settings({"METERWATCH_AUTH_SECRET": SECRET.decode(), "METERWATCH_AUTH_JWKS": __file__}))


def test_a_key_set_without_a_secret_is_refused_because_workers_sign_with_it(keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [public_jwk(ED, "ed")]}))
    with pytest.raises(KeyConfigError, match="needs METERWATCH_AUTH_SECRET"):
        keys_for(load_settings({"METERWATCH_AUTH_JWKS": str(path)}))


def test_a_key_without_a_kid_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{k: v for k, v in public_jwk(ED, "ed").items() if k != "kid"}]}))
    with pytest.raises(KeyConfigError, match='needs a "kid"'):
        Keys.load(SECRET.decode(), str(path))


def test_authentication_off_needs_no_key() -> None:
    assert keys_for(load_settings({"METERWATCH_AUTH": "off"})) is None


def test_a_token_is_for_a_service_or_for_workspaces_never_both_nor_neither() -> None:
    with pytest.raises(ValueError):
        mint(SECRET, NOW, HOUR, service=True, workspaces=["ws_a"])
    with pytest.raises(ValueError):
        mint(SECRET, NOW, HOUR)
