"""A scheduler process for crash tests: it stops mid-transaction so a test can SIGKILL it there.

Run it as ``python tests/pipelines/sched_victim.py NAME PHASE HOLD_S`` with the ``TIDINGS_*``
variables set. At each checkpoint of PHASE (``tick``: fires written, not committed; ``relay``:
messages published to Redis, outbox rows not yet deleted) it prints ``HOLD PHASE`` on stdout and
sleeps HOLD_S seconds, still inside the transaction.
"""

from __future__ import annotations

import asyncio
import sys

from tidings.scheduling.scheduler import serve
from tidings.settings import Settings


def main() -> None:
    name, phase, hold_s = sys.argv[1], sys.argv[2], float(sys.argv[3])

    async def checkpoint(at: str) -> None:
        if at == phase:
            print(f"HOLD {at}", flush=True)
            await asyncio.sleep(hold_s)

    asyncio.run(
        serve(Settings.from_env(), name=name, batch=10, poll_s=0.2, migrate=False,
              checkpoint=checkpoint)
    )


if __name__ == "__main__":
    main()
