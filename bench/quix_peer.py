"""Child process of bench/run.py: the quix-streams peer.

A quix-streams ``Application`` whose ``StreamingDataFrame`` reads the pre-produced
``usage.events`` topic from the beginning (its own consumer group and state directory), re-keys
nothing, and sums ``quantity`` per message key (the workspace id) in its RocksDB state
(``state.get``/``state.set``, changelog topics on, quix's defaults otherwise). A batch message (a
JSON array) adds the sum of its events' quantities. It is what a careful quix-streams user would
write for "usage per workspace", without meterwatch's validation, dedupe or periods.

The clock runs from the first message the dataframe sees to the last, like the raw ceiling. When
every expected message has been processed the application stops itself (committing its
checkpoint) and writes JSON to ``--result``: the rate and the final per-key sums as they were
written to state, so the caller can check they are exact.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import orjson
from quixstreams import Application


def run(args: argparse.Namespace) -> dict[str, Any]:
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
        # The embedded broker has no transactions, so both peers run at least once.
        processing_guarantee="at-least-once",
    )
    topic = app.topic(args.topic, value_deserializer="json", key_deserializer="str")
    # The embedded broker (Tansu) leaves retention.ms out of its topic configs, and quix reads it
    # to derive the changelog topic's; -1 (keep for ever) is what a changelog needs anyway.
    topic.broker_config.extra_config.setdefault("retention.ms", "-1")
    sdf = app.dataframe(topic)
    expected = args.expected_messages
    progress = {"messages": 0, "events": 0, "first": 0.0, "last": 0.0}
    # What was last written to state for each key: the final sums without reopening the store.
    sums: dict[str, int] = {}

    def add(value: Any, key: str, _timestamp: int, _headers: Any, state: Any) -> int:
        if progress["messages"] == 0:
            progress["first"] = time.perf_counter()
        if isinstance(value, list):
            quantity = 0
            for event in value:
                quantity += event["quantity"]
            progress["events"] += len(value)
        else:
            quantity = value["quantity"]
            progress["events"] += 1
        total = state.get("quantity", 0) + quantity
        state.set("quantity", total)
        sums[key] = total
        progress["messages"] += 1
        if progress["messages"] >= expected:
            progress["last"] = time.perf_counter()
            app.stop()
        return total

    sdf.apply(add, stateful=True, metadata=True)
    app.run()
    seconds = progress["last"] - progress["first"]
    return {
        "messages": progress["messages"],
        "events": progress["events"],
        "seconds": seconds,
        "events_per_s": progress["events"] / seconds if seconds > 0 else None,
        "complete": progress["messages"] >= expected,
        "sums": sums,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--expected-messages", type=int, required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args()
    result = run(args)
    partial = args.result + ".part"
    with open(partial, "wb") as out:
        out.write(orjson.dumps(result))
    os.replace(partial, args.result)
    summary = {k: v for k, v in result.items() if k != "sums"}
    print(orjson.dumps({**summary, "keys": len(result["sums"])}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
