"""App lifecycle hooks: services are built after connections open and closed before they go."""

from __future__ import annotations

import pytest

from tidings import App, Settings
from tidings.testing import MemoryTransport


async def test_start_hooks_run_after_connecting_and_stop_hooks_before_closing() -> None:
    app = App("hooks")
    seen: list[str] = []

    @app.on_start
    async def opened(started: App) -> None:
        seen.append(f"start, connected={started.started}")

    @app.on_stop
    async def closing(stopping: App) -> None:
        seen.append(f"stop, connected={stopping.started}")

    await app.start(Settings(namespace="hooks"), transport=MemoryTransport())
    await app.stop()
    assert seen == ["start, connected=True", "stop, connected=True"]
    assert not app.started


async def test_a_failing_stop_hook_still_closes_the_connections() -> None:
    app = App("hooks")

    @app.on_stop
    async def broken(_: App) -> None:
        raise RuntimeError("flush failed")

    await app.start(Settings(namespace="hooks"), transport=MemoryTransport())
    with pytest.raises(RuntimeError, match="flush failed"):
        await app.stop()
    assert not app.started
