"""Every topic meterwatch reads or writes, named once (CONTRACT sections 3 and 5).

Contract topics carry ``METERWATCH_TOPIC_PREFIX``; internal ones also carry the app id, so two
deployments on one cluster never share a topic or a consumer group.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings

# The contract's names, before the prefix.
USAGE_EVENTS = "usage.events"
USAGE_CONTROL = "usage.control"
USAGE_ALERTS = "usage.alerts"
USAGE_LIMITS = "usage.limits"
USAGE_NOTIFICATIONS = "usage.notifications"
USAGE_DEAD_LETTER = "usage.dead-letter"
USAGE_COMMAND_RESULTS = "usage.command-results"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    retention_ms: int | None = None
    # Inputs may be created by their producers with any partition count; internal topics must
    # have ours, because the tables are co-partitioned with them.
    internal: bool = False

    def config(self) -> dict[str, str]:
        config = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        return config


@dataclass(frozen=True, slots=True)
class TopicNames:
    usage_events: str
    usage_control: str
    alerts: str
    limits: str
    notifications: str
    dead_letter: str
    command_results: str
    workspace_inbox: str
    contract_inbox: str
    mail_requests: str

    @classmethod
    def for_settings(cls, settings: Settings) -> TopicNames:
        return cls(
            usage_events=settings.topic(USAGE_EVENTS),
            usage_control=settings.topic(USAGE_CONTROL),
            alerts=settings.topic(USAGE_ALERTS),
            limits=settings.topic(USAGE_LIMITS),
            notifications=settings.topic(USAGE_NOTIFICATIONS),
            dead_letter=settings.topic(USAGE_DEAD_LETTER),
            command_results=settings.topic(USAGE_COMMAND_RESULTS),
            # Every workspace's accepted events and commands, in one ordered stream per workspace.
            workspace_inbox=settings.internal_topic("workspace-inbox"),
            # Each workspace's latest usage, to the partition that owns its contract.
            contract_inbox=settings.internal_topic("contract-inbox"),
            # Alerts and Fin transitions to mail, with their recipients, keyed by their id.
            mail_requests=settings.internal_topic("mail-requests"),
        )


def topic_specs(settings: Settings) -> list[TopicSpec]:
    names = TopicNames.for_settings(settings)
    n = settings.partitions
    return [
        TopicSpec(names.usage_events, n),
        TopicSpec(names.usage_control, n),
        TopicSpec(names.alerts, n),
        # The latest transition per workspace is its current state, so keep it forever.
        TopicSpec(names.limits, n, compacted=True),
        TopicSpec(names.notifications, n),
        TopicSpec(names.dead_letter, n),
        TopicSpec(names.command_results, n),
        TopicSpec(names.workspace_inbox, n, internal=True),
        TopicSpec(names.contract_inbox, n, internal=True),
        TopicSpec(names.mail_requests, n, internal=True),
    ]
