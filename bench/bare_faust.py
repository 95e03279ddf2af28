"""Child process of bench/run.py: the bare Faust agent ceiling.

A minimal ``faust.App`` configured like meterwatch's (raw serializers, at_least_once,
``broker_session_timeout=10``, heartbeat 1 s, earliest offsets, memory store, no autodiscovery)
with one agent that only iterates its stream. The clock runs from the first message the agent
sees to the last, so start-up and the group join are not counted. When every message has been
seen the figures are written (as JSON) to ``--result``; bench/run.py then stops this process.
"""

from __future__ import annotations

import argparse
import os
import time

import faust
import orjson


def build(args: argparse.Namespace) -> faust.App:
    app = faust.App(
        args.app_id,
        broker=[f"kafka://{server}" for server in args.bootstrap.split(",")],
        store="memory://",
        topic_partitions=args.partitions,
        processing_guarantee="at_least_once",
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        web_port=args.web_port,
        web_bind="127.0.0.1",
        datadir=args.datadir,
        autodiscover=False,
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    topic = app.topic(args.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    expected = args.expected_messages
    state = {"count": 0, "first": None}

    @app.agent(topic, name=f"{args.app_id}.iterate")
    async def iterate(stream):  # type: ignore[no-untyped-def]
        async for _ in stream:
            if state["first"] is None:
                state["first"] = time.perf_counter()
            state["count"] += 1
            if state["count"] == expected:
                seconds = time.perf_counter() - state["first"]
                result = {
                    "messages": expected,
                    "events": expected * args.events_per_message,
                    "seconds": seconds,
                    "events_per_s": expected * args.events_per_message / seconds if seconds > 0 else None,
                    "messages_per_s": expected / seconds if seconds > 0 else None,
                }
                partial = args.result + ".part"
                with open(partial, "wb") as out:
                    out.write(orjson.dumps(result))
                os.replace(partial, args.result)

    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--expected-messages", type=int, required=True)
    parser.add_argument("--events-per-message", type=int, required=True)
    parser.add_argument("--web-port", type=int, required=True)
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    app = build(args)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
