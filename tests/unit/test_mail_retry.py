"""When a failing mail is tried again and when it is given up (core.mail_retry), and the outbox
that applies it: a mail failing for now holds up no other, and is given up at its age."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from meterwatch.core.mail_retry import Backoff, GiveUp, RetryIn, RetryPolicy, after_failed_attempt
from meterwatch.sinks.email import MailOutbox, SendResult

REQUESTED = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
DAY = RetryPolicy(give_up_after=timedelta(hours=24), backoff=Backoff(base=0.5, cap=60.0))


def test_full_jitter_stays_between_zero_and_the_capped_exponential() -> None:
    backoff = Backoff(base=0.5, cap=60.0)
    assert [backoff.delay(n, jitter=0.999999) for n in range(9)] == pytest.approx(
        [0.5, 1, 2, 4, 8, 16, 32, 60, 60], rel=1e-5
    )
    assert backoff.delay(5, jitter=0.0) == 0.0
    assert backoff.delay(10_000, jitter=0.5) == 30.0  # no overflow however long it has failed


@pytest.mark.parametrize(
    ("age", "attempts", "jitter", "verdict"),
    [
        (timedelta(seconds=1), 1, 1.0, RetryIn(0.5)),  # first retry: up to the base
        (timedelta(seconds=1), 4, 1.0, RetryIn(4.0)),  # doubling
        (timedelta(hours=1), 50, 0.5, RetryIn(30.0)),  # capped, with jitter
        (timedelta(hours=24) - timedelta(seconds=10), 50, 1.0, RetryIn(10.0)),  # the last try is at the age
        (timedelta(hours=24), 50, 1.0, GiveUp(timedelta(hours=24))),
        (timedelta(days=3), 1, 1.0, GiveUp(timedelta(days=3))),  # one attempt however late it was made
        (-timedelta(seconds=5), 1, 1.0, RetryIn(0.5)),  # a requester's clock ahead of ours
    ],
)
def test_a_failed_attempt_is_retried_until_the_mail_is_as_old_as_the_give_up_age(
    age: timedelta, attempts: int, jitter: float, verdict: RetryIn | GiveUp
) -> None:
    assert after_failed_attempt(REQUESTED, REQUESTED + age, attempts, DAY, jitter) == verdict


class DeferredFor:
    """A mailer whose server defers the recipients it is told to, every time, and takes the others."""

    def __init__(self, *deferred: str) -> None:
        self.deferred = set(deferred)
        self.attempts: list[str] = []

    async def send(self, message: EmailMessage, recipients: Any = None) -> SendResult:
        to = recipients or [message["To"]]
        self.attempts.append(message["Subject"])
        await asyncio.sleep(0)
        late = {a: "450 4.2.1 mailbox busy" for a in to if a in self.deferred}
        return SendResult(accepted=tuple(a for a in to if a not in late), deferred=late)


def mail(to: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["To"], message["Subject"] = to, subject
    return message


class Recorded:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.given_up: list[tuple[str, str]] = []
        self.retries = 0

    def outbox(self, mailer: Any, **options: Any) -> MailOutbox:
        def retried(key: str, attempts: int, why: str) -> None:
            self.retries += 1

        return MailOutbox(
            mailer,
            on_sent=self.sent.append,
            on_failed=lambda key, reason: pytest.fail(f"{key} failed: {reason}"),
            on_given_up=lambda key, reason: self.given_up.append((key, reason)),
            on_retry=retried,
            **options,
        )


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_mail_deferred_for_ever_holds_up_no_later_mail() -> None:
    mailer = DeferredFor("stuck@example.com")
    recorded = Recorded()
    outbox = recorded.outbox(mailer, backoff=Backoff(base=0.01, cap=0.02))
    outbox.put("stuck", mail("stuck@example.com", "stuck"))
    await until(lambda: recorded.retries >= 3)
    for n in range(5):
        outbox.put(f"later-{n}", mail(f"ok{n}@example.com", f"later-{n}"))
    await until(lambda: len(recorded.sent) == 5)

    assert sorted(recorded.sent) == [f"later-{n}" for n in range(5)]
    assert outbox.backlog() == 1 and recorded.given_up == []  # the stuck one is still being retried
    assert await outbox.close() == ["stuck"]


async def test_a_mail_still_deferred_at_its_age_is_given_up_once_without_addresses_in_the_reason() -> None:
    now = [REQUESTED]
    mailer = DeferredFor("stuck@example.com")
    recorded = Recorded()
    policy = RetryPolicy(give_up_after=timedelta(seconds=30), backoff=Backoff(base=0.001, cap=0.001))
    outbox = recorded.outbox(mailer, policy=policy, clock=lambda: now[0])
    outbox.put("stuck", mail("stuck@example.com", "stuck"), requested_at=REQUESTED)
    await until(lambda: recorded.retries >= 2)
    assert recorded.given_up == []
    now[0] = REQUESTED + timedelta(seconds=30)
    await until(lambda: outbox.backlog() == 0)

    [(key, reason)] = recorded.given_up
    assert key == "stuck" and reason.startswith("not delivered in 30.0s (")
    assert "450 4.2.1 mailbox busy" in reason and "stuck@example.com" not in reason
    attempts = len(mailer.attempts)
    await asyncio.sleep(0.05)
    assert len(mailer.attempts) == attempts and recorded.sent == []


async def test_stopping_cancels_every_send_without_settling_it() -> None:
    recorded = Recorded()
    outbox = recorded.outbox(DeferredFor("a@example.com", "b@example.com"), backoff=Backoff(base=0.01, cap=0.02))
    outbox.put("a", mail("a@example.com", "a"))
    outbox.put("b", mail("b@example.com", "b"))
    await until(lambda: recorded.retries >= 2)

    assert sorted(await outbox.stopped()) == ["a", "b"]
    assert outbox.backlog() == 0 and recorded.sent == [] and recorded.given_up == []
    assert outbox.put("a", mail("a@example.com", "a")) is True  # the key is free again
    await outbox.close()


async def test_no_attempt_starts_while_sending_is_not_allowed() -> None:
    allowed = [True]
    mailer = DeferredFor("a@example.com")
    recorded = Recorded()
    outbox = recorded.outbox(mailer, backoff=Backoff(base=0.01, cap=0.02), may_send=lambda: allowed[0])
    outbox.put("a", mail("a@example.com", "a"))
    await until(lambda: recorded.retries >= 1)
    allowed[0] = False
    await until(lambda: outbox.backlog() == 0)
    attempts = len(mailer.attempts)
    await asyncio.sleep(0.05)
    assert len(mailer.attempts) == attempts and recorded.sent == [] and recorded.given_up == []


async def test_puts_wait_for_room_beyond_the_pending_limit() -> None:
    recorded = Recorded()
    outbox = recorded.outbox(DeferredFor("a@example.com", "b@example.com"), max_pending=2)
    outbox.put("a", mail("a@example.com", "a"))
    outbox.put("b", mail("b@example.com", "b"))
    waiting = asyncio.ensure_future(outbox.wait_for_room())
    await asyncio.sleep(0.02)
    assert not waiting.done()
    await outbox.stopped()
    await asyncio.wait_for(waiting, timeout=1)


class HeldInTransaction:
    """A mailer whose server takes each mail only when the test lets it (``release``)."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.in_transaction: list[str] = []

    async def send(self, message: EmailMessage, recipients: Any = None) -> SendResult:
        self.in_transaction.append(message["Subject"])
        await self.released.wait()
        return SendResult(accepted=(message["To"],))


