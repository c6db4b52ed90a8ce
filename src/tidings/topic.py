"""Topics: named, partitioned, typed streams, and the producer side (`send`, `send_many`)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from tidings.errors import PartlyAdded, PartlyPublished, PayloadError
from tidings.keys import PartitionKeys
from tidings.message import (
    HEADER_FIELD,
    PAYLOAD_FIELD,
    Envelope,
    Message,
    Priority,
    dumps,
    encode,
    new_ids,
    now_ms,
)

if TYPE_CHECKING:
    from tidings.app import App

T = TypeVar("T")


def describe_validation(exc: ValidationError) -> str:
    """One line naming each failing field path and why, e.g. ``recipient.phone: not E.164``."""
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(payload)"
        parts.append(f"{path}: {err['msg']}")
    return "; ".join(parts)


class Topic(Generic[T]):
    """A named stream split into partitions, each with high / normal / low priority lanes.

    Messages with the same key go to the same partition, so one key's messages keep their
    order within a priority lane. Declare topics with :meth:`App.topic`.
    """

    def __init__(
        self, app: App, name: str, model: type[T] | None, partitions: int
    ) -> None:
        self.app = app
        self.name = name
        self.model = model
        self.partitions = partitions
        # Messages this process published to the topic (send, send_many, batch outputs).
        self.published = 0
        self._is_model = isinstance(model, type) and issubclass(model, BaseModel)
        self._lanes: dict[tuple[int, Priority], str] = {}
        # The model's compiled validator, called directly: the classmethod wrapper costs ~20%.
        self._validate_json: Callable[[bytes], Any] | None = (
            model.__pydantic_validator__.validate_json if self._is_model else None  # type: ignore[union-attr]
        )

    def bind(self, partitions: int) -> None:
        """Fix the partition count when the app starts (names are cached per start)."""
        self.partitions = partitions
        self._lanes.clear()

    def lane_stream(self, partition: int, priority: Priority) -> str:
        stream = self._lanes.get((partition, priority))
        if stream is None:
            stream = self._lanes[(partition, priority)] = self.keys(partition).lane(priority)
        return stream

    def __repr__(self) -> str:
        return f"Topic({self.name!r}, partitions={self.partitions})"

    def partition_for(self, key: str | None) -> int:
        if key is None:
            return random.randrange(self.partitions) if self.partitions > 1 else 0
        return zlib.crc32(key.encode()) % self.partitions

    def keys(self, partition: int) -> PartitionKeys:
        return PartitionKeys(self.app.namespace, self.name, partition)

    # -- encoding -------------------------------------------------------------------------

    def encode_value(self, value: Any) -> bytes:
        """Validate a value against the topic's model and return its JSON payload."""
        if self._is_model:
            model: Any = self.model
            if not isinstance(value, model):
                try:
                    value = model.model_validate(value)
                except ValidationError as exc:
                    raise PayloadError(
                        f"payload does not match topic {self.name!r}: {describe_validation(exc)}"
                    ) from None
            payload: bytes = value.__pydantic_serializer__.to_json(value)
        else:
            payload = dumps(value)
        limit = self.app.settings.max_payload_bytes
        if len(payload) > limit:
            raise PayloadError(
                f"payload of {len(payload)} bytes exceeds the limit of {limit} bytes"
                " (TIDINGS_MAX_PAYLOAD_BYTES); store large content elsewhere and send a reference"
            )
        return payload

    def decode_value(self, payload: bytes) -> T:
        """Turn a payload back into the topic's type; PayloadError if it no longer fits."""
        try:
            if self._validate_json is not None:
                return self._validate_json(payload)  # type: ignore[no-any-return]
            return orjson.loads(payload)  # type: ignore[no-any-return]
        except ValidationError as exc:
            raise PayloadError(f"invalid payload: {describe_validation(exc)}") from None
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"payload is not JSON: {exc}") from None

    def decode(self, fields: Mapping[bytes, bytes], stream_id: bytes, partition: int,
               deliveries: int) -> Message[T]:
        try:
            header, payload = fields[HEADER_FIELD], fields[PAYLOAD_FIELD]
        except KeyError:
            raise PayloadError("entry is not a tidings message (no 'e'/'d' fields)") from None
        envelope = Envelope.from_json(header)
        return Message(self.decode_value(payload), envelope, stream_id.decode(), partition,
                       deliveries)

    def _entry(
        self, value: Any, key: str | None, priority: Priority, headers: dict[str, str] | None,
        trace_id: str | None, now: int, msg_id: str,
    ) -> tuple[str, dict[bytes, bytes]]:
        payload = self.encode_value(value)
        envelope = Envelope(
            id=msg_id, key=key, priority=priority, created_ms=now, enqueued_ms=now,
            trace_id=trace_id, headers=headers or {},
        )
        fields = encode(envelope, payload)  # first: it refuses a key that is not valid text
        return self.lane_stream(self.partition_for(key), priority), fields

    def prepare(
        self,
        value: Any,
        *,
        key: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        headers: dict[str, str] | None = None,
        trace_id: str | None = None,
    ) -> tuple[str, str, dict[bytes, bytes]]:
        """Validate and encode one message: (id, stream, fields), ready to publish later."""
        now = now_ms()
        msg_id = new_ids(1, now)[0]
        stream, fields = self._entry(value, key, Priority(priority), headers, trace_id, now, msg_id)
        return msg_id, stream, fields

    # -- producing ------------------------------------------------------------------------

    async def send(
        self,
        value: Any,
        *,
        key: str | None = None,
        priority: Priority | str = Priority.NORMAL,
        headers: dict[str, str] | None = None,
        trace_id: str | None = None,
    ) -> str:
        """Validate and publish one message; return its id. PayloadError if it does not fit."""
        msg_id, stream, fields = self.prepare(
            value, key=key, priority=priority, headers=headers, trace_id=trace_id
        )
        await self.app.transport.add([(stream, fields)])
        self.published += 1
        return msg_id

    async def send_many(
        self,
        values: Iterable[Any],
        *,
        key: Callable[[Any], str | None] | None = None,
        priority: Priority | str | Callable[[Any], Priority | str] = Priority.NORMAL,
        headers: dict[str, str] | None = None,
    ) -> list[str]:
        """Validate every value first, then publish them all in one pipelined round trip.

        Nothing is published if any value is invalid. ``key`` derives each message's key;
        ``priority`` is every message's lane, or derives each one's.
        If Redis refuses some of them, the others are published all the same:
        :class:`~tidings.errors.PartlyPublished` says which, to send again only the rest. If
        it refuses them all, its error is raised as it is: nothing was published. A connection
        error leaves it unknown which landed.
        """
        now = now_ms()
        lane = None if callable(priority) else Priority(priority)
        values = list(values)
        ids = new_ids(len(values), now)
        entries: list[tuple[str, dict[bytes, bytes]]] = []
        for index, value in enumerate(values):
            try:
                entries.append(self._entry(
                    value, key(value) if key else None,
                    _lane(priority(value)) if lane is None else lane,  # type: ignore[operator]
                    headers, None, now, ids[index],
                ))
            except PayloadError as exc:
                raise PayloadError(f"message {index}: {exc}") from None
        if entries:
            try:
                await self.app.transport.add(entries)
            except PartlyAdded as exc:
                self.published += len(entries) - len(exc.errors)
                raise PartlyPublished(
                    {i: ids[i] for i, ident in enumerate(exc.ids) if ident is not None},
                    exc.errors) from None
            self.published += len(entries)
        return ids


def _lane(priority: Priority | str) -> Priority:
    try:
        return Priority(priority)
    except ValueError:
        raise PayloadError(f"priority {priority!r} is not one of high, normal, low") from None
