"""Every metric meterwatch counts: how its usage is counted and what people call it.

The one table behind the usage page, the mails and the metric names the wire accepts. Usage is
counted one of three ways, which ``counting`` names and counting (``core/metering.py`` and the
per-workspace step) follows: additive metrics sum event quantities; Fin resolutions count
distinct conversations (a retraction takes one back); seats keep each day's largest count, and
a period's usage is its latest reported day's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Counting(enum.Enum):
    ADDITIVE = "additive"
    DISTINCT_CONVERSATIONS = "distinct_conversations"
    DAILY_MAXIMUM = "daily_maximum"


@dataclass(frozen=True, slots=True)
class MetricKind:
    name: str
    counting: Counting
    title: str  # as the usage article names it
    description: str  # one line under the title on the usage page


MESSAGES_SENT = "messages_sent"
PHONE = "phone"
SMS = "sms"
WHATSAPP = "whatsapp"
EMAIL = "email"
FIN_RESOLUTIONS = "fin_resolutions"
SEATS = "seats"

METRIC_KINDS: dict[str, MetricKind] = {
    kind.name: kind
    for kind in (
        MetricKind(MESSAGES_SENT, Counting.ADDITIVE, "Messages sent", "Proactive messages sent to your customers."),
        MetricKind(PHONE, Counting.ADDITIVE, "Phone", "Phone calls through your workspace."),
        MetricKind(SMS, Counting.ADDITIVE, "SMS", "SMS messages sent and received."),
        MetricKind(WHATSAPP, Counting.ADDITIVE, "WhatsApp", "WhatsApp messages sent and received."),
        MetricKind(EMAIL, Counting.ADDITIVE, "Emails", "Emails sent from your workspace."),
        MetricKind(
            FIN_RESOLUTIONS,
            Counting.DISTINCT_CONVERSATIONS,
            "Fin AI Agent resolutions",
            "Conversations Fin AI Agent resolved.",
        ),
        MetricKind(SEATS, Counting.DAILY_MAXIMUM, "Seats", "Teammate seats in use each day."),
    )
}

# The metrics whose usage is the sum of their events' quantities
ADDITIVE_METRICS = frozenset(metric for metric, kind in METRIC_KINDS.items() if kind.counting is Counting.ADDITIVE)
