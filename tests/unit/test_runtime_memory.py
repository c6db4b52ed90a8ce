"""The runtime's behaviour suite on the in-memory transport."""

from __future__ import annotations

import pytest

from runtime_behaviour import Connect, RuntimeBehaviour
from tidings.testing import MemoryTransport


class TestRuntimeInMemory(RuntimeBehaviour):
    @pytest.fixture
    def connect(self) -> Connect:
        store = MemoryTransport()
        return lambda: store
