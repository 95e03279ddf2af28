"""Every Prometheus metric meterwatch exports, in one place.

Labels are bounded sets (metric names, reason codes, levels, stages); no label ever carries a
workspace, contract, conversation or address. The registry is injected so tests use their own.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0, 7 * 86400.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)


def observe_ages(histogram: Histogram, now_ms: int, times_ms: list[int]) -> None:
    """``histogram.observe(max(0, now_ms - t) / 1000)`` for every epoch millisecond ``t`` of
    ``times_ms`` (which it sorts), in one sort and one bisection per bucket: a batch's
    latencies cost no Python step per event. Bucket counts are exactly those of one observe
    each; the sum differs from theirs only by float rounding."""
    if not times_ms:
        return
    times_ms.sort()
    n = len(times_ms)
    below = 0  # values in the buckets so far
    for bucket, limit in zip(histogram._buckets, _age_limits(histogram._upper_bounds), strict=True):  # noqa: SLF001
        # age <= limit  <=>  t >= now_ms - limit; the +Inf bucket takes every value left
        within = n if limit is None else n - bisect_left(times_ms, now_ms - limit)
        if within > below:
            bucket.inc(within - below)
            below = within
    past = bisect_right(times_ms, now_ms)  # times after now are observed as age 0
    ages = past * now_ms - (sum(times_ms) if past == n else sum(times_ms[:past]))
    histogram._sum.inc(ages / 1000)  # noqa: SLF001


_AGE_LIMITS: dict[tuple[float, ...], list[int | None]] = {}


def _age_limits(bounds: list[float]) -> list[int | None]:
    """Per bucket bound ``b``, the largest whole-millisecond age ``a`` with ``a / 1000 <= b``
    (the float comparison ``observe`` makes); None for +Inf."""
    key = tuple(bounds)
    limits = _AGE_LIMITS.get(key)
    if limits is None:
        limits = []
        for bound in bounds:
            if bound == float("inf"):
                limits.append(None)
                continue
            age = max(-1, math.floor(bound * 1000))
            while (age + 1) / 1000 <= bound:
                age += 1
            while age >= 0 and age / 1000 > bound:
                age -= 1
            limits.append(age)
        _AGE_LIMITS[key] = limits
    return limits


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, CPU, open files: the memory goals are watched here too.
        ProcessCollector(registry=r)
        self.events_counted = Counter(
            "meterwatch_events_counted_total", "Usage events accepted and counted, by metric.", ["metric"], registry=r
        )
        self.events_rejected = Counter(
            "meterwatch_events_rejected_total",
            "Usage events (or whole messages) dead-lettered, by reason code.",
            ["reason"],
            registry=r,
        )
        self.events_repeated = Counter(
            "meterwatch_events_repeated_total",
            "Usage events skipped because their event_id was already counted within the dedupe window.",
            registry=r,
        )
        self.messages_replayed = Counter(
            "meterwatch_inbox_messages_replayed_total",
            "Inbox messages skipped because their workspace had already applied them (replays after a restart).",
            registry=r,
        )
        self.inbox_rewinds = Counter(
            "meterwatch_inbox_rewinds_total",
            "Times a worker found the group's committed inbox offset past what its restored tables had "
            "applied, and read the inbox again from there.",
            registry=r,
        )
        self.batch_size = Histogram(
            "meterwatch_batch_messages",
            "Messages per processed batch, by stage.",
            ["stage"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "meterwatch_batch_duration_seconds",
            "Time to process one batch, by stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.processing_delay = Histogram(
            "meterwatch_processing_delay_seconds",
            "From an event's occurred_at to when it was counted.",
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.pipeline_latency = Histogram(
            "meterwatch_pipeline_latency_seconds",
            "From when an event was published to usage.events to when it was counted.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.commands = Counter(
            "meterwatch_commands_total", "Commands answered, by type and status.", ["type", "status"], registry=r
        )
        self.alerts = Counter(
            "meterwatch_alerts_total", "Usage alerts published, by scope and level.", ["scope", "level"], registry=r
        )
        self.limit_transitions = Counter(
            "meterwatch_limit_transitions_total",
            "Fin hard-limit state changes published, by reason.",
            ["reason"],
            registry=r,
        )
        self.emails_sent = Counter("meterwatch_emails_sent_total", "Mails accepted by the SMTP server.", registry=r)
        self.emails_failed = Counter(
            "meterwatch_emails_failed_total",
            "Mails (or recipients) that could not be sent and will not be retried, by reason.",
            ["reason"],
            registry=r,
        )
        self.emails_held_back = Counter(
            "meterwatch_emails_held_back_total",
            "Mails (one per recipient) held back by METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR: dead-lettered, not sent.",
            registry=r,
        )
        self.email_retries = Counter(
            "meterwatch_email_retries_total", "SMTP attempts that failed transiently and were retried.", registry=r
        )
        self.mail_backlog = Gauge(
            "meterwatch_mail_backlog", "Mails being sent or waiting for the SMTP server on this worker.", registry=r
        )
        self.webhooks_sent = Counter(
            "meterwatch_webhooks_sent_total", "Webhook deliveries an endpoint answered 2xx.", registry=r
        )
        self.webhooks_failed = Counter(
            "meterwatch_webhooks_failed_total",
            "Webhook deliveries given up and dead-lettered, by reason (refused, given_up).",
            ["reason"],
            registry=r,
        )
        self.webhook_retries = Counter(
            "meterwatch_webhook_retries_total", "Webhook attempts that failed for now and were retried.", registry=r
        )
        self.webhook_backlog = Gauge(
            "meterwatch_webhook_backlog", "Webhook deliveries being sent or retried on this worker.", registry=r
        )
        self.rebalances = Counter(
            "meterwatch_rebalances_total", "Consumer group rebalances seen by this worker.", registry=r
        )
        self.transactions_lost = Counter(
            "meterwatch_transactions_lost_total",
            "Times another worker fenced this one's transactions; it gave up its work in hand and rebuilt its tables.",
            registry=r,
        )
        self.batch_failures = Counter(
            "meterwatch_batch_failures_total",
            "Batches that failed outside the per-message isolation (a table or output write refused): "
            "each was given up unacknowledged, the tables rebuilt and the input read again.",
            ["stage"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "meterwatch_consumer_lag_messages",
            "Messages behind the end of each assigned input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.memory = Gauge(
            "meterwatch_memory_bytes",
            "Parts of this worker's memory, sampled every 2 s: the dedupe store's RocksDB block cache "
            "(memtables charged to it), memtables and table readers; glibc malloc's bytes in use, and free "
            "in its arenas (resident or handed back).",
            ["part"],
            registry=r,
        )
        self.dedupe_entries = Gauge(
            "meterwatch_dedupe_store_entries",
            "Estimated event ids held by this worker's dedupe store (RocksDB estimate).",
            registry=r,
        )
