"""One message's unexpected failure stays that message's: it is dead-lettered, its batch goes on.

Faust acknowledges a batch even when the agent raises, so an exception that escapes a batch
loses every good message in it. Inputs are validated before they get this far; this is the net
for what validation did not foresee, and each catch is a bug to fix, reported with a traceback.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from faust.types import EventT

from ...core.rejections import RejectCode
from ...models.outputs import Kind, Output, dead_letter
from ...sinks.outputs import Sinks
from ..runtime.fencing import is_lost_transaction

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)


async def dead_letter_failure(
    mw: Meterwatch,
    sinks: Sinks,
    stage: str,
    event: EventT,
    error: BaseException,
    *,
    key: str | None = None,
    value: bytes | None = None,
) -> None:
    """Log the failure with its traceback and dead-letter the message (or ``value``, one part of it).

    A lost transaction is not the message's fault: it is raised again, and the whole batch is
    given up (streams/runtime/fencing.py) rather than its good messages dead-lettered."""
    if is_lost_transaction(error):
        raise error
    message = event.message
    log.error(
        "%s: could not handle %s[%d]@%d (%s); dead-lettered as %s",
        stage,
        message.topic,
        message.partition,
        message.offset,
        type(error).__name__,
        RejectCode.INTERNAL_ERROR,
        exc_info=error,
    )
    mw.metrics.events_rejected.labels(RejectCode.INTERNAL_ERROR).inc()
    record = dead_letter(
        source_topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=value if value is not None else message.value,
        code=RejectCode.INTERNAL_ERROR,
        message=f"{stage} failed on this input ({type(error).__name__}); see the worker log",
        at=datetime.now(UTC),
    )
    await sinks.publish((Output(Kind.DEAD_LETTER, key, record),))
