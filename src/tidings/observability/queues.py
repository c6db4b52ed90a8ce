"""Queue state read straight from Redis: length, pending, lag and oldest pending age per lane.

Topics come from the topic registry, so no App is needed. Two pipelined round trips per read:
lengths and group info first, then what depends on the groups found (pending summaries, lag
where the server cannot tell it, live members).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tidings import keys
from tidings.connections import connect_redis, resolve_redis_url
from tidings.keys import PartitionKeys
from tidings.message import Priority
from tidings.settings import Settings
from tidings.transport import parse_id


@dataclass(frozen=True, slots=True)
class LaneGroup:
    """One consumer group on one lane stream."""

    group: str
    pending: int
    lag: int | None
    """Entries not yet delivered to the group; None where the server cannot tell it cheaply
    (Redis 6.2, or 7+ after entries were deleted out of order)."""
    oldest_pending_ms: int | None
    """Timestamp (Redis clock, ms) in the id of the group's oldest pending entry."""
    consumers: int


@dataclass(frozen=True, slots=True)
class Lane:
    priority: Priority
    stream: str
    length: int
    groups: tuple[LaneGroup, ...]


@dataclass(frozen=True, slots=True)
class PartitionState:
    partition: int
    lanes: tuple[Lane, ...]
    dead: int
    delayed: int


@dataclass(frozen=True, slots=True)
class TopicState:
    name: str
    partitions: tuple[PartitionState, ...]
    members: dict[str, int]
    """Live member processes per consumer group (from the groups' member sets)."""

    @property
    def groups(self) -> list[str]:
        names = {g.group for p in self.partitions for lane in p.lanes for g in lane.groups}
        return sorted(names | set(self.members))


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    taken_ms: int
    """When it was read, on the Redis server's clock (the clock stream ids come from)."""
    topics: tuple[TopicState, ...]


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One line of `tidings queues`: a topic as one consumer group sees it."""

    topic: str
    group: str | None
    partitions: int
    depth: int
    pending: int
    lag: int | None
    consumers: int
    oldest_pending_age_s: float | None
    delayed: int
    dead: int

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


async def read_queues(client: Redis, namespace: str) -> QueueSnapshot:
    """Read the state of every registered topic's streams in two pipelined round trips."""
    registry = await client.hgetall(keys.topic_registry(namespace))
    topics = sorted((_text(name), int(count)) for name, count in registry.items())
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for name, count in topics:
        for partition in range(count):
            pk = PartitionKeys(namespace, name, partition)
            for lane in pk.lanes:
                pipe.xlen(lane)
                pipe.xinfo_groups(lane)
            pipe.xlen(pk.dead)
    replies = iter(await pipe.execute(raise_on_error=False))
    seconds, micros = _ok(next(replies), (0, 0))
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    layout = [
        (name, [_partition_replies(replies) for _ in range(count)]) for name, count in topics
    ]
    return await _complete(client, namespace, now_ms, layout)


_LaneReply = tuple[int, list[dict[str, Any]]]
_PartitionReply = tuple[list[_LaneReply], int]


def _partition_replies(replies: Any) -> _PartitionReply:
    lanes = [(_ok(next(replies), 0), _ok(next(replies), [])) for _ in Priority]
    return lanes, _ok(next(replies), 0)


async def _complete(
    client: Redis, namespace: str, now_ms: int,
    layout: Sequence[tuple[str, list[_PartitionReply]]],
) -> QueueSnapshot:
    """Second round trip: pending summaries, lag where XINFO did not give it, live members."""
    pipe = client.pipeline(transaction=False)
    for name, partitions in layout:
        for index, reply in enumerate(partitions):
            pk = PartitionKeys(namespace, name, index)
            for stream, (_, infos) in zip(pk.lanes, reply[0], strict=True):
                for info in infos:  # _partition_state reads the replies in this order
                    if int(info["pending"]):
                        pipe.xpending(stream, info["name"])
                    if info.get("lag") is None:  # Redis 6.2, or 7+ that cannot tell
                        pipe.xrange(stream, min=b"(" + _bytes(info["last-delivered-id"]), count=1)
            for group in _group_names([reply]):  # each group's retries waiting for their time
                pipe.zcard(pk.delayed(group))
        for group in _group_names(partitions):
            pipe.zcount(keys.members(namespace, name, group), f"({now_ms}", "+inf")
    replies = iter(await pipe.execute(raise_on_error=False))
    topics = []
    for name, partitions in layout:
        states = tuple(
            _partition_state(namespace, name, index, reply, replies)
            for index, reply in enumerate(partitions)
        )
        members = {g: int(_ok(next(replies), 0)) for g in _group_names(partitions)}
        topics.append(TopicState(name, states, members))
    return QueueSnapshot(now_ms, tuple(topics))


