"""Notices that Redis lost its data, and restores what lives there from the offline log.

A FLUSHALL, a restart without persistence or a failover to an empty replica leaves the consumer
writing new events onto empty states: users with 80 actions online would have 5. So:

1. a marker key per Feast project (`homefeed:generation:{project}`) holds the current
   generation once Redis holds the consumer's data;
2. every micro-batch checks it first (one GET). Missing while the offline log holds events
   means the data is gone (missing with an empty log is a first start: the marker is set);
3. one consumer wins `SET NX` of a short-lived "restoring" token, rebuilds every user's sequence
   and state, every pin's features and every engagement counter from the log (`homefeed stream
   backfill`'s code), logs it,
   counts it (`homefeed_stream_redis_restores_total`, alert `HomefeedRedisDataLost`) and sets a
   new generation; the others retry their batch until it is done (`RestoreInProgress` is an
   outage to them). A restorer that dies mid-way leaves the token to expire, and another takes
   over.

The group's record counters were in Redis too: they restart from zero (said in the log line).
"""

from __future__ import annotations

import logging
import time
import uuid

from homefeed import features as F
from homefeed import offline_log
from homefeed.stream import metrics as M
from homefeed.stream import watchdog
from homefeed.stream.ops import backfill

log = logging.getLogger(__name__)

GENERATION_KEY = "homefeed:generation:{project}"
RESTORING = "restoring"
RESTORE_LEASE_MS = 10 * 60 * 1000  # how long a restorer holds the token before another may take over


class RestoreInProgress(RuntimeError):
    """Another consumer is restoring Redis from the log: retry the batch when it is done."""


class Generation:
    def __init__(self, settings, redis_client, project: str):
        self.settings = settings
        self.redis = redis_client
        self.key = GENERATION_KEY.format(project=project)

    def check(self, store) -> None:
        """Step 2: one GET when Redis still holds its data; restores it when it lost it."""
        current = self.redis.get(self.key)
        if current is not None:
            if current.decode().startswith(RESTORING):
                raise RestoreInProgress(f"Redis is being restored from the offline log ({self.key})")
            return
        if not offline_log.partition_files(offline_log.table_dir(self.settings.offline_dir,
                                                                 F.ACTION_EVENTS)):
            self.redis.set(self.key, self._new_generation(), nx=True)  # a first start
            return
        self.restore(store)

    def restore(self, store) -> dict | None:
        """Step 3. Returns the backfill summary, or None when another consumer restores."""
        token = f"{RESTORING}:{uuid.uuid4().hex}"
        if not self.redis.set(self.key, token, nx=True, px=RESTORE_LEASE_MS):
            raise RestoreInProgress(f"another consumer is restoring Redis from the offline log ({self.key})")
        log.error("Redis lost its data (the generation marker %s is gone while the offline log "
                  "holds events): restoring every sequence, state, pin and engagement counter from the log; the "
                  "consumer counters restart from zero", self.key)
        M.REDIS_RESTORES.inc()
        started = time.perf_counter()
        try:
            with watchdog.paused():  # the whole log: may take longer than the watchdog allows a step
                summary = backfill(self.settings, "0", store=store, redis_client=self.redis)
        except BaseException:
            if (self.redis.get(self.key) or b"").decode() == token:
                self.redis.delete(self.key)  # let the next batch (or another consumer) try again
            raise
        self.redis.set(self.key, self._new_generation())
        log.warning("restored Redis from the offline log in %.1f s: %d users from %d events, %d pins",
                    time.perf_counter() - started, summary["users"], summary["events"], summary["pins"])
        return summary

    @staticmethod
    def _new_generation() -> str:
        return f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"
