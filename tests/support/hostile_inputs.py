"""Hostile inputs for the fault suite: a seeded mix of bad event messages and commands among
good ones, and what a worker must answer to each (dead letters, command results, usage, alerts).

``build_plan(now)`` draws everything from a ``random.Random`` with a fixed seed, so every run
sends the same mix.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from tests.support.messages import ADMIN

SEED = 9
HOSTILE_EVENT_MESSAGES = 8_500
HOSTILE_COMMANDS = 1_500
GOOD_EVENT_MESSAGES = 1_500
OVERSIZED_BATCHES = 12
FULL_BATCHES = 2
MAX_QUANTITY_EVENTS = 3

SENDER = "meterwatch@billing.example.com"
EVIL = "spy@evil.example"  # every injection attempt tries to make this a recipient
ADDITIVE_METRICS = ("messages_sent", "phone", "sms", "whatsapp", "email")
MAX_QUANTITY = 2**53 - 1
USAGE_CAP_BATCHES = 2

PLAIN_WORKSPACES = tuple(f"ws-plain-{i:02d}" for i in range(30))
# Valid identifiers (printable, at most 256 characters) that are hostile to whatever prints them.
ODD_WORKSPACES = (
    "ws-\u202egnp.exe",  # right-to-left override
    "ws-\U0001f469\u200d\U0001f469\u200d\U0001f467-family",  # emoji joined by zero-width joiners
    "ws-\u200b\u200d\ufeff-zero-width",
    f"ws\u2028Bcc: {EVIL}",  # a line separator, then what would be a header
    f"ws\u2029To: {EVIL}",
    f"ws%0D%0ABcc:%20{EVIL}",
    "ws/../../admin?x=1#frag",
    "\u0645\u0633\u0627\u062d\u0629-\u0627\u0644\u0639\u0645\u0644",
    "ws-e\u0301\u0301\u0301",
    "  spaces around  ",
    f'"Billing" <{EVIL}>',
    "\U0001d534\U0001d530-" + "x" * 253,  # 256 characters: the longest id
)
MAIL_WORKSPACES = tuple(f"ws-mail-{i}" for i in range(6)) + (
    f"ws-mail\u2028Bcc: {EVIL}",
    "ws-mail-\u202elmth.exe",
    "ws-mail-\U0001f469\u200d\U0001f469\u200d\U0001f467",
    f'"ws-mail" <{EVIL}>\u2029To: {EVIL}',
)
FIN_WORKSPACE = f"ws-fin\u2028Bcc: {EVIL}\u202e"
CONTRACT_WORKSPACE = "ws-contract"
CONTRACT_ID = f"contract\u2028Bcc: {EVIL}\u202e"
USAGE_TARGETS = PLAIN_WORKSPACES + ODD_WORKSPACES  # receive random good usage
ANY_WORKSPACE = USAGE_TARGETS + MAIL_WORKSPACES + (FIN_WORKSPACE, CONTRACT_WORKSPACE)
BILLING_CONTACTS = {
    **{ws: (f"billing.{i}@example.com", f"finance+{i}@example.org") for i, ws in enumerate(MAIL_WORKSPACES)},
    FIN_WORKSPACE: ("fin.owner@example.com",),
    CONTRACT_WORKSPACE: ("contracts@example.net",),
}
# Equal steps, so each of 50%, 80% and 100% is reached by its own event in any order: 3 alerts each.
ALERT_THRESHOLD, ALERT_STEP, ALERT_STEPS = 100, 10, 12
FIN_LIMIT = 3
# One event passes 80% and 100% of the included quantity at once: only 100% alerts.
CONTRACT_INCLUDED, CONTRACT_EVENT = 100, 150

LINE_BREAKS = ("\r\n", "\n", "\r", "\r\n\r\n", "\x00", "\x1b[2J", "\t", "\x7f", "\x85")
FAKE_HEADERS = ("Bcc: ", "To: ", "Cc: ", "Subject: hi\r\nBcc: ")
HOSTILE_ADDRESSES = (
    f"a@example.com\r\nBcc: {EVIL}",
    f"a@example.com\nBcc: {EVIL}",
    f"a@example.com\rBcc: {EVIL}",
    f"a@example.com, {EVIL}",
    f"a@example.com; {EVIL}",
    "Ana <a@example.com>",
    f'"Ana\r\nBcc: {EVIL}" <a@example.com>',
    f"<{EVIL}>",
    f"a@example.com\u2028Bcc: {EVIL}",
    f"a@example.com\x00{EVIL}",
    "a@exam\u202eple.com",
    f"=?utf-8?q?{EVIL.replace('@', '=40')}?=",
    f"a@example.com%0d%0abcc:{EVIL}",
    f"{EVIL} ",
    "",
    "@example.com",
    "a@",
    "a" * 250 + "@example.com",
    "a@@example.com",
)
HOSTILE_EXTRAS = {
    "bcc": [EVIL],
    "cc": EVIL,
    "headers": {"Bcc": EVIL, "To": EVIL},
    "subject": f"hi\r\nBcc: {EVIL}",
    "reply_to": f"x@example.com\r\nBcc: {EVIL}",
    "__proto__": {"billing_permission": True},
    "workspace_id ": "ws-plain-00",
    "quantity\u0000": 10**30,
}

EVENT_FIELDS = ("event_id", "workspace_id", "metric", "quantity", "occurred_at")
EVENT_WRONG_TYPES = (
    ("event_id", 42),
    ("event_id", None),
    ("event_id", ["e"]),
    ("workspace_id", 7),
    ("workspace_id", None),
    ("workspace_id", {"id": "ws-plain-00"}),
    ("quantity", "3"),
    ("quantity", True),
    ("quantity", None),
    ("quantity", [1]),
    ("quantity", {"value": 1}),
    ("occurred_at", 1764000000),
    ("occurred_at", None),
    ("occurred_at", ["2026-11-24T10:00:00Z"]),
    ("conversation_id", 5),
    ("conversation_id", ["c"]),
)
UNKNOWN_METRICS = ("SMS", "sms ", " sms", "carrier_pigeons", "sm\u0455", "sms\u200b", "", 5, None, ["sms"], True)
HUGE_QUANTITIES = (
    str(2**53),
    str(-(2**53)),
    str(2**63 - 1),
    str(-(2**63)),
    str(2**64 - 1),
    str(2**64),
    str(-(2**64) - 1),
    str(10**30),
    str(-(10**40)),
    str(10**300),
)
NON_INTEGER_QUANTITIES = (
    "1.5",
    "0.1",
    "-2.5",
    "3.0",
    "1e2",
    "1E+2",
    "0.0",
    "1.0e0",
    "100e-2",
    '"7"',
    '"1e3"',
    "true",
    "false",
)
BAD_TIMESTAMPS = (
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-11-24T25:00:00Z",
    "2026-11-24T10:00:60Z",
    "2026-11-24T10:00:00",
    "2026-11-24",
    "2026-11-24T10:00:00+25:00",
    "yesterday",
    "",
    "\uff12\uff10\uff12\uff16-11-24T10:00:00Z",  # full-width digits
    "2026-11-24T10:00:00.1234567891Z",
    "1764000000",
    "2026-11-24T10:00:00Z\n",
)
NOT_JSON = (
    "{not json",
    "undefined",
    "NaN",
    "-Infinity",
    "{'quantity': 1}",
    '{"quantity": 1,}',
    "[1, 2,",
    '"unterminated',
    '{"a": 1} {"b": 2}',
    "// comment\n{}",
    '{"quantity": NaN}',
    '{"quantity": 1e400}',
    '{"quantity": 0x10}',
    '{"quantity": 01}',
    '{"quantity": +1}',
    '{"quantity": .5}',
    "\ufeff{}",
    "\x00",
    '{"a": "b"}\x00',
)
LONE_SURROGATES = ('"\\ud800"', '"ws-\\udfff"', '"ws-\\ud83d"', '"\\ude00\\ud83d"', '"\\ud800\\u0041"')
RAW_CONTROL_STRINGS = (f'"ws\r\nBcc: {EVIL}"', '"ws\x00"', '"ws\x1b[2J"', '"ws\t"', '"ws\n"')
# Whole-message codes: the dead letter carries the message's exact bytes.
WHOLE_MESSAGE_CODES = frozenset({"invalid_json", "invalid_encoding", "batch_too_large", "empty_batch"})

COMMAND_REQUIRED_FIELDS = {
    "alert_settings": ("issued_at", "workspace_id", "actor", "metric", "threshold", "type"),
    "limit_settings": ("issued_at", "workspace_id", "actor", "metric", "limit", "type"),
    "billing_contacts": ("issued_at", "workspace_id", "actor", "emails", "type"),
    "subscription": ("issued_at", "contract_id", "workspace_ids", "billing_anchor", "timezone", "currency", "type"),
    "contract_alert_settings": ("issued_at", "contract_id", "actor", "metric", "type"),
}
WORKSPACE_COMMAND_WRONG_TYPES = (
    ("actor", "admin"),
    ("actor", {"id": "admin", "billing_permission": "true"}),
    ("actor", {"billing_permission": True}),
    ("actor", {"id": "", "billing_permission": True}),
    ("workspace_id", 5),
    ("workspace_id", None),
    ("workspace_id", ""),
    ("workspace_id", "w" * 257),
)
COMMAND_WRONG_TYPES = {
    "alert_settings": (
        ("threshold", "100"),
        ("threshold", 1.5),
        ("threshold", True),
        ("threshold", None),
        ("threshold", 0),
        ("threshold", -1),
        ("threshold", 2**64),
        ("threshold", 2**53),
        ("threshold", 1e2),
        ("early_warnings", "yes"),
        ("early_warnings", 1),
        ("enabled", "false"),
        ("enabled", None),
        ("metric", "SMS"),
        ("metric", 5),
    ),
    "limit_settings": (
        ("limit", -1),
        ("limit", "10"),
        ("limit", 2.5),
        ("limit", -(2**64) - 1),
        ("limit", 2**53),
        ("enabled", "true"),
    ),
    "billing_contacts": (
        ("emails", "a@example.com"),
        ("emails", [1]),
        ("emails", {"to": "a@example.com"}),
        ("emails", None),
        ("emails", [["a@example.com"]]),
        ("emails", [f"user{i}@example.com" for i in range(101)]),
    ),
    "subscription": (
        ("workspace_ids", []),
        ("workspace_ids", "ws-plain-00"),
        ("workspace_ids", [5]),
        ("workspace_ids", [f"ws\r\nBcc: {EVIL}"]),
        ("contract_id", f"c\r\nBcc: {EVIL}"),
        ("contract_id", ""),
        ("billing_anchor", "2026-02-30"),
        ("billing_anchor", "tomorrow"),
        ("billing_anchor", ""),
        ("timezone", "Mars/Olympus_Mons"),
        ("timezone", "Europe"),
        ("timezone", "America/Argentina"),
        ("timezone", "x" * 300),
        ("timezone", "../../etc/passwd"),
        ("timezone", ""),
        ("timezone", 5),
        ("timezone", f"UTC\r\nBcc: {EVIL}"),
        ("currency", "usd"),
        ("currency", "EURO"),
        ("currency", "U\r\nS"),
        ("currency", 978),
        ("prices", {"sms": {"unit_price": "NaN"}}),
        ("prices", {"sms": {"unit_price": "-1"}}),
        ("prices", {"sms": {"unit_price": "Infinity"}}),
        ("prices", {"sms": {"unit_price": "1,5"}}),
        ("prices", {"sms": {"unit_price": "1E+3000000"}}),
        ("prices", {"sms": {"unit_price": "1E-3000000"}}),
        ("prices", {"sms": {"unit_price": "0.05", "included": 2**53}}),
        ("prices", {"sms": {"unit_price": "0.05", "included": -1}}),
        ("prices", {"sms": {"unit_price": "0.05", "included": 1.5}}),
        ("prices", {"carrier_pigeons": {"unit_price": "1"}}),
        ("prices", []),
        ("messages_included", -5),
    ),
    "contract_alert_settings": (
        ("levels", []),
        ("levels", [70]),
        ("levels", [80.0]),
        ("levels", "80"),
        ("levels", [True]),
        ("levels", [50] * 11),
        ("enabled", "false"),
        ("metric", "SMS"),
        ("contract_id", f"c\r\nBcc: {EVIL}"),
        ("actor", "admin"),
    ),
}
COMMON_COMMAND_WRONG_TYPES = (
    ("issued_at", "yesterday"),
    ("issued_at", "0001-01-01T00:00:00+14:00"),
    ("issued_at", 1764000000),
    ("issued_at", "2026-11-24T10:00:00"),
    ("type", 5),
    ("type", "ALERT_SETTINGS"),
    ("type", "delete_workspace"),
)


# --- JSON as sent -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON fragment sent exactly as written: what ``json`` will not write (lone surrogate
    escapes, number spellings, raw control characters, nesting deeper than recursion allows)."""

    text: str


