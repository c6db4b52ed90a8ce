"""The embedded Redis and PostgreSQL: real servers, each test group in a private home under /tmp."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
import redis.asyncio as aioredis

from tidings import embedded
from tidings.embedded.home import process_alive
from tidings.errors import EmbeddedServerError

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

_START = (
    "import sys; from pathlib import Path; from tidings import embedded; "
    "print(embedded.{function}(Path(sys.argv[1])).pid)"
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home shared by the tests of this module that only start servers."""
    home = tmp_path_factory.mktemp("embedded")
    yield home
    embedded.stop_all(home)


@pytest.fixture
def own_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home for one test that stops or restarts its servers."""
    home = tmp_path_factory.mktemp("own")
    yield home
    embedded.stop_all(home)


def _start_concurrently(function: str, home: Path, processes: int = 2) -> list[int]:
    """Start a server from several fresh Python processes at once; the pid each one got."""
    command = [sys.executable, "-c", _START.format(function=function), str(home)]
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in running]
    assert [process.returncode for process in running] == [0] * processes
    return [int(output) for output in outputs]


def _processes_named(name: str, cwd: Path) -> list[int]:
    """Live processes called ``name`` working in ``cwd``."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if process_alive(pid, name, cwd)]


async def _query(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_redis_url_serves_streams(home: Path) -> None:
    server = embedded.start_redis(home)
    client = aioredis.from_url(server.url)
    try:
        entry_id = await client.xadd("orders", {"n": "1"})
        assert await client.xrange("orders") == [(entry_id, {b"n": b"1"})]
    finally:
        await client.aclose()


async def test_redis_is_6_2_with_aof_and_no_tcp(home: Path) -> None:
    server = embedded.start_redis(home)
    client = aioredis.from_url(server.url, decode_responses=True)
    try:
        assert (await client.info("server"))["redis_version"].startswith("6.2.")
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
        assert await client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert await client.config_get("port") == {"port": "0"}
    finally:
        await client.aclose()
    assert server.version.startswith("6.2.")
    assert server.url == f"unix://{home}/redis/redis.sock"
    assert server.data_dir == home / "redis"


def test_second_redis_start_reuses_the_server(home: Path) -> None:
    assert embedded.start_redis(home) == embedded.start_redis(home)


def test_redis_started_by_two_processes_at_once_is_one_server(own_home: Path) -> None:
    first, second = _start_concurrently("start_redis", own_home)
    assert first == second
    assert [server.pid for server in embedded.status(own_home)] == [first]
    assert _processes_named("redis-server", own_home / "redis") == [first]


async def test_redis_data_survives_stop_and_start(own_home: Path) -> None:
    before = embedded.start_redis(own_home)
    client = aioredis.from_url(before.url)
    await client.set("kept", "yes")
    await client.aclose()

    assert embedded.stop_all(own_home) == ["redis"]
    assert not process_alive(before.pid, "redis-server")

    after = embedded.start_redis(own_home)
    client = aioredis.from_url(after.url)
    try:
        assert after.pid != before.pid
        assert await client.get("kept") == b"yes"
    finally:
        await client.aclose()


def test_redis_that_cannot_bind_its_socket_fails_fast_with_its_log(own_home: Path) -> None:
    (own_home / "redis" / "redis.sock").mkdir(parents=True)  # a directory where the socket goes
    with pytest.raises(EmbeddedServerError, match="exited while starting") as failure:
        embedded.start_redis(own_home)
    assert "redis.log" in str(failure.value)
    assert "TIDINGS_REDIS_URL" in str(failure.value)


async def test_postgres_url_accepts_asyncpg(home: Path) -> None:
    server = embedded.start_postgres(home)
    assert str(await _query(server.url, "SELECT version()")).startswith("PostgreSQL 18.")
    assert await _query(server.url, "SELECT current_database()") == "tidings"
    assert server.version.startswith("18.")
    assert server.data_dir == home / "postgres"


def test_second_postgres_start_reuses_the_server(home: Path) -> None:
    assert embedded.start_postgres(home) == embedded.start_postgres(home)


def test_postgres_started_by_two_processes_at_once_is_one_server(own_home: Path) -> None:
    first, second = _start_concurrently("start_postgres", own_home)
    assert first == second
    assert [server.pid for server in embedded.status(own_home)] == [first]


async def test_postgres_data_survives_stop_and_start_in_one_process(own_home: Path) -> None:
    before = embedded.start_postgres(own_home)
    await _query(before.url, "CREATE TABLE kept AS SELECT 42 AS answer")

    assert embedded.stop_all(own_home) == ["postgres"]
    assert not process_alive(before.pid, "postgres")

    after = embedded.start_postgres(own_home)
    assert after.pid != before.pid
    assert await _query(after.url, "SELECT answer FROM kept") == 42


def test_stop_all_stops_both_and_status_shows_none(own_home: Path) -> None:
    started = [embedded.start_redis(own_home), embedded.start_postgres(own_home)]
    assert embedded.status(own_home) == started

    assert embedded.stop_all(own_home) == ["redis", "postgres"]

    assert not process_alive(started[0].pid, "redis-server")
    assert not process_alive(started[1].pid, "postgres")
    assert embedded.status(own_home) == []
    assert embedded.stop_all(own_home) == []


def test_pid_files_left_by_a_reboot_neither_block_a_start_nor_kill_their_pid(
    own_home: Path,
) -> None:
    embedded.start_redis(own_home)
    embedded.start_postgres(own_home)
    embedded.stop_all(own_home)
    # After a reboot the pids in pid files may belong to anything, here this very test.
    (own_home / "redis" / "redis.pid").write_text(f"{os.getpid()}\n")
    (own_home / "postgres" / "postmaster.pid").write_text(
        f"{os.getpid()}\n{own_home / 'postgres'}\n1764337000\n5432\n{own_home / 'postgres'}\n"
        "\n  1234567     12345\nready\n"
    )

    assert embedded.status(own_home) == []
    assert embedded.stop_all(own_home) == []
    assert [embedded.start_redis(own_home).name, embedded.start_postgres(own_home).name] == [
        "redis",
        "postgres",
    ]


def test_stop_all_on_a_home_never_used_stops_nothing(tmp_path: Path) -> None:
    assert embedded.stop_all(tmp_path / "never-used") == []
    assert embedded.status(tmp_path / "never-used") == []


async def test_long_home_path_puts_sockets_under_tmp(own_home: Path) -> None:
    home = own_home / ("long-" * 20)
    assert len(str(home / "redis" / "redis.sock")) > 107

    redis_server = embedded.start_redis(home)
    postgres_server = embedded.start_postgres(home)
    try:
        assert redis_server.url.startswith("unix:///tmp/tidings-")
        assert "?host=/tmp/" in postgres_server.url
        client = aioredis.from_url(redis_server.url)
        assert await client.ping()
        await client.aclose()
        assert await _query(postgres_server.url, "SELECT 1") == 1
        assert embedded.start_redis(home) == redis_server
    finally:
        embedded.stop_all(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="pgserver switches users only when run as root")
def test_postgres_runs_unprivileged_from_a_private_home_under_tmp(own_home: Path) -> None:
    own_home.chmod(0o700)
    home = own_home / "private"
    home.mkdir(mode=0o700)

    try:
        server = embedded.start_postgres(home)
        assert Path(f"/proc/{server.pid}").stat().st_uid == pwd.getpwnam("pgserver").pw_uid
    finally:
        embedded.stop_all(home)
