"""`tidings publish`: one JSON payload or a JSON Lines file, validated before anything is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tidings import keys
from tidings.app import App
from tidings.errors import (
    ConfigurationError,
    PartlyPublished,
    PayloadError,
    TidingsError,
    UnknownTopic,
    shortlist,
)
from tidings.loading import load_app
from tidings.message import Priority
from tidings.settings import Settings
from tidings.topic import Topic

CHUNK = 500


class PublishIncomplete(TidingsError):
    """Redis refused a payload or lines of a file, or the connection failed while they were
    sent: the message says which were published, which not, which may have been."""


def _parse(text: str, where: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"{where} is not JSON: {exc}") from None


def _read_lines(file: Path) -> list[tuple[int, Any]]:
    try:
        # Lines end at '\n' alone: JSON may hold U+2028 and the like unescaped.
        lines = file.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{file} is not UTF-8 text (byte {exc.start}): JSON lines are"
                           " UTF-8") from None
    return [(n, _parse(line, f"{file}:{n}")) for n, line in enumerate(lines, 1) if line.strip()]


async def _topic(app: App, settings: Settings, name: str, ad_hoc: bool) -> Topic[Any]:
    await app.start(settings)
    if not ad_hoc:
        return app.get_topic(name)
    known = await app.transport.known_topics(keys.topic_registry(settings.namespace))
    if name not in known:
        raise UnknownTopic(
            f"topic {name!r} is not known in Redis (no app using it has started); pass"
            " --app MODULE:APP so its schema and partitions are known"
        )
    topic: Topic[Any] = app.topic(name, partitions=known[name])
    return topic


def _check_key(key: str | None) -> None:
    if key is not None:
        try:
            key.encode()
        except UnicodeEncodeError:
            raise PayloadError(f"key {key!r} is not valid text") from None


async def publish_command(
    settings: Settings,
    topic_name: str,
    payload: str | None,
    file: Path | None,
    app_path: str | None,
    key: str | None,
    key_field: str | None,
    priority: str,
    out: Console,
) -> None:
    if (payload is None) == (file is None):
        raise ConfigurationError("give either a JSON payload or --file F.jsonl, not both or none")
    try:
        lane = Priority(priority)
    except ValueError:
        raise ConfigurationError(f"priority {priority!r} is not one of high, normal, low") from None
    records = [(1, _parse(payload, "the payload"))] if payload is not None else _read_lines(file)  # type: ignore[arg-type]
    app = load_app(app_path) if app_path else App("publish")
    try:
        topic = await _topic(app, settings, topic_name, ad_hoc=app_path is None)
        def key_of(value: Any) -> str | None:
            if key_field is not None and isinstance(value, dict) and key_field in value:
                return str(value[key_field])
            return key

        for line, value in records:  # validate everything before sending anything
            try:
                topic.encode_value(value)
                _check_key(key_of(value))
            except PayloadError as exc:
                where = f"line {line}" if file else "the payload"
                raise PayloadError(f"{where}: {exc}; nothing was published") from None

        if payload is not None:
            try:
                msg_id = await topic.send(records[0][1], key=key_of(records[0][1]),
                                          priority=lane)
            except (RedisError, OSError) as exc:
                raise PublishIncomplete(_failed("the payload", exc)) from None
            out.print(msg_id)
            return
        await _publish_all(topic, records, key_of, lane, out)
    finally:
        await app.stop()


async def _publish_all(
    topic: Topic[Any], records: list[tuple[int, Any]], key_of: Any, lane: Priority,
    out: Console,
) -> None:
    columns = (
        TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    )
    done = 0
    with Progress(*columns, console=out, transient=False) as progress:
        task = progress.add_task("publish", total=len(records))
        for start in range(0, len(records), CHUNK):
            chunk = records[start : start + CHUNK]
            after = (f"; the lines after {chunk[-1][0]} were not sent"
                     if start + len(chunk) < len(records) else "")
            try:
                await topic.send_many([v for _, v in chunk], key=key_of, priority=lane)
            except PartlyPublished as exc:
                first = exc.unpublished[min(exc.unpublished)]
                raise PublishIncomplete(
                    f"published {done + len(exc.published)} of {len(records)} messages; Redis"
                    f" refused line(s) {shortlist([chunk[i][0] for i in sorted(exc.unpublished)])}"
                    f" ({type(first).__name__}: {first}){after}: publish those again, not the"
                    " whole file") from None
            except (RedisError, OSError) as exc:
                so_far = f"published {done} of {len(records)} messages; " if done else ""
                what = f"lines {chunk[0][0]}-{chunk[-1][0]}"
                raise PublishIncomplete(so_far + _failed(what, exc) + after) from None
            done += len(chunk)
            progress.advance(task, len(chunk))
    out.print(f"published {len(records)} messages to {topic.name}")


def _failed(what: str, exc: Exception) -> str:
    """Why ``what`` went wrong: refused by Redis (not published), or the connection failed
    (sent, perhaps taken: whoever publishes again must check first)."""
    reason = f"({type(exc).__name__}: {exc})"
    if isinstance(exc, ResponseError):
        return f"Redis refused {what}, not published {reason}"
    return (f"{what} may or may not have been published {reason}: the connection failed, so"
            " whether Redis took them is unknown; check before publishing them again")