DROP = Raw("")  # as a field's new value: leave the field out


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(k)}:{to_json(v)}" for k, v in value.items() if v is not DROP) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


def injected(rng: random.Random, text: str) -> str:
    return text + rng.choice(LINE_BREAKS) + rng.choice(FAKE_HEADERS) + EVIL


def truncated(rng: random.Random, text: str) -> bytes:
    """A strict prefix, cut between characters: never valid JSON, always valid UTF-8."""
    return text[: rng.randint(1, len(text) - 1)].encode()


# --- usage events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One usage event as JSON text, and what it must lead to."""

    text: str
    event_id: str | None = None
    code: str | None = None  # the reason code of its dead letter; None: it is accepted
    usage: tuple[str, str, int] | None = None  # (workspace, metric, quantity) it adds once accepted

    @property
    def own_key(self) -> bytes | None:
        """Its workspace, as the contract asks a message to be keyed."""
        return self.usage[0].encode() if self.usage else None


@dataclass(frozen=True)
class EventMessage:
    kind: str
    key: bytes | None
    value: bytes | None
    codes: tuple[str, ...] = ()  # one dead letter per code
    usage: tuple[tuple[str, str, int], ...] = ()
    rejected_ids: frozenset[str] = frozenset()
    rejected_items: tuple[Any, ...] = ()  # parsed, for a batch: each is dead-lettered on its own
    hostile: bool = True

    @classmethod
    def of(cls, kind: str, key: bytes | None, item: Item, *, hostile: bool = True) -> EventMessage:
        return cls(
            kind,
            key,
            item.text.encode(),
            codes=(item.code,) if item.code else (),
            usage=(item.usage,) if item.usage and not item.code else (),
            rejected_ids=frozenset({item.event_id} if item.code and item.event_id else ()),
            hostile=hostile,
        )

    @classmethod
    def batch(cls, kind: str, key: bytes, items: list[Item]) -> EventMessage:
        rejected = [item for item in items if item.code]
        return cls(
            kind,
            key,
            ("[" + ",".join(item.text for item in items) + "]").encode(),
            codes=tuple(item.code for item in rejected if item.code),
            usage=tuple(item.usage for item in items if item.usage and not item.code),
            rejected_ids=frozenset(item.event_id for item in rejected if item.event_id),
            rejected_items=tuple(orjson.loads(item.text) for item in rejected),
        )

    @classmethod
    def rejected(cls, kind: str, key: bytes, value: bytes | None, code: str) -> EventMessage:
        return cls(kind, key, value, codes=(code,))


