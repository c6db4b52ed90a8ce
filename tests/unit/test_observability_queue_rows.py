"""`tidings queues` summaries: one row per topic and group, built from a queue snapshot."""

from __future__ import annotations

import io

import orjson
from rich.console import Console

from tidings.message import Priority
from tidings.observability.queues import (
    Lane,
    LaneGroup,
    PartitionState,
    QueueSnapshot,
    TopicState,
    queues_document,
    queues_table,
    summarize,
)

NOW_MS = 1_700_000_000_000


def partition(index: int, *groups: LaneGroup, length: int = 5, dead: int = 0) -> PartitionState:
    stream = f"t:{{t:mail:{index}}}"
    return PartitionState(index, (
        Lane(Priority.HIGH, f"{stream}:high", 0, ()),
        Lane(Priority.NORMAL, f"{stream}:normal", length, groups),
        Lane(Priority.LOW, f"{stream}:low", 0, ()),
    ), dead=dead, delayed=0)


def group(name: str, pending: int, lag: int | None, age_s: float | None = None) -> LaneGroup:
    oldest = None if age_s is None else NOW_MS - int(age_s * 1000)
    return LaneGroup(name, pending, lag, oldest, consumers=1)


def snapshot(*topics: TopicState) -> QueueSnapshot:
    return QueueSnapshot(NOW_MS, topics)


def test_a_row_adds_up_the_partitions_of_one_group() -> None:
    topic = TopicState("mail", (
        partition(0, group("send", 2, 3, age_s=1.5), dead=1),
        partition(1, group("send", 1, 0, age_s=9.0), dead=2),
    ), {"send": 2})

    [row] = summarize(snapshot(topic))

    assert (row.topic, row.group, row.partitions) == ("mail", "send", 2)
    assert (row.depth, row.pending, row.lag, row.consumers, row.dead) == (10, 3, 3, 2, 3)
    assert row.oldest_pending_age_s == 9.0


def test_each_consumer_group_of_a_topic_gets_its_own_row() -> None:
    topic = TopicState("mail", (partition(0, group("audit", 0, 5), group("send", 4, 1)),), {})

    rows = summarize(snapshot(topic))

    assert [(r.group, r.pending, r.lag) for r in rows] == [("audit", 0, 5), ("send", 4, 1)]


def test_lag_is_unknown_if_any_partition_cannot_tell_it() -> None:
    topic = TopicState("mail", (partition(0, group("send", 0, 2)),
                                partition(1, group("send", 0, None))), {})

    [row] = summarize(snapshot(topic))

    assert row.lag is None


def test_a_topic_nobody_consumes_still_gets_a_row() -> None:
    [row] = summarize(snapshot(TopicState("mail", (partition(0, length=8),), {})))

    assert (row.group, row.depth, row.pending, row.lag, row.consumers) == (None, 8, 0, None, 0)
    assert row.oldest_pending_age_s is None


def test_the_json_document_holds_rows_and_every_lane() -> None:
    topic = TopicState("mail", (partition(0, group("send", 2, 3)),), {"send": 1})

    document = orjson.loads(orjson.dumps(queues_document(snapshot(topic))))

    assert document["queues"][0]["pending"] == 2
    lanes = document["topics"][0]["partitions"][0]["lanes"]
    assert [lane["priority"] for lane in lanes] == ["high", "normal", "low"]


def test_the_table_shows_unknown_lag_as_a_question_mark() -> None:
    topic = TopicState("mail", (partition(0, group("send", 2, None, age_s=3)),), {"send": 1})
    printed = io.StringIO()

    Console(file=printed, width=120).print(queues_table(snapshot(topic)))

    [line] = [line for line in printed.getvalue().splitlines() if "mail" in line]
    assert line.split() == ["mail", "send", "1", "5", "2", "?", "1", "3.0s", "0", "0"]
