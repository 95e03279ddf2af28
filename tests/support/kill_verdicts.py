"""How the kill test judges a run from what was sent: counts, alert records, Fin transitions
and mails against the plans, and, when counts stay short, where the missing units went."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import Counter, defaultdict
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import orjson
from meterwatch.core.steps.workspace import KEY_SEPARATOR
from meterwatch.models.internal import EVENT_ID, METRIC, WORKSPACE
from meterwatch.streams.codec import decode_workspace
from meterwatch.streams.runtime.seen_ids_table import unpack_chunk

from tests.support.kafka_io import committed_offsets, read_all, read_records
from tests.support.kill_plans import WorkspacePlan
from tests.support.smtp import ReceivedMail, SmtpServer
from tests.support.worker import WorkerProcess, http_get, metric_samples
from tests.support.worker_pool import WorkerPool

CATCH_UP_SECONDS = 180.0  # survivors of a loaded 2-core machine are slow to catch up
SETTLE_SECONDS = 5.0  # anything extra (a doubled alert, a resent mail) would arrive by then
# A mail the SMTP server took is recorded by the next commit (every 0.2 s): on a loaded 2-core
# machine that has taken up to about a second, and a kill in between resends the mail.
RESEND_WINDOW_SECONDS = 2.0


# --------------------------------------------------------------------------- observing


def usage_document(workers: list[WorkerProcess], workspace: str) -> dict | None:
    """Any worker answers for any workspace (it forwards to the owner); one that cannot, skip."""
    for worker in workers:
        status, body = http_get(f"{worker.base_url}/usage/{workspace}", timeout=10)
        if status == 200:
            return body
    return None


def counted_usage(workers: list[WorkerProcess], plans: list[WorkspacePlan]) -> dict[tuple[str, str], int | None]:
    counted: dict[tuple[str, str], int | None] = {}
    for plan in plans:
        document = usage_document(workers, plan.workspace)
        for metric in plan.usage:
            entry = (document or {}).get("metrics", {}).get(metric)
            counted[(plan.workspace, metric)] = None if document is None else (entry or {}).get("usage", 0)
    return counted


def expected_usage(plans: list[WorkspacePlan]) -> dict[tuple[str, str], int]:
    return {(p.workspace, metric): total for p in plans for metric, total in p.usage.items()}


def consumer_lag(workers: list[WorkerProcess]) -> dict[str, float]:
    return {
        f"worker{index} {labels.get('topic')}[{labels.get('partition')}]": value
        for index, worker in enumerate(workers)
        for labels, value in metric_samples(worker, "meterwatch_consumer_lag_messages")
        if value
    }


def lag_and_health(workers: list[WorkerProcess]) -> tuple[dict[str, float], dict[str, Any]]:
    health = {f"worker{i}": (http_get(f"{w.base_url}/health")[1] or {}).get("status") for i, w in enumerate(workers)}
    return consumer_lag(workers), health


def usage_gaps(
    counted: dict[tuple[str, str], int | None], expected: dict[tuple[str, str], int]
) -> dict[tuple[str, str], tuple[int, int | None]]:
    return {key: (want, counted.get(key)) for key, want in expected.items() if counted.get(key) != want}


def gap_summary(gaps: dict[tuple[str, str], tuple[int, int | None]]) -> str:
    short = sum(want - (got or 0) for want, got in gaps.values() if got is None or got < want)
    over = sum(got - want for want, got in gaps.values() if got is not None and got > want)
    unanswered = sum(1 for _, got in gaps.values() if got is None)
    return f"{len(gaps)} workspace metrics off: {short} units short, {over} units over, {unanswered} unanswered"


async def wait_for_counts(workers: list[WorkerProcess], plans: list[WorkspacePlan], timeout: float) -> float | None:
    """Seconds until every count was exact, or None."""
    expected = expected_usage(plans)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not usage_gaps(counted_usage(workers, plans), expected):
            return time.monotonic() - started
        await asyncio.sleep(2)
    return None


async def look_again(
    workers: list[WorkerProcess], plans: list[WorkspacePlan], looks: int, lines: list[str]
) -> dict[tuple[str, str], tuple[int, int | None]]:
    """Poll the counts every 15 s, noting each look with lag and health; the last gaps."""
    expected = expected_usage(plans)
    for look in range(looks):
        gaps = usage_gaps(counted_usage(workers, plans), expected)
        lag, health = lag_and_health(workers)
        lines.append(f"  look {look}: {gap_summary(gaps)}; lag {lag}; health {health}")
        if not gaps:
            break
        await asyncio.sleep(15)
    return gaps


async def diagnose_counts(pool: WorkerPool, plans: list[WorkspacePlan], deployment: dict[str, str]) -> str:
    """Late, stalled, lost or doubled?

    Late counts arrive if given more time. Stalled ones arrive only once the workers are
    restarted (the records were there, the processing was stuck). Lost ones never arrive, and
    doubled ones are over.
    """
    workers = pool.workers
    gaps = usage_gaps(counted_usage(workers, plans), expected_usage(plans))
    detail = [f"  {ws} {metric}: sent {want}, counted {got}" for (ws, metric), (want, got) in sorted(gaps.items())]
    unanswered = sorted({ws for (ws, _), (_, got) in gaps.items() if got is None})
    detail += [f"  GET /usage/{ws}: {usage_statuses(workers, ws)}" for ws in unanswered]
    lines = ["without a restart:"]
    gaps = await look_again(workers, plans, looks=4, lines=lines)
    verdict = "LATE: exact after the deadline"
    if any(got is None or got < want for want, got in gaps.values()):
        pool.restart_all()
        lines.append(f"restarted every worker (SIGTERM, start); all healthy: {await pool.all_healthy(120)}")
        gaps = await look_again(workers, plans, looks=8, lines=lines)
        verdict = "STALLED: exact only after a restart" if not gaps else "LOST: still short after a restart"
        if gaps:
            lines += await trace_short_units(deployment, gaps)
    if any(got is not None and got > want for want, got in gaps.values()):
        verdict = "DOUBLED: some counts over what was sent"
    return "\n".join(
        [f"counts not exact {CATCH_UP_SECONDS}s after the load: {verdict}", *lines, "at the deadline:", *detail]
        + log_digest([w.log_path for w in workers])
    )


async def trace_short_units(
    deployment: dict[str, str], gaps: dict[tuple[str, str], tuple[int, int | None]]
) -> list[str]:
    """For each short workspace metric, how far its events got: sent on ``usage.events``, in the
    committed workspace inbox, their ids in the committed dedupe changelog, and what the last
    committed value of the workspace holds. Each stage's topic is read as a restarted worker
    would read it (read_committed)."""
    short = {key for key, (want, got) in gaps.items() if got is not None and got < want}
    if not short:
        return []
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    group = prefix + deployment["METERWATCH_APP_ID"]
    workspaces = {ws for ws, _ in short}
    sent: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for record in await read_records(bootstrap, prefix + "usage.events", isolation="read_uncommitted"):
        document = orjson.loads(record.value)
        for event in document if isinstance(document, list) else [document]:
            if (event["workspace_id"], event["metric"]) in short:
                sent[(event["workspace_id"], event["metric"])][event["event_id"]] = event["quantity"]
    inbox: dict[tuple[str, str], dict[str, tuple[int, int]]] = defaultdict(dict)
    for record in await read_records(bootstrap, f"{group}-workspace-inbox"):
        document = orjson.loads(record.value)
        for row in document.get("rows", []) if document.get("kind") == "rows" else []:
            inbox[(row[WORKSPACE], row[METRIC])].setdefault(row[EVENT_ID], (record.partition, record.offset))
    remembered: set[str] = set()
    for record in await read_records(bootstrap, f"{group}-seen-event-ids-changelog"):
        for key, _ in unpack_chunk(record.value) if record.value else ():
            workspace, _, event_id = key.partition(KEY_SEPARATOR)
            if workspace in workspaces:
                remembered.add(event_id)
    values: dict[str, tuple[int, int, bytes]] = {}
    for record in await read_records(bootstrap, f"{group}-workspaces-changelog"):
        workspace = orjson.loads(record.key) if record.key else None
        if workspace in workspaces:
            values[workspace] = (record.partition, record.offset, record.value)
    committed = await committed_offsets(deployment, f"{group}-workspace-inbox")
    lines = [f"where the short units are (inbox committed offsets {committed}):"]
    for ws, metric in sorted(short):
        ids = sent[(ws, metric)]
        in_inbox = inbox[(ws, metric)]
        not_forwarded = [i for i in ids if i not in in_inbox]
        not_remembered = [i for i in ids if i in in_inbox and i not in remembered]
        where = sorted({in_inbox[i] for i in not_remembered})
        partition, offset, raw = values.get(ws, (None, None, None))
        state = decode_workspace(raw) if raw else None
        usage = state.usage.tally(metric).latest() if state else None
        lines.append(
            f"  {ws} {metric}: sent {len(ids)} events (quantities summing to {sum(ids.values())}); "
            f"not in the committed inbox {sum(ids[i] for i in not_forwarded)} units ({len(not_forwarded)} events); "
            f"in it but not remembered {sum(ids[i] for i in not_remembered)} units ({len(not_remembered)} events, "
            f"inbox (partition, offset) {where[:3]}..{where[-3:]}); "
            f"last value at changelog {partition}:{offset} holds {usage.usage if usage else None}, "
            f"applied through inbox offset {state.usage.applied_through if state else None}"
        )
    return lines


def usage_statuses(workers: list[WorkerProcess], workspace: str) -> dict[str, Any]:
    answers = {f"worker{i}": http_get(f"{w.base_url}/usage/{workspace}", timeout=10) for i, w in enumerate(workers)}
    return {name: (status, body if status != 200 else "...") for name, (status, body) in answers.items()}


def log_digest(log_paths: list[Path]) -> list[str]:
    lines = []
    for path in log_paths:
        text = path.read_text(errors="replace") if path.exists() else ""
        trouble = [line for line in text.splitlines() if re.search(r"ERROR|Traceback|CRITICAL", line)]
        rebalances = len(re.findall(r"rebalance #\d+: done", text))
        stuck_transactions = text.count("Exception in begin_transaction")
        fenced = len(re.findall(r"WARNING \S+: transactions lost \(", text))
        cut_short = text.count("Aborted tx until highwater")
        lines.append(
            f"{path.name}: {text.count('===== start #')} starts, {rebalances} rebalances done, "
            f"{fenced} fenced (gave up its work and rejoined), "
            f"{stuck_transactions} 'Exception in begin_transaction' warnings, "
            f"{cut_short} changelog recoveries ended as 'Aborted tx until highwater', {len(trouble)} error lines"
        )
        lines += [f"    {line}" for line in trouble[:10]]
    return lines


async def settled_records(bootstrap: str, topic: str, expect: int, timeout: float) -> list[dict]:
    """Read the topic once ``expect`` records are there (or time is up), then again after a pause,
    so records that would double something have had their chance to arrive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(await read_all(bootstrap, topic, timeout=5)) < expect:
        await asyncio.sleep(2)
    await asyncio.sleep(SETTLE_SECONDS)
    return await read_all(bootstrap, topic, timeout=10)


