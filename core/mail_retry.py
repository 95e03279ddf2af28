"""When a mail whose last attempt failed for now is tried again, and when it is given up.

A mail's age is counted from when it was requested (the mail request's Kafka timestamp), so
every worker that comes to own it, after a restart or a rebalance, reaches the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Backoff:
    base: float = 0.5
    cap: float = 60.0

    def delay(self, attempt: int, jitter: float) -> float:
        """Full jitter: ``jitter`` (uniform in [0, 1)) times min(cap, base * 2**attempt), so
        retries never stampede and never overflow however long a mail has failed."""
        return jitter * min(self.cap, self.base * 2 ** min(attempt, 64))


@dataclass(frozen=True)
class RetryPolicy:
    give_up_after: timedelta
    backoff: Backoff = Backoff()


@dataclass(frozen=True)
class RetryIn:
    """Try again after ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class GiveUp:
    """Stop trying: the mail is ``age`` old."""

    age: timedelta


def after_failed_attempt(
    requested_at: datetime, now: datetime, attempts: int, policy: RetryPolicy, jitter: float
) -> RetryIn | GiveUp:
    """What follows the ``attempts``-th attempt of a mail that failed for now (a 4xx, an
    unreachable server): another attempt, no later than the give-up age so the last one is
    made at that age, or giving up once the mail is that old. Every mail gets one attempt."""
    age = now - requested_at
    if age >= policy.give_up_after:
        return GiveUp(age)
    remaining = (policy.give_up_after - age).total_seconds()
    return RetryIn(min(policy.backoff.delay(attempts - 1, jitter), remaining))
