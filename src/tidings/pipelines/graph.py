"""The declarative pipeline graph: stages, the topics between them, validation, introspection.

A stage reads one topic and runs its steps chained in the same consumer (no stream hop between
them, DESIGN.md D6); each work item leaves the stage through a named output (a topic: a hop
that isolates a slow channel or re-keys), is dropped with a recorded reason, or ends there in
a terminal stage. The graph is checked when it is built: unknown topics, a stage with no way
out, a topic written but never read, and cycles are errors that name the culprit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidings.app import App
from tidings.batch import Batch, RetryRequest
from tidings.errors import ConfigurationError, PayloadError
from tidings.message import LEDGER_HEADER, Message, Priority
from tidings.retry import RetryPolicy
from tidings.topic import Topic


class GraphError(ConfigurationError):
    """A pipeline graph that cannot work as declared."""


@dataclass(slots=True)
class Item:
    """One unit of work moving through a stage; a step may fan one item out into several."""

    message: Message[Any]
    value: Any
    key: str | None
    priority: Priority
    output: str | None = None
    dropped: str | None = None
    retrying: RetryRequest | None = None
    rejected: tuple[str, str] | None = None
    finished: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Decided: routed, finished, dropped, to be retried or rejected; later steps skip it."""
        return (self.output is not None or self.finished or self.dropped is not None
                or self.retrying is not None or self.rejected is not None)

    def route(self, output: str) -> None:
        """Leave the stage through ``output`` (a name from the stage's outputs)."""
        self.output = output

    def finish(self) -> None:
        """Its work is complete in this stage (e.g. delivered there): no output needed."""
        self.finished = True

    def drop(self, reason: str) -> None:
        """Stop here on purpose; the reason is handed to the stage's ``on_drop`` hook."""
        self.dropped = reason

    def retry(
        self, reason: str, *, delay: float | None = None, error_type: str | None = None,
        policy: RetryPolicy | None = None, count: bool = True,
    ) -> None:
        """Run the whole stage again for this item's message later (see ``Batch.retry``);
        the stage's steps must therefore be safe to repeat."""
        self.retrying = RetryRequest(reason, delay, error_type, policy, count)

    def reject(self, reason: str, *, kind: str = "rejected") -> None:
        """Dead-letter this item's message (``kind``: rejected, permanent, exhausted)."""
        self.rejected = (reason, kind)

    def split(self, value: Any, **attrs: Any) -> Item:
        """A sibling item for the same message (fan-out), e.g. one per channel."""
        return Item(self.message, value, self.key, self.priority, attrs={**self.attrs, **attrs})


Step = Callable[[list[Item]], Awaitable[list[Item]]]
DropHook = Callable[[list[Item]], Awaitable[None]]
Settle = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Stage:
    """A consumer of ``source`` running ``steps`` in order on each batch."""

    name: str
    source: Topic[Any]
    steps: tuple[Step, ...]
    outputs: Mapping[str, Topic[Any]]
    terminal: bool
    on_drop: DropHook | None
    settle: Settle | None = None

    def step_names(self) -> list[str]:
        return [_name(s) for s in self.steps]

    def settle_name(self) -> str | None:
        return None if self.settle is None else _name(self.settle)


def _name(work: object) -> str:
    return getattr(work, "__name__", type(work).__name__)