async def settled_mails(smtp: SmtpServer, expect: int, timeout: float) -> list[ReceivedMail]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(smtp.mails) < expect:
        await asyncio.sleep(1)
    await asyncio.sleep(SETTLE_SECONDS)
    return smtp.mails


# --------------------------------------------------------------------------- judging


def doubled(counter: Counter[Any]) -> dict[Any, int]:
    return {key: n for key, n in counter.items() if n > 1}


def split_resends_after_kills(
    mails: list[ReceivedMail], kill_times: list[float]
) -> tuple[list[ReceivedMail], list[ReceivedMail]]:
    """The mails apart from resends a SIGKILL explains, and those resends.

    SMTP has no transactions: a worker killed after the server accepted a mail but before the
    commit recording it (the commit interval, 0.2 s, plus the commit) sends it again when its
    request is processed once more, as the same message (same Message-ID). Such a copy is a
    resend only if a kill fell between the two copies, at most ``RESEND_WINDOW_SECONDS`` after
    the first; any other repeat is a defect, and is left in to be reported.
    """
    kept: list[ReceivedMail] = []
    resends: list[ReceivedMail] = []
    for mail in sorted(mails, key=lambda m: m.received_at):
        earlier = [m for m in kept if m.message["Message-ID"] == mail.message["Message-ID"]]
        if earlier and any(
            earlier[-1].received_at <= kill <= min(mail.received_at, earlier[-1].received_at + RESEND_WINDOW_SECONDS)
            for kill in kill_times
        ):
            resends.append(mail)
        else:
            kept.append(mail)
    return kept, resends


