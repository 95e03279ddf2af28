"""A message repeated hundreds of times a second (a broker outage) is logged once per interval;
of Faust's table recovery INFO lines, only its decision that a partition is read to its end."""

from __future__ import annotations

import logging

from meterwatch.logs import OncePerInterval, logging_config


def record(
    at: float, msg: str = "Unable connect to node %s", level: int = logging.ERROR, name: str = "aiokafka"
) -> logging.LogRecord:
    r = logging.LogRecord(name, level, __file__, 1, msg, (1,), None)
    r.created = at
    return r


def test_repeats_within_the_interval_are_held_back_and_counted_on_the_next_line() -> None:
    once = OncePerInterval(interval_seconds=10)
    passed = [once.filter(record(t)) for t in (0.0, 0.1, 5.0, 9.9)]
    assert passed == [True, False, False, False]
    later = record(10.5)
    assert once.filter(later)
    assert later.getMessage() == "Unable connect to node 1 (3 more like this in the last 10s)"


def test_different_messages_and_info_lines_are_never_held_back() -> None:
    once = OncePerInterval(interval_seconds=10)
    assert once.filter(record(0.0, "a %s")) and once.filter(record(0.1, "b %s"))
    assert all(once.filter(record(t, "consuming %s", level=logging.INFO)) for t in (0.0, 0.1, 0.2))


def test_of_faust_recovery_info_lines_only_the_end_of_a_partition_s_recovery_is_logged() -> None:
    config = logging_config("INFO", "text")
    wired = config["loggers"]["faust.tables.recovery"]
    assert wired["level"] == "INFO"
    decisions = config["filters"][wired["filters"][0]]["()"]()
    name = "faust.tables.recovery"
    passed = [
        msg
        for level, msg in [
            (logging.INFO, "Recovery complete"),
            (logging.INFO, "Aborted tx until highwater for TP(topic='t-changelog', partition=3)"),
            (logging.WARNING, "recovery unknown topic"),
        ]
        if decisions.filter(record(0.0, msg, level=level, name=name))
    ]
    assert passed == ["Aborted tx until highwater for TP(topic='t-changelog', partition=3)", "recovery unknown topic"]
    assert "faust.tables.recovery" not in logging_config("DEBUG", "text")["loggers"]
