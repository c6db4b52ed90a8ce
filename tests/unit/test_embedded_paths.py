"""Where the embedded servers put their sockets and how they are configured and addressed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tidings.embedded.postgres_server import Postmaster, _launch
from tidings.embedded.redis_server import SOCKET_PATH_MAX, config, socket_path
from tidings.errors import EmbeddedServerError

_POSTMASTER_PID = """\
4242
{pgdata}
1764337000
{port}
{socket_dir}

  1234567     12345
ready
"""


def test_redis_socket_lives_in_the_data_dir_of_a_short_home() -> None:
    assert socket_path(Path("/home/ann/.tidings")) == Path("/home/ann/.tidings/redis/redis.sock")


def test_redis_socket_of_a_long_home_falls_back_to_a_stable_path_under_tmp() -> None:
    home = Path("/srv") / ("deep/" * 25) / "tidings"
    sock = socket_path(home)
    assert sock.parent.parent == Path("/tmp")
    assert sock.parent.name.startswith(f"tidings-{os.geteuid()}-")
    assert len(os.fsencode(sock)) <= SOCKET_PATH_MAX
    assert socket_path(home) == sock
    assert socket_path(home / "other") != sock


def test_redis_config_has_aof_no_tcp_and_quoted_paths() -> None:
    text = config(Path('/data/my "home"/redis'), Path("/data/my home/redis/redis.sock"))
    lines = text.splitlines()
    assert {"daemonize yes", "port 0", "appendonly yes", "appendfsync everysec"} <= set(lines)
    assert 'unixsocket "/data/my home/redis/redis.sock"' in lines
    assert 'dir "/data/my \\"home\\"/redis"' in lines


def test_postmaster_pid_file_gives_pid_socket_and_readiness(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text(
        _POSTMASTER_PID.format(pgdata=tmp_path, port=5432, socket_dir="/run/pg sock")
    )
    postmaster = Postmaster.read(tmp_path)
    assert postmaster == Postmaster(4242, Path("/run/pg sock"), 5432, "ready")
    assert postmaster.url("tidings") == "postgresql://postgres:@/tidings?host=/run/pg%20sock"


def test_postmaster_url_names_a_port_other_than_5432(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text(
        _POSTMASTER_PID.format(pgdata=tmp_path, port=5433, socket_dir=tmp_path)
    )
    postmaster = Postmaster.read(tmp_path)
    assert postmaster is not None
    assert postmaster.url("tidings").endswith("&port=5433")


def test_half_written_postmaster_pid_file_reads_as_no_server(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text("4242\n")
    assert Postmaster.read(tmp_path) is None
    assert Postmaster.read(tmp_path / "absent") is None


def test_a_home_with_a_space_is_refused_before_postgres_is_started(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedServerError, match=r"its path has a space\. Set TIDINGS_HOME"):
        _launch(tmp_path / "my home" / "postgres")