def alert_problems(alerts: list[dict], plans: list[WorkspacePlan]) -> list[str]:
    expected = set().union(*(p.crossings() for p in plans))
    thresholds = {(p.workspace, a.metric): a.threshold for p in plans for a in p.alerts}
    got = {(a["workspace_id"], a["metric"], a["level"]) for a in alerts}
    problems = []
    if doubles := doubled(Counter(a["alert_id"] for a in alerts)):
        problems.append(f"alert_ids published more than once: {doubles}")
    by_crossing = Counter((a["workspace_id"], a["metric"], a["level"], a["period_start"]) for a in alerts)
    if doubles := doubled(by_crossing):
        problems.append(f"crossings published more than once: {doubles}")
    if missing := expected - got:
        problems.append(f"crossings with no alert: {sorted(missing)}")
    if unexpected := got - expected:
        problems.append(f"alerts for no crossing: {sorted(unexpected)}")
    wrong = [a for a in alerts if thresholds.get((a["workspace_id"], a["metric"])) != a["threshold"]]
    if wrong:
        problems.append(f"alerts with a threshold that was not set: {wrong[:5]}")
    return problems


def transitions_by_workspace(transitions: list[dict]) -> dict[str, list[dict]]:
    # Keyed by workspace, so each workspace's records share one partition and keep their order.
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in transitions:
        grouped[record["workspace_id"]].append(record)
    return grouped