class Pipeline:
    """Stages of one App wired by its topics. Declare with :meth:`stage`, then :meth:`build`."""

    def __init__(self, app: App, name: str) -> None:
        self.app = app
        self.name = name
        self.stages: dict[str, Stage] = {}
        self.built = False

    def stage(
        self,
        name: str,
        *,
        source: Topic[Any],
        steps: Sequence[Step],
        outputs: Mapping[str, Topic[Any]] | None = None,
        terminal: bool = False,
        on_drop: DropHook | None = None,
        settle: Settle | None = None,
    ) -> Stage:
        """Declare a stage; it becomes a batch agent named ``PIPELINE.STAGE`` when built.

        ``settle`` finishes each batch after its steps (e.g. writing its ledger rows): the
        batch's outputs are published and its messages acked only once it is done, while the
        stage reads and runs its next batch (see ``Batch.defer``)."""
        if self.built:
            raise GraphError(f"pipeline {self.name!r} is already built; declare stages first")
        if name in self.stages:
            raise GraphError(f"pipeline {self.name!r} declares stage {name!r} twice")
        if not steps:
            raise GraphError(f"stage {name!r} has no steps")
        stage = Stage(name, source, tuple(steps), dict(outputs or {}), terminal, on_drop, settle)
        self.stages[name] = stage
        return stage

    # -- validation -----------------------------------------------------------------------

    def build(self) -> Pipeline:
        """Check the graph and register one batch agent per stage. Returns the pipeline."""
        if not self.stages:
            raise GraphError(f"pipeline {self.name!r} has no stages")
        self._check_topics()
        self._check_ways_out()
        self._check_cycles()
        for stage in self.stages.values():
            self.app.agent(stage.source, name=f"{self.name}.{stage.name}", batch=True)(
                _runner(stage)
            )
        self.built = True
        return self

    def _check_topics(self) -> None:
        declared = self.app.topics
        for stage in self.stages.values():
            for role, topic in [("reads", stage.source), *(
                (f"output {o!r}", t) for o, t in stage.outputs.items()
            )]:
                if declared.get(topic.name) is not topic:
                    raise GraphError(
                        f"stage {stage.name!r} {role} topic {topic.name!r}, which app"
                        f" {self.app.name!r} does not declare"
                    )

    def _check_ways_out(self) -> None:
        read = {stage.source.name for stage in self.stages.values()}
        for stage in self.stages.values():
            if not stage.outputs and not stage.terminal:
                raise GraphError(
                    f"stage {stage.name!r} has no way out: give it outputs, or mark it"
                    " terminal=True if its work ends there"
                )
            for output, topic in stage.outputs.items():
                if topic.name not in read:
                    raise GraphError(
                        f"stage {stage.name!r} writes {topic.name!r} (output {output!r}) but no"
                        " stage reads it: messages would pile up unread"
                    )

    def _check_cycles(self) -> None:
        edges: dict[str, set[str]] = {}
        for stage in self.stages.values():
            targets = edges.setdefault(stage.source.name, set())
            targets.update(t.name for t in stage.outputs.values())
        done: set[str] = set()

        def visit(node: str, path: list[str]) -> None:
            if node in path:
                cycle = " -> ".join([*path[path.index(node):], node])
                raise GraphError(f"pipeline {self.name!r} has a cycle: {cycle}")
            if node in done:
                return
            for nxt in sorted(edges.get(node, ())):
                visit(nxt, [*path, node])
            done.add(node)

        for node in sorted(edges):
            visit(node, [])

    # -- introspection --------------------------------------------------------------------

    def describe(self) -> str:
        """The stages, their steps and topics, as plain text."""
        lines = [f"pipeline {self.name} (app {self.app.name})"]
        for stage in self.stages.values():
            lines.append(f"  stage {stage.name}: reads {stage.source.name}"
                         f" ({stage.source.partitions or 'default'} partitions)")
            lines.append(f"    steps: {' -> '.join(stage.step_names())}")
            if stage.settle is not None:
                lines.append(f"    settle: {stage.settle_name()} (the next batch runs meanwhile)")
            for output, topic in stage.outputs.items():
                lines.append(f"    output {output} -> {topic.name}")
            if stage.terminal:
                lines.append("    terminal")
        return "\n".join(lines)

    def mermaid(self) -> str:
        """A Mermaid flowchart: topics as queues, stages as boxes listing their steps."""
        lines = ["flowchart LR"]
        ids: dict[str, str] = {}

        def topic_node(topic: Topic[Any]) -> str:
            if topic.name not in ids:
                ids[topic.name] = f"t{len(ids)}"
                lines.append(f'  {ids[topic.name]}[("{topic.name}")]')
            return ids[topic.name]

        for index, stage in enumerate(self.stages.values()):
            node = f"s{index}"
            steps = " → ".join(stage.step_names())
            if stage.settle is not None:
                steps += f"<br/>settle: {stage.settle_name()}"
            lines.append(f'  {node}["{stage.name}<br/>{steps}"]')
            lines.append(f"  {topic_node(stage.source)} --> {node}")
            for output, topic in stage.outputs.items():
                lines.append(f"  {node} -->|{output}| {topic_node(topic)}")
        return "\n".join(lines)


