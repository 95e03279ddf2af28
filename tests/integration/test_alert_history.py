"""The alert history (CONTRACT 6, *Addition: alert history*) end to end: a real worker, the
suite's broker, a real SMTP server that refuses one address for good, and a real HTTPS webhook
receiver with an endpoint that accepts and one that refuses.

Alerts and a limit transition are raised; the history lists each record as published, with
every recipient's mail and every endpoint's delivery in the state it settled in; it reads the
same after the worker is stopped and started again; and it is shown only to a token that may
read the workspace. With two workers, either one shows every workspace's history, whichever
worker holds the workspace and whichever holds the records of its mails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import healthy_worker
from tests.integration.test_webhooks import SECRET, Receiver, receiver  # noqa: F401 - the fixture
from tests.support.kafka_io import apply_commands, produce, read_all
from tests.support.messages import command, event
from tests.support.smtp import DeferringRecorder, MailRecorder, SmtpServer
from tests.support.worker import WorkerProcess, eventually, free_port, http_get, token_for

GONE = "gone@example.com"
WS_ONE = "ws-history-one"  # one billing contact
WS_TWO = "ws-history-two"  # two, one of whom the mail server refuses
WS_NONE = "ws-history-none"  # no billing contact: no mail


@pytest.fixture
def smtp_recorder() -> MailRecorder:
    return DeferringRecorder(deferred={GONE}, reply="550 5.1.1 No such user")


@pytest.fixture
def history_worker(
    deployment: dict[str, str],
    smtp_server: SmtpServer,
    receiver: tuple[Receiver, str, Path],  # noqa: F811
    tmp_path: Path,
) -> Iterator[WorkerProcess]:
    _, base, ca_file = receiver
    env = {
        **deployment,
        "METERWATCH_SMTP_HOST": "127.0.0.1",
        "METERWATCH_SMTP_PORT": str(smtp_server.port),
        "METERWATCH_SMTP_FROM": "meterwatch@billing.example.com",
        "METERWATCH_WEBHOOK_URLS": f"{base}/healthy,{base}/refuse",
        "METERWATCH_WEBHOOK_SECRET": SECRET,
        "METERWATCH_WEBHOOK_CA_FILE": str(ca_file),
    }
    with healthy_worker(env, tmp_path / "worker.log") as worker:
        yield worker


def history(worker: WorkerProcess, workspace: str, token: str | None = None, period: str = "current") -> Any:
    status, body = http_get(
        f"{worker.base_url}/usage/{workspace}/alerts?period={period}", token=token or token_for(workspace)
    )
    assert status == 200, (status, body)
    return body


def settled_history(worker: WorkerProcess, workspace: str) -> Any:
    """The workspace's history once it lists records and every delivery of them is settled."""
    body = history(worker, workspace)
    records = body["alerts"] + body["transitions"]
    done = bool(records) and all(
        record["delivery"]["email"] != "retrying"
        and all(hook["state"] != "retrying" for hook in record["delivery"]["webhooks"])
        for record in records
    )
    return body if done else None


