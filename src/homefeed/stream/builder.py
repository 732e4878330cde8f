"""The sequence builder: one micro-batch of Kafka records applied (steps 2-5 of
homefeed.stream.consumer), knowing nothing of polling or committing.

1. parse each record by topic; failures become dead letters (homefeed.stream.dead_letters);
2. the batch suites once per batch (`gx_validator`) on the log's frames (homefeed.stream.frames);
3. merge each touched user's events into its sequence state (homefeed.stream.state), count them
   in the engagement counters (homefeed.stream.engagement);
4. log, push to Feast, then save the states (fenced); the impressions likewise, then the pins;
5. send the batch's dead letters; `transient_errors` / `is_outage` tell an outage (retry) from a
   poison record (isolate).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from typing import Callable

import pandas as pd

from homefeed import events as E
from homefeed import features as F
from homefeed import offline_log
from homefeed.sequence import IMPRESSION_TYPE, Action, merge, next_snapshot_ms
from homefeed.settings import Settings
from homefeed.stream import metrics as M
from homefeed.stream.dead_letters import DeadLetter, DeadLetterSender, DeadLetterUnavailable
from homefeed.stream.engagement import EngagementCounters, EngagementEvent, engagement_table
from homefeed.stream.frames import (
    SNAPSHOT_GRANULARITY_MS,
    events_frame,
    impressions_frame,
    pin_frame,
    pin_row,
    sequence_row,
    sequence_table,
)
from homefeed.stream.generation import Generation, RestoreInProgress
from homefeed.stream.online_writer import OnlineWriter
from homefeed.stream.state import COUNTER_FIELDS, StateStore

log = logging.getLogger(__name__)


ACTION_EVENTS_TABLE = F.ACTION_EVENTS
IMPRESSION_EVENTS_TABLE = F.IMPRESSION_EVENTS
# Where a micro-batch's time goes, in order (BatchResult.stage_s, the stage histogram, the benchmark).
STAGES = ("poll", "parse", "validate", "state_read", "counters", "log_write", "feast_write", "state_write",
          "dead_letter", "commit")
# Records whose broker timestamp is this close to the wall clock are "live": they feed the
# freshness histogram. Replayed history (record timestamp = simulated arrival) does not.
LIVE_WINDOW_MS = 10 * 60 * 1000

# A batch validator gets the batch's valid events as a frame and returns {row index: detail}
# for rows it rejects. The default runs the GX `action_events` suite.
BatchValidator = Callable[[pd.DataFrame], dict[int, str]]


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


class SequenceBuilder(DeadLetterSender):
    """Applies micro-batches of Kafka records. Knows nothing of polling or committing, so it is
    driven the same way by the consumer loop, the bulk loader and the tests."""

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
        self.states = StateStore(redis_client, self.project)  # sequence states, group counters
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

    # -- the group's counters (homefeed.stream.state) ------------------------------------
    def record_counters(self, result: BatchResult) -> None:
        """Add a batch to the group's counters in Redis (atomically: they always add up). Raises
        on an outage; the consumer retries it before the next batch, so the counters and the
        dead-letter topic never disagree."""
        values = dict(zip(COUNTER_FIELDS, (result.records, result.applied, result.duplicates,
                                           len(result.dead), result.pins_pushed, result.impressions)))
        self.states.add_counters(self.settings.consumer_group, values)

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

        if frame is None:
            with result.timed("log_write"):
                frame = events_frame([ev for _, ev in actions], [r.timestamp for r, _ in actions])
        self._make_durable(ACTION_EVENTS_TABLE, frame, merged, counted, result)
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
            states = self.states.load_states(users, raw_out=out.loaded, view=view)
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
                    versions.append(sequence_row(user, state, view, max(arrived, state.snapshot_ms)))
            out.outside_window += len((new_ids - known) - set(state.event_ids))
            if versions:
                out.changed[user] = state
                out.rows.append(versions[-1])  # online: the newest version only
                out.log_rows.extend(versions)  # offline: every version, as it became servable
        return out

    def _make_durable(self, table: str, frame, merged: "MergedSequences", counted: dict[str, list[dict]],
                      result: BatchResult) -> None:
        """Step 5 for actions and impressions alike: durable first (the events, sequence and counter
        versions to the log: what backfill and training read), then online (counters, sequences),
        then the states."""
        with result.timed("log_write"):
            offline_log.append(self.settings.offline_dir, table, frame)
            self._log_sequences(merged)
            self._log_counters(counted)
        with result.timed("feast_write"):
            self._push_counters(counted)
        self._push_sequences(merged, result)

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
            self.states.save_states(merged.changed, merged.loaded, merged.view)
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
            self._make_durable(IMPRESSION_EVENTS_TABLE, frame, merged, counted, result)
        result.impressions += len(unique)

    def _apply_pins(self, pins, result: BatchResult) -> None:
        if not pins:
            return
        rows = [pin_row(p.pin_id, list(p.embedding), p.topic_id, p.created_ms, p.duration_ms, p.event_time,
                        max(r.timestamp, p.event_time)) for r, p in pins]
        with result.timed("log_write"):
            offline_log.append(self.settings.offline_dir, F.PIN_FEATURES, pin_frame(pd.DataFrame(rows)))
        with result.timed("feast_write"):
            self.online.write_pins(rows)
        result.pins_pushed += len(rows)


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


def gx_validator(settings: Settings, suite: str = "action_events") -> BatchValidator:
    """A Great Expectations suite (`action_events`, `impression_events`), once per micro-batch:
    its value checks; the structure checks (columns, dtypes, nulls) hold by construction of
    `events_frame` / `impressions_frame`."""
    from homefeed.validation import failing_rows  # GX import costs ~3 s: only when consuming

    def validate(frame: pd.DataFrame) -> dict[int, str]:
        return failing_rows(suite, frame, now_ms=wall_ms(), structure=False,
                            max_future_skew_ms=settings.max_future_skew_ms)

    return validate
