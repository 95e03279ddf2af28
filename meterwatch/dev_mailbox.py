"""A local SMTP server for ``meterwatch dev`` when no SMTP server is configured.

It accepts every mail on a loopback port, appends it to an mbox file (readable with ``mutt -f``,
Thunderbird, or Python's ``mailbox``) and reports each one as it arrives.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import socket
import threading
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller


class LocalMailbox:
    def __init__(self, path: str, on_mail: Callable[[list[str], str], None]) -> None:
        self.path = path
        self.received = 0
        self._on_mail = on_mail
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self.port = 0

    def start(self) -> LocalMailbox:
        self.port = _free_port()
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
