"""The pipeline graph: validation when built, introspection, and stages running end to end."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from tidings import App, Settings
from tidings.pipelines import GraphError, Item, Pipeline
from tidings.pipelines.graph import Step
from tidings.testing import running
from tidings.topic import Topic


class Note(BaseModel):
    text: str
    channels: list[str] = []


async def keep(items: list[Item]) -> list[Item]:
    return items


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition still false"
        await asyncio.sleep(0.01)


def two_stage(app: App) -> Pipeline:
    intake = app.topic("g.intake", model=Note)
    email = app.topic("g.email", model=Note)
    pipeline = Pipeline(app, "g")
    pipeline.stage("route", source=intake, steps=[keep], outputs={"email": email})
    pipeline.stage("send", source=email, steps=[keep], terminal=True)
    return pipeline


def email_and_sms(app: App, route: Step, sent: list[str]) -> tuple[Topic[Note], ...]:
    """intake → ``route`` → email / sms stages that note each text they get; built."""
    intake, email, sms = (app.topic(f"g.{n}", model=Note, partitions=1)
                          for n in ("intake", "email", "sms"))

    async def record(items: list[Item]) -> list[Item]:
        sent.extend(i.value.text for i in items)
        return items

    pipeline = Pipeline(app, "g")
    pipeline.stage("route", source=intake, steps=[route], outputs={"email": email, "sms": sms})
    pipeline.stage("email", source=email, steps=[record], terminal=True)
    pipeline.stage("sms", source=sms, steps=[record], terminal=True)
    pipeline.build()
    return intake, email, sms


def test_a_well_formed_graph_builds_and_registers_one_batch_agent_per_stage() -> None:
    app = App("g")
    two_stage(app).build()
    assert sorted(app.agents) == ["g.route", "g.send"]
    assert all(agent.batch for agent in app.agents.values())


def test_an_output_topic_the_app_does_not_declare_is_an_error() -> None:
    app, other = App("g"), App("other")
    pipeline = Pipeline(app, "g")
    pipeline.stage("route", source=app.topic("g.intake"), steps=[keep],
                   outputs={"email": other.topic("g.email")})
    expected = re.escape("output 'email' topic 'g.email', which app 'g' does")
    with pytest.raises(GraphError, match=expected):
        pipeline.build()


def test_a_stage_with_no_way_out_is_an_error() -> None:
    app = App("g")
    pipeline = Pipeline(app, "g")
    pipeline.stage("route", source=app.topic("g.intake"), steps=[keep])
    with pytest.raises(GraphError, match="stage 'route' has no way out"):
        pipeline.build()


def test_a_topic_written_but_never_read_is_an_error() -> None:
    app = App("g")
    pipeline = Pipeline(app, "g")
    pipeline.stage("route", source=app.topic("g.intake"), steps=[keep],
                   outputs={"sms": app.topic("g.sms")})
    with pytest.raises(GraphError, match=r"writes 'g\.sms' .* but no stage reads it"):
        pipeline.build()


def test_a_cycle_is_an_error_that_names_the_loop() -> None:
    app = App("g")
    a, b = app.topic("g.a"), app.topic("g.b")
    pipeline = Pipeline(app, "g")
    pipeline.stage("one", source=a, steps=[keep], outputs={"next": b})
    pipeline.stage("two", source=b, steps=[keep], outputs={"back": a})
    with pytest.raises(GraphError, match=re.escape("cycle: g.a -> g.b -> g.a")):
        pipeline.build()


def test_a_stage_declared_twice_is_an_error() -> None:
    app = App("g")
    pipeline = two_stage(app)
    with pytest.raises(GraphError, match="declares stage 'send' twice"):
        pipeline.stage("send", source=app.topics["g.email"], steps=[keep], terminal=True)


def test_the_graph_describes_itself_as_text_and_mermaid() -> None:
    pipeline = two_stage(App("g")).build()
    text = pipeline.describe()
    assert "stage route: reads g.intake" in text
    assert "output email -> g.email" in text
    mermaid = pipeline.mermaid()
    assert mermaid.startswith("flowchart LR")
    assert '[("g.intake")]' in mermaid
    assert "-->|email|" in mermaid


def test_a_stage_s_settle_is_named_after_its_steps() -> None:
    app = App("g")

    async def write_ledger() -> None:
        return None

    pipeline = Pipeline(app, "g")
    pipeline.stage("send", source=app.topic("g.intake"), steps=[keep], settle=write_ledger,
                   terminal=True)
    pipeline.build()
    assert "    steps: keep\n    settle: write_ledger (the next batch runs meanwhile)" in (
        pipeline.describe())
    assert "keep<br/>settle: write_ledger" in pipeline.mermaid()


async def test_items_flow_through_stages_fan_out_and_drops_are_reported() -> None:
    app = App("g")
    intake = app.topic("g.intake", model=Note, partitions=2)
    email = app.topic("g.email", model=Note, partitions=2)
    sms = app.topic("g.sms", model=Note, partitions=2)
    dropped: list[str] = []
    sent: list[tuple[str, str]] = []

    async def fan_out(items: list[Item]) -> list[Item]:
        out = []
        for item in items:
            if not item.value.channels:
                item.drop("no channel")
                out.append(item)
            for channel in item.value.channels:
                split = item.split(item.value, channel=channel)
                split.route(channel)
                out.append(split)
        return out

    async def record_drops(items: list[Item]) -> None:
        dropped.extend(f"{i.value.text}: {i.dropped}" for i in items)

    def sender(channel: str):  # type: ignore[no-untyped-def]
        async def send(items: list[Item]) -> list[Item]:
            sent.extend((channel, i.value.text) for i in items)
            return items
        send.__name__ = f"send_{channel}"
        return send

    pipeline = Pipeline(app, "g")
    pipeline.stage("route", source=intake, steps=[fan_out], outputs={"email": email, "sms": sms},
                   on_drop=record_drops)
    pipeline.stage("email", source=email, steps=[sender("email")], terminal=True)
    pipeline.stage("sms", source=sms, steps=[sender("sms")], terminal=True)
    pipeline.build()
    settings = Settings(namespace="g", block_ms=20)
    async with running(app, settings) as harness:
        await intake.send_many([
            Note(text="a", channels=["email", "sms"]), Note(text="b", channels=["sms"]),
            Note(text="c"),
        ])
        await until(lambda: len(sent) == 3 and len(dropped) == 1)
        await harness.drain()
    assert sorted(sent) == [("email", "a"), ("sms", "a"), ("sms", "b")]
    assert dropped == ["c: no channel"]


async def test_a_step_that_loses_an_item_dead_letters_its_message() -> None:
    app = App("g")
    intake = app.topic("g.intake", model=Note, partitions=1)

    async def lose_everything(items: list[Item]) -> list[Item]:
        return []

    pipeline = Pipeline(app, "g")
    pipeline.stage("leaky", source=intake, steps=[lose_everything], terminal=True)
    pipeline.build()
    async with running(app, Settings(namespace="g", block_ms=20)) as harness:
        await intake.send(Note(text="x"))
        await harness.drain()
        dead = await app.transport.length(intake.keys(0).dead)
    assert dead == 1
    assert app.agents["g.leaky"].stats.rejected == 1


async def test_a_message_retried_as_a_whole_publishes_its_outputs_once() -> None:
    app = App("g")
    sent: list[str] = []

    async def fan_out_sms_failing_once(items: list[Item]) -> list[Item]:
        out = []
        for item in items:
            for channel in ("email", "sms"):
                split = item.split(item.value)
                if channel == "sms" and item.message.envelope.attempt == 1:
                    split.retry("sms gateway busy", delay=0.01)
                else:
                    split.route(channel)
                out.append(split)
        return out

    intake, email, sms = email_and_sms(app, fan_out_sms_failing_once, sent)
    async with running(app, Settings(namespace="g", block_ms=20)) as harness:
        await intake.send(Note(text="a"))
        await harness.drain()
    assert (email.published, sms.published) == (1, 1), "the e-mail went out once, not twice"
    assert len(sent) == 2


async def test_an_item_finished_in_a_routing_stage_is_acked_with_no_output() -> None:
    app = App("g")
    intake = app.topic("g.intake", model=Note, partitions=1)
    email = app.topic("g.email", model=Note, partitions=1)
    later: list[str] = []

    async def finish_short_ones(items: list[Item]) -> list[Item]:
        for item in items:
            if len(item.value.text) < 3:
                item.finish()  # handled here, e.g. delivered inline
        return items

    async def route_the_rest(items: list[Item]) -> list[Item]:
        later.extend(i.value.text for i in items)  # a finished item skips later steps
        for item in items:
            item.route("email")
        return items

    pipeline = Pipeline(app, "g")
    pipeline.stage("route", source=intake, steps=[finish_short_ones, route_the_rest],
                   outputs={"email": email})
    pipeline.stage("send", source=email, steps=[keep], terminal=True)
    pipeline.build()
    async with running(app, Settings(namespace="g", block_ms=20)) as harness:
        await intake.send_many([Note(text="ok"), Note(text="long one")])
        await harness.drain()
        dead = await app.transport.length(intake.keys(0).dead)
    assert later == ["long one"]
    assert email.published == 1
    assert dead == 0
    assert app.agents["g.route"].stats.processed == 2


async def test_a_message_whose_output_does_not_fit_is_dead_lettered_and_sends_none() -> None:
    app = App("g")
    sent: list[str] = []

    async def fan_out_grown(items: list[Item]) -> list[Item]:
        out = []
        for item in items:  # the sms output of "big" outgrows the payload limit
            for channel in ("email", "sms"):
                big = channel == "sms" and item.value.text == "big"
                split = item.split(Note(text=item.value.text * (500 if big else 1)))
                split.route(channel)
                out.append(split)
        return out

    intake, email, sms = email_and_sms(app, fan_out_grown, sent)
    settings = Settings(namespace="g", block_ms=20, max_payload_bytes=1024)
    async with running(app, settings) as harness:
        await intake.send_many([Note(text="big"), Note(text="s")])  # one read, one batch
        await harness.drain()
        dead = list(app.transport.streams[intake.keys(0).dead].entries.values())
    assert sorted(sent) == ["s", "s"], "the small message went out on both channels"
    assert (email.published, sms.published) == (1, 1), "nothing of the big one was published"
    assert len(dead) == 1
    reason = dead[0][b"dead.reason"].decode()
    assert "output to 'g.sms' does not fit" in reason
    assert "exceeds the limit of 1024" in reason
