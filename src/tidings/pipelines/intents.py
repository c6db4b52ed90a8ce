"""Intent rows: a delivery leg is marked 'sending' in PostgreSQL before its provider is called.

This is what makes the effect exactly-once (DESIGN.md D2): a leg is sent only by the one
consumer that moved its row to 'sending'. If that worker dies between the provider call and
the ack, the redelivered message finds the row still 'sending' — the outcome is unknown — and
does not send blindly a second time (see :mod:`tidings.pipelines.sending`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from tidings.direct import DirectPool, Statement, json_param

DeliveryKey = tuple[str, str, str]  # (message_id, channel, recipient)


class Claim(NamedTuple):
    """What a claim found: CLAIMED, BUSY or the leg's state, and its last recorded error."""

    state: str
    error: str | None

CLAIMED = "claimed"
"""The leg is ours to send now."""
BUSY = "busy"
"""Another consumer is sending it right now (its 'sending' row is fresh): look again later."""

# A row in accepted / delayed / failed moves to 'sending' and is ours; a missing one is created
# so. Any other state is reported as it was; a 'sending' row younger than :stale_s is busy.
# The legs come as one JSON array of [message_id, channel, recipient] (see direct.json_param).
_CLAIM = Statement.parse("""
WITH want AS (
    SELECT DISTINCT leg->>0 AS message_id, leg->>1 AS channel, leg->>2 AS recipient
    FROM json_array_elements(CAST(:legs AS json)) AS leg
), prior AS (
    SELECT d.message_id, d.channel, d.recipient, d.last_error,
           CASE WHEN d.state = 'sending'
                     AND d.updated_at > now() - make_interval(secs => :stale_s)
                THEN 'busy' ELSE d.state END AS state
    FROM deliveries AS d JOIN want USING (message_id, channel, recipient)
), claimed AS (
    INSERT INTO deliveries AS d (message_id, channel, recipient, state)
    SELECT message_id, channel, recipient, 'sending' FROM want
    ORDER BY message_id, channel, recipient
    ON CONFLICT (message_id, channel, recipient) DO UPDATE
        SET state = 'sending', updated_at = now()
        WHERE d.state IN ('accepted', 'delayed', 'failed')
    RETURNING d.message_id, d.channel, d.recipient
)
SELECT want.message_id, want.channel, want.recipient, prior.state AS prior,
       prior.last_error, claimed.message_id IS NOT NULL AS claimed
FROM want
LEFT JOIN prior USING (message_id, channel, recipient)
LEFT JOIN claimed USING (message_id, channel, recipient)
""")


_RELEASE = Statement.parse("""
UPDATE deliveries AS d SET state = 'failed', updated_at = now(),
       last_error = 'not sent: interrupted before its provider was called'
FROM unnest(CAST(:message_id AS text[]), CAST(:channel AS text[]), CAST(:recipient AS text[]))
     AS r(message_id, channel, recipient)
WHERE d.message_id = r.message_id AND d.channel = r.channel AND d.recipient = r.recipient
  AND d.state = 'sending'
""")


_SUPERSEDE = Statement.parse("""
UPDATE deliveries AS d SET state = 'dead', updated_at = now(),
       last_error = coalesce(d.last_error || '; ', '')
                    || 'superseded: the fallback chain delivered on an earlier channel'
FROM unnest(CAST(:message_id AS text[]), CAST(:channel AS text[])) AS s(message_id, channel)
WHERE d.message_id = s.message_id AND d.channel = s.channel AND d.state = 'failed'
""")


class Intents:
    """Claims delivery legs before they are sent, one statement per batch."""

    def __init__(self, direct: DirectPool, *, stale_after_s: float = 30.0) -> None:
        self._direct = direct
        # A 'sending' row older than this belongs to a worker that died mid-send.
        self._stale_s = stale_after_s

    async def release(self, legs: Sequence[DeliveryKey]) -> None:
        """Give back claimed legs whose provider was never called (the batch was interrupted):
        they are retried like a failure, not mistaken later for an outcome unknown."""
        if legs:
            await self._direct.execute(_RELEASE, {
                "message_id": [leg[0] for leg in legs],
                "channel": [leg[1] for leg in legs],
                "recipient": [leg[2] for leg in legs],
            })

    async def supersede(self, channels: Sequence[tuple[str, str]]) -> None:
        """End the 'failed' legs of (message, channel)s a fallback chain no longer needs."""
        if channels:
            await self._direct.execute(_SUPERSEDE, {"message_id": [c[0] for c in channels],
                                                    "channel": [c[1] for c in channels]})

    async def claim(self, legs: Sequence[DeliveryKey]) -> dict[DeliveryKey, Claim]:
        """For each leg: CLAIMED, BUSY, or the state it was already in: 'sent', 'filtered',
        'dead', or 'sending' (stale: its sender died; the outcome is unknown), with the
        leg's last recorded error."""
        if not legs:
            return {}
        params = {"legs": json_param(legs), "stale_s": self._stale_s}
        result: dict[DeliveryKey, Claim] = {}
        for row in await self._direct.fetch(_CLAIM, params):  # one statement: atomic
            key = (row["message_id"], row["channel"], row["recipient"])
            prior = row["prior"]
            if row["claimed"]:
                state = CLAIMED
            elif prior in ("sent", "filtered", "dead", "sending"):
                state = prior
            else:
                state = BUSY
            result[key] = Claim(state, row["last_error"])
        return result