def fin_problems(transitions: list[dict], plans: list[WorkspacePlan], workers: list[WorkerProcess]) -> list[str]:
    problems = []
    if doubles := doubled(Counter(t["transition_id"] for t in transitions)):
        problems.append(f"transition_ids published more than once: {doubles}")
    grouped = transitions_by_workspace(transitions)
    for plan in plans:
        records = grouped.pop(plan.workspace, [])
        steps = [(r["state"], r["reason"], r["usage"]) for r in records]
        if steps != plan.fin_steps:
            problems.append(f"{plan.workspace}: transitions {steps}, expected {plan.fin_steps}")
        states = [r["state"] for r in records]
        if any(a == b for a, b in itertools.pairwise(states)) or states[:1] == ["enabled"]:
            problems.append(f"{plan.workspace}: states do not alternate from disabled: {states}")
        if plan.fin_limit is not None:
            document = usage_document(workers, plan.workspace) or {}
            shown = document.get("metrics", {}).get("fin_resolutions", {}).get("fin_state")
            last = states[-1] if states else "enabled"
            if shown != last:
                problems.append(f"{plan.workspace}: GET /usage shows Fin {shown}, last transition says {last}")
    if grouped:
        problems.append(f"transitions for workspaces with no limit: {sorted(grouped)}")
    return problems


def expected_mails(plans: list[WorkspacePlan]) -> int:
    """One mail per alert and Fin ``disabled`` transition to each billing contact."""
    return sum(
        len(set(p.contacts)) * (len(p.crossings()) + sum(1 for step in p.fin_steps if step[0] == "disabled"))
        for p in plans
    )


def mail_problems(
    mails: list[ReceivedMail],
    alerts: list[dict],
    transitions: list[dict],
    plans: list[WorkspacePlan],
    kill_times: list[float],
) -> list[str]:
    """Each alert and Fin ``disabled`` transition mailed once to each of its workspace's billing
    contacts, in a mail addressed to that contact alone; a copy counts twice unless a SIGKILL
    explains it (the same Message-ID again: each contact's mail of a record has its own)."""
    contacts = {p.workspace: sorted(p.contacts) for p in plans}
    workspace_of = {a["alert_id"]: a["workspace_id"] for a in alerts} | {
        t["transition_id"]: t["workspace_id"] for t in transitions
    }
    first_copies, _ = split_resends_after_kills(mails, kill_times)
    problems = []
    for kind, header, ids in (
        ("alert", "X-Meterwatch-Alert-Id", {a["alert_id"] for a in alerts}),
        (
            "Fin transition",
            "X-Meterwatch-Transition-Id",
            {t["transition_id"] for t in transitions if t["state"] == "disabled"},
        ),
    ):
        mailed = Counter((m.message[header], tuple(m.recipients)) for m in first_copies if m.message[header])
        expected = {(i, (contact,)) for i in ids for contact in contacts.get(workspace_of[i], [])}
        if missing := expected - mailed.keys():
            problems.append(f"{len(missing)} {kind} mails never sent (id, recipient): {sorted(missing)[:10]}")
        if doubles := doubled(mailed):
            copies = {
                i: [
                    (m.message["Message-ID"], f"{m.received_at:.1f}")
                    for m in mails
                    if i[0] in m.message.values() and tuple(m.recipients) == i[1]
                ]
                for i in doubles
            }
            problems.append(
                f"{kind}s mailed more than once to a contact, no SIGKILL explaining it (Message-IDs, received at): "
                f"{copies}; kills at {[f'{k:.1f}' for k in kill_times]}"
            )
        if unexpected := mailed.keys() - expected:
            problems.append(f"{kind} mails for no published {kind} or to no contact of it: {sorted(unexpected)[:10]}")
    for mail in mails:
        record_id = mail.message["X-Meterwatch-Alert-Id"] or mail.message["X-Meterwatch-Transition-Id"]
        to = [address for _, address in getaddresses(mail.message.get_all("To", []))]
        if len(mail.recipients) != 1 or to != mail.recipients:
            problems.append(f"mail {record_id} addressed To {to}, sent to {mail.recipients}: not one contact alone")
    message_ids = Counter((m.message["Message-ID"], tuple(m.recipients)) for m in first_copies)
    if len({message_id for message_id, _ in message_ids}) != len(message_ids):
        problems.append("one Message-ID used for mails to different contacts")
    return problems
