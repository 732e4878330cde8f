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

This module is the loop (steps 1 and 6, retries, isolation, fencing); steps 2-5 are
homefeed.stream.builder's, on the state store (homefeed.stream.state), the log's frames
(homefeed.stream.frames) and the dead-letter topic (homefeed.stream.dead_letters); the Kafka
clients are homefeed.stream.clients'.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from homefeed.settings import Settings
from homefeed.stream import metrics as M
from homefeed.stream import watchdog
from homefeed.stream.builder import STAGES, BatchResult, SequenceBuilder, gx_validator, is_outage, wall_ms
from homefeed.stream.clients import consumed_topics, impressions_settings, make_consumer, make_producer, rebalance_log
from homefeed.stream.state import StateFenced

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_MS = 30_000  # one offset commit; a longer broker outage is retried (and re-arms the watchdog)


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
        watchdog.arm()  # an outage waited out is progress, not a hang (stream/watchdog.py)
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
        self._membership = rebalance_log()
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
        self._membership = rebalance_log()
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