async def test_history_lists_each_alert_and_transition_with_how_its_mails_and_webhooks_went(
    history_worker: WorkerProcess,
    receiver: tuple[Receiver, str, Path],  # noqa: F811
    deployment: dict[str, str],
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    _, base, _ = receiver
    await apply_commands(
        deployment,
        [
            command("billing_contacts", WS_ONE, emails=["ana@example.com"]),
            command("billing_contacts", WS_TWO, emails=["bo@example.com", GONE]),
            *(
                command("alert_settings", ws, metric="sms", threshold=100, early_warnings=False, enabled=True)
                for ws in (WS_ONE, WS_TWO, WS_NONE)
            ),
            command("limit_settings", WS_ONE, metric="fin_resolutions", limit=1, enabled=True),
        ],
    )
    await produce(
        bootstrap,
        prefix + "usage.events",
        [(ws.encode(), event(ws, "sms", 120)) for ws in (WS_ONE, WS_TWO, WS_NONE)]
        + [(WS_ONE.encode(), event(WS_ONE, "fin_resolutions", 1, "c1"))],
    )
    published = await read_all(bootstrap, prefix + "usage.alerts", expect=3)
    [transition] = await read_all(bootstrap, prefix + "usage.limits", expect=1)
    alert_of = {alert["workspace_id"]: alert for alert in published}

    one = await eventually(lambda: settled_history(history_worker, WS_ONE), timeout=60)
    two = await eventually(lambda: settled_history(history_worker, WS_TWO), timeout=60)
    none = await eventually(lambda: settled_history(history_worker, WS_NONE), timeout=60)
    hooks = [
        {"url": f"{base}/healthy", "state": "sent"},
        {"url": f"{base}/refuse", "state": "refused"},
    ]

    # Each record as published, with its delivery beside it.
    [alert] = one["alerts"]
    assert {k: v for k, v in alert.items() if k != "delivery"} == alert_of[WS_ONE]
    assert alert["delivery"] == {
        "email": "sent",
        "email_recipients": [{"recipient": "ana@example.com", "state": "sent"}],
        "webhooks": hooks,
    }
    [fin] = one["transitions"]
    assert {k: v for k, v in fin.items() if k != "delivery"} == transition
    assert fin["state"] == "disabled"
    assert fin["delivery"]["email"] == "sent" and fin["delivery"]["webhooks"] == hooks

    # The refused recipient is shown as refused, the other as sent; the summary names the refusal.
    [alert] = two["alerts"]
    assert alert["alert_id"] == alert_of[WS_TWO]["alert_id"]
    assert alert["delivery"]["email"] == "refused"
    assert alert["delivery"]["email_recipients"] == [
        {"recipient": "bo@example.com", "state": "sent"},
        {"recipient": GONE, "state": "refused"},
    ]
    assert two["transitions"] == []

    # No billing contact: no mail was asked for; the webhooks still went out.
    [alert] = none["alerts"]
    assert alert["delivery"] == {"email": "none", "email_recipients": [], "webhooks": hooks}

    # The period asked for by a day in it reads the same; a day of another period reads nothing.
    day = alert_of[WS_ONE]["triggered_at"][:10]
    assert history(history_worker, WS_ONE, period=day) == one
    assert history(history_worker, WS_ONE, period="2001-01-01") == {
        "workspace_id": WS_ONE,
        "alerts": [],
        "transitions": [],
    }

    # Only a token that may read the workspace sees it.
    status, body = http_get(f"{history_worker.base_url}/usage/{WS_ONE}/alerts", token=token_for(WS_TWO))
    assert status == 403 and body["error"] == "forbidden"
    status, body = http_get(f"{history_worker.base_url}/usage/{WS_ONE}/alerts", token=None)
    assert status == 401 and body["error"] == "unauthenticated"
    sms_only = history(history_worker, WS_ONE, token=token_for(WS_ONE, metrics=["sms"]))
    assert (sms_only["alerts"], sms_only["transitions"]) == (one["alerts"], [])  # Fin's transition left out
    status, body = http_get(f"{history_worker.base_url}/usage/{WS_ONE}/alerts?period=last-month")
    assert status == 400 and body["error"] == "invalid_period"

    # A restart rebuilds the history and the ledgers from their changelogs.
    history_worker.stop()
    history_worker.start()
    history_worker.wait_healthy()
    assert history(history_worker, WS_ONE) == one
    assert history(history_worker, WS_TWO) == two
    assert history(history_worker, WS_NONE) == none


@pytest.fixture
def two_mailing_workers(
    deployment: dict[str, str], smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[list[WorkerProcess]]:
    """Two workers of one deployment, mailing through ``smtp_server``, both healthy."""
    workers = []
    for index in range(2):
        port = free_port()
        env = {
            **deployment,
            "METERWATCH_WEB_PORT": str(port),
            "METERWATCH_DATA_DIR": str(tmp_path / f"data{index}"),
            "METERWATCH_SMTP_HOST": "127.0.0.1",
            "METERWATCH_SMTP_PORT": str(smtp_server.port),
            "METERWATCH_SMTP_FROM": "meterwatch@billing.example.com",
        }
        workers.append(WorkerProcess(env=env, log_path=tmp_path / f"worker{index}.log", web_port=port).start())
    try:
        for worker in workers:
            worker.wait_healthy()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


async def test_either_of_two_workers_shows_every_workspaces_history_with_its_mails(
    two_mailing_workers: list[WorkerProcess], deployment: dict[str, str]
) -> None:
    """A workspace's history is on its owner, and its mails' records on the owners of the
    records' ids: asked of either worker, every workspace shows its alert as mailed."""
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    workspaces = [f"ws-history-spread-{i}" for i in range(8)]
    await apply_commands(
        deployment,
        [
            c
            for ws in workspaces
            for c in (
                command("billing_contacts", ws, emails=[f"billing@{ws}.example.com"]),
                command("alert_settings", ws, metric="sms", threshold=10, early_warnings=False, enabled=True),
            )
        ],
    )
    await produce(bootstrap, prefix + "usage.events", [(ws.encode(), event(ws, "sms", 10)) for ws in workspaces])
    published = await read_all(bootstrap, prefix + "usage.alerts", expect=len(workspaces))
    alert_ids = {alert["workspace_id"]: alert["alert_id"] for alert in published}

    def mailed_everywhere() -> bool:
        for worker in two_mailing_workers:
            for ws in workspaces:
                status, body = http_get(f"{worker.base_url}/usage/{ws}/alerts", token=token_for(ws))
                if status != 200 or [
                    (alert["alert_id"], alert["delivery"]["email_recipients"]) for alert in body["alerts"]
                ] != [(alert_ids[ws], [{"recipient": f"billing@{ws}.example.com", "state": "sent"}])]:
                    return False
        return True

    await eventually(mailed_everywhere, timeout=90, interval=0.5)
