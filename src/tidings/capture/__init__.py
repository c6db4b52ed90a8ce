"""Local stand-ins for real providers: an SMTP server and an HTTP server speaking Twilio's,
FCM's and webhook shapes. Used by the tests and by ``tidings demo``; never in production."""

from tidings.capture.certs import LocalTls, local_tls
from tidings.capture.http import (
    CapturedPush,
    CapturedSms,
    CapturedWebhook,
    CaptureError,
    Counts,
    Fault,
    HttpCapture,
)
from tidings.capture.local import LocalProviders
from tidings.capture.smtp import CapturedMail, SmtpCapture

__all__ = [
    "CaptureError",
    "CapturedMail",
    "CapturedPush",
    "CapturedSms",
    "CapturedWebhook",
    "Counts",
    "Fault",
    "HttpCapture",
    "LocalProviders",
    "LocalTls",
    "SmtpCapture",
    "local_tls",
]
