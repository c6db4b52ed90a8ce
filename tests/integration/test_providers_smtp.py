"""Email through a real local SMTP server (aiosmtpd) with STARTTLS and AUTH."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from tidings.capture import LocalTls, SmtpCapture, local_tls
from tidings.notification import parse_notification
from tidings.sinks import (
    PERMANENT,
    TRANSIENT,
    Delivery,
    ProviderSettings,
    SmtpEmail,
    deliveries,
    smtp_factory,
)


@pytest.fixture(scope="module")
def tls() -> LocalTls:
    return local_tls()


@pytest.fixture
async def server(tls: LocalTls) -> AsyncIterator[SmtpCapture]:
    async with SmtpCapture(tls=tls.server_context(), credentials={"mailer": "s3cret"}) as smtp:
        yield smtp


def settings(port: int, password: str = "s3cret") -> ProviderSettings:
    return ProviderSettings(smtp_host="localhost", smtp_port=port, smtp_username="mailer",
                            smtp_password=password, smtp_from="Shop <shop@example.com>",
                            smtp_timeout=5)


def delivery(to: str = "ada@example.com", key: str = "order-1") -> Delivery:
    n = parse_notification({
        "type": "order.shipped", "channels": ["email"], "idempotency_key": key,
        "recipient": {"user_id": "u-1", "email": to},
        "content": {"subject": "Your order shipped", "body": "It is on its way."},
    })
    assert n.content is not None
    return next(deliveries(n, "email", n.content))


async def test_mail_arrives_over_starttls_with_auth_and_the_right_headers(
    server: SmtpCapture, tls: LocalTls
) -> None:
    email = SmtpEmail.from_settings(settings(server.port), tls.client_context())
    result = await email.send(delivery())
    await email.aclose()
    assert result.ok, result.failure
    [mail] = server.messages
    assert mail.tls
    assert mail.login == "mailer"
    assert mail.mail_from == "shop@example.com"
    assert mail.rcpt_tos == ("ada@example.com",)
    assert mail.message["Subject"] == "Your order shipped"
    assert mail.message["From"] == "Shop <shop@example.com>"
    assert mail.message["Message-ID"] == result.provider_message_id
    assert mail.message["X-Tidings-Type"] == "order.shipped"
    assert mail.message.get_content().strip() == "It is on its way."


async def test_the_ca_file_setting_is_enough_to_trust_the_server(
    server: SmtpCapture, tls: LocalTls, tmp_path: Path
) -> None:
    ca = tls.write_ca(tmp_path / "ca.pem")
    email = SmtpEmail.from_settings(settings(server.port).model_copy(
        update={"smtp_ca_file": str(ca)}))
    result = await email.send(delivery())
    await email.aclose()
    assert result.ok, result.failure


async def test_one_connection_is_reused_across_sends(server: SmtpCapture, tls: LocalTls) -> None:
    connections = 0
    factory = smtp_factory(settings(server.port), tls.client_context())

    def counting() -> aiosmtplib.SMTP:
        nonlocal connections
        connections += 1
        return factory()

    email = SmtpEmail(counting, sender="shop@example.com", pool_size=1)
    results = [await email.send(delivery(key=f"k-{i}")) for i in range(5)]
    await email.aclose()
    assert all(r.ok for r in results)
    assert server.received == 5
    assert connections == 1


async def test_a_connection_the_server_dropped_is_replaced_transparently(
    server: SmtpCapture, tls: LocalTls
) -> None:
    email = SmtpEmail.from_settings(settings(server.port), tls.client_context())
    assert (await email.send(delivery(key="first"))).ok
    assert server.drop_connections() == 1
    result = await email.send(delivery(key="second"))
    await email.aclose()
    assert result.ok, result.failure
    assert server.received == 2


async def test_a_wrong_password_is_permanent(server: SmtpCapture, tls: LocalTls) -> None:
    email = SmtpEmail.from_settings(settings(server.port, password="nope"), tls.client_context())
    failure = (await email.send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.code == "auth"
    assert failure.smtp_code == 535
    assert "TIDINGS_SMTP_PASSWORD" in failure.reason
    assert server.received == 0


async def test_an_untrusted_certificate_is_permanent(server: SmtpCapture) -> None:
    email = SmtpEmail.from_settings(settings(server.port), local_tls().client_context())
    failure = (await email.send(delivery())).failure
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.code == "tls"


async def test_a_rejected_mailbox_is_a_permanent_bad_address(
    server: SmtpCapture, tls: LocalTls
) -> None:
    server.reject_recipients["gone@example.com"] = "550 5.1.1 mailbox unavailable"
    email = SmtpEmail.from_settings(settings(server.port), tls.client_context())
    failure = (await email.send(delivery(to="gone@example.com"))).failure
    await email.aclose()
    assert failure is not None
    assert failure.kind is PERMANENT
    assert failure.bad_address
    assert failure.smtp_code == 550
    assert "mailbox unavailable" in failure.reason


async def test_a_temporary_rejection_is_transient(server: SmtpCapture, tls: LocalTls) -> None:
    server.data_reply = "451 4.3.0 try again later"
    email = SmtpEmail.from_settings(settings(server.port), tls.client_context())
    failure = (await email.send(delivery())).failure
    await email.aclose()
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.smtp_code == 451


async def test_a_server_that_is_down_is_transient(tls: LocalTls) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    email = SmtpEmail.from_settings(settings(port), tls.client_context())
    failure = (await email.send(delivery())).failure
    assert failure is not None
    assert failure.kind is TRANSIENT
    assert failure.code == "connection"


class CutAfterData(asyncio.Protocol):
    """A bare SMTP server that takes message number ``cut`` on a connection in full and then
    drops the connection without a reply (a crash, or a proxy cutting it, after the server got
    the mail). ``received`` keeps every message it took."""

    cut = 2
    received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport, self.buffer, self.data, self.taken = transport, b"", None, 0
        transport.write(b"220 cut ESMTP\r\n")

    def data_received(self, chunk: bytes) -> None:
        self.buffer += chunk
        while self.buffer:
            if self.data is not None:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.received.append(self.buffer[:end])
                self.buffer, self.data, self.taken = self.buffer[end + 5:], None, self.taken + 1
                if self.taken == self.cut:
                    self.transport.close()
                    return
                self.transport.write(b"250 queued\r\n")
                continue
            line, found, self.buffer = self.buffer.partition(b"\r\n")
            if not found:
                self.buffer = line
                return
            verb = line[:4].upper()
            if verb == b"DATA":
                self.data = b""
            self.transport.write({b"EHLO": b"250-cut\r\n250 8BITMIME\r\n", b"DATA": b"354 go\r\n",
                                  b"QUIT": b"221 bye\r\n"}.get(verb, b"250 ok\r\n"))


@pytest.mark.parametrize("cut", [1, 2], ids=["fresh connection", "reused connection"])
async def test_a_connection_lost_after_data_is_an_outcome_unknown_never_a_second_copy(
    cut: int
) -> None:
    received: list[bytes] = []
    protocol = type("Cut", (CutAfterData,), {"cut": cut, "received": received})
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    email = SmtpEmail(lambda: aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                                              timeout=5), sender="shop@example.com")
    try:
        results = [await email.send(delivery(f"user-{n}@example.com")) for n in (1, 2)][:cut]
    finally:
        await email.aclose()
        server.close()
    lost = results[-1]
    assert lost.failure is not None
    assert lost.failure.transient
    assert lost.failure.maybe_delivered, "the server may have the mail: no blind retry"
    assert sum(f"user-{cut}@".encode() in m for m in received) == 1, "one copy, not two"
