"""Log set-up: text for people, JSON lines for log shippers (``METERWATCH_LOG_FORMAT=json``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

# mode.Service subclasses defined by meterwatch log here instead of under their module's name.
FAUST_SERVICES_LOG = logging.getLogger("meterwatch.faust")


class OncePerInterval(logging.Filter):
    """Lets a repeated message through once per interval, saying how many were held back.

    During a broker outage aiokafka logs every failed reconnect, hundreds of lines a second;
    one line every few seconds tells an operator the same.
    """

    def __init__(self, interval_seconds: float = 10.0) -> None:
        super().__init__()
        self.interval = interval_seconds
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        last_at, held_back = self._last.get(key, (float("-inf"), 0))
        if record.created - last_at < self.interval:
            self._last[key] = (last_at, held_back + 1)
            return False
        self._last[key] = (record.created, 0)
        if held_back:
            record.msg = f"{record.msg} ({held_back} more like this in the last {self.interval:.0f}s)"
        return True


class RecoveryDecisions(logging.Filter):
    """Of Faust's table recovery INFO lines, only its decision that a changelog partition is read
    to its end because the consumer's position passed the end while nothing arrived for two 5 s
    waits (under ``exactly_once`` the last record is followed by a commit marker, so every
    recovery with records to read ends this way). One line per partition and recovery, with its
    time: a table restored without its last records would look like lost counts, and these
    lines show when each partition was taken for read."""

    NOTICES = ("Aborted tx until highwater",)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or str(record.msg).startswith(self.NOTICES)


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    formatter: dict[str, Any] = (
        {"()": JsonLines} if fmt == "json" else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {
            "once_per_interval": {"()": OncePerInterval},
            "recovery_decisions": {"()": RecoveryDecisions},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "filters": ["once_per_interval"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        # Faust and aiokafka are chatty at INFO; their warnings still show.
        # FAUST_SERVICES_LOG carries the Starting.../Stopping... lines of meterwatch's own Faust
        # services; streams.runtime.rebalance_log says what matters in one line each.
        "loggers": {
            name: {"level": "WARNING" if level != "DEBUG" else "INFO"}
            for name in (
                "faust",
                "aiokafka",
                "mode",
                FAUST_SERVICES_LOG.name,
            )
        }
        | ({} if level == "DEBUG" else {"faust.tables.recovery": {"level": "INFO", "filters": ["recovery_decisions"]}}),
    }
