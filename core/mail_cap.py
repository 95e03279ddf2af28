"""How many mails one workspace's alerts and Fin transitions may ask for in an hour.

Every mail goes to one recipient, so a request to ``n`` billing contacts is ``n`` mails. The
hour is a fixed window of UTC (``12:00`` to ``13:00``), counted from the times of the records
mailed, which are the times their inputs reached Kafka: every worker that replays the same
inputs reaches the same verdicts. A request that does not fit whole into what is left of its
hour is held back (none of its mails is sent) and does not use up the hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class MailHour:
    """The mails asked for in one hour of UTC, ``hour`` hours after the epoch."""

    hour: int
    mails: int


def hour_of(at: datetime) -> int:
    """Whole hours from the epoch to ``at`` (tz-aware), rounded down."""
    if at.tzinfo is None:
        raise ValueError("a mail's time must be timezone-aware")
    return int((at - _EPOCH).total_seconds() // 3600)


def take_mails(window: MailHour | None, mails: int, at: datetime, cap: int | None) -> tuple[MailHour | None, bool]:
    """(the window after, whether ``mails`` mails asked for at ``at`` may be sent). ``cap`` None:
    no cap, and no window kept. A record from an hour before the window's (a late input) counts
    in the window's hour, so going back in time never opens a fresh budget."""
    if cap is None:
        return window, True
    hour = hour_of(at)
    if window is not None and window.hour >= hour:
        current, used = window.hour, window.mails
    else:
        current, used = hour, 0
    if used + mails > cap:
        return window, False
    return MailHour(current, used + mails), True


def hour_start(at: datetime) -> datetime:
    """The start of ``at``'s hour of UTC."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
