"""Mails kept exactly as an SMTP server received them, and what is wrong with one: where an
injected header or a stray recipient would show."""

from __future__ import annotations

import email
import email.policy
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from typing import Any


@dataclass(frozen=True)
class RawMail:
    envelope_from: str
    envelope_to: tuple[str, ...]
    raw: bytes

    def parsed(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]


class RawMailbox:
    """aiosmtpd handler keeping each mail exactly as it arrived, where an injected header would show."""

    def __init__(self) -> None:
        self._mails: list[RawMail] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self._mails.append(RawMail(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def snapshot(self) -> list[RawMail]:
        with self._lock:
            return list(self._mails)


MAIL_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
)
UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})  # control, format (bidi, zero-width), line and paragraph separators


def header_lines(raw: bytes) -> list[bytes]:
    head, _, _ = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n")


def mail_problems(mail: RawMail, contacts: tuple[str, ...], id_header: str, sender: str) -> list[str]:
    """What is wrong with one received mail; empty when it is what one of the billing contacts
    ``contacts`` should get: a mail addressed to that contact alone."""
    problems = []
    lines = header_lines(mail.raw)
    if any(b"\r" in line or b"\n" in line for line in lines):
        problems.append("a bare CR or LF in the header block")
    names = Counter(
        line.split(b":", 1)[0].decode("ascii", "replace").lower() for line in lines if line[:1] not in (b" ", b"\t")
    )
    if names != Counter((*MAIL_HEADERS, id_header)):
        problems.append(f"headers {sorted(names.elements())}")
    message = mail.parsed()
    if message.defects:
        problems.append(f"defects {message.defects}")
    for name, value in message.items():
        if "\r" in str(value) or "\n" in str(value):
            problems.append(f"{name} holds a line break: {str(value)!r}")
    if parseaddr(str(message["From"]))[1] != sender or mail.envelope_from != sender:
        problems.append(f"sender {message['From']!r} / {mail.envelope_from!r}")
    to = [address for _, address in getaddresses([str(value) for value in message.get_all("To", [])])]
    if len(to) != 1 or list(mail.envelope_to) != to or to[0] not in contacts:
        problems.append(f"recipients To={to} envelope={list(mail.envelope_to)}, expected one of {sorted(contacts)}")
    if any(unicodedata.category(char) in UNPRINTABLE for char in str(message["Subject"])):
        problems.append(f"subject {str(message['Subject'])!r}")
    return problems
