"""The email sink against a real SMTP server (aiosmtpd on a free loopback port, started here)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import ipaddress
import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from meterwatch.config.settings import load_settings
from meterwatch.sinks.email import Backoff, MailOutbox, SendResult, SmtpMailer, compose_alert_mail

from tests.support.worker import free_port

pytestmark = pytest.mark.timeout(60)

SENDER = "Meterwatch <alerts@example.com>"
PASSWORD = "s3cret-never-logged"
BODY_MARKER = "Usage this period"  # a line of every alert body, which must stay out of the logs


@dataclass
class RecordingHandler:
    """Records every accepted envelope; refuses or defers the recipients it is told to."""

    refuse: dict[str, str] = field(default_factory=dict)  # address -> reply, every time
    defer_once: dict[str, str] = field(default_factory=dict)  # address -> reply, the first time only
    data_reply: str = "250 Message accepted for delivery"
    envelopes: list[dict[str, Any]] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        if address in self.defer_once:
            return self.defer_once.pop(address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply.startswith("250"):
            self.envelopes.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "message": email.message_from_bytes(envelope.content, policy=email.policy.default),
                    # session.ssl is set by STARTTLS only; an implicit-TLS transport carries its own.
                    "tls": session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                    "authenticated": session.authenticated,
                }
            )
        return self.data_reply


@contextlib.contextmanager
def running_smtp(handler: RecordingHandler, port: int, **smtp_options: Any) -> Iterator[Controller]:
    controller = Controller(handler, hostname="127.0.0.1", port=port, **smtp_options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def smtp_server(smtp_port: int) -> Iterator[RecordingHandler]:
    handler = RecordingHandler()
    with running_smtp(handler, smtp_port):
        yield handler


def mailer_for(
    port: int, timeout: float = 5.0, tls_context: ssl.SSLContext | None = None, **settings: Any
) -> SmtpMailer:
    config = load_settings({}, smtp_host="127.0.0.1", smtp_port=port, smtp_from=SENDER, **settings)
    return SmtpMailer(config, timeout=timeout, tls_context=tls_context)


def alert_mail(recipients: list[str], alert_id: str = "al_1") -> Any:
    """An alert mail addressed to ``recipients``. The mailing stage gives each billing contact a
    mail of its own; the transport also takes a mail to several, and answers for each of them."""
    record = {
        "alert_id": alert_id,
        "scope": "workspace",
        "workspace_id": "ws_42",
        "metric": "sms",
        "level": 80,
        "threshold": 1000,
        "usage": 803,
        "period_start": "2026-11-01T00:00:00Z",
        "period_end": "2026-12-01T00:00:00Z",
        "estimated_cost": {"amount": "12.40", "currency": "USD"},
        "recipients": recipients,
    }
    message = compose_alert_mail(record, recipients[0], sender=SENDER)
    del message["To"]
    message["To"] = ", ".join(recipients)
    return message


class Outcomes:
    """The outbox's callbacks, recorded."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.refused: list[tuple[str, dict[str, str]]] = []

    def outbox(self, mailer: Any, **options: Any) -> MailOutbox:
        return MailOutbox(
            mailer,
            on_sent=self.sent.append,
            on_failed=lambda key, reason: self.failed.append((key, reason)),
            on_refused=lambda key, refused: self.refused.append((key, dict(refused))),
            **options,
        )