def _partition_state(
    namespace: str, topic: str, index: int, reply: _PartitionReply, replies: Any
) -> PartitionState:
    lanes_reply, dead = reply
    pk = PartitionKeys(namespace, topic, index)
    lanes = []
    for priority, stream, (length, infos) in zip(Priority, pk.lanes, lanes_reply, strict=True):
        groups = []
        for info in infos:
            pending = int(info["pending"])
            oldest = _ok(next(replies), {}).get("min") if pending else None
            lag = info.get("lag")
            if lag is None:  # nothing after the last delivered entry: no lag; else unknown
                lag = None if _ok(next(replies), [None]) else 0
            groups.append(LaneGroup(
                _text(info["name"]), pending, None if lag is None else int(lag),
                parse_id(_bytes(oldest))[0] if oldest else None, int(info["consumers"]),
            ))
        lanes.append(Lane(priority, stream, int(length), tuple(groups)))
    delayed = sum(int(_ok(next(replies), 0)) for _ in _group_names([reply]))
    return PartitionState(index, tuple(lanes), int(dead), delayed)


def _group_names(partitions: Sequence[_PartitionReply]) -> list[str]:
    return sorted({
        _text(info["name"]) for lanes, _ in partitions for _, infos in lanes for info in infos
    })


def _ok(reply: Any, default: Any) -> Any:
    """A pipelined reply, or ``default`` where the command failed (e.g. the key is missing)."""
    return default if isinstance(reply, Exception) or reply is None else reply


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# -- summaries ------------------------------------------------------------------------------


def summarize(snapshot: QueueSnapshot) -> list[QueueRow]:
    """One row per topic and consumer group (one row with no group if it has none)."""
    rows: list[QueueRow] = []
    for topic in snapshot.topics:
        groups: list[str | None] = [*topic.groups] or [None]
        rows.extend(_row(topic, group, snapshot.taken_ms) for group in groups)
    return rows


def _row(topic: TopicState, group: str | None, now_ms: int) -> QueueRow:
    states = [g for p in topic.partitions for lane in p.lanes for g in lane.groups
              if g.group == group]
    lags = [g.lag for g in states]
    oldest = [g.oldest_pending_ms for g in states if g.oldest_pending_ms is not None]
    return QueueRow(
        topic=topic.name,
        group=group,
        partitions=len(topic.partitions),
        depth=sum(lane.length for p in topic.partitions for lane in p.lanes),
        pending=sum(g.pending for g in states),
        lag=None if not states or None in lags else sum(lag or 0 for lag in lags),
        consumers=topic.members.get(group, 0) if group is not None else 0,
        oldest_pending_age_s=max(now_ms - min(oldest), 0) / 1000 if oldest else None,
        delayed=sum(p.delayed for p in topic.partitions),
        dead=sum(p.dead for p in topic.partitions),
    )


# -- `tidings queues` -------------------------------------------------------------------------


def queues_document(snapshot: QueueSnapshot) -> dict[str, Any]:
    """What `tidings queues --json` prints: the summary rows, then every partition and lane."""
    return {
        "taken_ms": snapshot.taken_ms,
        "queues": [row.as_dict() for row in summarize(snapshot)],
        "topics": [asdict(topic) for topic in snapshot.topics],
    }


def queues_table(snapshot: QueueSnapshot) -> Table:
    table = Table(title="tidings queues", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("topic", "group", "parts", "depth", "pending", "lag", "consumers", "oldest",
                   "delayed", "dead"):
        table.add_column(column, justify="left" if column in ("topic", "group") else "right",
                         min_width=len(column))
    for row in summarize(snapshot):
        age = row.oldest_pending_age_s
        table.add_row(
            row.topic, row.group or "-", str(row.partitions), str(row.depth), str(row.pending),
            "?" if row.lag is None else str(row.lag), str(row.consumers),
            "-" if age is None else f"{age:.1f}s", str(row.delayed),
            Text(str(row.dead), style="red") if row.dead else "0",
        )
    if not snapshot.topics:
        table.caption = "no topics registered in this namespace yet"
    return table


async def queues_command(
    settings: Settings, json_output: bool, watch: bool, console: Console, every_s: float = 1.0
) -> None:
    """Print the queues once, or refresh them every ``every_s`` until interrupted."""
    client = await connect_redis(await resolve_redis_url(settings), settings)
    try:
        if json_output:
            while True:
                snapshot = await read_queues(client, settings.namespace)
                document = orjson.dumps(queues_document(snapshot)).decode()
                if not watch:
                    console.print_json(document)
                    return
                # One object a line (JSON Lines), as a program following the stream reads it.
                console.print(document, soft_wrap=True, highlight=False)
                await asyncio.sleep(every_s)
        snapshot = await read_queues(client, settings.namespace)
        if not watch:
            console.print(queues_table(snapshot))
            return
        with Live(queues_table(snapshot), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(every_s)
                live.update(queues_table(await read_queues(client, settings.namespace)),
                            refresh=True)
    finally:
        await client.aclose(close_connection_pool=True)
