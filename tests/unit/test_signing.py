"""Signed commands: the signature header, and a command id applied once."""

from __future__ import annotations

import pytest
from meterwatch.core.command_replay import CLOCK_MARGIN_MS, NO_COMMANDS, admit
from meterwatch.models.signing import HEADER, SignatureRejected, check_signature, parse_keys, signature_header

KEYS = {"k1": b"a" * 32, "k2": b"b" * 40}
VALUE = b'{"type":"alert_settings","command_id":"c1"}'


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("k1:" + "a" * 32, {"k1": b"a" * 32}),
        (f" k1:{'a' * 32} , k2:{'b' * 40} ", KEYS),
        (f"k1:{'a' * 32}:with-colon", {"k1": b"a" * 32 + b":with-colon"}),
    ],
)
def test_keys_are_read_as_key_id_and_secret(text: str, keys: dict[str, bytes]) -> None:
    assert parse_keys(text) == keys


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected key-id:secret"),
        ("k1", "expected key-id:secret"),
        (":" + "a" * 32, "expected key-id:secret"),
        ("k1:short", "at least 32 bytes"),
        (f"k1:{'a' * 32},k1:{'b' * 32}", "given twice"),
    ],
)
def test_bad_keys_are_refused_with_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_keys(text)


@pytest.mark.parametrize("kid", ["k1", "k2"])
def test_a_value_signed_by_a_known_key_passes(kid: str) -> None:
    assert check_signature(VALUE, [("other", b"x"), signature_header(VALUE, kid, KEYS[kid])], KEYS) == kid


def header(text: str) -> list[tuple[str, bytes]]:
    return [(HEADER, text.encode())]


@pytest.mark.parametrize(
    ("value", "headers", "code"),
    [
        (VALUE, [], "unsigned"),
        (VALUE, [("Meterwatch-Signature", signature_header(VALUE, "k1", KEYS["k1"])[1])], "unsigned"),
        (VALUE, [signature_header(VALUE, "k1", KEYS["k1"])] * 2, "bad_signature"),
        (VALUE, header("garbage"), "bad_signature"),
        (VALUE, header("kid=k1"), "bad_signature"),
        (VALUE, header("kid=k1,hmac-sha256=00,extra=1"), "bad_signature"),
        (VALUE, [(HEADER, b"\xff\xfe")], "bad_signature"),
        (VALUE, [signature_header(VALUE, "k9", KEYS["k1"])], "unknown_key"),
        (VALUE, [signature_header(VALUE, "k1", KEYS["k2"])], "bad_signature"),
        (VALUE + b" ", [signature_header(VALUE, "k1", KEYS["k1"])], "bad_signature"),
        (None, [signature_header(VALUE, "k1", KEYS["k1"])], "bad_signature"),
    ],
)
def test_a_signature_that_proves_nothing_is_refused_with_its_code(
    value: bytes | None, headers: list[tuple[str, bytes]], code: str
) -> None:
    with pytest.raises(SignatureRejected, match=f"^{code}: "):
        check_signature(value, headers, KEYS)


MAX_AGE = 300_000


def test_a_command_id_is_admitted_once() -> None:
    recent = admit(NO_COMMANDS, "c1", 1_000_000, MAX_AGE)
    assert recent == {"c1": 1_000_000}
    assert admit(recent, "c1", 1_000_000, MAX_AGE) is None
    assert admit(recent, "c1", 9_000_000_000, MAX_AGE) is None  # whatever it claims


@pytest.mark.parametrize(
    ("old_issued", "kept"),
    [
        (10_000_000 - 2 * MAX_AGE - CLOCK_MARGIN_MS, True),  # a copy could still have been fresh
        (10_000_000 - 2 * MAX_AGE - CLOCK_MARGIN_MS - 1, False),
        (10_000_000 + MAX_AGE, True),  # issued later than the new one: kept
    ],
)
def test_an_id_is_kept_while_a_copy_of_it_could_be_fresh(old_issued: int, kept: bool) -> None:
    recent = admit(admit(NO_COMMANDS, "old", old_issued, MAX_AGE), "new", 10_000_000, MAX_AGE)  # type: ignore[arg-type]
    assert ("old" in recent) is kept and "new" in recent


def test_freshness_is_judged_at_the_brokers_stamp_when_there_is_one() -> None:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from meterwatch.streams.pipeline.route_commands import _routed_at

    stamped = SimpleNamespace(timestamp=1_700_000_000.5, timestamp_type=1)
    assert _routed_at(stamped) == datetime.fromtimestamp(1_700_000_000.5, tz=UTC)
    chosen_by_producer = SimpleNamespace(timestamp=1_700_000_000.5, timestamp_type=0)
    assert abs((_routed_at(chosen_by_producer) - datetime.now(UTC)).total_seconds()) < 5


@pytest.mark.parametrize(
    ("document", "subject"),
    [
        ({"type": "billing_contacts", "workspace_id": "ws_1", "emails": []}, "workspace_id"),
        ({"type": "contract_alert_settings", "contract_id": "c_1", "metric": "sms", "levels": [50]}, "contract_id"),
    ],
)
def test_a_signed_command_is_keyed_by_what_it_is_about(document: dict, subject: str) -> None:
    from datetime import UTC, datetime, timedelta

    import orjson
    from meterwatch.models.commands import CommandRejected, parse_command
    from meterwatch.streams.pipeline.route_commands import _check_signed_command

    now = datetime.now(UTC)
    actor = {"id": "admin", "billing_permission": True}
    command = parse_command(orjson.dumps({**document, "command_id": "c", "issued_at": now.isoformat(), "actor": actor}))
    _check_signed_command(command, document[subject], timedelta(minutes=5), now)
    with pytest.raises(CommandRejected, match=f"^key_mismatch: .* its {subject}$"):
        _check_signed_command(command, "someone_else", timedelta(minutes=5), now)
