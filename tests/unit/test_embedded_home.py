"""The embedded servers' home: its lock, and telling live servers from stale pid files."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from tidings.embedded.home import home_lock, log_tail, process_alive, read_pid
from tidings.errors import EmbeddedServerError


def test_home_lock_keeps_a_second_holder_out(tmp_path: Path) -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with home_lock(tmp_path):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        with pytest.raises(EmbeddedServerError, match="held"), home_lock(tmp_path, timeout=0.1):
            pass
    finally:
        release.set()
        holder.join()
    with home_lock(tmp_path, timeout=0.1):
        pass


def test_home_lock_creates_the_home_privately(tmp_path: Path) -> None:
    with home_lock(tmp_path / "new"):
        pass
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")
def test_process_alive_checks_name_and_working_directory(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "30"], cwd=tmp_path) as sleeper:
        try:
            assert process_alive(sleeper.pid, "sleep")
            assert process_alive(sleeper.pid, "sleep", cwd=tmp_path)
            assert not process_alive(sleeper.pid, "sleep", cwd=tmp_path / "elsewhere")
            assert not process_alive(sleeper.pid, "redis-server")
        finally:
            sleeper.kill()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_process_alive_counts_a_zombie_as_gone() -> None:
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        sleeper.kill()  # not reaped until the with block ends: a zombie meanwhile
        deadline = time.monotonic() + 5
        while process_alive(sleeper.pid, "sleep") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Path(f"/proc/{sleeper.pid}").exists()
        assert not process_alive(sleeper.pid, "sleep")


def test_read_pid_ignores_missing_and_garbled_files(tmp_path: Path) -> None:
    (tmp_path / "good.pid").write_text("1234\n")
    (tmp_path / "bad.pid").write_text("not a pid\n")
    assert read_pid(tmp_path / "good.pid") == 1234
    assert read_pid(tmp_path / "bad.pid") is None
    assert read_pid(tmp_path / "missing.pid") is None


def test_log_tail_shows_the_last_lines_after_an_offset(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("old run\n")
    offset = log.stat().st_size
    log.write_text("old run\n" + "".join(f"line {n}\n" for n in range(30)))
    tail = log_tail(log, lines=3, offset=offset)
    assert tail == "line 27\nline 28\nline 29"
    assert "no log" in log_tail(tmp_path / "missing.log")
