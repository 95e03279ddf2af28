"""Stage one for ``usage.control``: check each command, answer the ones that fail, and forward
the rest to the inbox of what they are about: a workspace's commands to the workspace inbox, so
that settings and usage of a workspace are applied in one order, and a contract's
(``subscription``, ``contract_alert_settings``) to the contract inbox.

With ``METERWATCH_COMMAND_KEYS`` set, a command is routed only if it is signed by one of them
(``models/signing.py``), keyed by what it is about, and fresh (``_routed_at``); the
workspace's or contract's step then applies each ``command_id`` once."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import EventT

from ...core.rejections import RejectCode
from ...models.commands import Command, CommandRejected, ContractCommand, parse_command
from ...models.internal import command_message, contract_command_message
from ...models.outputs import RecordedOutputs, command_result
from ...models.signing import SignatureRejected, check_signature
from ...sinks.outputs import Sinks, compose
from ..runtime.batches import by_source_partition, finish, handle_batch
from .dead_letters import dead_letter_failure

if TYPE_CHECKING:
    from ..app import Meterwatch


def register(mw: Meterwatch) -> None:
    @mw.app.agent(mw.channels.usage_control, name=f"{mw.settings.group_id}.route_commands")
    async def route_commands(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(100, within=0.05):
            await handle_batch(mw, "control", events, forward_commands)


async def forward_commands(mw: Meterwatch, events: list[EventT]) -> None:
    sinks = compose(mw.channels, webhooks=bool(mw.settings.webhook_urls))
    for _, part in by_source_partition(events):
        await _forward_part(mw, part, sinks)
    await finish(mw, sinks)


async def _forward_part(mw: Meterwatch, events: list[EventT], sinks: Sinks) -> None:
    for event in events:
        outputs = RecordedOutputs()
        try:
            _route_command(mw, event, outputs)
        except Exception as error:
            await dead_letter_failure(mw, sinks, "route_commands", event, error)
            command_id = _command_id(event.message.value)
            outputs = RecordedOutputs()
            outputs.command_result(None, command_result(command_id, "rejected", reason=RejectCode.INTERNAL_ERROR))
        await sinks.publish(outputs)


def _route_command(mw: Meterwatch, event: EventT, outputs: RecordedOutputs) -> None:
    message = event.message
    received_ms = int(message.timestamp * 1000)
    key = message.key.decode("utf-8", "replace") if message.key is not None else None
    keys = mw.settings.command_signing_keys
    try:
        if keys is not None:
            _check_signed(message.value, message.headers, keys)
        command = parse_command(message.value)
        if keys is not None:
            _check_signed_command(command, key, mw.settings.command_max_age, _routed_at(message))
    except CommandRejected as rejected:
        mw.metrics.commands.labels(_command_type(message.value), "rejected").inc()
        outputs.command_result(key, command_result(rejected.command_id, "rejected", reason=rejected.reason))
        return
    document = command.model_dump(mode="json")
    if isinstance(command, ContractCommand):
        # The contract's owner knows who was a member before, so it tells who joined and left;
        # it also holds the contract's usage its alert settings are judged against.
        outputs.contract_message(command.contract_id, contract_command_message(document))
    else:
        outputs.workspace_message(command.workspace_id, command_message(received_ms, document))


def _check_signed(value: bytes | None, headers: Any, keys: Mapping[str, bytes]) -> None:
    """The command is signed by a known key; raises CommandRejected."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    try:
        check_signature(value, pairs, keys)
    except SignatureRejected as rejected:
        raise CommandRejected(str(rejected), _command_id(value)) from None


LOG_APPEND_TIME = 1  # the broker stamped the record (message.timestamp.type=LogAppendTime)


def _routed_at(message: Any) -> datetime:
    """The time a signed command's freshness is judged at: when it reached Kafka, if the broker
    stamped it (a producer cannot choose that time, and a rebuild that reads the topic again
    judges each command as it was judged first), else this worker's clock."""
    if message.timestamp_type == LOG_APPEND_TIME:
        return datetime.fromtimestamp(message.timestamp, tz=UTC)
    return datetime.now(UTC)


def _check_signed_command(command: Command, key: str | None, max_age: timedelta, now: datetime) -> None:
    """A signed command is keyed by what it is about and fresh; raises CommandRejected."""
    about_contract = isinstance(command, ContractCommand)
    subject = command.contract_id if about_contract else command.workspace_id
    if key != subject:
        field = "contract_id" if about_contract else "workspace_id"
        raise CommandRejected(f"key_mismatch: a signed command's record key must be its {field}", command.command_id)
    if abs(now - command.issued_at) > max_age:
        raise CommandRejected(
            f"stale: issued_at is more than {max_age.total_seconds():g} s from the time it was routed",
            command.command_id,
        )


def _command_id(raw: bytes | None) -> str | None:
    """The command's id, if it has a readable one, so that even a failed command is answered."""
    try:
        command_id = orjson.loads(raw or b"").get("command_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return command_id if isinstance(command_id, str) and len(command_id) <= 256 else None


def _command_type(raw: bytes | None) -> str:
    """The command's type when it names a known one, for the metric label (never free text)."""
    known = {
        "alert_settings",
        "limit_settings",
        "billing_contacts",
        "subscription",
        "contract_alert_settings",
        "cost_alert_settings",
    }
    try:
        kind = orjson.loads(raw or b"").get("type")
    except (orjson.JSONDecodeError, AttributeError):
        return "invalid"
    return kind if kind in known else "invalid"
