"""The home directory of the embedded servers: its lock, its processes, their logs."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tidings.errors import EmbeddedServerError

LOCK_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_PROC = Path("/proc")


@dataclass(frozen=True)
class EmbeddedServer:
    """An embedded server that is running: connect to ``url``; it keeps its data in ``data_dir``."""

    name: str  # 'redis' | 'postgres'
    url: str
    data_dir: Path
    pid: int
    version: str


def resolve_home(home: Path) -> Path:
    """The absolute, symlink-free form of ``home``, so every process derives the same paths."""
    return home.expanduser().resolve()


def make_dir(path: Path) -> Path:
    """Create ``path`` (private to this user) or fail saying how to fix it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"no write access to {path}")
    except OSError as exc:
        raise EmbeddedServerError(
            f"data dir not writable: cannot use {path} ({exc}); point TIDINGS_HOME at a "
            "writable directory, or set TIDINGS_REDIS_URL and TIDINGS_DATABASE_URL to use "
            "your own servers"
        ) from exc
    return path


@contextmanager
def home_lock(home: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the home's inter-process lock, so concurrent starts and stops get one server.

    Not re-entrant: a second ``home_lock`` on the same home in the same process waits for the
    first, so public functions take it once and call helpers that assume it is held.
    """
    path = make_dir(home) / ".embedded.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"another process has held {path} for {timeout:.0f} s while starting or "
                        "stopping an embedded server; wait for it, or find it with "
                        f"`fuser {path}`"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def process_alive(pid: int, name: str, cwd: Path | None = None) -> bool:
    """Whether ``pid`` is a live process called ``name`` working in directory ``cwd``.

    A pid file outlives a crash or a reboot, and its pid may since belong to another program,
    even another redis-server or postgres: both servers chdir to their data dir, so where /proc
    exists the name and working directory tell ours apart. Zombies count as gone: a daemon's
    parent here may be an init that never reaps them.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, run by another user (PostgreSQL runs as `pgserver` under root)
    if not (_PROC / "self").exists():
        return True  # no /proc (macOS): a live pid is all we can know
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        workdir = os.readlink(_PROC / str(pid) / "cwd") if cwd is not None else None
    except OSError:
        return False  # exited meanwhile
    comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return state not in "ZX" and comm == name and (cwd is None or workdir == str(cwd))


def wait_gone(pid: int, name: str, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Wait until ``pid`` has exited; False if it still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while process_alive(pid, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_pid(path: Path) -> int | None:
    """The pid on the first line of a pid file, or None if there is no readable one."""
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def log_tail(path: Path, lines: int = 15, offset: int = 0) -> str:
    """The last lines of a server log written after byte ``offset``, for error messages."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"
