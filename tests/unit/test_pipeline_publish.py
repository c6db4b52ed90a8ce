"""Publishing notifications: ids beside their notifications, each in its priority's lane."""

from __future__ import annotations

from runtime_behaviour import stream_entries
from tidings import App, Settings
from tidings.message import HEADER_FIELD, PAYLOAD_FIELD, Envelope
from tidings.notification import Notification
from tidings.pipelines.notifications import NotificationPipeline
from tidings.testing import MemoryTransport


def _notification(n: int, priority: str) -> Notification:
    return Notification.model_validate({
        "type": "order.shipped", "channels": ["sms"], "priority": priority,
        "recipient": {"user_id": f"u{n}", "phone": "+14155550123"},
        "content": {"body": f"number {n}"},
    })


async def test_publish_many_returns_each_id_in_the_place_of_its_notification() -> None:
    """Mixed priorities: the ids came back grouped by lane, not in the order given."""
    pipeline = NotificationPipeline(App("publish"))
    transport = MemoryTransport()
    await pipeline.app.start(Settings(namespace="t"), transport=transport)
    try:
        priorities = ["low", "critical", "normal", "high", "low", "normal"]
        ids = await pipeline.publish_many(
            [_notification(n, p) for n, p in enumerate(priorities)])

        found: dict[str, tuple[str, str]] = {}
        topic = pipeline.intake
        for partition in range(topic.partitions):
            for lane in topic.keys(partition).lanes:
                for _, fields in await stream_entries(transport, lane):
                    body = Notification.model_validate_json(fields[PAYLOAD_FIELD])
                    assert body.content is not None
                    found[Envelope.from_json(fields[HEADER_FIELD]).id] = (
                        body.content.body, lane.rsplit(":", 1)[-1])
    finally:
        await pipeline.app.stop()

    assert [found[i][0] for i in ids] == [f"number {n}" for n in range(6)]
    assert [found[i][1] for i in ids] == ["low", "high", "normal", "high", "low", "normal"]