class CountingMailer:
    """Passes sends through, keeping every result, to watch the outbox retry."""

    def __init__(self, inner: SmtpMailer) -> None:
        self.inner = inner
        self.results: list[tuple[float, SendResult]] = []

    async def send(self, message: Any, recipients: Any = None) -> SendResult:
        result = await self.inner.send(message, recipients)
        self.results.append((asyncio.get_running_loop().time(), result))
        return result


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_mail_arrives_with_its_headers_and_recipients(smtp_server: RecordingHandler, smtp_port: int) -> None:
    message = alert_mail(["billing@example.com", "cfo@example.org"])
    result = await mailer_for(smtp_port).send(message)

    assert result == SendResult(accepted=("billing@example.com", "cfo@example.org"))
    [envelope] = smtp_server.envelopes
    assert envelope["mail_from"] == "alerts@example.com"
    assert envelope["rcpt_tos"] == ["billing@example.com", "cfo@example.org"]
    received = envelope["message"]
    assert received["X-Meterwatch-Alert-Id"] == "al_1"
    assert received["Message-ID"] == message["Message-ID"]
    assert received["Subject"] == "80% of your SMS usage alert (1,000) reached - workspace ws_42"
    assert "Estimated cost:    12.40 USD" in received.get_content()


async def test_a_refused_recipient_is_reported_and_the_others_still_get_the_mail(
    smtp_server: RecordingHandler, smtp_port: int
) -> None:
    smtp_server.refuse["gone@example.com"] = "550 5.1.1 No such user"
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer_for(smtp_port), backoff=Backoff(base=0.01, cap=0.05))

    outbox.put("al_1", alert_mail(["a@example.com", "gone@example.com", "b@example.com"]))
    await eventually(lambda: outbox.backlog() == 0)

    assert [e["rcpt_tos"] for e in smtp_server.envelopes] == [["a@example.com", "b@example.com"]]
    assert outcomes.refused == [("al_1", {"gone@example.com": "550 5.1.1 No such user"})]
    assert outcomes.sent == ["al_1"] and outcomes.failed == []
    await asyncio.sleep(0.2)
    assert len(smtp_server.envelopes) == 1, "a permanent refusal is never retried"
    await outbox.close()


async def test_every_recipient_refused_means_failed_not_retried(smtp_server: RecordingHandler, smtp_port: int) -> None:
    smtp_server.refuse["gone@example.com"] = "550 5.1.1 No such user"
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer_for(smtp_port), backoff=Backoff(base=0.01, cap=0.05))

    outbox.put("al_1", alert_mail(["gone@example.com"]))
    await eventually(lambda: outbox.backlog() == 0)

    assert outcomes.sent == [] and smtp_server.envelopes == []
    [(key, reason)] = outcomes.failed
    assert key == "al_1" and "550" in reason
    await outbox.close()


async def test_a_deferred_recipient_is_retried_alone(smtp_server: RecordingHandler, smtp_port: int) -> None:
    smtp_server.defer_once["late@example.com"] = "450 4.2.0 Greylisted, try again later"
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer_for(smtp_port), backoff=Backoff(base=0.01, cap=0.05))

    outbox.put("al_1", alert_mail(["a@example.com", "late@example.com"]))
    await eventually(lambda: outbox.backlog() == 0)

    assert [e["rcpt_tos"] for e in smtp_server.envelopes] == [["a@example.com"], ["late@example.com"]]
    assert outcomes.sent == ["al_1"] and outcomes.refused == [] and outcomes.failed == []
    await outbox.close()


@pytest.mark.parametrize(("reply", "permanent"), [("554 5.6.0 Content rejected", True), ("451 4.3.0 Try later", False)])
async def test_a_reply_to_data_is_permanent_for_5xx_and_transient_for_4xx(
    smtp_server: RecordingHandler, smtp_port: int, reply: str, permanent: bool
) -> None:
    smtp_server.data_reply = reply
    result = await mailer_for(smtp_port).send(alert_mail(["a@example.com"]))

    assert (result.permanent_error is not None) is permanent
    assert result.needs_retry is not permanent
    assert reply in (result.permanent_error or result.transient_error or "")


async def test_a_refused_connection_is_transient(smtp_port: int) -> None:
    result = await mailer_for(smtp_port).send(alert_mail(["a@example.com"]))
    assert result.transient_error and result.needs_retry and result.accepted == ()


