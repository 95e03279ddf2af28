"""Local stand-ins for what ``meterwatch dev`` finds unconfigured, so the demo shows every output.

- :class:`LocalMailbox`: an SMTP server on a loopback port that accepts every mail, appends it to
  an mbox file (readable with ``mutt -f``, Thunderbird, or Python's ``mailbox``) and reports it.
- :class:`LocalWebhookReceiver`: a webhook endpoint on loopback that checks each delivery's
  signature as a real receiver must (the HMAC of ``"<t>.<body>"`` under the shared secret, and a
  timestamp within five minutes), answers 200, and reports it; a bad signature is answered 400.
"""

from __future__ import annotations

import email
import email.policy
import hmac
import mailbox
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from .core.webhooks import signature

_TOLERANCE_SECONDS = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalMailbox:
    def __init__(self, path: str, on_mail: Callable[[list[str], str], None]) -> None:
        self.path = path
        self.received = 0
        self._on_mail = on_mail
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self.port = 0

    def start(self) -> LocalMailbox:
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.SMTP)
        with self._lock:
            box = mailbox.mbox(self.path)
            try:
                box.add(message)
                box.flush()
            finally:
                box.close()
            self.received += 1
        self._on_mail(list(envelope.rcpt_tos), str(message.get("Subject", "")))
        return "250 OK"


class LocalWebhookReceiver:
    def __init__(self, on_delivery: Callable[[str, str, bool], None]) -> None:
        self.port = free_port()
        self.secret = secrets.token_urlsafe(32)
        self.received = 0
        self._on_delivery = on_delivery
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/meterwatch-webhooks"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/meterwatch-webhooks", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = request.headers.get("X-Meterwatch-Event", "?")
        record_id = request.headers.get("X-Meterwatch-Id", "?")
        verified = self.verified(request.headers.get("X-Meterwatch-Signature", ""), body)
        if verified:
            self.received += 1
        self._on_delivery(event, record_id, verified)
        return web.Response(status=200 if verified else 400)

    def verified(self, header: str, body: bytes, now: float | None = None) -> bool:
        fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
        try:
            timestamp = int(fields["t"])
        except (KeyError, ValueError):
            return False
        if abs((time.time() if now is None else now) - timestamp) > _TOLERANCE_SECONDS:
            return False
        expected = signature(self.secret.encode(), timestamp, body)
        return hmac.compare_digest(expected, header)
