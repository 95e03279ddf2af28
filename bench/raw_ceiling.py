"""Child process of bench/run.py: the raw aiokafka ceiling.

A plain ``AIOKafkaConsumer`` (no group, partitions assigned by hand, ``getmany``) reads a
pre-produced ``usage.events`` topic from the beginning and decodes every message: with
``--decode orjson`` only ``orjson.loads`` (the floor any consumer pays), with ``--decode parse``
meterwatch's own decoding and validation (``parse_usage_message``: UTF-8, orjson, pydantic). The
clock runs from the first message seen to the last, so connecting and assigning are not counted.

Prints one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from meterwatch.models.usage_event import parse_usage_message


async def consume(args: argparse.Namespace) -> dict:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="meterwatch-bench-raw",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(args.topic, p) for p in range(args.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        messages = accepted = rejected = 0
        first = last = None
        deadline = time.monotonic() + args.timeout
        while messages < args.expected_messages:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"raw ceiling: only {messages} of {args.expected_messages} messages in {args.timeout}s"
                )
            batch = await consumer.getmany(timeout_ms=500)
            if not batch:
                continue
            if first is None:
                first = time.perf_counter()
            for records in batch.values():
                if args.decode == "parse":
                    for record in records:
                        good, bad = parse_usage_message(record.value)
                        accepted += len(good)
                        rejected += len(bad)
                else:
                    for record in records:
                        document = orjson.loads(record.value)
                        accepted += len(document) if isinstance(document, list) else 1
                messages += len(records)
            last = time.perf_counter()
        seconds = last - first
        return {
            "messages": messages,
            "events": accepted,
            "rejected": rejected,
            "seconds": seconds,
            "events_per_s": accepted / seconds if seconds > 0 else None,
        }
    finally:
        await consumer.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--expected-messages", type=int, required=True)
    parser.add_argument("--decode", choices=["orjson", "parse"], default="parse")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    result = asyncio.run(consume(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