async def test_a_server_that_never_answers_times_out_as_transient(smtp_port: int) -> None:
    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # holds the connection open without a greeting

    server = await asyncio.start_server(say_nothing, "127.0.0.1", smtp_port)
    async with server:
        started = asyncio.get_running_loop().time()
        result = await mailer_for(smtp_port, timeout=0.3).send(alert_mail(["a@example.com"]))
    assert result.transient_error and "Timeout" in result.transient_error
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_server_slow_at_every_step_times_out_as_a_whole_transaction(smtp_port: int) -> None:
    """Each answer comes within the per-command limit; the transaction as a whole does not."""

    async def answer_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 slow.example.com ESMTP\r\n")
        while line := await reader.readline():
            await asyncio.sleep(0.2)
            writer.write(b"250 OK\r\n" if not line.upper().startswith(b"DATA") else b"354 go on\r\n")
            await writer.drain()

    server = await asyncio.start_server(answer_slowly, "127.0.0.1", smtp_port)
    async with server:
        started = asyncio.get_running_loop().time()
        result = await mailer_for(smtp_port, timeout=0.5).send(alert_mail(["a@example.com"]))
        took = asyncio.get_running_loop().time() - started
    assert result.transient_error and "Timeout" in result.transient_error and result.accepted == ()
    assert took < 1.5


async def test_the_outbox_retries_a_stopped_server_and_delivers_exactly_once_when_it_is_back(smtp_port: int) -> None:
    mailer = CountingMailer(mailer_for(smtp_port, timeout=2.0))
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer, backoff=Backoff(base=0.02, cap=0.1))

    assert outbox.put("al_1", alert_mail(["a@example.com", "b@example.com"])) is True
    await eventually(lambda: len(mailer.results) >= 4)  # put returned at once; sending goes on behind it
    assert outbox.backlog() == 1 and outcomes.sent == [] and outcomes.failed == []
    assert all(result.transient_error for _, result in mailer.results)
    gaps = [later - earlier for (earlier, _), (later, _) in zip(mailer.results, mailer.results[1:], strict=False)]
    assert max(gaps) < 1.0, "the backoff stays under its cap"

    handler = RecordingHandler()
    with running_smtp(handler, smtp_port):
        await eventually(lambda: outcomes.sent == ["al_1"])
        await asyncio.sleep(0.3)
    assert [e["rcpt_tos"] for e in handler.envelopes] == [["a@example.com", "b@example.com"]]
    assert outbox.backlog() == 0 and outcomes.failed == []
    await outbox.close()


async def test_a_key_put_again_while_it_is_being_sent_is_sent_once(
    smtp_server: RecordingHandler, smtp_port: int
) -> None:
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer_for(smtp_port))
    assert outbox.put("al_1", alert_mail(["a@example.com"])) is True
    assert outbox.put("al_1", alert_mail(["a@example.com"])) is False  # still pending
    await eventually(lambda: outbox.backlog() == 0)
    await asyncio.sleep(0.2)
    assert len(smtp_server.envelopes) == 1 and outcomes.sent == ["al_1"]
    await outbox.close()


async def test_close_stops_the_background_work_and_names_what_was_not_sent(smtp_port: int) -> None:
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer_for(smtp_port), backoff=Backoff(base=0.01, cap=0.05))
    outbox.put("al_1", alert_mail(["a@example.com"]))
    outbox.put("al_2", alert_mail(["a@example.com"], alert_id="al_2"))
    await asyncio.sleep(0.1)

    assert sorted(await outbox.close(grace=0.05)) == ["al_1", "al_2"]
    assert outbox.backlog() == 0 and outcomes.sent == [] and outcomes.failed == []
    with pytest.raises(RuntimeError):
        outbox.put("al_3", alert_mail(["a@example.com"], alert_id="al_3"))


