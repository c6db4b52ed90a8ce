"""`tidings …` given bad input: one `error:` line saying what to fix, exit code 1, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tidings.keys import PartitionKeys, topic_registry

pytestmark = [pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]
TIDINGS = Path(sys.executable).parent / "tidings"
APP = "tests.pipelines.counting:app"
TOPIC = "counting.jobs"
NOWHERE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A TIDINGS_HOME of the test's own, so a fall-through never reuses a real embedded server."""
    return tmp_path / "home"


@pytest.fixture
def store(redis_url: str, namespace: str) -> Iterator[Redis]:
    with Redis.from_url(redis_url) as client:
        yield client
        doomed = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if doomed:
            client.delete(*doomed)


def tidings(
    *args: str, home: Path, wide: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the CLI from the repository root with only the TIDINGS_* variables given here."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environ.pop("COLUMNS", None)
    if wide:  # see test_an_error_is_not_wrapped_at_80_columns
        environ["COLUMNS"] = "1000"
    environ["TIDINGS_HOME"] = str(home)
    environ.update({f"TIDINGS_{name.upper()}": value for name, value in env.items()})
    argv = [os.fsencode(arg) for arg in (str(TIDINGS), *args)]
    return subprocess.run(
        argv, cwd=REPO, env=environ, capture_output=True, text=True,
        timeout=60, check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of a failed command, after checking how it failed."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def published(store: Redis, namespace: str) -> int:
    partitions = store.hget(topic_registry(namespace), TOPIC)
    if partitions is None:
        return 0
    return sum(
        int(store.xlen(lane))  # type: ignore[arg-type]
        for p in range(int(partitions))  # type: ignore[arg-type]
        for lane in PartitionKeys(namespace, TOPIC, p).lanes
    )


# -- connections ------------------------------------------------------------------------------


def test_an_unreachable_redis_is_one_error_line_and_exit_1(home: Path) -> None:
    result = tidings("publish", TOPIC, '{"n": 1}', home=home, redis_url=NOWHERE_REDIS)
    line = error_line(result)
    assert result.stderr.strip().splitlines() == [line]
    assert line.startswith(f"error: cannot reach Redis at {NOWHERE_REDIS}")
    assert "TIDINGS_REDIS_URL" in line


def test_debug_adds_the_traceback(home: Path) -> None:
    result = tidings("--debug", "publish", TOPIC, '{"n": 1}', home=home,
                     redis_url=NOWHERE_REDIS)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "error: cannot reach Redis" in result.stderr


def test_a_misspelled_redis_scheme_is_named_with_the_forms_that_work(home: Path) -> None:
    result = tidings("publish", TOPIC, '{"n": 1}', home=home,
                     redis_url="reddis://127.0.0.1:6379/0")
    line = error_line(result)
    assert "'reddis://127.0.0.1:6379/0' is not a Redis URL" in line
    assert "redis://HOST:PORT/DB" in line


def test_an_unreachable_database_fails_migrate_with_one_error_line(home: Path) -> None:
    result = tidings("migrate", home=home,
                     database_url="postgresql://postgres@127.0.0.1:1/test")
    line = error_line(result)
    assert line.startswith("error: cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:1")
    assert "TIDINGS_DATABASE_URL" in line


@pytest.mark.parametrize(("url", "error"), [
    ("postgresql://postgres@127.0.0.1:abc/test", "the database URL cannot be read"),
    ("postgresql://postgres@127.0.0.1:5432/test?bogus=1", "has an option PostgreSQL's driver"),
    ("postgresql://postgres@127.0.0.1:5432/test?connect_timeout=soon",
     "connect_timeout is not a number of seconds"),
    ("postgresql://postgres@127.0.0.1:1/test?password=s3cret", "password=***"),
])
def test_a_database_url_that_cannot_work_is_one_line_without_its_password(
    home: Path, url: str, error: str
) -> None:
    line = error_line(tidings("migrate", home=home, database_url=url))
    assert error in line
    assert "s3cret" not in line


def test_a_database_url_with_libpq_options_works(home: Path, database_url: str) -> None:
    if not database_url.startswith("postgresql://postgres@127.0.0.1"):
        pytest.skip("needs a TCP PostgreSQL URL to add the options to (the embedded one is a"
                    " unix socket)")
    url = f"{database_url}?sslmode=disable&connect_timeout=3"
    result = tidings("migrate", "--downgrade", "nosuchrev", home=home, database_url=url)
    assert "cannot migrate to 'nosuchrev': " in error_line(result), "connected, then refused"


def test_a_redis_password_in_a_socket_url_is_not_printed(home: Path) -> None:
    line = error_line(tidings("queues", home=home,
                              redis_url="unix:///nonexistent/redis.sock?password=s3cret"))
    assert "password=***" in line
    assert "s3cret" not in line


def test_a_downgrade_needs_a_revision(home: Path) -> None:
    line = error_line(tidings("migrate", "--downgrade", home=home, redis_url=NOWHERE_REDIS))
    assert "--downgrade needs the REVISION to go down to" in line


def test_a_misspelled_database_scheme_is_named(home: Path) -> None:
    result = tidings("migrate", home=home, database_url="postgress://postgres@127.0.0.1/test")
    assert "unsupported database URL scheme 'postgress://'" in error_line(result)


# -- loading the pipeline ---------------------------------------------------------------------


def test_a_worker_for_a_module_that_does_not_exist_names_it(home: Path) -> None:
    result = tidings("worker", "nosuch.module:app", home=home, redis_url=NOWHERE_REDIS)
    assert "cannot import 'nosuch.module'" in error_line(result)


def test_a_worker_for_a_missing_attribute_names_it(home: Path) -> None:
    result = tidings("worker", "tests.pipelines.counting:nosuch", home=home,
                     redis_url=NOWHERE_REDIS)
    assert "has no attribute 'nosuch'" in error_line(result)


# -- publishing -------------------------------------------------------------------------------


def test_publishing_text_that_is_not_json_is_refused(
    home: Path, redis_url: str, namespace: str, store: Redis
) -> None:
    result = tidings("publish", TOPIC, "{n: 1", "--app", APP, home=home, redis_url=redis_url,
                     namespace=namespace)
    assert "the payload is not JSON" in error_line(result)
    assert published(store, namespace) == 0


def test_publishing_a_payload_that_fails_the_schema_names_the_field(
    home: Path, redis_url: str, namespace: str, store: Redis
) -> None:
    result = tidings("publish", TOPIC, '{"n": "five"}', "--app", APP, home=home,
                     redis_url=redis_url, namespace=namespace)
    line = error_line(result)
    assert f"payload does not match topic '{TOPIC}': n: " in line
    assert "nothing was published" in line
    assert published(store, namespace) == 0


def test_publishing_to_a_topic_the_app_does_not_declare_is_refused(
    home: Path, redis_url: str, namespace: str, store: Redis
) -> None:
    result = tidings("publish", "nosuch.topic", '{"n": 1}', "--app", APP, home=home,
                     redis_url=redis_url, namespace=namespace)
    assert "has no topic 'nosuch.topic' (it has: counting.jobs)" in error_line(result)


def test_a_key_that_is_not_valid_text_is_refused(
    home: Path, redis_url: str, namespace: str, store: Redis
) -> None:
    # Bytes that are not UTF-8 reach Python's argv as lone surrogates.
    result = tidings("publish", TOPIC, '{"n": 1}', "--app", APP, "--key", "\udcff", home=home,
                     redis_url=redis_url, namespace=namespace)
    assert "is not valid text; nothing was published" in error_line(result)
    assert published(store, namespace) == 0


def jsonl(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_a_file_with_an_invalid_line_3_names_it_and_publishes_nothing(
    home: Path, redis_url: str, namespace: str, store: Redis, tmp_path: Path
) -> None:
    file = jsonl(tmp_path / "jobs.jsonl", '{"n": 1}', '{"n": 2}', '{"n": "three"}', '{"n": 4}')
    result = tidings("publish", TOPIC, "--file", str(file), "--app", APP, home=home,
                     redis_url=redis_url, namespace=namespace)
    line = error_line(result)
    assert "line 3: " in line
    assert "nothing was published" in line
    assert published(store, namespace) == 0


def test_a_file_with_a_line_3_that_is_not_json_names_it_and_publishes_nothing(
    home: Path, redis_url: str, namespace: str, store: Redis, tmp_path: Path
) -> None:
    file = jsonl(tmp_path / "jobs.jsonl", '{"n": 1}', '{"n": 2}', '{"n": 3', '{"n": 4}')
    result = tidings("publish", TOPIC, "--file", str(file), "--app", APP, home=home,
                     redis_url=redis_url, namespace=namespace)
    assert f"{file}:3 is not JSON" in error_line(result)
    assert published(store, namespace) == 0


def test_a_file_that_cannot_be_read_is_named(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    result = tidings("publish", TOPIC, "--file", str(missing), "--app", APP, home=home,
                     redis_url=NOWHERE_REDIS)
    assert f"cannot read {missing}" in error_line(result)


def test_a_file_that_is_not_utf8_is_one_line(home: Path, tmp_path: Path) -> None:
    file = tmp_path / "latin1.jsonl"
    file.write_bytes(b'{"n": 1}\n\xff\xfe\n')
    result = tidings("publish", TOPIC, "--file", str(file), "--app", APP, home=home,
                     redis_url=NOWHERE_REDIS)
    assert "is not UTF-8 text" in error_line(result)


def test_a_line_separator_inside_a_json_string_does_not_split_the_line(
    home: Path, redis_url: str, namespace: str, store: Redis, tmp_path: Path
) -> None:
    file = tmp_path / "separators.jsonl"
    file.write_text('{"n": 1, "note": "a\u2028b\u0085c"}\n', encoding="utf-8")
    result = tidings("publish", TOPIC, "--file", str(file), "--app", APP, home=home,
                     redis_url=redis_url, namespace=namespace)
    assert result.returncode == 0, result.stderr
    assert published(store, namespace) == 1


def test_a_good_file_publishes_every_line(
    home: Path, redis_url: str, namespace: str, store: Redis, tmp_path: Path
) -> None:
    file = jsonl(tmp_path / "jobs.jsonl", *(f'{{"n": {n}}}' for n in range(25)), "")
    result = tidings("publish", TOPIC, "--file", str(file), "--app", APP, home=home,
                     redis_url=redis_url, namespace=namespace)
    assert result.returncode == 0, result.stderr
    assert f"published 25 messages to {TOPIC}" in result.stdout
    assert published(store, namespace) == 25


def test_a_file_published_in_part_names_the_lines_to_publish_again(
    home: Path, redis_url: str, namespace: str, store: Redis, tmp_path: Path
) -> None:
    """Redis refuses the lines keyed to one partition (its stream is a key of another type);
    the others are published: the error says which lines were not, to send only those."""
    broken = zlib.crc32(b"3") % 4
    store.set(PartitionKeys(namespace, TOPIC, broken).lanes[1], "not a stream")
    file = jsonl(tmp_path / "jobs.jsonl", *(f'{{"n": {n}}}' for n in range(1, 26)))
    refused = [n for n in range(1, 26) if zlib.crc32(str(n).encode()) % 4 == broken]

    result = tidings("publish", TOPIC, "--file", str(file), "--app", APP, "--key-field", "n",
                     home=home, redis_url=redis_url, namespace=namespace, partitions="4")

    line = error_line(result)
    assert f"published {25 - len(refused)} of 25 messages; Redis refused line(s)" in line
    assert f" {', '.join(map(str, refused[:10]))}" in line
    assert "WRONGTYPE" in line
    assert "publish those again, not the whole file" in line


def test_a_payload_redis_refuses_is_one_line_saying_it_was_not_published(
    home: Path, redis_url: str, namespace: str, store: Redis
) -> None:
    store.set(PartitionKeys(namespace, TOPIC, 0).lanes[1], "not a stream")
    result = tidings("publish", TOPIC, '{"n": 1}', "--app", APP, home=home,
                     redis_url=redis_url, namespace=namespace, partitions="1")
    line = error_line(result)
    assert "Redis refused the payload, not published (ResponseError: WRONGTYPE" in line


def test_a_file_redis_refuses_whole_is_one_line(
    home: Path, redis_url: str, namespace: str, store: Redis, tmp_path: Path
) -> None:
    store.set(PartitionKeys(namespace, TOPIC, 0).lanes[1], "not a stream")
    file = jsonl(tmp_path / "jobs.jsonl", *(f'{{"n": {n}}}' for n in range(1, 4)))
    result = tidings("publish", TOPIC, "--file", str(file), "--app", APP, home=home,
                     redis_url=redis_url, namespace=namespace, partitions="1")
    assert "Redis refused lines 1-3, not published (ResponseError: WRONGTYPE" in (
        error_line(result))


# -- known defects, kept visible --------------------------------------------------------------


def test_an_error_is_not_wrapped_at_80_columns(home: Path) -> None:
    result = tidings("publish", TOPIC, '{"n": 1}', home=home, wide=False,
                     redis_url=NOWHERE_REDIS)
    assert result.stderr.strip().splitlines() == [error_line(result)]


def test_a_malformed_settings_variable_is_an_error_line_not_a_traceback(home: Path) -> None:
    result = tidings("publish", TOPIC, '{"n": 1}', home=home, redis_url=NOWHERE_REDIS,
                     lane_weights="6,3,1")
    assert "TIDINGS_LANE_WEIGHTS" in error_line(result)
