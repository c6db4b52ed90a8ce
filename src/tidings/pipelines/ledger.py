"""The delivery ledger, written in batches (DESIGN.md D7), and the idempotency-key claim.

Rows are buffered and flushed together — one statement per flush, its rows as JSON arrays —
when ``max_batch`` rows are waiting or ``max_delay_ms`` after the first one arrived.
A delivery is an upsert on (message_id, channel, recipient) that only moves forward:

    accepted → delayed / failed → sent / filtered / dead

``sent``, ``filtered`` and ``dead`` are final: nothing later changes the row. ``accepted`` never
overwrites a state. Each ``sent`` or ``failed`` record counts one attempt. Several records for
one delivery in one batch are merged in memory by the same rules (PostgreSQL refuses to upsert
one row twice in one statement).

Every record is also one ``delivery_events`` row, whatever the merge rules did with it,
written by the same statement as the upsert; a ``sent`` / ``failed`` event gets its attempt
number from the upserted row unless given.

Each flush has an id, which its statement claims in ``ledger_flushes`` before writing anything
(see ledger_rows.WRITE): written again under the same id, a flush that landed changes nothing.
That is what makes the retries safe. A flush whose reply never came (connection lost) or whose
wait was cancelled may have landed; it is kept whole and written again under its id before
anything newer, by the next flush.

A failed flush is retried; rows that still cannot be written are never dropped silently: a
connection failure keeps them for the next flush, a row the database rejects is dropped and
named in the LedgerError. Either way the error is raised — by ``flush()``, or, after a timer
flush, by the next call on the writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

from tidings.coalesce import Coalesced
from tidings.database import storable
from tidings.direct import DirectPool, json_param, transient
from tidings.errors import TidingsError
from tidings.message import new_id
from tidings.pipelines.ledger_rows import (
    CLAIM,
    COUNTED,
    FINAL,
    STATES,
    WRITE,
    Claim,
    DeliveryKey,
    DeliveryRow,
    DeliveryState,
    EventRow,
    Intent,
    MessageRecord,
    claim_owners,
    message_rows,
    one_line,
    write_params,
)
from tidings.tasks import being_cancelled

__all__ = ["FINAL", "STATES", "Accepted", "DeliveryState", "Intent", "LedgerError", "LedgerWriter",
           "MessageRecord"]

T = TypeVar("T")
log = logging.getLogger(__name__)


class LedgerError(TidingsError):
    """Ledger rows could not be written. ``retained``: still buffered, to be written later."""

    def __init__(self, message: str, *, rows: int, retained: bool) -> None:
        super().__init__(message)
        self.rows, self.retained = rows, retained


class Accepted(NamedTuple):
    """What an idempotency claim found: the ids of the duplicates, the legs it claimed."""

    duplicates: set[str]
    claimed: set[DeliveryKey]


_Accepting = tuple[MessageRecord, tuple[Intent, ...]]  # a message and its foreseen legs


class _Batch:
    """One flush's rows, and which of them were written or rejected so far."""

    def __init__(
        self, messages: list[MessageRecord], deliveries: dict[DeliveryKey, DeliveryRow]
    ) -> None:
        self.messages, self.deliveries = messages, deliveries
        self._done_messages: set[int] = set()
        self._done_deliveries: set[DeliveryKey] = set()
        self.rejected: list[str] = []

    def written(
        self, messages: list[MessageRecord], deliveries: dict[DeliveryKey, DeliveryRow]
    ) -> None:
        self._done_messages.update(map(id, messages))
        self._done_deliveries.update(deliveries)

    def reject(
        self,
        messages: list[MessageRecord],
        deliveries: dict[DeliveryKey, DeliveryRow],
        exc: Exception,
    ) -> None:
        self.written(messages, deliveries)  # done with: they will never be written
        what = (f"message {messages[0].id!r}" if messages
                else "delivery ({}, {}, {})".format(*map(repr, next(iter(deliveries)))))
        self.rejected.append(f"{what}: {one_line(exc)}")

    def unwritten(self) -> tuple[list[MessageRecord], dict[DeliveryKey, DeliveryRow]]:
        """Rows neither written nor rejected: a delivery upsert must not be applied twice."""
        return (
            [m for m in self.messages if id(m) not in self._done_messages],
            {k: d for k, d in self.deliveries.items() if k not in self._done_deliveries},
        )


