"""A real SMTP server (aiosmtpd) on a loopback port, recording every mail it accepts."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: EmailMessage
    received_at: float = field(default_factory=time.monotonic)  # the clock asyncio's loop.time() reads


@dataclass
class MailRecorder:
    mails: list[ReceivedMail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.SMTP)
        with self.lock:
            self.mails.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"

    def snapshot(self) -> list[ReceivedMail]:
        with self.lock:
            return list(self.mails)


class SmtpServer:
    """Start, stop and start again on the same port (an outage)."""

    def __init__(self, port: int, recorder: MailRecorder | None = None) -> None:
        self.port = port
        self.recorder = recorder if recorder is not None else MailRecorder()
        self._controller: Controller | None = None

    def start(self) -> SmtpServer:
        self._controller = Controller(self.recorder, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def mails(self) -> list[ReceivedMail]:
        return self.recorder.snapshot()


@dataclass
class DeferringRecorder(MailRecorder):
    """Answers 4xx to RCPT for the addresses in ``deferred`` (every time, while they are listed),
    counting each address's RCPT attempts; records the mails it accepts like ``MailRecorder``."""

    deferred: set[str] = field(default_factory=set)
    reply: str = "451 4.3.0 Mailbox temporarily unavailable"
    attempts: dict[str, int] = field(default_factory=dict)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        with self.lock:
            self.attempts[address] = self.attempts.get(address, 0) + 1
            if address in self.deferred:
                return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def attempts_for(self, address: str) -> int:
        with self.lock:
            return self.attempts.get(address, 0)


@dataclass
class SlowReplyRecorder(DeferringRecorder):
    """Also takes a mail for an address in ``slow`` at once, and answers its DATA only
    ``reply_after`` seconds later (a slow relay): the mail is delivered, its sender not yet told.
    ``answered_at`` holds when each of those answers went out."""

    slow: set[str] = field(default_factory=set)
    reply_after: float = 0.0
    answered_at: list[float] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if self.slow.intersection(envelope.rcpt_tos):
            await asyncio.sleep(self.reply_after)
            with self.lock:
                self.answered_at.append(time.monotonic())
        return reply
