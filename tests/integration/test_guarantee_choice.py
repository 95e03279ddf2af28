"""The processing guarantee a worker runs with: ``exactly_once`` where the broker takes
transactions; without them it falls back to ``at_least_once`` only when nobody asked for
``exactly_once`` by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from meterwatch.brokers.embedded import EmbeddedBroker
from tests.support.worker import TEST_AUTH_SECRET, free_port


def test_exactly_once_asked_for_by_name_is_never_quietly_weakened(tmp_path: Path) -> None:
    # The embedded broker refuses transactions, as a broker whose ACL denies the principal its
    # transactional ids does.
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("METERWATCH_")},
            "METERWATCH_KAFKA_BOOTSTRAP": broker.bootstrap,
            "METERWATCH_PROCESSING_GUARANTEE": "exactly_once",
            "METERWATCH_AUTH_SECRET": TEST_AUTH_SECRET,
            "METERWATCH_WEB_PORT": str(free_port()),
            "METERWATCH_DATA_DIR": str(tmp_path / "data"),
        }
        result = subprocess.run(
            [sys.executable, "-m", "meterwatch", "worker"], env=env, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("meterwatch: METERWATCH_PROCESSING_GUARANTEE=exactly_once, but the broker at"), last
    assert "refused a transaction" in last and "at_least_once" in last
