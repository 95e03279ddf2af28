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
class Topic:
    """One topic as meterwatch declares it. ``attribute`` names it in ``TopicNames`` and
    ``Channels``; ``name`` is the contract's name (carrying the prefix) or, for an internal
    topic, its suffix (carrying the prefix and the app id)."""

    attribute: str
    name: str
    # Inputs may be created by their producers with any partition count; internal topics must
    # have ours, because the tables are co-partitioned with them.
    internal: bool = False
    compacted: bool = False
    # Read by Faust's consumer, so its lag is sampled into meterwatch_consumer_lag.
    lag_watched: bool = False
    # What meterwatch does with a contract topic, for its ACLs; internal topics are both.
    read: bool = False
    write: bool = True

    def full_name(self, settings: Settings) -> str:
        return settings.internal_topic(self.name) if self.internal else settings.topic(self.name)


TOPICS = (
    # usage.events is read by the ingest stage's own consumer, whose lag it reports itself.
    Topic("usage_events", USAGE_EVENTS, read=True, write=False),
    # Written too: the settings API publishes the changes people make over HTTP.
    Topic("usage_control", USAGE_CONTROL, lag_watched=True, read=True),
    # Every workspace's accepted events and commands, in one ordered stream per workspace.
    Topic("workspace_inbox", "workspace-inbox", internal=True, lag_watched=True),
    # Each workspace's latest usage, to the partition that owns its contract.
    Topic("contract_inbox", "contract-inbox", internal=True, lag_watched=True),
    # Alerts and Fin transitions to mail, with their recipients, keyed by their id.
    Topic("mail_requests", "mail-requests", internal=True, lag_watched=True),
    # Alerts, Fin transitions and notifications to post to the webhook endpoints, keyed by their id.
    Topic("webhook_requests", "webhook-requests", internal=True, lag_watched=True),
    Topic("alerts", USAGE_ALERTS),
    # The latest transition per workspace is its current state, so keep it forever.
    Topic("limits", USAGE_LIMITS, compacted=True),
    Topic("notifications", USAGE_NOTIFICATIONS),
    Topic("dead_letter", USAGE_DEAD_LETTER),
    # Read too: the settings API waits for the result of each change it publishes.
    Topic("command_results", USAGE_COMMAND_RESULTS, read=True),
)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    retention_ms: int | None = None
    internal: bool = False

    def config(self) -> dict[str, str]:
        config = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        return config


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The full name of every topic in ``TOPICS``, by its attribute."""

    usage_events: str
    usage_control: str
    workspace_inbox: str
    contract_inbox: str
    mail_requests: str
    webhook_requests: str
    alerts: str
    limits: str
    notifications: str
    dead_letter: str
    command_results: str

    @classmethod
    def for_settings(cls, settings: Settings) -> TopicNames:
        return cls(**{topic.attribute: topic.full_name(settings) for topic in TOPICS})

    def lag_watched(self) -> frozenset[str]:
        return frozenset(getattr(self, topic.attribute) for topic in TOPICS if topic.lag_watched)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    return [
        TopicSpec(topic.full_name(settings), settings.partitions, compacted=topic.compacted, internal=topic.internal)
        for topic in TOPICS
    ]


@dataclass(frozen=True, slots=True)
class AclBinding:
    """One ACL meterwatch's Kafka principal needs: ``operations`` on a resource."""

    resource: str  # "topic", "group", "transactional-id" or "cluster"
    name: str
    prefixed: bool
    operations: tuple[str, ...]

    def kafka_acls_arguments(self, principal: str) -> list[str]:
        """The arguments of Kafka's ``kafka-acls.sh --add`` that grant it to ``principal``."""
        arguments = ["--add", "--allow-principal", principal]
        for operation in self.operations:
            arguments += ["--operation", operation]
        arguments += ["--cluster"] if self.resource == "cluster" else [f"--{self.resource}", self.name]
        if self.prefixed:
            arguments += ["--resource-pattern-type", "prefixed"]
        return arguments


def acl_bindings(settings: Settings) -> list[AclBinding]:
    """Everything meterwatch's principal needs on a cluster with an authorizer, and nothing more:
    read and write its contract topics as ``TOPICS`` says, own its internal topics (inboxes,
    mail and webhook requests, changelogs, all named ``{group id}-...``), its consumer groups and its
    transactional ids; Create on its topics only so that it may create the missing ones."""
    group = settings.group_id
    bindings = [
        AclBinding("topic", topic.full_name(settings), False,
                   ("Read",) * topic.read + ("Write",) * topic.write + ("Describe", "Create"))
        for topic in TOPICS
        if not topic.internal
    ]  # fmt: skip
    return [
        *bindings,
        AclBinding("topic", f"{group}-", True, ("Read", "Write", "Describe", "Create", "DescribeConfigs")),
        AclBinding("group", group, True, ("Read", "Describe")),
        AclBinding("transactional-id", group, True, ("Write", "Describe")),
        AclBinding("cluster", "kafka-cluster", False, ("IdempotentWrite", "Describe")),
    ]
