"""A local SMTP server (aiosmtpd) that keeps what it receives, with optional STARTTLS + AUTH.

It runs on the caller's event loop, so a test or ``tidings demo`` starts and stops it with
``async with SmtpCapture(...)`` and no thread. Faults are injected by setting
``reject_recipients`` (address → SMTP reply) or ``data_reply`` (e.g. ``"451 4.3.0 busy"``).
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tidings.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class CapturedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    login: str | None
    """The user that authenticated, if AUTH was used."""
    tls: bool
    """Whether the mail travelled over TLS (STARTTLS)."""


class _Handler:
    def __init__(self, capture: SmtpCapture) -> None:
        self.capture = capture

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.capture.reject_recipients.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.capture.data_reply:
            return self.capture.data_reply
        raw = envelope.original_content or b""
        message = message_from_bytes(raw, policy=policy.SMTP)
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        self.capture.messages.append(CapturedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            message=message,
            login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            tls=session.ssl is not None,
        ))
        self.capture.received += 1
        return "250 2.0.0 OK: queued"


class SmtpCapture:
    """An SMTP server on ``host:port`` (port 0 picks a free one) that stores received mail.

    With ``tls`` it offers STARTTLS and refuses mail until the client upgrades; with
    ``credentials`` (user → password) it requires AUTH (PLAIN / LOGIN), over TLS when TLS is on.
    ``messages`` keeps the last ``keep`` mails; ``received`` counts them all.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        credentials: Mapping[str, str] | None = None,
        keep: int = 10_000,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._credentials = dict(credentials) if credentials else None
        self.messages: deque[CapturedMail] = deque(maxlen=keep)
        self.received = 0
        self.reject_recipients: dict[str, str] = {}
        self.data_reply: str | None = None
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and self._credentials is not None
              and self._credentials.get(auth_data.login.decode()) == auth_data.password.decode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _protocol(self) -> SMTP:
        auth = self._credentials is not None
        protocol = SMTP(
            _Handler(self),
            hostname="tidings-capture",
            tls_context=self._tls,
            require_starttls=self._tls is not None,
            authenticator=self._authenticate if auth else None,
            auth_required=auth,
            auth_require_tls=self._tls is not None,
        )
        self._connections.add(protocol)
        return protocol

    async def start(self) -> SmtpCapture:
        if self._credentials is not None and self._tls is None:
            raise ConfigurationError("SmtpCapture with credentials needs tls: AUTH in the "
                                     "clear is refused by well-behaved clients")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_connections(self) -> int:
        """Close every open client connection, as a server restart or idle timeout would."""
        dropped = 0
        for connection in list(self._connections):
            if connection.transport is not None and not connection.transport.is_closing():
                connection.transport.close()
                dropped += 1
        return dropped

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Clients may hold idle connections open (a pool); close them so stop never hangs.
            self.drop_connections()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SmtpCapture:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
