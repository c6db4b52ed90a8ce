"""Intent rows: a delivery leg is marked 'sending' in PostgreSQL before its provider is called.

This is what makes the effect exactly-once (DESIGN.md D2): a leg is sent only by the one
consumer that moved its row to 'sending'. If that worker dies between the provider call and
the ack, the redelivered message finds the row still 'sending' — the outcome is unknown — and
does not send blindly a second time (see :mod:`tidings.pipelines.sending`).

Each claim carries a token, stored on the rows it moves. When a claim's reply is lost (the
database restarted, the connection broke, the call was cancelled), its rows may be 'sending'
though no provider was called. The worker keeps the tokens of those legs and claims them again
with the same token: a 'sending' row holding it is still ours. So is a row whose release failed.
A different worker cannot tell such a row from a crashed send, and leaves it an outcome unknown;
so a worker that stops gives back the legs it remembers (:meth:`Intents.give_back`).

The legs of a new message can be claimed before they are routed, by the statement that claims
its idempotency key (a new message has no delivery rows yet), which saves the intent claim's
round trip: :meth:`Intents.foresee` gives them tokens and remembers them, :meth:`Intents.hold`
takes the legs that statement claimed, which :meth:`Intents.claim` then hands out without asking
the database again. A foreseen leg that is not sent is forgotten once the ledger records what
became of it (filtered, delayed, dead), or released (:meth:`Intents.release_unsent`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import asyncpg

from tidings.direct import DirectPool, Statement, json_param

log = logging.getLogger(__name__)

DeliveryKey = tuple[str, str, str]  # (message_id, channel, recipient)


class Claim(NamedTuple):
    """What a claim found: CLAIMED, BUSY or the leg's state, and its last recorded error; a
    CLAIMED leg also has the claim's token (what :meth:`Intents.release` needs)."""

    state: str
    error: str | None
    token: str | None = None

CLAIMED = "claimed"
"""The leg is ours to send now."""
BUSY = "busy"
"""Another consumer is sending it right now (its 'sending' row is fresh): look again later."""
GONE = "gone"
"""Its message is no longer in the ledger (retention deleted it): it cannot be sent once."""

# A row in accepted / delayed / failed moves to 'sending' and is ours; a missing one is created
# so (unless its message is gone from the ledger, see _CLAIM_CHECKED); so is a 'sending' row
# that holds the leg's token. Any other state is reported as it was; a 'sending' row younger
# than :stale_s is busy. The legs come as one JSON array of [message_id, channel, recipient,
# token] (see direct.json_param).
_CLAIM_SQL = """
WITH want AS (
    SELECT DISTINCT leg->>0 AS message_id, leg->>1 AS channel, leg->>2 AS recipient,
                    leg->>3 AS token, {known} AS known
    FROM json_array_elements(CAST(:legs AS json)) AS leg
), prior AS (
    SELECT d.message_id, d.channel, d.recipient, d.last_error,
           CASE WHEN d.state = 'sending'
                     AND d.updated_at > now() - make_interval(secs => :stale_s)
                THEN 'busy' ELSE d.state END AS state
    FROM deliveries AS d JOIN want USING (message_id, channel, recipient)
), claimed AS (
    INSERT INTO deliveries AS d (message_id, channel, recipient, state, claim_token)
    SELECT message_id, channel, recipient, 'sending', token FROM want WHERE known
    ORDER BY message_id, channel, recipient
    ON CONFLICT (message_id, channel, recipient) DO UPDATE
        SET state = 'sending', updated_at = now(), claim_token = excluded.claim_token
        WHERE d.state IN ('accepted', 'delayed', 'failed')
           OR (d.state = 'sending' AND d.claim_token = excluded.claim_token)
    RETURNING d.message_id, d.channel, d.recipient
)
SELECT want.message_id, want.channel, want.recipient, want.token, want.known,
       prior.state AS prior, prior.last_error, claimed.message_id IS NOT NULL AS claimed
FROM want
LEFT JOIN prior USING (message_id, channel, recipient)
LEFT JOIN claimed USING (message_id, channel, recipient)
"""
_CLAIM = Statement.parse(_CLAIM_SQL.format(known="true"))
# Only once a claim failed on the messages foreign key (a leg whose message retention deleted
# while it waited): the same, leaving out and reporting such legs. Not on every claim: even
# written so (a subquery with LIMIT, probed per leg through the primary key, where EXISTS was
# planned as a scan of the whole table: 3 ms → 18 ms for 100 legs among 60 000 messages).
_CLAIM_CHECKED = Statement.parse(_CLAIM_SQL.format(
    known="(SELECT true FROM messages AS m WHERE m.id = leg->>0 LIMIT 1) IS NOT NULL"))


