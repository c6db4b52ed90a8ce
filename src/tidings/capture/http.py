"""A local HTTP server speaking the shapes of Twilio's Messages API and FCM HTTP v1, and
receiving webhooks — keeping what it receives, and failing on request.

    POST /2010-04-01/Accounts/{sid}/Messages.json   form-encoded; 201 {"sid": "SM…"}
    POST /v1/projects/{project}/messages:send       JSON; 200 {"name": "projects/…/messages/…"}
    POST /webhooks/{anything}                       any body; 200

Faults (status codes, garbage bodies, latency) are injected per endpoint with :meth:`fault`.
Device tokens starting with ``invalid`` (or listed in ``unregistered``) get FCM's UNREGISTERED;
Twilio's magic test numbers (``+15005550001`` invalid, ``…0009`` not a mobile…) get their errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
import re
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings.errors import TidingsError
from tidings.sinks.webhook import SIGNATURE_HEADER, InvalidSignature, verify_signature

Endpoint = Literal["sms", "push", "webhook"]
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# Twilio's magic test numbers: well-formed 'To' numbers that fail the way real ones do.
MAGIC_NUMBERS = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number is not currently reachable via SMS."),
    "+15005550003": (21408, "Permission to send an SMS has not been enabled for the region."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient."),
    "+15005550009": (21614, "'To' number is not a valid mobile number."),
}


class CaptureError(TidingsError):
    """A local capture server could not start."""


@dataclass
class Fault:
    """What to do instead of (or before) answering normally."""

    status: int | None = 500
    """Reply with this status; None answers normally (after ``latency_s``)."""
    body: bytes | None = None
    """Raw reply body (garbage welcome); None sends the endpoint's usual error JSON."""
    latency_s: float = 0.0
    times: int | None = 1
    """How many requests it applies to; None for every request."""
    rate: float = 1.0
    """Share of requests it applies to (seeded, so repeatable)."""
    again: bool = True
    """Whether it may strike a request that a fault struck before (a retry of it: the same
    idempotency key or, without one, the same body). False: every retry gets past."""


@dataclass(frozen=True, slots=True)
class CapturedSms:
    sid: str
    to: str
    sender: str
    body: str
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class CapturedPush:
    message_id: str
    token: str
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CapturedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Counts:
    sms: int = 0
    push: int = 0
    webhook: int = 0
    faults: int = 0
    duplicates: int = 0
    bad_signatures: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


async def _identity(request: Request) -> str:
    """What a retry of ``request`` has in common with it: its idempotency key, or its body."""
    key = request.headers.get("idempotency-key")
    return "key:" + key if key else "body:" + hashlib.sha256(await request.body()).hexdigest()


def _twilio_error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "status": status,
                         "more_info": f"https://www.twilio.com/docs/errors/{code}"}, status)


_FCM_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "NOT_FOUND", 429: "QUOTA_EXCEEDED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def _fcm_error(status: int, error_code: str | None = None, message: str = "") -> JSONResponse:
    code = error_code or _FCM_STATUS.get(status, "UNKNOWN")
    error: dict[str, Any] = {"code": status, "message": message or code,
                             "status": _FCM_STATUS.get(status, code)}
    error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                         "errorCode": code}]
    return JSONResponse({"error": error}, status)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host process (a test, `tidings demo`) owns SIGINT / SIGTERM, not this server.
        yield


