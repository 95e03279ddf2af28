"""Fault suite: hostile input.

10,000 generated hostile inputs, mixed with good events and commands, go to a real ``meterwatch
worker`` on a real broker that mails through a real SMTP server. Afterwards the test checks what
a user would: the worker is the same live, healthy process; every bad input left a dead letter or
a rejected command result with its reason code; every good event was counted exactly once; and
every mail went to the billing contacts only, with no header injected (CONTRACT 3, 4, 5.4-5.6).

The inputs come from a ``random.Random`` with a fixed seed, so every run sends the same mix.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from tests.support.hostile_inputs import (
    BILLING_CONTACTS,
    CONTRACT_ID,
    CONTRACT_WORKSPACE,
    FIN_WORKSPACE,
    MAIL_WORKSPACES,
    MAX_QUANTITY,
    MAX_QUANTITY_EVENTS,
    SENDER,
    USAGE_CAP_BATCHES,
    WHOLE_MESSAGE_CODES,
    CommandMessage,
    EventMessage,
    Plan,
    build_plan,
)
from tests.support.kafka_io import produce, read_all
from tests.support.raw_mail import RawMail, RawMailbox, mail_problems
from tests.support.smtp import SmtpServer
from tests.support.worker import WorkerProcess, eventually, http_get

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PATIENCE = 120.0  # seconds; the machine is small and shared


def dead_letter_bytes(record: dict[str, Any]) -> bytes | None:
    value = record.get("value")
    if value is None:
        return None
    return base64.b64decode(value) if record.get("value_encoding") == "base64" else value.encode()


def carries_its_input(record: dict[str, Any], message: EventMessage) -> bool:
    value = dead_letter_bytes(record)
    if value == message.value:
        return True
    if record.get("value_truncated"):
        # Cut to fit the broker's message size: the start of the input, and how long it was.
        return (
            value is not None
            and message.value is not None
            and message.value.startswith(value)
            and record["value_length"] == len(message.value)
        )
    if record["error"]["code"] in WHOLE_MESSAGE_CODES or value is None:
        return False
    # A batch's events are dead-lettered one by one, and an event judged against its workspace's
    # billing period is re-encoded there: recognised by its content or its event_id.
    document = orjson.loads(value)
    event_id = document.get("event_id") if isinstance(document, dict) else None
    return document in message.rejected_items or event_id in message.rejected_ids


def reason_code(answer: dict[str, Any]) -> str | None:
    reason = answer.get("reason")
    return reason.split(":", 1)[0] if isinstance(reason, str) else None


def usage_differences(worker: WorkerProcess, expected: dict[str, Counter[str]]) -> dict[str, Any]:
    """Every workspace whose usage API disagrees with what was sent: {workspace: (got, expected)}."""
    differences = {}
    for workspace, metrics in expected.items():
        status, body = http_get(f"{worker.base_url}/usage/{quote(workspace, safe='')}", timeout=10)
        if status != 200 or body.get("workspace_id") != workspace:
            differences[workspace] = (status, body if status != 200 else body.get("workspace_id"))
            continue
        got = Counter({metric: entry["usage"] for metric, entry in body["metrics"].items() if entry["usage"]})
        if got != +metrics:
            differences[workspace] = (dict(got), dict(metrics))
    return differences


async def settle(check: Callable[[], Any], timeout: float = PATIENCE, interval: float = 1.0) -> Any:
    """Poll ``check`` until it returns something empty; return its last answer either way."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if not answer or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(interval)


# --- mail -------------------------------------------------------------------------------------
def alert_owner(alert: dict[str, Any]) -> str:
    return alert["contract_id"] if alert["scope"] == "contract" else alert["workspace_id"]


def alert_recipients(alert: dict[str, Any]) -> tuple[str, ...]:
    return BILLING_CONTACTS[CONTRACT_WORKSPACE if alert["scope"] == "contract" else alert["workspace_id"]]


def expected_alerts() -> Counter[tuple[str, int]]:
    return Counter([(ws, level) for ws in MAIL_WORKSPACES for level in (50, 80, 100)] + [(CONTRACT_ID, 100)])


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture
def smtp_recorder() -> RawMailbox:
    """Overrides conftest's: ``smtp_server`` keeps each mail exactly as it arrived."""
    return RawMailbox()


