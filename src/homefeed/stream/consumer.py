"""The stream consumer: Kafka action events -> validated -> per-user latest-N sequences ->
Feast online store (Redis) and the offline parquet log; impressions (their own topic) ->
validated -> their own log table, `impression_events`, and per-user latest-N impression
sequences (`user_impression_sequence`, built and stored exactly like the action sequence).

One micro-batch at a time, at least once:

1. poll up to `batch_max_events` records; a batch waits for more at most `batch_max_ms` after its
   oldest record reached the broker (records that queued meanwhile are taken at once);
2. cheap per-message checks, routed by topic (homefeed.events.parse_event, parse_impression,
   parse_pin_upsert); failures go to the dead-letter topic with the original bytes and a reason
   header (a summary instead, when the value is too big for the topic); no record can raise out
   of this step;
3. the `action_events` Great Expectations suite once per micro-batch (never per message): its
   value checks; the frame's columns, dtypes and non-nulls hold by construction (`events_frame`);
4. merge each touched user's events into the sequence state kept in Redis (homefeed.sequence),
   and count the new ones in the per-user and per-pin engagement counters (one Lua script per
   entity, exactly once per record: homefeed.stream.engagement, whose docstring covers each
   crash point);
5. make the batch durable: raw events, sequence snapshots and counter versions to the offline
   log (fsync'd), then one Feast push of every changed sequence and counter, then the sequence
   states; after the actions, the batch's impressions: the `impression_events` suite once, their
   merge into the impression sequences (own states, same rules and compare-and-set), the
   counters (an impression is the denominator of every engagement rate), then their log table,
   sequence and counter versions, then the counters' and sequences' Feast push and the states
   (the action sequence never sees them: an impression is what was shown, not what the user
   did; a model setting may put both in its input, homefeed.model.batch.merge_impressions);
6. only then commit the Kafka offsets.

A crash anywhere before 6 replays the batch; every step is idempotent (dedup by (user, event_id),
Feast's strictly-newer timestamp rule, append-only log read with dedup), so replays change
nothing. Outages (Redis, the broker, the disk) are retried with backoff without committing; any
other error is a poison record: the batch is split until the record that fails alone is found,
and that record is dead-lettered with reason `apply_failed`. So every record is exactly one of
applied, duplicate, dead-lettered, pin upsert or impression (`BatchResult.accounted`), and none
stops ingestion. A replayed batch logs its impressions again (the log's readers drop the copies
by (user_id, event_id), as they do for actions); their sequences dedup by event id like actions'.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from homefeed import events as E
from homefeed import features as F
from homefeed import offline_log
from homefeed.redis_client import KeyScript
from homefeed.sequence import IMPRESSION_TYPE, Action, SequenceState, merge, next_snapshot_ms
from homefeed.settings import Settings
from homefeed.stream import metrics as M
from homefeed.stream import watchdog
from homefeed.stream.engagement import EngagementCounters, EngagementEvent, engagement_table
from homefeed.stream.generation import Generation, RestoreInProgress
from homefeed.stream.online_writer import OnlineWriter

log = logging.getLogger(__name__)

STATE_KEY = "homefeed:seqstate:{project}:{user_id}"
# One state per sequence view and user (same compare-and-set, same format: SequenceState).
STATE_KEYS = {F.USER_ACTION_SEQUENCE: STATE_KEY,
              F.USER_IMPRESSION_SEQUENCE: "homefeed:impseqstate:{project}:{user_id}"}
# Per consumer group: records, applied, duplicates, dead_lettered, pin_upserts, impressions,
# incremented together (one script) after every batch, so `homefeed stream status` can show that
# they add up.
COUNTERS_KEY = "homefeed:consumer:{project}:{group}"
COUNTER_FIELDS = ("records", "applied", "duplicates", "dead_lettered", "pin_upserts", "impressions")
# Compare-and-set of one user's state: written only if the stored value is still the one this
# consumer loaded (its SHA-1; '' = no state yet). One key per call: cluster-safe.
_CAS_STATE = """
local cur = redis.call('GET', KEYS[1])
local seen = ''
if cur then seen = redis.sha1hex(cur) end
if seen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
_ADD_COUNTERS = """
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
ACTION_EVENTS_TABLE = F.ACTION_EVENTS
IMPRESSION_EVENTS_TABLE = F.IMPRESSION_EVENTS
# Where a micro-batch's time goes, in order (BatchResult.stage_s, the stage histogram, the benchmark).
STAGES = ("poll", "parse", "validate", "state_read", "counters", "log_write", "feast_write", "state_write",
          "dead_letter", "commit")
# Records whose broker timestamp is this close to the wall clock are "live": they feed the
# freshness histogram. Replayed history (record timestamp = simulated arrival) does not.
LIVE_WINDOW_MS = 10 * 60 * 1000

# A micro-batch replaying history can span hours of event time. The offline log keeps one sequence
# version per user per this much arrival time, so point-in-time joins see the sequence as it was
# servable then, not as of the end of the batch. Live batches (~100 ms) give one version per user.
SNAPSHOT_GRANULARITY_MS = 1000

# A batch validator gets the batch's valid events as a frame and returns {row index: detail}
# for rows it rejects. The default runs the GX `action_events` suite.
BatchValidator = Callable[[pd.DataFrame], dict[int, str]]


# A dead letter carries the whole original value up to this size; above it (a value near the
# broker's message limit would make the dead-letter send itself fail) a JSON summary instead:
# reason, source, length and SHA-256 of the value, so the record can still be found and audited.
DEAD_LETTER_MAX_VALUE_BYTES = 256 * 1024
DEAD_LETTER_MAX_KEY_BYTES = 1024
# A dead letter not acknowledged within this bound fails the batch as an outage (retried,
# uncommitted, `homefeed_stream_dead_letter_failures_total`), never silently.
DEAD_LETTER_TIMEOUT_S = 30
COMMIT_TIMEOUT_MS = 30_000  # one offset commit; a longer broker outage is retried (and re-arms the watchdog)


@dataclass
class DeadLetter:
    record: object  # kafka ConsumerRecord
    reason: str
    detail: str


@dataclass
class BatchResult:
    records: int = 0
    applied: int = 0  # new action events, made durable (outside_window ones included)
    duplicates: int = 0
    outside_window: int = 0
    sequences_pushed: int = 0
    pins_pushed: int = 0
    impressions: int = 0  # valid impressions logged (a replayed batch logs its impressions again)
    dead: list[DeadLetter] = field(default_factory=list)
    freshness_ms: list[int] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES)

    @property
    def accounted(self) -> int:
        """applied + duplicates + dead-lettered + pin upserts + impressions: always equals `records`."""
        return self.applied + self.duplicates + len(self.dead) + self.pins_pushed + self.impressions

    def merge(self, other: "BatchResult") -> "BatchResult":
        for name in ("records", "applied", "duplicates", "outside_window", "sequences_pushed",
                     "pins_pushed", "impressions"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dead.extend(other.dead)
        self.freshness_ms.extend(other.freshness_ms)
        for stage, seconds in other.stage_s.items():
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + seconds
        return self

    @contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class MergedSequences:
    """One batch's merge into one sequence view: the rows to log and push, the new states and
    the bytes they were loaded from (the compare-and-set's fence)."""

    view: F.SequenceView
    loaded: dict = field(default_factory=dict)  # user -> stored state bytes (None: none yet)
    changed: dict = field(default_factory=dict)  # user -> new SequenceState
    rows: list = field(default_factory=list)  # the newest version per changed user (online)
    log_rows: list = field(default_factory=list)  # every version (offline log)
    already: int = 0  # events the states already held (a replay)
    fresh: set = field(default_factory=set)  # (user, event id) not in the states
    outside_window: int = 0


class StateFenced(RuntimeError):
    """Another consumer wrote these users' state since this one loaded it: the partition moved
    (this consumer stalled past its poll interval and is a zombie). The batch is abandoned
    uncommitted; whoever owns the partition now replays it."""

    def __init__(self, users: list[int]):
        super().__init__(f"state of {len(users)} users changed under this consumer (e.g. {users[:3]})")
        self.users = users


class DeadLetterUnavailable(RuntimeError):
    """The dead-letter topic could not take a record (broker down): retry the batch."""


# Redis replies that refuse a command because of the server's state, not the command's data:
# out of memory under noeviction (OOM), a failing RDB save (MISCONF), a busy script (BUSY), too
# few replicas (NOREPLICAS), a read-only replica (READONLY), loading (LOADING), a cluster move
# (MOVED/ASK/TRYAGAIN/CLUSTERDOWN/MASTERDOWN), missing rights (NOAUTH/NOPERM/WRONGPASS).
SERVER_REFUSALS = ("OOM", "MISCONF", "BUSY", "NOREPLICAS", "READONLY", "LOADING", "MOVED", "ASK",
                   "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOAUTH", "NOPERM", "WRONGPASS")


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors of a dependency (Redis, the broker, the disk), never of a record: retried with
    backoff, offsets not committed. Anything else raised while applying a batch is a poison
    record and is isolated (StreamConsumer.apply_isolating); `is_outage` also catches a Redis
    reply that refuses every command alike (SERVER_REFUSALS)."""
    from kafka.errors import KafkaError
    from redis import exceptions as R

    # RedisClusterException: the cluster client refusing a command (topology or client misuse) is
    # about every record alike: wait and say so, never dead-letter a batch for it.
    return (R.ConnectionError, R.TimeoutError, R.ReadOnlyError, R.TryAgainError, R.ClusterDownError,
            R.MasterDownError, R.RedisClusterException, R.OutOfMemoryError, R.NoPermissionError,
            R.AskError, OSError, KafkaError, DeadLetterUnavailable, RestoreInProgress)


def is_outage(exc: BaseException) -> bool:
    """True for an error of a dependency (wait and retry), False for one of a record (isolate)."""
    from redis.exceptions import ResponseError

    if isinstance(exc, transient_errors()):
        return True
    if isinstance(exc, ResponseError):
        words = str(exc).split(maxsplit=1)
        return bool(words) and words[0].upper() in SERVER_REFUSALS
    return False


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SequenceBuilder:
    """Applies micro-batches of Kafka records. Knows nothing of polling or committing, so it is
    driven the same way by the consumer loop, the tests and the backfill command."""

    def __init__(self, settings: Settings, store, redis_client, dlq_producer=None,
                 validator: BatchValidator | None = None, dlq_factory: Callable[[], object] | None = None,
                 impression_validator: BatchValidator | None = None):
        self.settings = settings
        self.store = store
        self.online = OnlineWriter(store)
        self.redis = redis_client
        self.dlq = dlq_producer
        # Makes a fresh dead-letter producer after a failure: an idempotent producer whose
        # broker restarted can stay broken (InitProducerId failures) until it is rebuilt.
        self.dlq_factory = dlq_factory
        self.validator = validator
        self.impression_validator = impression_validator  # the `impression_events` suite
        self.project = store.project
        self.generation = Generation(settings, redis_client, self.project)  # Redis data loss
        self._cas = KeyScript(redis_client, _CAS_STATE)  # the state compare-and-set
        self.counters = EngagementCounters(redis_client, self.project, SNAPSHOT_GRANULARITY_MS)

    def warm_up(self) -> None:
        """Pay one-off costs (GX context, Feast registry) before the first real batch, so the
        first events do not wait seconds behind them."""
        for view in F.SEQUENCE_VIEWS:
            self.store.get_feature_view(view.name)
        if self.validator is not None:
            probe = E.ActionEvent("warm-up", 1, 1, E.ActionType.CLICK, wall_ms())
            self.validator(events_frame([probe], [wall_ms()]))
        if self.impression_validator is not None:
            shown = E.ImpressionEvent("warm-up", 1, 1, wall_ms())
            self.impression_validator(impressions_frame([shown], [wall_ms()]))

    # -- state --------------------------------------------------------------------------
    def state_key(self, user_id: int, view: F.SequenceView = F.ACTION_SEQUENCE) -> str:
        return STATE_KEYS[view.name].format(project=self.project, user_id=user_id)

    def load_states(self, user_ids: list[int], raw_out: dict | None = None,
                    view: F.SequenceView = F.ACTION_SEQUENCE) -> dict[int, SequenceState]:
        """States of `user_ids` in `view`; `raw_out` receives the stored bytes (for `save_states`'
        fence)."""
        keys = [self.state_key(u, view) for u in user_ids]
        # Each user's state is one key. On a cluster the keys of a batch span slots: the
        # non-atomic variants split them per node (MGET/MSET would fail with CROSSSLOT).
        mget = getattr(self.redis, "mget_nonatomic", self.redis.mget)
        raw = mget(keys) if keys else []
        if raw_out is not None:
            raw_out.update(zip(user_ids, raw))
        return {u: SequenceState.from_bytes(r) for u, r in zip(user_ids, raw)}

    def save_states(self, states: dict[int, SequenceState], loaded: dict | None = None,
                    view: F.SequenceView = F.ACTION_SEQUENCE) -> None:
        """Write states. With `loaded` (the bytes `load_states` saw), each write is a
        compare-and-set, and StateFenced names the users whose state another consumer changed
        meanwhile (their writes are refused; the others are applied)."""
        if not states:
            return
        if loaded is None:  # unfenced (backfill: converges with the consumer by timestamps)
            mset = getattr(self.redis, "mset_nonatomic", self.redis.mset)
            mset({self.state_key(u, view): s.to_bytes() for u, s in states.items()})
            return
        users = list(states)
        ok = self._compare_and_set([(
            self.state_key(u, view),
            hashlib.sha1(loaded[u]).hexdigest() if loaded.get(u) is not None else "",
            states[u].to_bytes()) for u in users])
        fenced = [u for u, done in zip(users, ok) if not done]
        if fenced:
            raise StateFenced(fenced)

    def _compare_and_set(self, items: list[tuple[str, str, bytes]]) -> list[bool]:
        """Run the CAS script for each (key, sha1 seen, new value), one round trip per node."""
        return [bool(done) for done in self._cas.run([(key, [seen, value]) for key, seen, value in items])]

    def counters_key(self) -> str:
        return COUNTERS_KEY.format(project=self.project, group=self.settings.consumer_group)

    def record_counters(self, result: BatchResult) -> None:
        """Add a batch to the group's counters in Redis (atomically: they always add up). Raises
        on an outage; the consumer retries it before the next batch, so the counters and the
        dead-letter topic never disagree."""
        values = dict(zip(COUNTER_FIELDS, (result.records, result.applied, result.duplicates,
                                           len(result.dead), result.pins_pushed, result.impressions)))
        # one key, one script: atomic on a single node and on a cluster alike
        self.redis.eval(_ADD_COUNTERS, 1, self.counters_key(), *[x for kv in values.items() for x in kv])

    # -- one micro-batch ---------------------------------------------------------------
    def apply(self, records: list) -> BatchResult:
        """Apply one micro-batch. Raises only on an outage (`transient_errors`) or, for a record
        that passed every check but cannot be applied, on the error it caused."""
        result = BatchResult(records=len(records))
        with result.timed("state_read"):
            self.generation.check(self.store)  # restores Redis from the log if it lost its data
        with result.timed("parse"):
            actions, pins, impressions = self._parse(records, result)
        # Redelivered copies within one batch are duplicates, not invalid: drop them before the
        # suite (whose uniqueness check is for corruption, not for at-least-once).
        unique = unique_per_user(actions)
        result.duplicates += len(actions) - len(unique)
        with result.timed("validate"):
            actions, frame = self._validate_batch(unique, result)
        self._apply_actions(actions, result, frame)
        self._apply_pins(pins, result)
        self._apply_impressions(impressions, result)
        with result.timed("dead_letter"):
            self._dead_letter(result.dead)
        self._count(records, result)
        return result

    def _parse(self, records: list, result: BatchResult):
        now = wall_ms()
        skew = self.settings.max_future_skew_ms
        actions: list[tuple[object, E.ActionEvent]] = []
        pins: list[tuple[object, E.PinUpsert]] = []
        # (record, impression): the record keeps (topic, partition, offset) for what follows
        impressions: list[tuple[object, E.ImpressionEvent]] = []
        for record in records:
            try:
                if record.topic == self.settings.pins_topic:
                    pins.append((record, E.parse_pin_upsert(
                        record.value, embedding_dim=self.settings.embedding_dim, now_ms=now,
                        max_future_skew_ms=skew)))
                elif record.topic == self.settings.impressions_topic:
                    impressions.append((record, E.parse_impression(record.value, now_ms=now,
                                                                   max_future_skew_ms=skew)))
                else:
                    actions.append((record, E.parse_event(record.value, now_ms=now, max_future_skew_ms=skew)))
            except E.InvalidEvent as exc:
                result.dead.append(DeadLetter(record, exc.reason, exc.detail))
            except Exception as exc:  # a parser bug must not stop ingestion: dead-letter, say why
                log.warning("record %s:%s:%s could not be parsed", record.topic, record.partition,
                            record.offset, exc_info=True)
                result.dead.append(DeadLetter(record, E.REASON_APPLY_FAILED, f"{type(exc).__name__}: {exc}"))
        return actions, pins, impressions

    def dead_letter_alone(self, record, exc: BaseException) -> BatchResult:
        """The poison-record exit: `record` failed to apply on its own; dead-letter it."""
        detail = f"{type(exc).__name__}: {exc}"
        log.warning("record %s:%s:%s cannot be applied (%s): dead-lettered", record.topic,
                    record.partition, record.offset, detail[:300])
        result = BatchResult(records=1, dead=[DeadLetter(record, E.REASON_APPLY_FAILED, detail)])
        self._dead_letter(result.dead)
        self._count([record], result)
        return result

    def _count(self, records: list, result: BatchResult) -> None:
        """Metrics of a batch that went through (never of a failed attempt)."""
        for topic, n in Counter(r.topic for r in records).items():
            M.EVENTS_IN.labels(topic).inc(n)
        M.EVENTS_APPLIED.inc(result.applied)
        M.DUPLICATES.inc(result.duplicates)
        M.OUTSIDE_WINDOW.inc(result.outside_window)
        M.SEQUENCES_PUSHED.inc(result.sequences_pushed)
        M.PINS_PUSHED.inc(result.pins_pushed)
        M.IMPRESSIONS_LOGGED.inc(result.impressions)
        for item in result.dead:
            M.DEAD_LETTERED.labels(item.reason).inc()
        for ms in result.freshness_ms:
            M.FRESHNESS_SECONDS.observe(ms / 1000)

    def _validate_batch(self, actions, result: BatchResult) -> tuple[list, pd.DataFrame | None]:
        """The actions the suite keeps, and their events frame (the log's rows; None when
        nothing was validated)."""
        if not actions or self.validator is None:
            return actions, None
        frame = events_frame([ev for _, ev in actions], [r.timestamp for r, _ in actions])
        return suite_filter(actions, frame, self.validator, result)

    def _apply_actions(self, actions, result: BatchResult, frame: pd.DataFrame | None = None) -> None:
        """`frame`: the actions' events frame when the validator built it already."""
        if not actions:
            return
        merged = self._merge_sequences(
            [(record.timestamp, ev.user_id, (ev.event_id, ev.pin_id, int(ev.action_type), ev.event_time))
             for record, ev in actions], F.ACTION_SEQUENCE, result)
        result.outside_window += merged.outside_window
        fresh = merged.fresh

        with result.timed("counters"):  # exactly once per record, before anything is written
            counted = self.counters.apply([engagement_event(r, ev) for r, ev in actions
                                           if (ev.user_id, ev.event_id) in fresh])

        # Durable first (the log is what backfill and training read), then online, then state.
        with result.timed("log_write"):
            if frame is None:
                frame = events_frame([ev for _, ev in actions], [r.timestamp for r, _ in actions])
            offline_log.append(self.settings.offline_dir, ACTION_EVENTS_TABLE, frame)
            self._log_sequences(merged)
            self._log_counters(counted)
        with result.timed("feast_write"):
            self._push_counters(counted)
        self._push_sequences(merged, result)
        visible = wall_ms()
        for record, _ in actions:
            if 0 <= visible - record.timestamp < LIVE_WINDOW_MS:
                result.freshness_ms.append(visible - record.timestamp)
        for action, n in Counter(ev.action_type.wire_name for _, ev in actions).items():
            M.ACTIONS.labels(action).inc(n)
        result.duplicates += merged.already
        result.applied += len(actions) - merged.already

    def _merge_sequences(self, items: list[tuple[int, int, Action]], view: F.SequenceView,
                         result: BatchResult) -> "MergedSequences":
        """Step 4 for one sequence view: items (arrival ms, user, action), unique per user, merged
        into the touched users' states (homefeed.sequence), one version per user and arrival
        window (SNAPSHOT_GRANULARITY_MS)."""
        by_user: dict[int, list[tuple[int, Action]]] = defaultdict(list)  # (arrival ms, action)
        for arrived, user, action in items:
            by_user[user].append((arrived, action))
        users = sorted(by_user)
        out = MergedSequences(view)
        with result.timed("state_read"):
            states = self.load_states(users, raw_out=out.loaded, view=view)
        for user in users:
            old = states[user]
            known = set(old.event_ids)
            new_ids = {a[0] for _, a in by_user[user]}
            out.already += len(new_ids & known)
            out.fresh.update((user, event_id) for event_id in new_ids - known)
            state, versions = old, []
            for arrived, group in arrival_groups(by_user[user], SNAPSHOT_GRANULARITY_MS):
                state, did_change = merge(state, group, self.settings.sequence_length)
                if did_change:
                    state.snapshot_ms = next_snapshot_ms(state)
                    versions.append({F.USER_ID: user, F.EVENT_TIMESTAMP: state.snapshot_ms,
                                     F.CREATED: max(arrived, state.snapshot_ms), **state.feature_row(view)})
            out.outside_window += len((new_ids - known) - set(state.event_ids))
            if versions:
                out.changed[user] = state
                out.rows.append(versions[-1])  # online: the newest version only
                out.log_rows.extend(versions)  # offline: every version, as it became servable
        return out

    def _log_sequences(self, merged: "MergedSequences") -> None:
        if merged.rows:
            offline_log.append(self.settings.offline_dir, merged.view.name,
                               sequence_table(merged.log_rows, merged.view))

    def _push_sequences(self, merged: "MergedSequences", result: BatchResult) -> None:
        """After the log: online (Feast keeps only strictly newer rows: a zombie's lose), then the
        states (fenced: a zombie's stale state is refused)."""
        if not merged.rows:
            return
        with result.timed("feast_write"):
            self.online.write_sequences(merged.rows, merged.view)
        with result.timed("state_write"):
            self.save_states(merged.changed, merged.loaded, merged.view)
        result.sequences_pushed += len(merged.rows)

    def _log_counters(self, counted: dict[str, list[dict]]) -> None:
        for view, versions in counted.items():
            if versions:
                offline_log.append(self.settings.offline_dir, view, engagement_table(view, versions))

    def _push_counters(self, counted: dict[str, list[dict]]) -> None:
        for view, versions in counted.items():
            self.online.write_engagement(view, versions)  # the newest version per entity

    def _apply_impressions(self, impressions, result: BatchResult) -> None:
        """Impressions of the batch: in-batch copies are duplicates; the `impression_events`
        suite once (rejected rows are dead-lettered `batch_suite`); the rest merged into the
        users' impression sequences (their own states, the action path's rules and fence),
        counted in the engagement counters (exactly once per record, like actions), appended to
        their own log table with the sequence and counter versions, then the counters and
        sequences pushed and the states saved. Nothing that reads the action sequence sees them."""
        if not impressions:
            return
        unique = unique_per_user(impressions)
        result.duplicates += len(impressions) - len(unique)
        frame = impressions_frame([ev for _, ev in unique], [r.timestamp for r, _ in unique])
        if self.impression_validator is not None:
            with result.timed("validate"):
                unique, frame = suite_filter(unique, frame, self.impression_validator, result)
        if unique:
            merged = self._merge_sequences(
                [(r.timestamp, ev.user_id, (ev.event_id, ev.pin_id, IMPRESSION_TYPE, ev.event_time))
                 for r, ev in unique], F.IMPRESSION_SEQUENCE, result)
            with result.timed("counters"):
                counted = self.counters.apply([engagement_event(r, ev) for r, ev in unique])
            with result.timed("log_write"):
                offline_log.append(self.settings.offline_dir, IMPRESSION_EVENTS_TABLE, frame)
                self._log_sequences(merged)
                self._log_counters(counted)
            with result.timed("feast_write"):
                self._push_counters(counted)
            self._push_sequences(merged, result)
        result.impressions += len(unique)

    def _apply_pins(self, pins, result: BatchResult) -> None:
        if not pins:
            return
        rows = [{
            F.PIN_ID: p.pin_id, F.PIN_EMBEDDING: list(p.embedding), F.PIN_TOPIC: p.topic_id,
            F.PIN_CREATED_MS: p.created_ms, F.PIN_DURATION_MS: p.duration_ms, F.EVENT_TIMESTAMP: p.event_time,
            F.CREATED: max(r.timestamp, p.event_time),
        } for r, p in pins]
        with result.timed("log_write"):
            offline_log.append(self.settings.offline_dir, F.PIN_FEATURES, pin_frame(pd.DataFrame(rows)))
        with result.timed("feast_write"):
            self.online.write_pins(rows)
        result.pins_pushed += len(rows)

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        """Every dead letter is on the broker before this returns (offsets are committed after)."""
        from kafka.errors import KafkaError, MessageSizeTooLargeError

        if not dead:
            return
        if self.dlq is None:
            raise RuntimeError("invalid records but no dead-letter producer configured")
        try:
            sent = [(item, self._send_dead_letter(item, summary=False)) for item in dead]
            self.dlq.flush(timeout=DEAD_LETTER_TIMEOUT_S)
            for item, future in sent:
                try:
                    future.get(timeout=0)
                except MessageSizeTooLargeError:  # the topic's limit is below ours: send the summary
                    self._send_dead_letter(item, summary=True).get(timeout=DEAD_LETTER_TIMEOUT_S)
        except KafkaError as exc:
            M.DEAD_LETTER_FAILURES.inc()
            self._rebuild_dlq()
            raise DeadLetterUnavailable(
                f"{len(dead)} dead letters not acknowledged within {DEAD_LETTER_TIMEOUT_S} s "
                f"({type(exc).__name__}: {exc}); the batch waits, uncommitted") from exc

    def _rebuild_dlq(self) -> None:
        if self.dlq_factory is None:
            return
        try:
            self.dlq.close(timeout=0)
        except Exception as exc:  # a broken client may fail to close: it is dropped either way
            log.debug("dead-letter producer close failed: %s", exc)
        self.dlq = self.dlq_factory()
        log.warning("dead-letter producer rebuilt after a failure")

    def _send_dead_letter(self, item: DeadLetter, summary: bool):
        rec = item.record
        value = rec.value if rec.value is not None else None
        key = rec.key
        headers = [("reason", item.reason.encode()), ("detail", item.detail[:500].encode("utf-8", "replace")),
                   ("source", f"{rec.topic}:{rec.partition}:{rec.offset}".encode())]
        if summary or (value is not None and len(value) > DEAD_LETTER_MAX_VALUE_BYTES):
            value = dead_letter_summary(item)
            headers.append(("summarized", b"true"))
        if key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES:
            key = hashlib.sha256(key).hexdigest().encode()
        return self.dlq.send(self.settings.dead_letter_topic, value=value, key=key, headers=headers)


def dead_letter_summary(item: DeadLetter) -> bytes:
    """What a dead letter carries instead of a value too large for the topic."""
    rec = item.record
    value = rec.value or b""
    return json.dumps({
        "summarized": True, "reason": item.reason, "detail": item.detail[:500],
        "topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
        "timestamp": rec.timestamp, "length": len(value), "sha256": hashlib.sha256(value).hexdigest(),
        "head": value[:256].decode("utf-8", "replace"),
    }).encode()


def engagement_event(record, ev: E.ActionEvent | E.ImpressionEvent) -> EngagementEvent:
    """An action or impression record as an input of the engagement counters."""
    kind = ev.action_type.wire_name if isinstance(ev, E.ActionEvent) else "impression"
    return EngagementEvent(ev.user_id, ev.pin_id, kind, ev.event_time,
                           record.timestamp, record.topic, record.partition, record.offset)


def unique_per_user(pairs: list) -> list:
    """(record, event) pairs without redelivered copies, first occurrence kept, in order. Event
    ids are unique per user: two users' events that share an id are two events."""
    return list({(ev.user_id, ev.event_id): (rec, ev) for rec, ev in reversed(pairs)}.values())[::-1]


def suite_filter(pairs: list, frame: pd.DataFrame, validator: BatchValidator, result: BatchResult):
    """Run a batch suite on `frame` (one row per pair): the pairs and rows it keeps; each row it
    rejects is dead-lettered `batch_suite` with the suite's detail."""
    rejected = validator(frame)
    if not rejected:
        return pairs, frame
    keep = []
    for i, pair in enumerate(pairs):
        if i in rejected:
            result.dead.append(DeadLetter(pair[0], E.REASON_BATCH_SUITE, rejected[i]))
        else:
            keep.append(pair)
    return keep, frame.drop(index=list(rejected)).reset_index(drop=True)


def arrival_groups(items: list[tuple[int, Action]], granularity_ms: int):
    """(latest arrival, actions) per arrival-time window, in arrival order."""
    items = sorted(items, key=lambda x: x[0])
    for _, group in groupby(items, key=lambda x: x[0] // granularity_ms):
        group = list(group)
        yield group[-1][0], [a for _, a in group]


# -- frames (one shape for the log, the push and validation) --------------------------------

def events_frame(evs: list[E.ActionEvent], arrival_ms: list[int]) -> pd.DataFrame:
    return _user_event_frame(evs, arrival_ms, action_type=[e.action_type.wire_name for e in evs])


def impressions_frame(evs: list[E.ImpressionEvent], arrival_ms: list[int]) -> pd.DataFrame:
    """The `impression_events` log's rows (request_id NO_REQUEST_ID when sent without one)."""
    return _user_event_frame(evs, arrival_ms, request_id=pd.array(
        [E.NO_REQUEST_ID if e.request_id is None else e.request_id for e in evs], dtype="int64"))


def _user_event_frame(evs: list, arrival_ms: list[int], **own) -> pd.DataFrame:
    """The columns every user event's frame has (ids, times, surface, log timestamps), with the
    kind's `own` columns after pin_id."""
    frame = pd.DataFrame({
        "event_id": [e.event_id for e in evs],
        F.USER_ID: pd.array([e.user_id for e in evs], dtype="int64"),
        F.PIN_ID: pd.array([e.pin_id for e in evs], dtype="int64"),
        **own,
        "event_time": pd.array([e.event_time for e in evs], dtype="int64"),
        "arrival_time": pd.array(arrival_ms, dtype="int64"),
        "surface": [e.surface for e in evs],
    })
    frame[F.EVENT_TIMESTAMP] = offline_log.to_utc_us(frame["event_time"])
    frame[F.CREATED] = offline_log.to_utc_us(frame["arrival_time"])
    return frame


def sequence_table(rows: list[dict], view: F.SequenceView = F.ACTION_SEQUENCE) -> pa.Table:
    """Sequence rows of `view` (feature rows with user id and epoch-ms timestamps) as the log's
    Arrow table, column by column: no pandas round trip for the list columns, which are most of
    a batch's log write."""
    def column(name: str) -> list:
        return [r[name] for r in rows]

    def utc_us(name: str) -> pa.Array:
        return pa.array(np.asarray(column(name), dtype=np.int64) * 1000, pa.timestamp("us", tz="UTC"))

    return pa.table({
        F.USER_ID: pa.array(column(F.USER_ID), pa.int64()),
        F.EVENT_TIMESTAMP: utc_us(F.EVENT_TIMESTAMP),
        F.CREATED: utc_us(F.CREATED),
        **{name: offline_log.int64_lists(column(name))
           for name in (view.pin_ids, view.action_types, view.times) if name},
        view.length: pa.array(column(view.length), pa.int32()),
    })


def pin_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Pin rows as logged: epoch-ms times as UTC timestamps, the optional duration as a nullable
    int64 (a batch of unknown durations is an int64 column of nulls, not an untyped one)."""
    frame = frame.copy()
    if F.PIN_DURATION_MS in frame:
        frame[F.PIN_DURATION_MS] = frame[F.PIN_DURATION_MS].astype("Int64")
    for col in (F.EVENT_TIMESTAMP, F.CREATED):
        frame[col] = offline_log.to_utc_us(frame[col].astype("int64"))
    return frame


# -- the Kafka loop ---------------------------------------------------------------------------

def consumed_topics(settings: Settings, impressions_only: bool = False) -> list[str]:
    """The topics a consumer process subscribes to: actions and pins, plus impressions unless
    their own process reads them (`impressions_consumer_group`); or, for that process, only
    impressions."""
    if impressions_only:
        return [settings.impressions_topic]
    own = [] if settings.impressions_consumer_group else [settings.impressions_topic]
    return [settings.actions_topic, settings.pins_topic, *own]


def impressions_settings(settings: Settings) -> Settings:
    """The settings of the impressions-only process: its own group (so its offsets and counters
    are its own) and its own batch window."""
    from homefeed.errors import UserError

    if not settings.impressions_consumer_group:
        raise UserError("impressions are read by the sequence builder's group; set "
                        "HOMEFEED_IMPRESSIONS_CONSUMER_GROUP to read them in a process of their own")
    return settings.replace(consumer_group=settings.impressions_consumer_group,
                            batch_max_ms=settings.impressions_batch_max_ms)


def make_consumer(settings: Settings, impressions_only: bool = False, listener=None, **overrides):
    """The group's KafkaConsumer, subscribed; `listener`: its rebalance listener (a
    `_rebalance_log()`, which also says since when the consumer holds no partitions)."""
    from kafka import KafkaConsumer

    config = dict(
        **settings.kafka_client_config(),  # bootstrap servers and security (SASL/SSL)
        group_id=settings.consumer_group,
        client_id="homefeed-sequence-builder",
        enable_auto_commit=False,  # offsets are committed only after the batch is durable
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_events,
        # Fast group joins and failure detection (defaults take ~25 s to join here).
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=300_000,  # a Redis outage may hold one batch this long
        fetch_max_wait_ms=50,
    )
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    consumer.subscribe(consumed_topics(settings, impressions_only), listener=listener or _rebalance_log())
    return consumer


def _rebalance_log():
    from kafka import ConsumerRebalanceListener

    class RebalanceLog(ConsumerRebalanceListener):
        """Says when this consumer gains or loses partitions (a rebalance), one line each;
        `unassigned_since`: monotonic time since which it waits for an assignment (None once
        the group gave it one, an empty one included)."""

        def __init__(self) -> None:
            self.unassigned_since: float | None = time.monotonic()

        def on_partitions_revoked(self, revoked) -> None:
            self.unassigned_since = time.monotonic()
            if revoked:
                log.info("partitions revoked: %s", _partition_list(revoked))

        def on_partitions_assigned(self, assigned) -> None:
            self.unassigned_since = None
            log.info("partitions assigned: %s", _partition_list(assigned) or "none")

    return RebalanceLog()


def _partition_list(tps) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))


def make_producer(settings: Settings, **overrides):
    from kafka import KafkaProducer

    config = dict(settings.kafka_client_config(), acks="all", linger_ms=5)
    config.update(overrides)
    return KafkaProducer(**config)


def gx_validator(settings: Settings, suite: str = "action_events") -> BatchValidator:
    """A Great Expectations suite (`action_events`, `impression_events`), once per micro-batch:
    its value checks; the structure checks (columns, dtypes, nulls) hold by construction of
    `events_frame` / `impressions_frame`."""
    from homefeed.validation import failing_rows  # GX import costs ~3 s: only when consuming

    def validate(frame: pd.DataFrame) -> dict[int, str]:
        return failing_rows(suite, frame, now_ms=wall_ms(), structure=False,
                            max_future_skew_ms=settings.max_future_skew_ms)

    return validate


@dataclass
class ConsumeStats:
    records: int = 0
    applied: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    pin_upserts: int = 0
    impressions: int = 0
    outside_window: int = 0
    batches: int = 0
    retries: int = 0
    broker_errors: int = 0
    fenced: int = 0  # batches abandoned because another consumer owned their users meanwhile
    first_batch_at: float | None = None  # wall-clock seconds; throughput = applied / span
    last_batch_at: float | None = None
    freshness_ms: list[int] = field(default_factory=list)
    stage_s: dict[str, list[float]] = field(default_factory=dict)  # per batch, per stage

    def add(self, r: BatchResult) -> None:
        self.first_batch_at = self.first_batch_at or time.time()
        self.last_batch_at = time.time()
        self.records += r.records
        self.applied += r.applied
        self.dead_lettered += len(r.dead)
        self.duplicates += r.duplicates
        self.pin_upserts += r.pins_pushed
        self.impressions += r.impressions
        self.outside_window += r.outside_window
        self.batches += 1
        self.freshness_ms.extend(r.freshness_ms)
        for stage in STAGES:
            self.stage_s.setdefault(stage, []).append(r.stage_s.get(stage, 0.0))

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("freshness_ms", "stage_s")}
        out["freshness_samples"] = len(self.freshness_ms)
        out["stage_ms_mean"] = {k: round(1000 * sum(v) / len(v), 2) for k, v in self.stage_s.items() if v}
        return out


class Backoff:
    """Jittered exponential backoff (0.1 s doubling to `cap_s`), interruptible by `stop`."""

    def __init__(self, stop: threading.Event, cap_s: float = 5.0):
        self.stop, self.cap_s, self.delay = stop, cap_s, 0.1

    def wait(self) -> float:
        waited = self.delay
        self.stop.wait(waited)
        self.delay = min(self.delay * 2, self.cap_s) * (0.8 + 0.4 * random.random())
        return waited


# A consumer that waits this long for an assignment (after a revocation, or since it started) is
# closed and rebuilt: after a broker restart kafka-python 3.0 can lose a group join that completes
# between two short polls (the topics came back with other partition counts), and the client then
# stays in the group with no partitions, consuming nothing, for good.
UNASSIGNED_REBUILD_S = 30.0


class StreamConsumer:
    def __init__(self, settings: Settings, builder: SequenceBuilder, consumer=None, consumer_factory=None,
                 watchdog_s: float = 0):
        """`consumer_factory(listener)`: a new subscribed KafkaConsumer (make_consumer), used at
        start and to rebuild a stuck one; a `consumer` given instead is never rebuilt."""
        self.settings = settings
        self.builder = builder
        self._membership = _rebalance_log()
        if consumer is not None:
            self.consumer, self._factory = consumer, None
        else:
            self._factory = consumer_factory or (lambda listener: make_consumer(settings, listener=listener))
            self.consumer = self._factory(self._membership)
        self.stats = ConsumeStats()
        self.stop = threading.Event()
        self._last_lag = 0.0
        self.watchdog_s = watchdog_s  # a process of its own only (stream/watchdog.py); 0: off

    def poll_batch(self) -> list:
        """Up to batch_max_events records. A batch waits at most batch_max_ms for more records,
        counted from the moment its oldest record reached the broker: under load (records that
        queued while the last batch was applied) it is cut at once, with whatever the client
        already holds, so the window never adds to the queueing. A broker error ends the window
        early (the client reconnects on the next poll)."""
        from kafka.errors import KafkaError

        batch: list = []
        cap, window_ms = self.settings.batch_max_events, self.settings.batch_max_ms
        deadline = time.monotonic() + window_ms / 1000
        while len(batch) < cap and not self.stop.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 and not batch:
                break
            try:
                polled = self.consumer.poll(timeout_ms=max(0, remaining_ms), max_records=cap - len(batch))
            except KafkaError as exc:
                self._broker_error("poll", exc)
                break
            got = [r for records in polled.values() for r in records]
            if not got and remaining_ms <= 0:
                break  # window over and nothing more buffered
            if got and not batch:
                oldest_age_ms = wall_ms() - min(r.timestamp for r in got)
                deadline = min(deadline, time.monotonic() + max(0, window_ms - oldest_age_ms) / 1000)
            batch.extend(got)
        return batch

    def _broker_error(self, what: str, exc: BaseException) -> None:
        self.stats.broker_errors += 1
        M.BROKER_ERRORS.labels(what).inc()
        log.warning("broker error during %s (%s: %s); retrying", what, type(exc).__name__, exc)
        self.stop.wait(0.5)

    def apply_with_retry(self, batch: list) -> BatchResult:
        """Apply a batch: outages are retried until they pass, poison records are isolated."""
        backoff = Backoff(self.stop)
        while True:
            try:
                with M.BATCH_SECONDS.time():
                    return self.builder.apply(batch)
            except StateFenced:
                raise  # not an outage and not a poison record: the partition moved
            except Exception as exc:
                if not is_outage(exc):  # not an outage: some record in the batch is poison
                    return self.apply_isolating(batch, exc)
                if self.stop.is_set():
                    raise
                self.stats.retries += 1
                M.RETRIES.inc()
                log.warning("batch of %d records not applied (%s: %s); retrying in %.1fs, offsets "
                            "not committed", len(batch), type(exc).__name__, exc, backoff.delay)
                backoff.wait()
                watchdog.arm()  # an outage is waited out, not a hang

    def record_counters(self, result: BatchResult) -> None:
        """The group's counters, retried through outages: they must match the dead-letter topic.
        Any other error is logged and skipped (observability never stops ingestion)."""
        backoff = Backoff(self.stop)
        while not self.stop.is_set():
            try:
                self.builder.record_counters(result)
                return
            except Exception as exc:
                if not is_outage(exc):
                    log.error("consumer counters not updated for one batch (%s: %s)",
                              type(exc).__name__, exc)
                    return
                M.RETRIES.inc()
                log.warning("consumer counters not updated (%s: %s); retrying in %.1fs",
                            type(exc).__name__, exc, backoff.delay)
                backoff.wait()
                watchdog.arm()

    def apply_isolating(self, batch: list, exc: BaseException) -> BatchResult:
        """Bisect a batch that failed for a non-transient reason: halves are applied in order
        (apply is idempotent, so a half that had been partly written is a replay), and a record
        that fails on its own is dead-lettered. Cost: O(log n) extra applies per poison record."""
        if len(batch) == 1:
            while True:
                try:
                    return self.builder.dead_letter_alone(batch[0], exc)
                except Exception as dlq_exc:  # the dead-letter topic is down: wait for it
                    if not is_outage(dlq_exc) or self.stop.is_set():
                        raise
                    log.warning("dead letter not sent (%s); retrying", dlq_exc)
                    self.stop.wait(1.0)
        log.warning("batch of %d records failed (%s: %s); isolating the record that causes it",
                    len(batch), type(exc).__name__, str(exc)[:300])
        mid = len(batch) // 2
        return self.apply_with_retry(batch[:mid]).merge(self.apply_with_retry(batch[mid:]))

    def commit(self) -> None:
        """Commit the consumed offsets; broker errors are retried (positions only move forward,
        so a later commit covers this batch too: at-least-once either way). A rebalance means
        the new owner replays the batch."""
        from kafka.errors import CommitFailedError, KafkaError

        backoff = Backoff(self.stop)
        while not self.stop.is_set():
            try:
                self.consumer.commit(timeout_ms=COMMIT_TIMEOUT_MS)  # bounded: a broker away is retried here
                return
            except CommitFailedError as exc:
                log.warning("commit failed after rebalance (%s); the new owner replays", exc)
                return
            except KafkaError as exc:
                self.stats.broker_errors += 1
                M.BROKER_ERRORS.labels("commit").inc()
                log.warning("commit failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc,
                            backoff.delay)
                backoff.wait()
                watchdog.arm()

    def run(self, idle_exit_s: float | None = None, max_records: int | None = None,
            ready_file=None) -> ConsumeStats:
        self.builder.warm_up()
        idle_since = time.monotonic()
        log.info("consuming %s as group %s", ", ".join(consumed_topics(
            self.settings, self.settings.consumer_group == self.settings.impressions_consumer_group)),
            self.settings.consumer_group)
        watchdog.arm(self.watchdog_s)
        try:
            while not self.stop.is_set():
                watchdog.arm()
                polled_at = time.perf_counter()
                batch = self.poll_batch()
                poll_s = time.perf_counter() - polled_at
                if ready_file and self._assignment():
                    Path(ready_file).touch()  # partitions assigned: orchestration may start producing
                    ready_file = None
                if not batch:
                    # A lost join leaves assignment() showing the revoked partitions: ask the listener.
                    self._rebuild_if_unassigned()
                    if not self._assignment():  # still joining the group: not idle
                        idle_since = time.monotonic()
                    elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                idle_since = time.monotonic()
                self.stats.first_batch_at = self.stats.first_batch_at or time.time()
                M.BATCH_SIZE.observe(len(batch))
                try:
                    result = self.apply_with_retry(batch)
                except StateFenced as exc:
                    self.fenced(batch, exc)
                    continue
                result.stage_s["poll"] = poll_s
                with result.timed("commit"):
                    self.commit()
                for stage, seconds in result.stage_s.items():
                    M.STAGE_SECONDS.labels(stage).observe(seconds)
                self.stats.add(result)
                self.record_counters(result)
                if result.dead:
                    log.info("dead-lettered %d records: %s", len(result.dead),
                             sorted({d.reason for d in result.dead}))
                self._update_lag()
                if max_records is not None and self.stats.records >= max_records:
                    break
        finally:
            watchdog.disarm()
            self.consumer.close(autocommit=False)
        return self.stats

    def fenced(self, batch: list, exc: StateFenced) -> None:
        """Abandon a batch whose state writes were refused: no commit, and the partitions we still
        hold are rewound to the batch's first offsets (the group's new owner replays the rest)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        self.stats.fenced += 1
        M.FENCED.inc()
        log.warning("batch of %d records abandoned, uncommitted: %s (partitions moved while this "
                    "consumer stalled)", len(batch), exc)
        first: dict = {}
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        try:
            held = self.consumer.assignment()
            for tp, offset in first.items():
                if tp in held:
                    self.consumer.seek(tp, offset)
        except KafkaError as err:
            log.warning("could not rewind after a fenced batch (%s); the group's rebalance will", err)

    def _rebuild_if_unassigned(self) -> None:
        since = self._membership.unassigned_since
        if self._factory is None or since is None or time.monotonic() - since < UNASSIGNED_REBUILD_S:
            return
        self.stats.broker_errors += 1
        M.BROKER_ERRORS.labels("unassigned").inc()
        log.warning("no partitions assigned for %.0f s (a group join lost, e.g. after a broker "
                    "restart); rebuilding the Kafka consumer", time.monotonic() - since)
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # a stuck client may fail to close: it is dropped either way
            log.debug("consumer close failed: %s", exc)
        self._membership = _rebalance_log()
        self.consumer = self._factory(self._membership)

    def _assignment(self) -> set:
        from kafka.errors import KafkaError

        try:
            return self.consumer.assignment()
        except KafkaError:
            return set()

    def _update_lag(self) -> None:
        from kafka.errors import KafkaError

        if time.monotonic() - self._last_lag < 5:
            return
        self._last_lag = time.monotonic()
        try:
            for tp in list(self.consumer.assignment()):
                # The fetch response's high watermark (exact on every broker; see ops.high_watermarks).
                end = self.consumer.highwater(tp)
                if end is not None:
                    M.LAG.labels(tp.topic, str(tp.partition)).set(max(0, end - self.consumer.position(tp)))
        except KafkaError as exc:  # a metric, never a reason to stop
            log.debug("lag not updated: %s", exc)