class ScriptedMailer:
    """Answers each send with the next scripted result (or raises it), noting the recipients asked for."""

    def __init__(self, *script: SendResult | Exception) -> None:
        self.script, self.asked = list(script), []

    async def send(self, message: Any, recipients: Any = None) -> SendResult:
        self.asked.append(recipients)
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_recipients_still_waiting_when_the_mail_is_rejected_are_reported_refused() -> None:
    mailer = ScriptedMailer(
        SendResult(accepted=("a@example.com",), deferred={"b@example.com": "450 later"}),
        SendResult(permanent_error="554 content rejected"),
    )
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer, backoff=Backoff(base=0.01, cap=0.01))
    outbox.put("al_1", alert_mail(["a@example.com", "b@example.com"]))
    await eventually(lambda: outbox.backlog() == 0)

    assert mailer.asked == [None, ["b@example.com"]]
    assert outcomes.refused == [("al_1", {"b@example.com": "554 content rejected"})]
    assert outcomes.sent == ["al_1"] and outcomes.failed == []


async def test_a_mailer_that_raises_fails_the_mail_instead_of_retrying_forever() -> None:
    outcomes = Outcomes()
    outbox = outcomes.outbox(ScriptedMailer(RuntimeError("bug")))
    outbox.put("al_1", alert_mail(["a@example.com"]))
    await eventually(lambda: outbox.backlog() == 0)
    assert outcomes.failed == [("al_1", "RuntimeError: bug")]


async def test_close_ends_a_retry_loop_even_when_a_library_swallows_the_cancellation() -> None:
    class SwallowsCancellation:
        swallowed = False

        async def send(self, message: Any, recipients: Any = None) -> SendResult:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:  # lost once, as asyncio.wait_for can lose it on Python 3.11
                if self.swallowed:
                    raise
                self.swallowed = True
            return SendResult(transient_error="still down")

    outbox = Outcomes().outbox(SwallowsCancellation(), backoff=Backoff(base=0.0, cap=0.0))
    outbox.put("al_1", alert_mail(["a@example.com"]))
    await asyncio.sleep(0.12)
    assert await asyncio.wait_for(outbox.close(), timeout=2) == ["al_1"]


# --- STARTTLS and AUTH, with a certificate authority made for this test ---------------------


@dataclass(frozen=True)
class TlsContexts:
    server: ssl.SSLContext
    client: ssl.SSLContext
    ca_file: Path  # the test CA's certificate, PEM, as METERWATCH_SMTP_CA_FILE names it


