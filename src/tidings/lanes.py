"""Reading one partition's lanes for one consumer: weighted reads that do not block while work
flows, one blocking read across every lane once it stops, and the acks collected meanwhile sent
with the next read, in its round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tidings.transport import Entry, Transport

IDLE_PROBE_EVERY = 4


def lane_counts(
    batch: int, weights: Sequence[int], busy: Sequence[bool]
) -> list[int]:
    """How many entries to ask of each lane this round.

    Busy lanes (non-empty last round) share the batch by weight; an idle lane is still probed
    with its plain weighted share, so a lane that fills up is noticed at once and a low lane
    always gets its share: weights decide the mix, nothing starves.
    """
    total = sum(weights)
    busy_total = sum(w for w, b in zip(weights, busy, strict=True) if b)
    counts = []
    for weight, is_busy in zip(weights, busy, strict=True):
        share = weight / (busy_total if is_busy else total)
        counts.append(max(1, round(batch * share)))
    return counts


class LaneReader:
    """The lanes of one partition (highest priority first), read for one group member."""

    def __init__(
        self, transport: Transport, group: str, consumer: str, lanes: Sequence[str],
        weights: Sequence[int], batch_size: int,
    ) -> None:
        self.transport = transport
        self.group, self.consumer = group, consumer
        self.lanes = tuple(lanes)
        self.weights = list(weights)
        self.batch_size = batch_size
        # Entry ids done with, by stream: acked with the next read, or by flush_acks().
        self.acks: dict[str, list[bytes]] = {}
        self._busy = [False] * len(self.lanes)
        self._round = 0
        # The last read blocked and found nothing: the next one may block at once.
        self.idle = False

    def ack(self, entry: Entry) -> None:
        self.acks.setdefault(entry.stream, []).append(entry.id)

    def mark_busy(self, lane: int) -> None:
        """``lane`` has entries (e.g. retries just moved there): ask it at its share."""
        self._busy[lane] = True

    async def read_now(self) -> list[Entry]:
        """Read without blocking, each lane its weighted share.

        While some lane is busy, idle lanes are asked only every few rounds: an empty read
        costs as much as a full one, and a few rounds are a few milliseconds of delay.
        """
        counts = lane_counts(self.batch_size, self.weights, self._busy)
        self._round += 1
        probe_idle = self._round % IDLE_PROBE_EVERY == 0 or not any(self._busy)
        requests = [
            (lane, count)
            for lane, count, busy in zip(self.lanes, counts, self._busy, strict=True)
            if busy or probe_idle
        ]
        entries = await self._read(requests)
        streams = {e.stream for e in entries}
        asked = {lane for lane, _ in requests}
        self._busy = [
            lane in streams if lane in asked else busy
            for lane, busy in zip(self.lanes, self._busy, strict=True)
        ]
        if entries:
            self.idle = False
        return entries

    async def wait(self, block_ms: int) -> list[Entry]:
        """Block up to ``block_ms`` for entries on any lane. One COUNT covers all lanes in a
        blocking read; a share each keeps the batch within its bound."""
        share = self.batch_size // len(self.lanes) + 1
        entries = await self._read([(lane, share) for lane in self.lanes], block_ms=block_ms)
        self.idle = not entries
        return entries

    async def flush_acks(self) -> None:
        """Send the collected acks now, without a read."""
        for stream in list(self.acks):
            ids = self.acks.pop(stream)
            try:
                await asyncio.shield(self.transport.ack(stream, self.group, ids))
            except BaseException:  # not acked: keep them for the next try
                self.acks.setdefault(stream, [])[:0] = ids
                raise

    async def _read(self, requests: list[tuple[str, int]],
                    block_ms: int | None = None) -> list[Entry]:
        acks = list(self.acks.items())
        self.acks.clear()
        try:
            return await self.transport.read(self.group, self.consumer, requests, acks,
                                             block_ms=block_ms)
        except BaseException:  # keep the acks for the next attempt; losing them means rework
            for stream, ids in acks:
                self.acks.setdefault(stream, [])[:0] = ids
            raise
