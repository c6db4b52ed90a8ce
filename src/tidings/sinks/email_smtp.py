"""Email over SMTP with aiosmtplib: STARTTLS, AUTH, and a few connections reused across sends."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any

import aiosmtplib

from tidings.errors import ConfigurationError
from tidings.notification import Channel
from tidings.sinks.base import PERMANENT, TRANSIENT, Delivery, Failure, SendResult, Stopwatch
from tidings.sinks.settings import ProviderSettings

SmtpFactory = Callable[[], aiosmtplib.SMTP]
"""Returns a configured, not yet connected client; ``connect()`` does STARTTLS and AUTH."""


def smtp_factory(
    settings: ProviderSettings, tls_context: ssl.SSLContext | None = None
) -> SmtpFactory:
    """Clients configured from ``TIDINGS_SMTP_*``; ``tls_context`` overrides the CA file."""
    if not settings.smtp_host:
        raise ConfigurationError("email needs TIDINGS_SMTP_HOST")
    if settings.smtp_starttls and settings.smtp_implicit_tls:
        raise ConfigurationError("set only one of TIDINGS_SMTP_STARTTLS and "
                                 "TIDINGS_SMTP_IMPLICIT_TLS")
    if tls_context is None and settings.smtp_ca_file:
        tls_context = ssl.create_default_context(cafile=settings.smtp_ca_file)
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    host = settings.smtp_host

    def connect() -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=host, port=settings.smtp_port,
            username=settings.smtp_username, password=password,
            start_tls=settings.smtp_starttls, use_tls=settings.smtp_implicit_tls,
            tls_context=tls_context, timeout=settings.smtp_timeout,
        )

    return connect


def _reply_failure(exc: aiosmtplib.SMTPResponseException) -> Failure:
    """A server's error reply: 4xx transient, 5xx permanent; whose fault it is by the step."""
    kind = TRANSIENT if 400 <= exc.code < 500 else PERMANENT
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        if kind is TRANSIENT:  # e.g. 454: the server cannot check credentials just now
            return Failure(kind, f"SMTP login failed for now ({exc.code} {exc.message})",
                           code="auth", smtp_code=exc.code)
        return Failure(kind, f"SMTP server refused the login ({exc.code} {exc.message}); "
                       "check TIDINGS_SMTP_USERNAME and TIDINGS_SMTP_PASSWORD",
                       code="auth", smtp_code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        # Refused in its greeting (421 busy, 554 our address blocklisted): the server's side,
        # whatever the message; it counts against the provider and fails over.
        return Failure(kind, f"SMTP server refused the connection: {exc.code} {exc.message}",
                       code="refused", smtp_code=exc.code)
    refused = isinstance(exc, aiosmtplib.SMTPRecipientRefused)
    return Failure(kind, f"SMTP {exc.code}: {exc.message}", code=str(exc.code),
                   smtp_code=exc.code, bad_address=refused and kind is PERMANENT)


def classify(exc: Exception, *, data_sent: bool | None = None) -> Failure:
    """Transient or permanent, for everything a connect or a send can raise. ``data_sent``:
    whether the send had reached DATA (None: not known), after which a lost connection or a
    timeout may have delivered the message."""
    if isinstance(exc.__cause__, ssl.SSLCertVerificationError):  # implicit TLS wraps it
        exc = exc.__cause__
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return _reply_failure(exc.recipients[0])
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_failure(exc)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        # No answer while connecting: nothing was sent; after DATA it may have been.
        return Failure(TRANSIENT, f"SMTP server did not answer in time: {exc}", code="timeout",
                       maybe_delivered=data_sent is not False and not isinstance(
                           exc, aiosmtplib.SMTPConnectTimeoutError))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(PERMANENT, f"SMTP server certificate not trusted: {exc.verify_message}; "
                       "set TIDINGS_SMTP_CA_FILE", code="tls")
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        return Failure(TRANSIENT, f"SMTP connection failed: {exc}", code="connection")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | OSError):
        # Lost once the message was on its way (DATA): the server may have taken it.
        return Failure(TRANSIENT, f"SMTP connection failed: {exc}", code="connection",
                       maybe_delivered=bool(data_sent))
    if isinstance(exc, aiosmtplib.SMTPNotSupported) and "SMTPUTF8" in str(exc):
        # The message's fault (a non-ASCII address or name), not the server's: no failover.
        return Failure(PERMANENT, "the address or a header is not ASCII and the SMTP server"
                       " does not offer SMTPUTF8 to carry it", code="needs_smtputf8")
    # SMTPNotSupported and plain SMTPException: STARTTLS or AUTH missing on the server.
    return Failure(PERMANENT, f"SMTP server cannot do what is configured: {exc}",
                   code="unsupported")