def build_consumer(settings: Settings, validate: bool = True, impressions_only: bool = False,
                   **consumer_overrides) -> StreamConsumer:
    """The consumer of actions, pins (and impressions unless their own process reads them), or
    with `impressions_only` that process (its group: `impressions_consumer_group`)."""
    if impressions_only:
        settings = impressions_settings(settings)
    builder = build_builder(settings, validate, make_producer(settings), lambda: make_producer(settings))
    return StreamConsumer(settings, builder, consumer_factory=lambda listener: make_consumer(
        settings, impressions_only, listener=listener, **consumer_overrides))


def build_builder(settings: Settings, validate: bool, dlq_producer, dlq_factory=None) -> SequenceBuilder:
    """The sequence builder of `settings` (its Feast store and Redis, the batch suites when
    `validate`), dead-lettering to `dlq_producer`: the consumer's, and the bulk loader's."""
    from homefeed.feature_store import open_store
    from homefeed.redis_client import pipeline_client

    return SequenceBuilder(settings, open_store(settings.feature_repo), pipeline_client(settings), dlq_producer,
                           gx_validator(settings) if validate else None, dlq_factory=dlq_factory,
                           impression_validator=gx_validator(settings, "impression_events")
                           if validate else None)


def write_stats(path, stats: ConsumeStats) -> None:
    with open(path, "w") as fh:
        json.dump({**stats.to_dict(), "freshness_ms": stats.freshness_ms, "stage_s": stats.stage_s}, fh)