@dataclass
class _Unit:
    """Rows written by one statement under one flush id; kept whole while its outcome is
    unknown, so that writing it again under the same id cannot apply it twice."""

    id: str
    messages: list[MessageRecord]
    deliveries: dict[DeliveryKey, DeliveryRow]

    @property
    def rows(self) -> int:
        return len(self.messages) + len(self.deliveries)


class LedgerWriter:
    """Buffers ledger rows and writes them in batches; see the module docstring."""

    def __init__(
        self,
        direct: DirectPool,
        *,
        max_batch: int = 500,
        max_delay_ms: float = 20,
        retries: int = 3,
        retry_delay_s: float = 0.05,
        on_flush: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_delay_ms < 0 or retries < 0:
            raise ValueError("max_batch must be >= 1, max_delay_ms and retries >= 0")
        self._direct = direct
        self._max_batch = max_batch
        self._delay_s = max_delay_ms / 1000
        self._retries = retries
        self._retry_delay_s = retry_delay_s
        # on_flush(rows, seconds): told of each flush that wrote its batch (for metrics).
        self._on_flush = on_flush
        self._messages: list[MessageRecord] = []
        self._deliveries: dict[DeliveryKey, DeliveryRow] = {}
        # Written but unanswered (connection lost, wait cancelled): written again first, each
        # under its own id. And the ids of flushes known to have landed, for the next flush
        # to delete from ledger_flushes.
        self._uncertain: list[_Unit] = []
        self._landed: list[str] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while they run
        self._failure: LedgerError | None = None
        self._closed = False
        self._claims = Coalesced(self._claim_together)

    @property
    def pending(self) -> int:
        """Rows buffered and not yet written (or not known to be)."""
        return (len(self._messages) + len(self._deliveries)
                + sum(unit.rows for unit in self._uncertain))

    async def record_message(self, record: MessageRecord) -> None:
        """Buffer a ``messages`` row; one that exists already (same id or key) is left alone."""
        self._check()
        self._messages.append(record)
        await self._added()

    async def record_delivery(
        self,
        message_id: str,
        channel: str,
        recipient: str,
        state: DeliveryState,
        provider: str | None = None,
        provider_message_id: str | None = None,
        error: str | None = None,
        *,
        at: datetime | None = None,
        attempt: int | None = None,
        duration_ms: float | None = None,
    ) -> None:
        """Buffer a state change of one delivery (upserted; see the module docstring) and its
        event. ``attempt``: which send attempt this is (else counted by the ledger);
        ``duration_ms``: how long the provider call took."""
        if state not in STATES:
            raise ValueError(f"unknown delivery state {state!r}; use {', '.join(STATES)}")
        if attempt is not None and attempt < 1:
            raise ValueError(f"attempt must be 1 or more, not {attempt}")
        if self._closed:
            raise LedgerError("the ledger writer is closed", rows=0, retained=False)
        at = at or datetime.now(UTC)
        # What a provider replied may hold a NUL, which PostgreSQL refuses: the whole flush,
        # with other batches' rows, would be refused for it.
        provider_message_id, error = storable(provider_message_id), storable(error)
        counted = int(state in COUNTED)
        event = EventRow(state, attempt, provider, provider_message_id, error, duration_ms, at,
                         counted or None)
        row = DeliveryRow(state, provider, provider_message_id, counted, error, at,
                          at if state == "sent" else None, at, [event])
        key = (message_id, channel, recipient)
        earlier = self._deliveries.get(key)
        if earlier is None:
            self._deliveries[key] = row
        else:
            earlier.then(row)
        self._check()  # an earlier flush's dropped rows, reported once this row is kept
        await self._added()

    async def claim_idempotency_keys(
        self, batch: Sequence[MessageRecord], legs: Sequence[Intent] = ()
    ) -> Accepted:
        """Write ``batch`` to ``messages`` now: which of it are duplicates, and which of
        ``legs`` were claimed with it.

        A message is a duplicate when another message id already holds its (tenant,
        idempotency key) — from an earlier batch or earlier in this one. Its redelivery (same
        id) is not a duplicate: the delivery rows decide whether its legs were sent.

        ``legs`` are intent claims (see pipelines.intents) of the messages' foreseen delivery
        legs, each with its token: those of the messages written now are claimed by the same
        statement, saving the intent claim's round trip. Any of them may be claimed even when
        this raises (a lost reply), so the caller keeps their tokens.

        Batches claimed while another claim is in flight go out together once it is
        answered, in the order they came (see tidings.coalesce).
        """
        self._check()
        if not batch:
            return Accepted(set(), set())
        by_message: dict[str, list[Intent]] = {}
        for leg in legs:
            by_message.setdefault(leg.message_id, []).append(leg)
        return await self._claims([(record, tuple(by_message.get(record.id, ())))
                                   for record in batch])

    async def claims_done(self, within_s: float) -> None:
        """Return once no idempotency claim is in flight (one whose caller is gone may still
        land, with the legs it claims: see claim_idempotency_keys); those still in flight
        after ``within_s`` are cancelled, which rolls them back."""
        await self._claims.idle(within_s)

    async def _claim_together(self, calls: list[Sequence[_Accepting]]) -> list[Accepted]:
        found = await self._claim_keys([accepting for call in calls for accepting in call])
        results = []
        for call in calls:
            ids = {record.id for record, _ in call}
            results.append(Accepted(ids & found.duplicates,
                                    {leg for leg in found.claimed if leg[0] in ids}))
        return results

    async def _claim_keys(self, batch: list[_Accepting]) -> Accepted:
        first: dict[Claim, str] = {}
        unique: dict[str, _Accepting] = {}
        duplicates: set[str] = set()
        for record, legs in batch:
            claim = record.claim
            if claim is not None and first.setdefault(claim, record.id) != record.id:
                duplicates.add(record.id)
            else:
                unique.setdefault(record.id, (record, legs))
        if not unique:
            return Accepted(duplicates, set())
        records = [record for record, _ in unique.values()]
        params = {"messages": message_rows(records), "legs": json_param(
            [list(leg) for _, legs in unique.values() for leg in legs])}

        async def insert() -> tuple[dict[str, Claim], dict[Claim, str], set[DeliveryKey]]:
            # Two statements, no transaction: an owner found by the second committed first.
            rows = await self._direct.fetch(CLAIM, params)
            inserted = {row["message_id"] for row in rows if row["channel"] is None}
            claimed = {(row["message_id"], row["channel"], row["recipient"]) for row in rows
                       if row["channel"] is not None}
            contested = {r.id: c for r in records if r.id not in inserted
                         and (c := r.claim) is not None}
            return contested, await claim_owners(self._direct, list(contested.values())), claimed

        try:
            contested, owners, claimed = await self._retrying(insert)
        except Exception as exc:
            raise LedgerError(
                f"could not claim the idempotency keys of {len(records)} messages: "
                f"{one_line(exc)}", rows=len(records), retained=False,
            ) from exc
        for message_id, claim in contested.items():
            owner = owners.get(claim)
            if owner is not None and owner != message_id:
                duplicates.add(message_id)
        return Accepted(duplicates, claimed)

    async def flush(self) -> None:
        """Write every buffered row now; LedgerError if they could not be written."""
        self._check()
        await self._flush()

    async def aclose(self) -> None:
        """Flush what is buffered and stop; the writer takes no more rows.

        Raises LedgerError if rows could not be written, or if an earlier timer flush had
        to drop rows nobody was told about yet.
        """
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()  # only ever cancelled while it sleeps; see _flush_later
            self._timer = None
        earlier, self._failure = self._failure, None
        await self._flush()
        for failure in (earlier, self._failure):
            if failure is not None and not failure.retained:
                raise failure

    def _check(self) -> None:
        if self._closed:
            raise LedgerError("the ledger writer is closed", rows=0, retained=False)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def _added(self) -> None:
        # Called for every row: the buffers' sizes first, the (rare) unanswered units after.
        buffered = len(self._messages) + len(self._deliveries)
        if buffered >= self._max_batch or (self._uncertain and self.pending >= self._max_batch):
            await self._flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())
            self._tasks.add(self._timer)
            self._timer.add_done_callback(self._tasks.discard)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._delay_s)
        self._timer = None  # from here on not cancellable by aclose(): a flush is under way
        try:
            await self._flush()
        except LedgerError as exc:
            log.error("ledger flush failed: %s", exc)
            # Rows still buffered are written by the next flush (which raises if it fails
            # too); only rows that were dropped must be reported to the next caller.
            if not exc.retained:
                self._failure = exc

    async def _flush(self) -> None:
        async with self._lock:
            units, self._uncertain = self._uncertain, []
            messages, self._messages = self._messages, []
            deliveries, self._deliveries = self._deliveries, {}
            if messages or deliveries:
                units.append(_Unit(new_id(), messages, deliveries))
            if not units:
                return
            started = time.perf_counter()
            rejected: list[str] = []
            for index, unit in enumerate(units):
                batch = _Batch(unit.messages, unit.deliveries)
                try:
                    await self._write(batch, unit.messages, unit.deliveries, unit.id)
                except BaseException as exc:
                    self._keep(batch, units[index + 1:])
                    # Rows refused before this broke are dropped for good: the next caller
                    # hears of them (the error raised here is about the rows kept).
                    self._report_rejected(rejected + batch.rejected)
                    if not isinstance(exc, Exception):
                        raise
                    rows = sum(u.rows for u in self._uncertain)
                    raise LedgerError(
                        f"could not write {rows} ledger rows after {self._retries + 1} tries; "
                        f"they stay buffered: {one_line(exc)}", rows=rows, retained=True,
                    ) from exc
                rejected += batch.rejected
            if self._on_flush is not None:
                self._on_flush(sum(u.rows for u in units), time.perf_counter() - started)
            if rejected:
                raise _rejected_error(rejected)

    def _report_rejected(self, rejected: list[str]) -> None:
        if rejected and self._failure is None:
            self._failure = _rejected_error(rejected)

    def _keep(self, batch: _Batch, later: list[_Unit]) -> None:
        """After a failed write: keep, in order, the parts of the unit whose outcome is unknown
        (already queued by _write_with_retries), its rows never tried, and the units not
        reached — all ahead of rows buffered since."""
        messages, deliveries = batch.unwritten()
        if messages or deliveries:
            self._uncertain.append(_Unit(new_id(), messages, deliveries))
        self._uncertain += later

    async def _write(self, batch: _Batch, messages: list[MessageRecord],
                     deliveries: dict[DeliveryKey, DeliveryRow], flush: str) -> None:
        """Write the rows as flush ``flush``; when the database rejects some, halve until they
        are found (a refused statement wrote nothing, so each half is a new flush).

        A rejected row costs about 2·log2(batch) small statements; the good rows still land.
        """
        try:
            await self._write_with_retries(batch, messages, deliveries, flush)
        except Exception as exc:
            if transient(exc):
                raise
            if len(messages) + len(deliveries) == 1:
                batch.reject(messages, deliveries, exc)
                return
            # Messages before deliveries: a delivery may refer to a message of this batch.
            if messages and deliveries:
                halves = [(messages, {}), ([], deliveries)]
            elif messages:
                middle = len(messages) // 2
                halves = [(messages[:middle], {}), (messages[middle:], {})]
            else:
                keys = sorted(deliveries)
                middle = len(keys) // 2
                halves = [([], {k: deliveries[k] for k in part})
                          for part in (keys[:middle], keys[middle:])]
            for half_messages, half_deliveries in halves:
                await self._write(batch, half_messages, half_deliveries, new_id())
            return
        batch.written(messages, deliveries)

    async def _write_with_retries(
        self, batch: _Batch, messages: list[MessageRecord],
        deliveries: dict[DeliveryKey, DeliveryRow], flush: str,
    ) -> None:
        landed, self._landed = self._landed, []

        async def write() -> None:  # the same id every try: applied once, whatever happens
            await self._direct.execute(WRITE, write_params(flush, landed, messages, deliveries))

        try:
            await self._retrying(write)
        except BaseException as exc:
            self._landed[:0] = landed  # deleting them again later is harmless
            if isinstance(exc, Exception) and not transient(exc):
                raise  # refused: the statement wrote nothing
            # No answer (connection lost) or no longer waited for (cancelled): it may have
            # landed. It is written again, whole and under its id, before anything newer.
            self._uncertain.append(_Unit(flush, messages, deliveries))
            batch.written(messages, deliveries)  # accounted for, by that unit
            raise
        self._landed.append(flush)

    async def _retrying(self, work: Callable[[], Awaitable[T]]) -> T:
        """``work``, tried again after a connection failure."""
        attempt = 0
        while True:
            try:
                return await work()
            except Exception as exc:
                if being_cancelled() or not transient(exc) or attempt == self._retries:
                    raise
            await asyncio.sleep(self._retry_delay_s * 2**attempt)
            attempt += 1


def _rejected_error(rejected: list[str]) -> LedgerError:
    count = len(rejected)
    more = f" (and {count - 1} more)" if count > 1 else ""
    return LedgerError(
        f"the database rejected {count} ledger row(s), which are dropped; the rest of the"
        f" batch was written: {rejected[0]}{more}", rows=count, retained=False,
    )