class EventFactory:
    def __init__(self, rng: random.Random, now: datetime) -> None:
        self.rng = rng
        self.now = now
        self.serial = 0
        self.accepted: list[Item] = []  # accepted events so far, to deliver again

    def event_id(self) -> str:
        self.serial += 1
        return f"ev-{self.serial:06d}"

    def fields(self, workspace: str, metric: str, quantity: Any) -> dict[str, Any]:
        return {
            "event_id": self.event_id(),
            "workspace_id": workspace,
            "metric": metric,
            "quantity": quantity,
            "occurred_at": self.now.isoformat(),
            "conversation_id": None,
        }

    def good(
        self, workspace: str | None = None, metric: str | None = None, quantity: int | None = None, **overrides: Any
    ) -> Item:
        workspace = workspace or self.rng.choice(USAGE_TARGETS)
        metric = metric or self.rng.choice(ADDITIVE_METRICS)
        quantity = quantity or self.rng.randint(1, 100)
        fields = {**self.fields(workspace, metric, quantity), **overrides}
        return Item(to_json(fields), fields["event_id"], usage=(workspace, metric, quantity))

    def changed(self, **changes: Any) -> dict[str, Any]:
        """A valid event for any workspace, but for ``changes``."""
        fields = self.fields(self.rng.choice(ANY_WORKSPACE), self.rng.choice(ADDITIVE_METRICS), self.rng.randint(1, 50))
        return {**fields, **changes}

    def defect(self, code: str, **changes: Any) -> Item:
        """An event with exactly one thing wrong, and the reason code that names it."""
        fields = self.changed(**changes)
        event_id = fields["event_id"] if isinstance(fields.get("event_id"), str) else None
        return Item(to_json(fields), event_id, code)

    # Events with one thing wrong, sent alone or inside a batch.

    def wrong_type(self) -> Item:
        name, value = self.rng.choice(EVENT_WRONG_TYPES)
        return self.defect("invalid_schema", **{name: value})

    def unknown_metric(self) -> Item:
        return self.defect("unknown_metric", metric=self.rng.choice(UNKNOWN_METRICS))

    def huge_quantity(self) -> Item:
        return self.defect("quantity_out_of_range", quantity=Raw(self.rng.choice(HUGE_QUANTITIES)))

    def non_integer_quantity(self) -> Item:
        return self.defect("invalid_schema", quantity=Raw(self.rng.choice(NON_INTEGER_QUANTITIES)))

    def zero_quantity(self) -> Item:
        return self.defect("zero_quantity", quantity=Raw(self.rng.choice(("0", "-0"))))

    def control_characters(self) -> Item:
        name = self.rng.choice(("event_id", "workspace_id", "conversation_id"))
        return self.defect("invalid_schema", **{name: injected(self.rng, "ws")})

    def missing_field(self) -> Item:
        return self.defect("invalid_schema", **{self.rng.choice(EVENT_FIELDS): DROP})

    def metric_rule(self) -> Item:
        return self.rng.choice(
            (
                lambda: self.defect("missing_conversation_id", metric="fin_resolutions", quantity=1),
                lambda: self.defect(
                    "invalid_fin_quantity", metric="fin_resolutions", quantity=2, conversation_id="c-1"
                ),
                lambda: self.defect("negative_seats", metric="seats", quantity=-1),
            )
        )()

    def id_length(self) -> Item:
        name, value = self.rng.choice(
            (("event_id", ""), ("event_id", "e" * 129), ("workspace_id", ""), ("workspace_id", "w" * 257))
        )
        return self.defect("invalid_schema", **{name: value})

    def bad_timestamp(self) -> Item:
        return self.defect("invalid_schema", occurred_at=self.rng.choice(BAD_TIMESTAMPS))

    def in_future(self) -> Item:
        later = self.rng.choice((self.now + timedelta(hours=1), self.now + timedelta(days=40)))
        return self.defect(
            "occurred_in_future", occurred_at=self.rng.choice((later.isoformat(), "9999-12-31T23:59:59Z"))
        )

    def in_closed_period(self) -> Item:
        earlier = (self.now - timedelta(days=80)).isoformat()
        return self.defect(
            "period_closed", occurred_at=self.rng.choice((earlier, "2001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"))
        )

    def nested_field(self) -> Item:
        name = self.rng.choice(("quantity", "workspace_id", "occurred_at", "event_id"))
        return self.defect("invalid_schema", **{name: nested(self.rng.randint(2, 1000))})

    def far_offset_timestamp(self) -> Item:
        at = self.rng.choice(("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"))
        return self.defect("invalid_schema", occurred_at=at)

    def not_an_event(self) -> Item:
        return Item(
            self.rng.choice(("42", '"usage"', "null", "true", "{}", "-1.5", '"\\u0000"')), code="invalid_schema"
        )

    # Messages that are wrong as a whole: (value, code).

    def truncated_json(self) -> tuple[bytes | None, str]:
        items = [self.good() for _ in range(self.rng.randint(1, 3))]
        text = items[0].text if len(items) == 1 else "[" + ",".join(i.text for i in items) + "]"
        return truncated(self.rng, text), "invalid_json"

    def not_json(self) -> tuple[bytes | None, str]:
        return self.rng.choice(NOT_JSON).encode(), "invalid_json"

    def nothing(self) -> tuple[bytes | None, str]:
        return self.rng.choice((None, b"", b" ", b"\n")), "invalid_json"

    def too_deep(self) -> tuple[bytes | None, str]:
        depth = self.rng.randint(1025, 4000)
        return self.rng.choice((nested(depth).text, '{"a":' * depth + "1" + "}" * depth)).encode(), "invalid_json"

    def lone_surrogate(self) -> tuple[bytes | None, str]:
        name = self.rng.choice(("event_id", "workspace_id", "metric", "conversation_id"))
        return to_json(self.changed(**{name: Raw(self.rng.choice(LONE_SURROGATES))})).encode(), "invalid_json"

    def raw_control_character(self) -> tuple[bytes | None, str]:
        name = self.rng.choice(("event_id", "workspace_id", "metric"))
        return to_json(self.changed(**{name: Raw(self.rng.choice(RAW_CONTROL_STRINGS))})).encode(), "invalid_json"

    def oversized_garbage(self) -> tuple[bytes | None, str]:
        """Bad input whose dead letter, escaped, would pass the broker's 1 MB: it is cut short."""
        return self.rng.choice(
            (
                lambda: (b'{"event_id": "' + b"\x01" * 300_000 + b'"}', "invalid_json"),
                lambda: (b"\xff" * 900_000, "invalid_encoding"),
            )
        )()

    def not_utf8(self) -> tuple[bytes | None, str]:
        text = self.good(workspace="ws-caf\u00e9").text
        value = self.rng.choice(
            (
                lambda: b"\xff\xfe" + text.encode("utf-16-le"),
                lambda: text.encode("latin-1"),
                lambda: b'{"event_id": "\xc0\xaf", "workspace_id": "ws-plain-00"}',
                lambda: b'{"workspace_id": "\xed\xa0\x80"}',
                lambda: self.rng.randbytes(40) + b"\xff",
                lambda: text.encode()[: text.encode().index(b"\xc3") + 1],
            )
        )()
        return value, "invalid_encoding"

    def deeply_nested_event(self) -> tuple[bytes | None, str]:
        return to_json(self.changed(quantity=nested(self.rng.randint(256, 1000)))).encode(), "invalid_schema"

    def empty_batch(self) -> tuple[bytes | None, str]:
        return b"[]", "empty_batch"

    def oversized_batch(self, key: bytes) -> EventMessage:
        items = [self.good() for _ in range(1001)]
        return EventMessage.rejected(
            "batch_of_1001", key, ("[" + ",".join(i.text for i in items) + "]").encode(), "batch_too_large"
        )

    def mixed_batch(self, key: bytes) -> EventMessage:
        defects = list(self.item_defects().values())
        items = [
            self.counted(self.good()) if self.rng.random() < 0.5 else self.rng.choice(defects)()
            for _ in range(self.rng.randint(2, 40))
        ]
        return EventMessage.batch("mixed_batch", key, items)

    # Hostile but valid: accepted and counted.

    def counted(self, item: Item) -> Item:
        self.accepted.append(item)
        return item

    def odd_workspace(self) -> EventMessage:
        workspace = self.rng.choice(ODD_WORKSPACES)
        return EventMessage.of("odd_workspace", workspace.encode(), self.counted(self.good(workspace)))

    def extra_fields(self) -> EventMessage:
        item = self.counted(self.good(**HOSTILE_EXTRAS))
        return EventMessage.of("extra_fields", item.own_key, item)

    def odd_timestamp(self) -> EventMessage:
        zones = (timezone(timedelta(hours=14)), timezone(timedelta(hours=-12)), timezone(timedelta(minutes=345)))
        at = self.rng.choice(
            (
                self.now.astimezone(self.rng.choice(zones)).isoformat(),
                self.now.strftime("%Y-%m-%dT%H:%M:%Sz"),
                self.now.strftime("%Y-%m-%d %H:%M:%S.%f123Z"),
            )
        )
        item = self.counted(self.good(occurred_at=at))
        return EventMessage.of("odd_timestamp", None, item)

    def odd_event_id(self) -> EventMessage:
        serial = self.event_id()
        event_id = self.rng.choice(
            (f"{serial}-\U0001f600\u202e", f"{serial}\u2028Bcc: {EVIL}", serial + "x" * (128 - len(serial)))
        )
        return EventMessage.of("odd_event_id", b"ws-plain-00", self.counted(self.good(event_id=event_id)))

    def deep_extra_field(self) -> EventMessage:
        return EventMessage.of("deep_extra_field", None, self.counted(self.good(context=nested(900))))

    def misleading_key(self) -> EventMessage:
        key = self.rng.choice(
            (b"\xff\xfe\xfd", b"", None, f"ws\r\nBcc: {EVIL}".encode(), b"\x00" * 8, b"ws-plain-29", b"k" * 10_000)
        )
        return EventMessage.of("misleading_key", key, self.counted(self.good()))

    def delivered_again(self) -> EventMessage:
        item = self.rng.choice(self.accepted)
        return EventMessage.of("delivered_again", self.rng.choice((b"ws-plain-00", None)), Item(item.text))

    def max_quantity(self, number: int) -> EventMessage:
        workspace = f"ws-max-quantity-{number}"
        return EventMessage.of("max_quantity", workspace.encode(), self.good(workspace, "sms", MAX_QUANTITY))

    def past_the_usage_cap(self, number: int) -> EventMessage:
        """The most one event may carry, then one more unit: the second would take usage past
        2**53 - 1, which JSON readers cannot hold, and is refused while counting."""
        workspace = f"ws-usage-cap-{number}"
        over = self.good(workspace, "sms", 1)
        refused = Item(over.text, over.event_id, code="quantity_out_of_range")
        return EventMessage.batch(
            "past_the_usage_cap", workspace.encode(), [self.good(workspace, "sms", MAX_QUANTITY), refused]
        )

    def full_batch(self) -> EventMessage:
        items = [self.good() for _ in range(1000)]
        return EventMessage.batch("batch_of_1000", b"ws-plain-00", items)

    # The mix.

    def item_defects(self) -> dict[str, Callable[[], Item]]:
        return {
            "wrong_type": self.wrong_type,
            "unknown_metric": self.unknown_metric,
            "huge_quantity": self.huge_quantity,
            "non_integer_quantity": self.non_integer_quantity,
            "zero_quantity": self.zero_quantity,
            "control_characters": self.control_characters,
            "missing_field": self.missing_field,
            "metric_rule": self.metric_rule,
            "id_length": self.id_length,
            "bad_timestamp": self.bad_timestamp,
            "in_future": self.in_future,
            "in_closed_period": self.in_closed_period,
            "nested_field": self.nested_field,
            "not_an_event": self.not_an_event,
            "far_offset_timestamp": self.far_offset_timestamp,
        }

    def message_defects(self) -> dict[str, Callable[[], tuple[bytes | None, str]]]:
        return {
            "truncated_json": self.truncated_json,
            "not_json": self.not_json,
            "nothing": self.nothing,
            "too_deep": self.too_deep,
            "lone_surrogate": self.lone_surrogate,
            "raw_control_character": self.raw_control_character,
            "not_utf8": self.not_utf8,
            "deeply_nested_event": self.deeply_nested_event,
            "empty_batch": self.empty_batch,
            "oversized_garbage": self.oversized_garbage,
        }

    def odd_but_valid(self) -> dict[str, Callable[[], EventMessage]]:
        return {
            "odd_workspace": self.odd_workspace,
            "extra_fields": self.extra_fields,
            "odd_timestamp": self.odd_timestamp,
            "odd_event_id": self.odd_event_id,
            "deep_extra_field": self.deep_extra_field,
            "misleading_key": self.misleading_key,
            "delivered_again": self.delivered_again,
        }

    def hostile(self, count: int) -> list[EventMessage]:
        items, wholes, odd = self.item_defects(), self.message_defects(), self.odd_but_valid()
        kinds = [*items, *wholes, *odd, "mixed_batch"]
        weights = [6] * len(items) + [5] * len(wholes) + [2] * len(odd) + [20]
        messages = [self.oversized_batch(f"bad-event-{n:05d}".encode()) for n in range(OVERSIZED_BATCHES)]
        messages += [self.full_batch() for _ in range(FULL_BATCHES)]
        messages += [self.max_quantity(n) for n in range(MAX_QUANTITY_EVENTS)]
        messages += [self.past_the_usage_cap(n) for n in range(USAGE_CAP_BATCHES)]
        for n in range(len(messages), count):
            key = f"bad-event-{n:05d}".encode()
            kind = self.rng.choices(kinds, weights)[0]
            if kind in items:
                messages.append(EventMessage.of(kind, key, items[kind]()))
            elif kind in wholes:
                messages.append(EventMessage.rejected(kind, key, *wholes[kind]()))
            elif kind in odd:
                messages.append(odd[kind]())
            else:
                messages.append(self.mixed_batch(key))
        return messages

    def background(self, count: int) -> list[EventMessage]:
        """Good events, each keyed by its workspace."""
        messages = []
        for _ in range(count):
            item = self.counted(self.good())
            messages.append(EventMessage.of("good", item.own_key, item, hostile=False))
        return messages

    def usage_that_alerts(self) -> list[EventMessage]:
        """Sent once every setting is in force: reaches every alert level, the Fin limit and the contract's quantity."""
        items = [self.good(ws, "sms", ALERT_STEP) for ws in MAIL_WORKSPACES for _ in range(ALERT_STEPS)]
        items += [self.good(FIN_WORKSPACE, "fin_resolutions", 1, conversation_id=f"conv-{n}") for n in range(FIN_LIMIT)]
        items.append(self.good(CONTRACT_WORKSPACE, "sms", CONTRACT_EVENT))
        return [EventMessage.of("good", item.own_key, item, hostile=False) for item in items]


