"""Composed sinks: every output reaches every sink, in the order the step recorded it."""

from __future__ import annotations

import asyncio

from meterwatch.models.outputs import Kind, Output, RecordedOutputs
from meterwatch.sinks.outputs import Sinks


class ListSink:
    def __init__(self) -> None:
        self.published: list[Output] = []
        self.flushes = 0

    async def publish(self, output: Output) -> None:
        self.published.append(output)

    async def flush(self) -> None:
        self.flushes += 1


def test_every_sink_gets_every_output_in_order_and_is_flushed() -> None:
    recorded = RecordedOutputs()
    recorded.alert("ws-1", {"alert_id": "a1"})
    recorded.mail_request("alert", {"alert_id": "a1"}, ["b@example.com"])
    recorded.fin_transition("ws-1", {"transition_id": "t1"})
    recorded.dead_letter(None, {"error": {"code": "invalid_json"}})
    first, second = ListSink(), ListSink()
    sinks = Sinks([first, second])

    async def run() -> None:
        await sinks.publish(recorded)
        await sinks.flush()

    asyncio.run(run())
    assert first.published == second.published == recorded.items
    assert [output.kind for output in first.published] == [
        Kind.ALERT,
        Kind.MAIL_REQUEST,
        Kind.FIN_TRANSITION,
        Kind.DEAD_LETTER,
    ]
    assert first.published[1].key == "a1"  # a mail request is keyed by the id of what it mails
    assert first.flushes == second.flushes == 1


def test_a_recording_forgets_what_a_failed_step_recorded() -> None:
    recorded = RecordedOutputs()
    recorded.alert("ws-1", {"alert_id": "a1"})
    mark = len(recorded)
    recorded.notification("ws-1", {"notification_id": "n1"})
    recorded.truncate(mark)
    assert recorded.of(Kind.ALERT) == [{"alert_id": "a1"}]
    assert recorded.of(Kind.NOTIFICATION) == []