async def test_a_hand_over_lets_a_transaction_under_way_settle_and_ends_the_waiting_sends() -> None:
    recorded = Recorded()
    held = HeldInTransaction()
    outbox = recorded.outbox(held, max_concurrent_sends=1)
    outbox.put("in-smtp", mail("a@example.com", "in-smtp"))
    outbox.put("waiting", mail("b@example.com", "waiting"))  # waits for the one connection
    await until(lambda: held.in_transaction == ["in-smtp"])

    draining = asyncio.ensure_future(outbox.drain(timeout=5))
    await asyncio.sleep(0.05)
    held.released.set()  # the server takes the mail while the hand-over waits
    assert await draining == ["waiting"]
    # The mail the server took is reported sent, so it is recorded before the hand-over; the
    # waiting one never reached the server and is left to the next owner.
    assert recorded.sent == ["in-smtp"] and held.in_transaction == ["in-smtp"]
    assert outbox.backlog() == 0


async def test_a_hand_over_does_not_wait_beyond_its_timeout() -> None:
    recorded = Recorded()
    held = HeldInTransaction()
    outbox = recorded.outbox(held)
    outbox.put("in-smtp", mail("a@example.com", "in-smtp"))
    await until(lambda: held.in_transaction == ["in-smtp"])
    async with asyncio.timeout(2):
        assert await outbox.drain(timeout=0.1) == ["in-smtp"]
    assert recorded.sent == [] and outbox.backlog() == 0