def _runner(stage: Stage) -> Callable[[Batch[Any]], Awaitable[None]]:
    async def run_stage(batch: Batch[Any]) -> None:
        items = await _run_steps(stage, [Item(m, m.value, m.key, m.priority) for m in batch])
        kept = {id(i.message) for i in items}
        for message in batch.messages:  # a step that loses an item must not lose a message
            if id(message) not in kept:
                batch.reject(message, f"stage {stage.name!r}: a step returned no item for it")
        dropped = [i for i in items if i.dropped is not None]
        if dropped and stage.on_drop is not None:
            await stage.on_drop(dropped)
        if stage.settle is not None:
            batch.defer(stage.settle)
        # A message retried or rejected as a whole publishes none of its items' outputs: the
        # stage runs again for it (or never), and would publish them twice.
        held = {id(i.message) for i in items if i.rejected is not None or i.retrying is not None}
        leaving = []
        for item in items:
            if item.rejected is not None:
                batch.reject(item.message, item.rejected[0], kind=item.rejected[1])
            elif item.retrying is not None:
                r = item.retrying
                batch.retry(item.message, r.reason, delay=r.delay, error_type=r.error_type,
                            policy=r.policy, count=r.count)
            elif item.dropped is None and id(item.message) not in held:
                leaving.append(item)
        _dispatch(stage, batch, leaving)

    run_stage.__name__ = f"stage_{stage.name}"
    return run_stage


async def _run_steps(stage: Stage, items: list[Item]) -> list[Item]:
    for step in stage.steps:
        done = [i for i in items if i.done]
        items = await step([i for i in items if not i.done]) + done
    return items


Prepared = tuple[Topic[Any], str, dict[bytes, bytes]]  # (topic, stream, fields)


def _dispatch(stage: Stage, batch: Batch[Any], items: list[Item]) -> None:
    """Send each item through its output. A message with an item that cannot leave (no
    output, or one that does not fit its topic, e.g. over the payload limit) is rejected and
    sends none of its outputs."""
    ready: list[tuple[Message[Any], Prepared]] = []
    failed: set[int] = set()
    for item in items:
        leaving = _leave(stage, item)
        if isinstance(leaving, str):
            failed.add(id(item.message))
            batch.reject(item.message, leaving)
        elif leaving is not None:
            ready.append((item.message, leaving))
    for message, (topic, stream, fields) in ready:
        if id(message) not in failed:
            batch.add(topic, stream, fields)


def _leave(stage: Stage, item: Item) -> Prepared | str | None:
    """``item``'s output, encoded; None if it has nothing to send; why not, if it cannot."""
    if item.finished or (item.output is None and stage.terminal):
        return None
    if item.output is None:
        return f"stage {stage.name!r} gave it no output"
    topic = stage.outputs.get(item.output)
    if topic is None:
        return f"stage {stage.name!r} has no output {item.output!r}"
    # Every output names the ledger message it descends from, for dead letters and replays.
    ledger_id = item.message.headers.get(LEDGER_HEADER, item.message.id)
    try:
        _, stream, fields = topic.prepare(
            item.value, key=item.key, priority=item.priority, headers={LEDGER_HEADER: ledger_id},
            trace_id=item.message.envelope.trace_id or item.message.id)
    except PayloadError as exc:
        return f"stage {stage.name!r}: its output to {topic.name!r} does not fit: {exc}"
    return topic, stream, fields
