"""``meterwatch worker``: check the broker, choose the processing guarantee, create topics, run."""

from __future__ import annotations

import asyncio
import logging
import logging.config
from pathlib import Path

import faust

from .brokers.probe import BrokerUnreachable, broker_supports_transactions, wait_for_broker
from .config import ProcessingGuarantee, Settings
from .logs import logging_config

log = logging.getLogger("meterwatch.worker")


class StartupError(RuntimeError):
    """meterwatch cannot start; the message is one line for people."""


async def prepare(settings: Settings, bootstrap: str) -> ProcessingGuarantee:
    """Wait for the broker, choose the guarantee and create the topics."""
    from .streams.admin import TopicLayoutError, ensure_topics
    from .streams.kafka_client import client_options
    from .streams.topics import topic_specs

    try:
        await wait_for_broker(bootstrap, timeout=settings.startup_timeout.total_seconds(), **client_options(settings))
    except BrokerUnreachable as error:
        raise StartupError(f"{error} (METERWATCH_KAFKA_BOOTSTRAP)") from None
    guarantee = await choose_guarantee(settings, bootstrap)
    try:
        await ensure_topics(settings, topic_specs(settings), bootstrap)
    except TopicLayoutError as error:
        raise StartupError(str(error)) from None
    return guarantee


async def choose_guarantee(settings: Settings, bootstrap: str) -> ProcessingGuarantee:
    wanted = settings.processing_guarantee or ProcessingGuarantee.EXACTLY_ONCE
    if wanted is ProcessingGuarantee.AT_LEAST_ONCE:
        return wanted
    from .streams.kafka_client import client_options

    # aiokafka logs the broker's refusal as an error; here it is an answer, reported below.
    sender_log = logging.getLogger("aiokafka.producer.sender")
    previous_level = sender_log.level
    sender_log.setLevel(logging.CRITICAL)
    try:
        supported = await broker_supports_transactions(bootstrap, **client_options(settings))
    finally:
        sender_log.setLevel(previous_level)
    if supported:
        return ProcessingGuarantee.EXACTLY_ONCE
    log.warning(
        "processing guarantee: the broker at %s does not support transactions; "
        "falling back from exactly_once to at_least_once (counting stays exact: replays are idempotent)",
        bootstrap,
    )
    return ProcessingGuarantee.AT_LEAST_ONCE


def run_worker(settings: Settings) -> int:
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    bootstrap = settings.kafka_bootstrap
    if bootstrap is None:
        raise StartupError("METERWATCH_KAFKA_BOOTSTRAP is not set (use `meterwatch dev` for a local broker)")
    guarantee = asyncio.run(prepare(settings, bootstrap))
    # asyncio.run closed its loop; Faust runs on a fresh one.
    asyncio.set_event_loop(asyncio.new_event_loop())
    from .streams.app import create_app

    Path(settings.data_dir, settings.group_id).parent.mkdir(parents=True, exist_ok=True)
    mw = create_app(settings, bootstrap, guarantee)
    log.info(
        "starting worker: group %s, %d partitions, guarantee %s, web on %s:%d",
        settings.group_id,
        settings.partitions,
        guarantee.value,
        settings.web_bind,
        settings.web_port,
    )
    worker = faust.Worker(
        mw.app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_format),
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
    return 0