@pytest.fixture(scope="module")
def test_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsContexts:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = dt.datetime.now(dt.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder(subject_name=name("meterwatch test CA"), issuer_name=name("meterwatch test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_cert = (
        x509.CertificateBuilder(subject_name=name("127.0.0.1"), issuer_name=ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(cadata=ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return TlsContexts(server=server, client=client, ca_file=folder / "ca.pem")


def accept_only(login: str, password: str) -> Callable[..., AuthResult]:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data == (login.encode(), password.encode())
        return AuthResult(success=ok, handled=False)

    return authenticator


@pytest.fixture
def tls_smtp_server(test_tls: TlsContexts, smtp_port: int) -> Iterator[RecordingHandler]:
    handler = RecordingHandler()
    options = {"tls_context": test_tls.server, "require_starttls": True, "auth_required": True}
    with running_smtp(handler, smtp_port, authenticator=accept_only("meterwatch", PASSWORD), **options):
        yield handler


def logged_by_meterwatch(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("meterwatch"))


async def test_starttls_and_login_deliver_and_keep_the_password_out_of_logs(
    tls_smtp_server: RecordingHandler, smtp_port: int, test_tls: TlsContexts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mailer = mailer_for(
        smtp_port, smtp_starttls=True, smtp_username="meterwatch", smtp_password=PASSWORD, tls_context=test_tls.client
    )
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer)
    outbox.put("al_1", alert_mail(["a@example.com"]))
    await eventually(lambda: outcomes.sent == ["al_1"])
    await outbox.close()

    [envelope] = tls_smtp_server.envelopes
    assert envelope["tls"] and envelope["authenticated"]
    assert PASSWORD not in repr(mailer)
    assert PASSWORD not in logged_by_meterwatch(caplog) and BODY_MARKER not in logged_by_meterwatch(caplog)


async def test_a_wrong_password_is_retried_not_failed_and_never_logged(
    tls_smtp_server: RecordingHandler, smtp_port: int, test_tls: TlsContexts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + PASSWORD
    mailer = CountingMailer(
        mailer_for(
            smtp_port, smtp_starttls=True, smtp_username="meterwatch", smtp_password=wrong, tls_context=test_tls.client
        )
    )
    outcomes = Outcomes()
    outbox = outcomes.outbox(mailer, backoff=Backoff(base=0.01, cap=0.05))
    outbox.put("al_1", alert_mail(["a@example.com"]))
    await eventually(lambda: len(mailer.results) >= 2)
    await outbox.close()

    assert all("SMTPAuthenticationError: 535" in (r.transient_error or "") for _, r in mailer.results)
    assert outcomes.failed == [] and tls_smtp_server.envelopes == []
    assert wrong not in logged_by_meterwatch(caplog) and BODY_MARKER not in logged_by_meterwatch(caplog)


async def test_a_server_without_starttls_is_transient_when_starttls_is_required(
    smtp_server: RecordingHandler, smtp_port: int, test_tls: TlsContexts
) -> None:
    result = await mailer_for(smtp_port, smtp_starttls=True, tls_context=test_tls.client).send(
        alert_mail(["a@example.com"])
    )
    assert result.transient_error and smtp_server.envelopes == []


# --- implicit TLS (SMTPS, port 465 in production), trusting the CA named by METERWATCH_SMTP_CA_FILE ---


NO_TLS_REQUIRED_WARNING = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture
def implicit_tls_smtp_server(test_tls: TlsContexts, smtp_port: int) -> Iterator[RecordingHandler]:
    """TLS from the first byte, and login required. (aiosmtpd's ``auth_require_tls`` counts only
    STARTTLS as TLS and would hide AUTH here; every byte of this connection is encrypted anyway.)"""
    handler = RecordingHandler()
    options = {"ssl_context": test_tls.server, "auth_required": True, "auth_require_tls": False}
    with running_smtp(handler, smtp_port, authenticator=accept_only("meterwatch", PASSWORD), **options):
        yield handler


@NO_TLS_REQUIRED_WARNING
async def test_implicit_tls_with_the_ca_file_delivers_and_logs_in(
    implicit_tls_smtp_server: RecordingHandler, smtp_port: int, test_tls: TlsContexts
) -> None:
    mailer = mailer_for(
        smtp_port,
        smtp_tls=True,
        smtp_ca_file=str(test_tls.ca_file),
        smtp_username="meterwatch",
        smtp_password=PASSWORD,
    )
    result = await mailer.send(alert_mail(["a@example.com"]))

    assert result.accepted == ("a@example.com",) and not result.needs_retry, result
    [envelope] = implicit_tls_smtp_server.envelopes
    assert envelope["tls"] and envelope["authenticated"]
    assert PASSWORD not in repr(mailer) and "tls=True" in repr(mailer)


@NO_TLS_REQUIRED_WARNING
async def test_implicit_tls_without_the_ca_file_does_not_trust_a_private_ca(
    implicit_tls_smtp_server: RecordingHandler, smtp_port: int
) -> None:
    mailer = mailer_for(smtp_port, smtp_tls=True, smtp_username="meterwatch", smtp_password=PASSWORD)
    result = await mailer.send(alert_mail(["a@example.com"]))

    assert result.transient_error and "CERTIFICATE_VERIFY_FAILED" in result.transient_error
    assert implicit_tls_smtp_server.envelopes == []