@pytest.fixture
def smtp_sender() -> str:
    """Overrides conftest's: ``mailing_worker`` sends from the address the mail checks expect."""
    return SENDER


async def send_events(bootstrap: str, topic: str, messages: list[EventMessage]) -> None:
    await produce(bootstrap, topic, [(message.key, message.value) for message in messages])


async def send_commands(bootstrap: str, topic: str, commands: list[CommandMessage]) -> None:
    await produce(bootstrap, topic, [(command.key, command.value) for command in commands])


def contract_of(worker: WorkerProcess, workspace: str) -> str | None:
    status, body = http_get(f"{worker.base_url}/usage/{quote(workspace, safe='')}")
    return body.get("contract_id") if status == 200 else None


def mail_id(mail: RawMail) -> tuple[str, str]:
    """(the id header's name, the alert or transition id it carries)."""
    message = mail.parsed()
    for name in ("x-meterwatch-alert-id", "x-meterwatch-transition-id"):
        if message[name] is not None:
            return name, str(message[name])
    return "", ""


def differences(got: Counter[Any], expected: Counter[Any]) -> str:
    return f"unexpected: {dict(got - expected)}, missing: {dict(expected - got)}"


async def test_hostile_input_never_crashes_the_worker_and_every_input_is_accounted_for(
    mailing_worker: WorkerProcess,
    smtp_server: SmtpServer,
    deployment: dict[str, str],
    fault_figures: Callable[[str], None],
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    assert mailing_worker.process is not None
    pid, started = mailing_worker.process.pid, time.monotonic()
    plan = build_plan(datetime.now(UTC))

    # Commands and half the events together; the usage that crosses alert levels only once the
    # settings are in force, or which levels alert would depend on timing.
    await asyncio.gather(
        send_commands(bootstrap, prefix + "usage.control", plan.commands),
        send_events(bootstrap, prefix + "usage.events", plan.first_events),
    )
    answers = await read_all(bootstrap, prefix + "usage.command-results", expect=len(plan.commands), timeout=PATIENCE)
    answered = Counter((answer["command_id"], answer["status"], reason_code(answer)) for answer in answers)
    assert answered == plan.expected_answers(), differences(answered, plan.expected_answers())
    await eventually(lambda: contract_of(mailing_worker, CONTRACT_WORKSPACE) == CONTRACT_ID, timeout=PATIENCE)
    await send_events(bootstrap, prefix + "usage.events", plan.second_events)

    # Every bad input: a dead letter with its code, carrying what was sent.
    expected_letters = plan.expected_dead_letters()
    letters = await read_all(
        bootstrap, prefix + "usage.dead-letter", expect=sum(expected_letters.values()), timeout=PATIENCE
    )
    lettered = Counter((letter["key"], letter["error"]["code"]) for letter in letters)
    assert lettered == expected_letters, differences(lettered, expected_letters)
    by_key = plan.by_key()
    assert [letter for letter in letters if not carries_its_input(letter, by_key[letter["key"]])] == []
    assert all(letter["error"]["message"] and letter["source_topic"] == prefix + "usage.events" for letter in letters)

    # Every good event counted once.
    expected_usage = plan.expected_usage()
    assert await settle(lambda: usage_differences(mailing_worker, expected_usage)) == {}

    # Every alert on its topic, to the billing contacts only; one clean mail per alert and Fin
    # transition to each contact, addressed to that contact alone.
    alerts = await read_all(
        bootstrap, prefix + "usage.alerts", expect=sum(expected_alerts().values()), timeout=PATIENCE
    )
    assert Counter((alert_owner(a), a["level"]) for a in alerts) == expected_alerts()
    assert [a for a in alerts if sorted(a["recipients"]) != sorted(alert_recipients(a))] == []
    mailbox: RawMailbox = smtp_server.recorder  # type: ignore[assignment]
    expected_mails = sum(len(alert_recipients(a)) for a in alerts) + len(BILLING_CONTACTS[FIN_WORKSPACE])
    await settle(lambda: len(mailbox.snapshot()) < expected_mails)
    await asyncio.sleep(3)  # a duplicate or stray mail would arrive now
    mails = mailbox.snapshot()
    # Each mail request is published with its record, so the Fin transition is on its topic by now.
    limits = await read_all(bootstrap, prefix + "usage.limits", timeout=10)
    [fin_disabled] = [t for t in limits if t["state"] == "disabled"]
    assert fin_disabled["workspace_id"] == FIN_WORKSPACE
    recipients_of = {a["alert_id"]: alert_recipients(a) for a in alerts}
    recipients_of[fin_disabled["transition_id"]] = BILLING_CONTACTS[FIN_WORKSPACE]
    assert Counter((mail_id(mail)[1], mail.envelope_to) for mail in mails) == Counter(
        (record_id, (contact,)) for record_id, contacts in recipients_of.items() for contact in contacts
    )
    assert len({mail.parsed()["Message-ID"] for mail in mails}) == len(mails)
    problems = {
        (mail_id(mail)[1], mail.envelope_to): mail_problems(
            mail, tuple(recipients_of[mail_id(mail)[1]]), mail_id(mail)[0], SENDER
        )
        for mail in mails
    }
    assert {mail: found for mail, found in problems.items() if found} == {}

    # The same process all along, healthy, and no agent crashed and was restarted inside it.
    assert mailing_worker.process.poll() is None
    assert (mailing_worker.process.pid, mailing_worker.starts) == (pid, 1)
    assert http_get(f"{mailing_worker.base_url}/health")[0] == 200
    log = mailing_worker.log_path.read_text(errors="replace").splitlines()
    assert [line for line in log if "Crashed" in line or "Traceback" in line] == []

    fault_figures(figures_text(plan, letters, answers, expected_usage, mails, time.monotonic() - started))


def figures_text(
    plan: Plan,
    letters: list[dict[str, Any]],
    answers: list[dict[str, Any]],
    usage: dict[str, Counter[str]],
    mails: list[RawMail],
    seconds: float,
) -> str:
    hostile_events = [message for message in plan.events if message.hostile]
    hostile_commands = [command for command in plan.commands if command.hostile]
    lines = []
    lines.append(
        f"\n[hostile input] {len(hostile_events) + len(hostile_commands):,} hostile inputs: "
        f"{len(hostile_events):,} event messages, {len(hostile_commands):,} commands"
    )
    lines.append(f"  event messages by kind: {dict(Counter(m.kind for m in hostile_events).most_common())}")
    lines.append(f"  commands by kind: {dict(Counter(c.kind for c in hostile_commands).most_common())}")
    good_events = len(plan.events) - len(hostile_events)
    good_commands = len(plan.commands) - len(hostile_commands)
    accepted = sum(len(message.usage) for message in plan.events)
    lines.append(
        f"  good: {good_events:,} event messages, {good_commands} commands; {accepted:,} events accepted in all"
    )
    codes = Counter(letter["error"]["code"] for letter in letters)
    lines.append(f"  dead letters: {len(letters):,} by code {dict(codes.most_common())}")
    statuses = Counter(answer["status"] for answer in answers)
    reasons = Counter(reason_code(answer) for answer in answers if answer["status"] == "rejected")
    lines.append(f"  command answers: {dict(statuses)}; rejected by reason {dict(reasons.most_common())}")
    cap_sized = MAX_QUANTITY_EVENTS + USAGE_CAP_BATCHES  # events of 2**53 - 1 (one in each cap batch)
    units = sum(sum(metrics.values()) for metrics in usage.values()) - cap_sized * MAX_QUANTITY
    pairs = sum(len(metrics) for metrics in usage.values())
    lines.append(
        f"  counted exactly: {units:,} units + {cap_sized} x (2**53 - 1), "
        f"in {pairs} workspace-metrics of {len(usage)} workspaces"
    )
    recipients = sum(len(mail.envelope_to) for mail in mails)
    lines.append(
        f"  mails: {len(mails)} to {recipients} recipients, no header injected; {seconds:.0f} s from the first send"
    )
    return "\n".join(lines)
