"""The Faust app, built by a factory from the settings (no module-level app, no autodiscovery)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faust

from ..config import ProcessingGuarantee, Settings
from ..tokens import Keys, keys_for
from . import runtime
from .http.routing import RawKeyRouter
from .metrics import Metrics
from .runtime.commit_gate import CommitGate
from .runtime.kafka_client import faust_credentials
from .runtime.tables import Tables, declare_tables
from .topics import TOPICS, TopicNames


@dataclass(frozen=True)
class Channels:
    """The Faust topic objects (raw bytes in and out; meterwatch does its own JSON)."""

    usage_events: faust.TopicT
    usage_control: faust.TopicT
    workspace_inbox: faust.TopicT
    contract_inbox: faust.TopicT
    mail_requests: faust.TopicT
    webhook_requests: faust.TopicT
    alerts: faust.TopicT
    limits: faust.TopicT
    notifications: faust.TopicT
    dead_letter: faust.TopicT
    command_results: faust.TopicT


@dataclass(frozen=True)
class Meterwatch:
    app: faust.App
    settings: Settings
    bootstrap: str
    guarantee: ProcessingGuarantee
    names: TopicNames
    channels: Channels
    tables: Tables
    metrics: Metrics
    commit_gate: CommitGate
    # What HTTP requests are checked with (streams/http/access.py); None: METERWATCH_AUTH=off.
    keys: Keys | None = None


# Four count batches (streams/pipeline/counting.py, BATCH_MESSAGES) ahead.
STREAM_BUFFER_RECORDS = 256


def create_app(
    settings: Settings, bootstrap: str, guarantee: ProcessingGuarantee, metrics: Metrics | None = None
) -> Meterwatch:
    """Build the app with every topic, table, agent and web view registered.

    Raises KeyConfigError when the authentication settings name no usable key."""
    keys = keys_for(settings)
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee=guarantee.value,
        # The default waits ~30 s for a group join; tests and restarts want seconds.
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        # Under exactly_once, outputs become visible when the transaction commits: commit often
        # enough that an alert is out within a second of its event.
        broker_commit_interval=0.2,
        # The embedded broker (Tansu) reports a changelog's end short of its high watermark (one
        # past the first offset of its last batch), which Faust's RocksDB check takes for deleted
        # data and refuses to start; recovery reads the changelog from the persisted offset to its
        # last record all the same (streams/runtime/consumer.py, records_end).
        recovery_consistency_check=False,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_host=settings.web_host,
        # Faust's own views list every table's keys and values (/table) and the partition map
        # (/router) to anyone who can reach the port; meterwatch answers through its own routes.
        web_router_enabled=False,
        web_tables_enabled=False,
        datadir=str(Path(settings.data_dir) / settings.group_id),
        autodiscover=False,
        stream_wait_empty=False,
        # Records fetched ahead of each agent, and of each table's recovery. An inbox record carries
        # up to 1,000 events and a dedupe changelog record up to 256 KiB, so Faust's 4,096 would
        # let a worker catching up hold hundreds of MiB in flight; a few batches ahead is enough.
        stream_buffer_maxsize=STREAM_BUFFER_RECORDS,
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        Router=RawKeyRouter,
        # Faust would otherwise read its own variables (WEB_PORT, BROKER, ...) over these; on
        # Kubernetes a Service named "web" sets WEB_PORT=tcp://... and the worker crashed.
        env={},
        **runtime.app_options(),
    )
    commit_gate = runtime.install(app, guarantee)
    names = TopicNames.for_settings(settings)
    channels = _declare_channels(app, names, settings)
    tables = declare_tables(app, settings)
    built = Meterwatch(
        app, settings, bootstrap, guarantee, names, channels, tables, metrics or Metrics(), commit_gate, keys
    )

    # Imported here so that each module registers its own agents or views on this app only.
    from .http import access, alert_history_api, metrics_endpoint, settings_api, usage_api, usage_page
    from .pipeline import contracts, counting, ingest, mailing, period_timer, route_commands, webhooks

    # The values counting keeps decoded; the period timer judges from them instead of decoding.
    decoded = counting.DecodedValues(counting.DECODED_KEPT)
    ingest.register(built)
    route_commands.register(built)
    counting.register(built, decoded)
    contracts.register(built)
    access.register(built)
    usage_api.register(built)
    settings_api.register(built)
    alert_history_api.register(built)
    usage_page.register(built)
    metrics_endpoint.register(built)
    runtime.register(built)
    period_timer.register(built, period_timer.PeriodTickIndex(known=decoded.values))
    mailing.register(built)
    webhooks.register(built)
    return built


def _declare_channels(app: faust.App, names: TopicNames, settings: Settings) -> Channels:
    def raw(name: str, *, internal: bool = False) -> faust.TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions if internal else None,
            internal=internal,
        )

    return Channels(
        **{topic.attribute: raw(getattr(names, topic.attribute), internal=topic.internal) for topic in TOPICS}
    )
