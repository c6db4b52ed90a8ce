"""SMTP email: the message we build and how every SMTP failure is classified."""

from __future__ import annotations

import ssl

import aiosmtplib
import pytest

from tidings.errors import ConfigurationError
from tidings.notification import Content, parse_notification
from tidings.sinks import PERMANENT, TRANSIENT, Delivery, ProviderSettings, SmtpEmail, deliveries
from tidings.sinks.email_smtp import classify
from tidings.sinks.failover import provider_at_fault


def delivery(content: Content | None = None, key: str = "k-3") -> Delivery:
    n = parse_notification({
        "type": "order.shipped", "channels": ["email"], "tenant": "acme",
        "idempotency_key": key, "recipient": {"user_id": "u-1", "email": "ada@example.com"},
        "content": {"subject": "Shipped", "body": "It is on its way", "html": "<p>On its way</p>"},
    })
    assert n.content is not None
    return next(deliveries(n, "email", content or n.content))


def unused_factory() -> aiosmtplib.SMTP:
    raise AssertionError("no connection expected")


def email() -> SmtpEmail:
    return SmtpEmail(unused_factory, sender="Shop <shop@example.com>")


def test_the_message_carries_addresses_subject_and_tidings_headers() -> None:
    msg = email().message(delivery())
    assert msg["From"] == "Shop <shop@example.com>"
    assert msg["To"] == "ada@example.com"
    assert msg["Subject"] == "Shipped"
    assert msg["X-Tidings-Type"] == "order.shipped"
    assert msg["X-Tidings-Tenant"] == "acme"
    assert msg["Message-ID"].endswith("@example.com>")


def test_html_travels_as_an_alternative_part() -> None:
    msg = email().message(delivery())
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_the_message_id_is_stable_for_one_key_and_differs_between_keys() -> None:
    provider = email()
    first, again = provider.message(delivery()), provider.message(delivery())
    other = provider.message(delivery(key="k-4"))
    assert first["Message-ID"] == again["Message-ID"] != other["Message-ID"]


async def test_a_subject_with_a_line_break_is_a_permanent_failure_not_a_crash() -> None:
    result = await email().send(delivery(Content(subject="a\r\nBcc: x@evil.test", body="b")))
    assert result.failure is not None
    assert result.failure.kind is PERMANENT
    assert result.failure.code == "bad_message"


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), PERMANENT, "auth"),
        (aiosmtplib.SMTPAuthenticationError(454, "temporary failure"), TRANSIENT, "auth"),
        (aiosmtplib.SMTPConnectResponseError(421, "too busy"), TRANSIENT, "refused"),
        (aiosmtplib.SMTPConnectResponseError(554, "your IP is listed"), PERMANENT, "refused"),
        (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server"), PERMANENT,
         "needs_smtputf8"),
        (aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(550, "no such user", "x@y.z")]), PERMANENT, "550"),
        (aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(450, "greylisted", "x@y.z")]), TRANSIENT, "450"),
        (aiosmtplib.SMTPDataError(451, "try later"), TRANSIENT, "451"),
        (aiosmtplib.SMTPDataError(554, "spam"), PERMANENT, "554"),
        (aiosmtplib.SMTPSenderRefused(553, "relay denied", "a@b.c"), PERMANENT, "553"),
        (aiosmtplib.SMTPConnectError("refused"), TRANSIENT, "connection"),
        (aiosmtplib.SMTPServerDisconnected("gone"), TRANSIENT, "connection"),
        (aiosmtplib.SMTPReadTimeoutError("slow"), TRANSIENT, "timeout"),
        (ConnectionRefusedError(111, "refused"), TRANSIENT, "connection"),
        (aiosmtplib.SMTPException("STARTTLS extension not supported"), PERMANENT,
         "unsupported"),
    ],
)
def test_smtp_errors_are_classified(exc: Exception, kind: object, code: str) -> None:
    failure = classify(exc)
    assert (failure.kind, failure.code) == (kind, code)


def test_a_refused_mailbox_is_a_bad_address_and_a_refused_login_is_not() -> None:
    refused = aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(550, "no such user", "x@y.z")])
    assert classify(refused).bad_address
    assert classify(refused).smtp_code == 550
    assert not classify(aiosmtplib.SMTPAuthenticationError(535, "no")).bad_address


def test_an_untrusted_certificate_is_permanent_and_names_the_setting() -> None:
    error = ssl.SSLCertVerificationError("certificate verify failed")
    error.verify_message = "self-signed certificate"
    failure = classify(error)
    assert failure.kind is PERMANENT
    assert "TIDINGS_SMTP_CA_FILE" in failure.reason


def test_an_untrusted_certificate_behind_implicit_tls_is_permanent_too() -> None:
    cause = ssl.SSLCertVerificationError("certificate verify failed")
    cause.verify_message = "self-signed certificate"
    wrapped = aiosmtplib.SMTPConnectError("Error connecting to mail.example on port 465")
    wrapped.__cause__ = cause
    failure = classify(wrapped)
    assert (failure.kind, failure.code) == (PERMANENT, "tls")


def test_an_address_the_server_cannot_carry_does_not_count_against_it() -> None:
    failure = classify(aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server"))
    assert not provider_at_fault(failure)
    assert provider_at_fault(classify(aiosmtplib.SMTPException("STARTTLS not supported")))
    assert provider_at_fault(classify(aiosmtplib.SMTPConnectResponseError(554, "blocklisted")))


def test_email_needs_a_host() -> None:
    with pytest.raises(ConfigurationError, match="TIDINGS_SMTP_HOST"):
        SmtpEmail.from_settings(ProviderSettings())


def test_starttls_and_implicit_tls_exclude_each_other() -> None:
    settings = ProviderSettings(smtp_host="mail.test", smtp_starttls=True,
                                smtp_implicit_tls=True)
    with pytest.raises(ConfigurationError, match="only one"):
        SmtpEmail.from_settings(settings)


def test_settings_are_read_from_tidings_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_SMTP_HOST", "mail.test")
    monkeypatch.setenv("TIDINGS_SMTP_PORT", "2525")
    monkeypatch.setenv("TIDINGS_SMTP_PASSWORD", "pw")
    settings = ProviderSettings.from_env()
    assert (settings.smtp_host, settings.smtp_port) == ("mail.test", 2525)
    assert settings.smtp_password is not None
    assert "pw" not in repr(settings)


def test_a_bad_setting_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDINGS_SMTP_PORT", "seventy")
    with pytest.raises(ConfigurationError, match="TIDINGS_SMTP_PORT"):
        ProviderSettings.from_env()