class _Connection:
    """A client and whether its current send reached DATA (the message on its way)."""

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.data_sent = False
        data = client.data

        async def watched(*args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
            self.data_sent = True
            return await data(*args, **kwargs)

        client.data = watched  # type: ignore[method-assign]


class SmtpEmail:
    """Sends email through one SMTP server, keeping up to ``pool_size`` connections open.

    A connection found closed when reused is replaced once, transparently. The Message-ID is
    derived from the idempotency key, so a retried duplicate is recognisable as the same mail.
    """

    channel: Channel = "email"

    def __init__(
        self, connect: SmtpFactory, *, sender: str, pool_size: int = 2, name: str = "smtp"
    ) -> None:
        self.name = name
        self._connect = connect
        self._from = sender
        self._envelope_from = parseaddr(sender)[1] or sender
        self._domain = self._envelope_from.rpartition("@")[2] or "tidings.invalid"
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(pool_size)

    @classmethod
    def from_settings(
        cls, settings: ProviderSettings, tls_context: ssl.SSLContext | None = None
    ) -> SmtpEmail:
        return cls(smtp_factory(settings, tls_context), sender=settings.smtp_from,
                   pool_size=settings.smtp_pool_size)

    def message(self, delivery: Delivery) -> EmailMessage:
        content, n = delivery.content, delivery.notification
        digest = hashlib.blake2s(delivery.idempotency_key.encode(), digest_size=16).hexdigest()
        msg = EmailMessage()
        msg["From"] = self._from
        msg["To"] = delivery.address
        msg["Subject"] = content.subject or content.title or n.type
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = f"<{digest}@{self._domain}>"
        msg["X-Tidings-Type"] = n.type
        msg["X-Tidings-Tenant"] = n.tenant
        msg["X-Tidings-Idempotency-Key"] = delivery.idempotency_key
        msg.set_content(content.body)
        if content.html:
            msg.add_alternative(content.html, subtype="html")
        return msg

    async def send(self, delivery: Delivery) -> SendResult:
        watch = Stopwatch(self.name, delivery)
        try:
            msg = self.message(delivery)
        except (ValueError, TypeError) as exc:  # e.g. a line break in the subject
            return watch.failed(Failure(PERMANENT, f"cannot build the email: {exc}",
                                        code="bad_message"))
        async with self._slots:
            for _ in range(2):
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else _Connection(self._connect())
                conn.data_sent = False
                try:
                    if not reused:
                        await conn.client.connect()
                    await conn.client.send_message(msg, sender=self._envelope_from,
                                                   recipients=[delivery.address])
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    conn.client.close()
                    if (reused and not conn.data_sent
                            and isinstance(exc, aiosmtplib.SMTPServerDisconnected)):
                        continue  # the server closed an idle connection; use a fresh one
                    return watch.failed(classify(exc, data_sent=conn.data_sent))
                self._idle.append(conn)
                return watch.sent(msg["Message-ID"])
        return watch.failed(Failure(TRANSIENT, "SMTP server keeps closing connections",
                                    code="connection"))

    async def aclose(self) -> None:
        """Say QUIT on every idle connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.client.quit()
            except aiosmtplib.SMTPException:
                conn.client.close()