# --- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandMessage:
    kind: str
    key: bytes | None
    value: bytes | None
    command_id: str | None  # as its answer must carry it
    status: str = "applied"
    reason: str | None = None  # the code that starts the rejection's reason
    hostile: bool = True

    @property
    def answer(self) -> tuple[str | None, str, str | None]:
        return self.command_id, self.status, self.reason


class CommandFactory:
    def __init__(self, rng: random.Random, now: datetime) -> None:
        self.rng = rng
        self.now = now
        self.serial = 0

    def command_id(self, label: str = "cmd") -> str:
        self.serial += 1
        return f"{label}-{self.serial:05d}"

    def fields(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "command_id": self.command_id(), "issued_at": self.now.isoformat(), **fields}

    def for_workspace(self, kind: str, workspace: str, **fields: Any) -> dict[str, Any]:
        return self.fields(kind, workspace_id=workspace, actor=ADMIN, **fields)

    def message(self, kind: str, fields: Any, *, reason: str | None = None, hostile: bool = True) -> CommandMessage:
        command_id = fields.get("command_id") if isinstance(fields, dict) else None
        owner = fields.get("workspace_id", fields.get("contract_id")) if isinstance(fields, dict) else None
        return CommandMessage(
            kind,
            owner.encode() if isinstance(owner, str) else b"bad-command",
            to_json(fields).encode(),
            command_id if isinstance(command_id, str) else None,
            "rejected" if reason else "applied",
            reason,
            hostile,
        )

    def valid(self, kind: str, workspace: str) -> dict[str, Any]:
        if kind == "alert_settings":
            metric = self.rng.choice((*ADDITIVE_METRICS, "fin_resolutions"))
            return self.for_workspace(
                kind, workspace, metric=metric, threshold=self.rng.randint(1, 10**6), early_warnings=True, enabled=True
            )
        if kind == "limit_settings":
            return self.for_workspace(
                kind, workspace, metric="fin_resolutions", limit=self.rng.randint(1, 1000), enabled=True
            )
        if kind == "billing_contacts":
            return self.for_workspace(kind, workspace, emails=[f"owner.{self.serial}@example.com"])
        if kind == "contract_alert_settings":
            levels = self.rng.sample((50, 80, 100), self.rng.randint(1, 3))
            metric = self.rng.choice(ADDITIVE_METRICS)
            return self.fields(kind, contract_id=f"contract-{self.serial}", actor=ADMIN, metric=metric, levels=levels)
        return self.fields(
            kind,
            contract_id=f"contract-{self.serial}",
            workspace_ids=[workspace],
            billing_anchor="2026-01-15",
            timezone=self.rng.choice(("UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata")),
            currency="EUR",
            prices={"sms": {"unit_price": "0.05", "included": 1000}},
        )

    def any_valid(self, kinds: tuple[str, ...] = tuple(COMMAND_REQUIRED_FIELDS)) -> dict[str, Any]:
        return self.valid(self.rng.choice(kinds), self.rng.choice(ANY_WORKSPACE))

    # Commands with one thing wrong.

    def missing_field(self) -> CommandMessage:
        fields = self.any_valid()
        fields[self.rng.choice(COMMAND_REQUIRED_FIELDS[fields["type"]])] = DROP
        return self.message("missing_field", fields, reason="invalid_command")

    def missing_command_id(self) -> CommandMessage:
        return self.message("missing_command_id", {**self.any_valid(), "command_id": DROP}, reason="invalid_command")

    def wrong_type(self) -> CommandMessage:
        fields = self.any_valid()
        choices = COMMAND_WRONG_TYPES[fields["type"]] + COMMON_COMMAND_WRONG_TYPES
        if "workspace_id" in fields:
            choices += WORKSPACE_COMMAND_WRONG_TYPES
        name, value = self.rng.choice(choices)
        return self.message("wrong_type", {**fields, name: value}, reason="invalid_command")

    def without_permission(self) -> CommandMessage:
        fields = self.any_valid(("alert_settings", "limit_settings", "billing_contacts"))
        fields["actor"] = {"id": "intruder", "billing_permission": False}
        if fields["type"] == "billing_contacts":
            fields["emails"] = [EVIL]
        return self.message("without_permission", fields, reason="no_billing_permission")

    def alert_on_seats(self) -> CommandMessage:
        fields = {**self.valid("alert_settings", self.rng.choice(ANY_WORKSPACE)), "metric": "seats"}
        return self.message("alert_on_seats", fields, reason="alerts_not_available_on_seats")

    def limit_on_seats(self) -> CommandMessage:
        fields = {**self.valid("limit_settings", self.rng.choice(ANY_WORKSPACE)), "metric": "seats"}
        return self.message("limit_on_seats", fields, reason="limits_not_available_on_seats")

    def address_injection(self) -> CommandMessage:
        workspace = self.rng.choice(MAIL_WORKSPACES + (FIN_WORKSPACE, CONTRACT_WORKSPACE))
        emails = [*BILLING_CONTACTS[workspace], self.rng.choice(HOSTILE_ADDRESSES)]
        self.rng.shuffle(emails)
        fields = self.for_workspace("billing_contacts", workspace, emails=emails)
        return self.message("address_injection", fields, reason="invalid_command")

    def id_injection(self) -> CommandMessage:
        fields = self.any_valid(("alert_settings", "limit_settings", "billing_contacts"))
        name = self.rng.choice(("workspace_id", "actor"))
        if name == "actor":
            fields["actor"] = {"id": injected(self.rng, "admin"), "billing_permission": True}
        else:
            fields["workspace_id"] = injected(self.rng, "ws-mail-0")
        return self.message("id_injection", fields, reason="invalid_command")

    def command_id_injection(self) -> CommandMessage:
        command_id = self.rng.choice((injected(self.rng, self.command_id()), "c" * 257, ""))
        return self.message(
            "command_id_injection", {**self.any_valid(), "command_id": command_id}, reason="invalid_command"
        )

    # Messages that are wrong as a whole: their answer can carry no command_id.

    def unreadable(self) -> CommandMessage:
        text = to_json(self.any_valid())
        value = self.rng.choice(
            (
                lambda: truncated(self.rng, text),
                lambda: self.rng.choice(NOT_JSON).encode(),
                lambda: self.rng.choice((None, b"", b" ")),
                lambda: nested(self.rng.randint(1025, 3000)).text.encode(),
                lambda: text.replace('"type"', '"\\ud800type"', 1).encode(),
                lambda: text.replace('"type"', '"ty\npe"', 1).encode(),
                lambda: b"\xff\xfe" + text.encode("utf-16-le"),
                lambda: text.encode()[:-1] + b"\xff}",
            )
        )()
        return CommandMessage("unreadable", b"bad-command", value, None, "rejected", "invalid_json")

    def not_an_object(self) -> CommandMessage:
        value = self.rng.choice((to_json([self.any_valid()]), '"alert_settings"', "42", "null", "true"))
        return CommandMessage("not_an_object", b"bad-command", value.encode(), None, "rejected", "invalid_command")

    # Hostile but valid: applied.

    def odd_workspace(self) -> str:
        return f"ws-odd-{self.command_id('ws')}"

    def huge_setting(self) -> CommandMessage:
        workspace = self.odd_workspace()
        fields = self.rng.choice(
            (
                lambda: self.for_workspace(
                    "alert_settings", workspace, metric="sms", threshold=MAX_QUANTITY, early_warnings=True, enabled=True
                ),
                lambda: self.for_workspace(
                    "limit_settings", workspace, metric="fin_resolutions", limit=MAX_QUANTITY, enabled=True
                ),
            )
        )()
        return self.message("huge_setting", fields)

    def extra_fields(self) -> CommandMessage:
        fields = self.valid(
            self.rng.choice(("alert_settings", "limit_settings", "billing_contacts")), self.odd_workspace()
        )
        return self.message("extra_fields", {**fields, **HOSTILE_EXTRAS, "context": nested(900)})

    def odd_command_id(self) -> CommandMessage:
        serial = self.command_id()
        command_id = self.rng.choice(
            (f"{serial}-\U0001f600\u202e", f"{serial}\u2028Bcc: {EVIL}", serial + "c" * (256 - len(serial)))
        )
        fields = {**self.valid("billing_contacts", self.odd_workspace()), "command_id": command_id}
        return self.message("odd_command_id", fields)

    def odd_issued_at(self) -> CommandMessage:
        at = self.rng.choice(
            (self.now.astimezone(timezone(timedelta(hours=14))).isoformat(), self.now.strftime("%Y-%m-%dT%H:%M:%S.%fz"))
        )
        return self.message("odd_issued_at", {**self.valid("limit_settings", self.odd_workspace()), "issued_at": at})

    def repeated_addresses(self) -> CommandMessage:
        emails = ["dup@example.com", "dup@example.com", "DUP@example.com"]
        return self.message(
            "repeated_addresses", self.for_workspace("billing_contacts", self.odd_workspace(), emails=emails)
        )

    def kinds(self) -> dict[str, tuple[int, Callable[[], CommandMessage]]]:
        return {
            "missing_field": (6, self.missing_field),
            "missing_command_id": (2, self.missing_command_id),
            "wrong_type": (12, self.wrong_type),
            "without_permission": (4, self.without_permission),
            "alert_on_seats": (2, self.alert_on_seats),
            "limit_on_seats": (2, self.limit_on_seats),
            "address_injection": (10, self.address_injection),
            "id_injection": (6, self.id_injection),
            "command_id_injection": (3, self.command_id_injection),
            "unreadable": (8, self.unreadable),
            "not_an_object": (2, self.not_an_object),
            "huge_setting": (1, self.huge_setting),
            "extra_fields": (1, self.extra_fields),
            "odd_command_id": (1, self.odd_command_id),
            "odd_issued_at": (1, self.odd_issued_at),
            "repeated_addresses": (1, self.repeated_addresses),
        }

    def hostile(self, count: int) -> list[CommandMessage]:
        kinds = self.kinds()
        names, weights = list(kinds), [weight for weight, _ in kinds.values()]
        return [kinds[self.rng.choices(names, weights)[0]][1]() for _ in range(count)]

    def setup(self) -> list[CommandMessage]:
        """Billing contacts (with hostile extra fields, which must change nothing), usage alerts,
        the Fin limit and the contract, so that good usage sends real mail."""
        commands = []
        for workspace, contacts in BILLING_CONTACTS.items():
            fields = self.for_workspace(
                "billing_contacts", workspace, emails=[*contacts, contacts[0]], **HOSTILE_EXTRAS
            )
            commands.append(self.message("setup", fields, hostile=False))
        for workspace in MAIL_WORKSPACES:
            fields = self.for_workspace(
                "alert_settings", workspace, metric="sms", threshold=ALERT_THRESHOLD, early_warnings=True, enabled=True
            )
            commands.append(self.message("setup", fields, hostile=False))
        fields = self.for_workspace(
            "limit_settings", FIN_WORKSPACE, metric="fin_resolutions", limit=FIN_LIMIT, enabled=True
        )
        commands.append(self.message("setup", fields, hostile=False))
        subscription = self.fields(
            "subscription",
            contract_id=CONTRACT_ID,
            workspace_ids=[CONTRACT_WORKSPACE],
            billing_anchor="2026-01-01",
            timezone="UTC",
            currency="USD",
            prices={"sms": {"unit_price": "0.99", "included": CONTRACT_INCLUDED}},
        )
        commands.append(self.message("setup", subscription, hostile=False))
        return commands


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    commands: list[CommandMessage]
    first_events: list[EventMessage]  # sent alongside the commands
    second_events: list[EventMessage]  # sent once every command is answered

    @property
    def events(self) -> list[EventMessage]:
        return self.first_events + self.second_events

    def expected_dead_letters(self) -> Counter[tuple[str, str]]:
        return Counter((message.key.decode(), code) for message in self.events if message.key for code in message.codes)

    def expected_answers(self) -> Counter[tuple[str | None, str, str | None]]:
        return Counter(command.answer for command in self.commands)

    def expected_usage(self) -> dict[str, Counter[str]]:
        usage: dict[str, Counter[str]] = {}
        for message in self.events:
            for workspace, metric, quantity in message.usage:
                usage.setdefault(workspace, Counter())[metric] += quantity
        return usage

    def by_key(self) -> dict[str, EventMessage]:
        return {message.key.decode(): message for message in self.events if message.codes and message.key}


def build_plan(now: datetime) -> Plan:
    rng = random.Random(SEED)
    events, commands = EventFactory(rng, now), CommandFactory(rng, now)
    background = events.background(GOOD_EVENT_MESSAGES)
    mixed = background + events.hostile(HOSTILE_EVENT_MESSAGES)
    rng.shuffle(mixed)
    control = commands.setup() + commands.hostile(HOSTILE_COMMANDS)
    rng.shuffle(control)
    half = len(mixed) // 2
    second = mixed[half:] + events.usage_that_alerts()
    rng.shuffle(second)
    return Plan(control, mixed[:half], second)


# --- what arrives -----------------------------------------------------------------------------