class HttpCapture:
    """Serves the three endpoints on ``host:port`` (0 picks a free port) on the current loop.

    ``twilio_credentials`` (account sid, auth token) and ``fcm_token`` turn on the providers'
    authentication checks; ``webhook_secret`` makes it verify webhook signatures (401 if bad).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        twilio_credentials: tuple[str, str] | None = None,
        fcm_token: str | None = None,
        webhook_secret: str | None = None,
        keep: int = 10_000,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self._twilio = twilio_credentials
        self._fcm_token = fcm_token
        self._webhook_secret = webhook_secret
        self.sms: deque[CapturedSms] = deque(maxlen=keep)
        self.push: deque[CapturedPush] = deque(maxlen=keep)
        self.webhooks: deque[CapturedWebhook] = deque(maxlen=keep)
        self.unregistered: set[str] = set()
        self.counts = Counts()
        self._idempotent: OrderedDict[str, str] = OrderedDict()
        self._struck: OrderedDict[str, None] = OrderedDict()  # requests a fault struck once
        self._keep = keep
        self._faults: dict[Endpoint, list[Fault]] = {"sms": [], "push": [], "webhook": []}
        self._random = random.Random(seed)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(routes=[
            Route("/2010-04-01/Accounts/{account}/Messages.json", self._sms, methods=["POST"]),
            Route("/v1/projects/{project}/messages:send", self._push, methods=["POST"]),
            Route("/webhooks/{path:path}", self._webhook, methods=["POST"]),
        ])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults ----------------------------------------------------------------------------

    def fault(self, endpoint: Endpoint, *, status: int | None = 500, body: bytes | None = None,
              latency_s: float = 0.0, times: int | None = 1, rate: float = 1.0,
              again: bool = True) -> Fault:
        """Make the next ``times`` requests (None: all) to ``endpoint`` misbehave (see
        :class:`Fault` for the options)."""
        rule = Fault(status, body, latency_s, times, rate, again)
        self._faults[endpoint].append(rule)
        return rule

    def clear_faults(self) -> None:
        for rules in self._faults.values():
            rules.clear()

    def reset(self) -> None:
        """Forget everything received and every fault, as if freshly started."""
        self.clear_faults()
        for captured in (self.sms, self.push, self.webhooks):
            captured.clear()
        self.unregistered.clear()
        self._idempotent.clear()
        self._struck.clear()
        self.counts = Counts()

    async def _injected(self, endpoint: Endpoint, request: Request) -> Fault | None:
        identity = ""
        for rule in self._faults[endpoint]:
            if not rule.again:
                identity = identity or await _identity(request)
                if identity in self._struck:
                    continue
            if rule.rate < 1.0 and self._random.random() >= rule.rate:
                continue
            self._strike(endpoint, rule, identity)
            if rule.latency_s:
                await asyncio.sleep(rule.latency_s)
            if rule.status is None and rule.body is None:
                return None
            self.counts.faults += 1
            return rule
        return None

    def _strike(self, endpoint: Endpoint, rule: Fault, identity: str) -> None:
        """Count one use of ``rule`` (gone once used up) on the request ``identity``."""
        if not rule.again:
            self._struck[identity] = None
            if len(self._struck) > self._keep:
                self._struck.popitem(last=False)
        if rule.times is not None:
            rule.times -= 1
            if rule.times <= 0:
                self._faults[endpoint].remove(rule)

    def _reply(self, response: Response) -> Response:
        self.counts.by_status[response.status_code] = (
            self.counts.by_status.get(response.status_code, 0) + 1)
        return response

    # -- endpoints -------------------------------------------------------------------------

    async def _sms(self, request: Request) -> Response:
        return self._reply(await self._sms_reply(request))

    async def _sms_reply(self, request: Request) -> Response:
        fault = await self._injected("sms", request)
        if fault is not None:
            if fault.body is not None:
                return Response(fault.body, fault.status or 200)
            status = fault.status or 500
            return _twilio_error(status, 20429 if status == 429 else 20500, "injected fault")
        account = request.path_params["account"]
        if self._twilio and not self._authorised_twilio(request, account):
            return _twilio_error(401, 20003, "Authenticate")
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        to, sender = form.get("To", ""), form.get("From") or form.get("MessagingServiceSid")
        if not _E164.fullmatch(to):
            return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to in MAGIC_NUMBERS:
            return _twilio_error(400, *MAGIC_NUMBERS[to])
        if not sender:
            return _twilio_error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return _twilio_error(400, 21602, "Message body is required.")
        key = request.headers.get("idempotency-key")
        sid = self._idempotent.get(key) if key else None
        if sid is not None:
            self.counts.duplicates += 1
        else:
            sid = "SM" + uuid.uuid4().hex
            self._remember(key, sid)
            self.sms.append(CapturedSms(sid, to, sender, form["Body"], key))
            self.counts.sms += 1
        return JSONResponse({"sid": sid, "status": "queued", "to": to, "from": sender,
                             "body": form["Body"], "account_sid": account,
                             "date_created": time.strftime("%a, %d %b %Y %H:%M:%S +0000",
                                                           time.gmtime())}, 201)

    def _authorised_twilio(self, request: Request, account: str) -> bool:
        assert self._twilio is not None
        sid, token = self._twilio
        expected = "Basic " + base64.b64encode(f"{sid}:{token}".encode()).decode()
        return account == sid and request.headers.get("authorization") == expected

    def _remember(self, key: str | None, sid: str) -> None:
        if key:
            self._idempotent[key] = sid
            if len(self._idempotent) > self._keep:
                self._idempotent.popitem(last=False)

    async def _push(self, request: Request) -> Response:
        return self._reply(await self._push_reply(request))

    async def _push_reply(self, request: Request) -> Response:
        fault = await self._injected("push", request)
        if fault is not None:
            if fault.body is not None:
                return Response(fault.body, fault.status or 200)
            return _fcm_error(fault.status or 500, message="injected fault")
        if self._fcm_token and request.headers.get("authorization") != f"Bearer {self._fcm_token}":
            return _fcm_error(401, message="Request had invalid authentication credentials.")
        try:
            message = orjson.loads(await request.body())["message"]
            token = message["token"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _fcm_error(400, message="Invalid JSON payload: expected message.token")
        if not isinstance(token, str) or not token:
            return _fcm_error(400, message="The registration token is not a valid FCM token")
        if token.startswith("invalid") or token in self.unregistered:
            return _fcm_error(404, "UNREGISTERED", "Requested entity was not found.")
        message_id = f"0:{time.time_ns()}%{uuid.uuid4().hex[:16]}"
        self.push.append(CapturedPush(message_id, token, message))
        self.counts.push += 1
        project = request.path_params["project"]
        return JSONResponse({"name": f"projects/{project}/messages/{message_id}"})

    async def _webhook(self, request: Request) -> Response:
        return self._reply(await self._webhook_reply(request))

    async def _webhook_reply(self, request: Request) -> Response:
        fault = await self._injected("webhook", request)
        if fault is not None:
            return Response(fault.body or b"injected fault", fault.status or 200)
        body = await request.body()
        if self._webhook_secret:
            try:
                verify_signature(self._webhook_secret, request.headers.get(SIGNATURE_HEADER),
                                 body)
            except InvalidSignature as exc:
                self.counts.bad_signatures += 1
                return Response(str(exc), 401)
        self.webhooks.append(CapturedWebhook(request.path_params["path"],
                                             dict(request.headers), body))
        self.counts.webhook += 1
        return Response(b'{"received": true}', 200, media_type="application/json")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> HttpCapture:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when the
        # protocol is TCP, and without it Nagle + delayed ACK add ~40 ms to every reply.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, log_level="warning",
                                access_log=False, ws="none", timeout_graceful_shutdown=2)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise CaptureError(f"HTTP capture server on {self.url} stopped while starting")
            await asyncio.sleep(0.005)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # idle keep-alive clients need not be waited for
            await self._task
            self._server = self._task = None

    async def __aenter__(self) -> HttpCapture:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