# Only rows this claim still holds: one gone stale and claimed by another is theirs.
_RELEASE = Statement.parse("""
UPDATE deliveries AS d SET state = 'failed', updated_at = now(), claim_token = NULL,
       last_error = 'not sent: interrupted before its provider was called'
FROM json_to_recordset(CAST(:legs AS json))
     AS r(message_id text, channel text, recipient text, token text)
WHERE d.message_id = r.message_id AND d.channel = r.channel AND d.recipient = r.recipient
  AND d.state = 'sending' AND d.claim_token = r.token
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

    # Legs remembered as possibly claimed but unsent: beyond this many, the oldest are
    # forgotten (each then becomes an outcome unknown, never a second send).
    UNSURE_LIMIT = 100_000

    def __init__(self, direct: DirectPool, *, stale_after_s: float = 30.0) -> None:
        self._direct = direct
        # A 'sending' row older than this belongs to a worker that died mid-send.
        self._stale_s = stale_after_s
        # leg → the token of a claim (or release) of this worker whose outcome is unknown.
        self._unsure: OrderedDict[DeliveryKey, str] = OrderedDict()
        # Unsure legs known to be claimed (see hold), until when (time.monotonic()) that is
        # trusted without asking: well before the row could be taken for a dead sender's.
        self._held: dict[DeliveryKey, float] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    def _remember(self, tokens: Mapping[DeliveryKey, str]) -> None:
        for leg, token in tokens.items():
            self._unsure[leg] = token
            self._unsure.move_to_end(leg)
        while len(self._unsure) > self.UNSURE_LIMIT:
            self._held.pop(self._unsure.popitem(last=False)[0], None)

    def foresee(self, legs: Iterable[DeliveryKey]) -> dict[DeliveryKey, str]:
        """Tokens for legs that a statement other than :meth:`claim` may claim; until they are
        claimed, forgotten or released, they are remembered as unsure (a leg remembered
        already keeps its token: its row may hold it)."""
        fresh = uuid.uuid4().hex
        tokens = {leg: self._unsure.get(leg, fresh) for leg in legs}
        self._remember(tokens)
        return tokens

    def hold(self, legs: Iterable[DeliveryKey], since: float) -> None:
        """Foreseen legs the statement sent at ``since`` (time.monotonic()) claimed:
        :meth:`claim` takes them without a statement while their rows are surely fresh."""
        until = since + self._stale_s / 2
        self._held.update((leg, until) for leg in legs if leg in self._unsure)

    def forget(self, legs: Iterable[DeliveryKey]) -> None:
        """Foreseen legs that will not be sent: the ledger records what became of them (which
        also ends their claim), or their message was a duplicate and claimed none."""
        for leg in legs:
            self._unsure.pop(leg, None)
            self._held.pop(leg, None)

    async def release_unsent(self, legs: Iterable[DeliveryKey]) -> None:
        """Release those of ``legs`` this worker remembers (claimed, or maybe claimed, and not
        sent), after the batch that was to send them broke or ended without sending them:
        whichever worker gets their message next can then claim them. A release that fails is
        logged, not raised (its legs stay remembered): this runs where a batch is cleaned up,
        and the error that broke it is the one to report."""
        if not self._unsure:  # as after most batches: ``legs`` is not even gone through
            return
        tokens = {leg: self._unsure[leg] for leg in legs if leg in self._unsure}
        try:
            await self.release(tokens)
        except Exception as exc:
            log.warning("could not give back %d delivery legs claimed and not sent (%s: %s);"
                        " this worker keeps their claims", len(tokens), type(exc).__name__, exc)

    async def release(self, tokens: Mapping[DeliveryKey, str]) -> None:
        """Give back claimed legs (each with its claim's token) whose provider was never called
        (the batch was interrupted): they are retried like a failure, not mistaken later for
        an outcome unknown.

        The release runs on even if its caller is cancelled (the shutdown deadline), and
        :meth:`give_back` waits for it."""
        if not tokens:
            return
        for leg, token in tokens.items():  # given back now, or remembered again if it fails
            if self._unsure.get(leg) == token:  # (before any await: no claim may take it)
                del self._unsure[leg]
                self._held.pop(leg, None)
        task = asyncio.create_task(self._release(dict(tokens)))
        self._releasing.add(task)
        task.add_done_callback(self._released)
        await asyncio.shield(task)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled():
            task.exception()  # seen here: its caller may be gone (its legs are remembered)

    async def _release(self, tokens: dict[DeliveryKey, str]) -> None:
        try:
            await self._direct.execute(_RELEASE, {"legs": json_param(
                [{"message_id": m, "channel": c, "recipient": r, "token": token}
                 for (m, c, r), token in tokens.items()])})
        except BaseException:  # still ours, and known unsent: the next claim takes them
            self._remember(tokens)
            raise

    async def give_back(self) -> int:
        """Release every leg this worker remembers as claimed and not sent (see the module
        docstring), once the releases under way have ended, before it stops: the next owner
        of their messages can then claim them, where it would otherwise find them 'sending',
        an outcome unknown. Returns how many were released now."""
        await asyncio.gather(*self._releasing, return_exceptions=True)
        tokens = dict(self._unsure)
        await self.release(tokens)
        return len(tokens)

    async def supersede(self, channels: Sequence[tuple[str, str]]) -> None:
        """End the 'failed' legs of (message, channel)s a fallback chain no longer needs."""
        if channels:
            await self._direct.execute(_SUPERSEDE, {"message_id": [c[0] for c in channels],
                                                    "channel": [c[1] for c in channels]})

    async def claim(self, legs: Sequence[DeliveryKey]) -> dict[DeliveryKey, Claim]:
        """For each leg: CLAIMED (with its token), BUSY, GONE, or the state it was already
        in: 'sent', 'filtered', 'dead', or 'sending' (stale: its sender died; the outcome is
        unknown), with the leg's last recorded error."""
        result: dict[DeliveryKey, Claim] = {}
        fresh, now = uuid.uuid4().hex, time.monotonic()
        tokens: dict[DeliveryKey, str] = {}
        # A leg left unsure goes with its old token; it is taken out while this claim is in
        # flight, so a concurrent claim of it cannot also find the row ours. A held one is
        # ours already.
        for leg in dict.fromkeys(legs):
            token = self._unsure.pop(leg, fresh)
            if self._held.pop(leg, 0.0) > now:
                result[leg] = Claim(CLAIMED, None, token)
            else:
                tokens[leg] = token
        if not tokens:
            return result
        params = {"legs": json_param([[*leg, token] for leg, token in tokens.items()]),
                  "stale_s": self._stale_s}
        try:
            try:
                rows = await self._direct.fetch(_CLAIM, params)  # one statement: atomic
            except asyncpg.ForeignKeyViolationError:  # it wrote nothing
                rows = await self._direct.fetch(_CLAIM_CHECKED, params)
        except BaseException:  # it may have committed: these legs may be ours, unsent
            self._remember(tokens)
            self._remember({leg: claim.token for leg, claim in result.items()  # (all held)
                            if claim.token is not None})
            raise
        for row in rows:
            key = (row["message_id"], row["channel"], row["recipient"])
            prior = row["prior"]
            if not row["known"]:
                result[key] = Claim(GONE, None)
                continue
            if row["claimed"]:
                result[key] = Claim(CLAIMED, row["last_error"], row["token"])
                continue
            state = prior if prior in ("sent", "filtered", "dead", "sending") else BUSY
            result[key] = Claim(state, row["last_error"])
        return result
