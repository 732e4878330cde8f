"""Replays a world's action events onto Kafka (its pins onto the pin-upserts topic, its
impressions onto the impressions topic).

Events go out in arrival order, keyed by user_id (so one user's events stay in one partition,
in order). The record timestamp is the event's arrival time in the world (`--timestamps
arrival`, the default for history: what training's point-in-time joins see) or the wall clock
(`--timestamps now`, for live traffic and freshness measurements).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from homefeed import events as E
from homefeed import features as F
from homefeed.settings import Settings

log = logging.getLogger(__name__)


def bad_event_samples(now_ms: int) -> dict[str, tuple[bytes, str]]:
    """One malformed record per way an event can be wrong: name -> (bytes, expected reason)."""
    good = {"schema_version": E.SCHEMA_VERSION, "event_id": "bad-x", "user_id": 1, "pin_id": 1,
            "action_type": "repin", "event_time": now_ms, "surface": "homefeed", "metadata": {}}

    def variant(tag: str, **changes) -> bytes:
        obj = dict(good, event_id=f"bad-{tag}", **changes)
        return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()

    return {
        "not_json": (b"{this is not json", E.REASON_NOT_JSON),
        "not_object": (b"[1, 2, 3]", E.REASON_NOT_OBJECT),
        "missing_field": (variant("missing", pin_id=...), E.REASON_MISSING_FIELD),
        "wrong_type": (variant("type", user_id="17"), E.REASON_WRONG_TYPE),
        "unknown_action": (variant("action", action_type="like"), E.REASON_UNKNOWN_ACTION),
        "zero_id": (variant("zero", user_id=0), E.REASON_BAD_ID),
        "negative_id": (variant("negative", pin_id=-5), E.REASON_BAD_ID),
        "huge_id": (variant("huge", user_id=2**60), E.REASON_BAD_ID),
        "far_future": (variant("future", event_time=now_ms + 86_400_000), E.REASON_FUTURE_TIME),
        "ancient": (variant("ancient", event_time=1_000), E.REASON_ANCIENT_TIME),
        "oversized": (variant("big", metadata={"blob": "x" * (E.MAX_EVENT_BYTES + 10)}), E.REASON_TOO_LARGE),
        "wrong_schema_version": (variant("version", schema_version=99), E.REASON_SCHEMA_VERSION),
    }


def bad_impression_samples(now_ms: int) -> dict[str, tuple[bytes, str]]:
    """One malformed impression per way only an impression can be wrong, plus the envelope
    checks it shares with actions: name -> (bytes, expected reason)."""
    good = E.ImpressionEvent("bad-imp", 1, 1, now_ms, request_id=1).to_dict()

    def variant(tag: str, **changes) -> bytes:
        obj = dict(good, event_id=f"bad-imp-{tag}", **changes)
        return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()

    return {
        "not_json": (b"{shown?", E.REASON_NOT_JSON),
        "missing_field": (variant("missing", pin_id=...), E.REASON_MISSING_FIELD),
        "bad_request_id": (variant("request", request_id=-3), E.REASON_BAD_ID),
        "far_future": (variant("future", event_time=now_ms + 86_400_000), E.REASON_FUTURE_TIME),
        "an_action": (variant("action", action_type="repin"), E.REASON_WRONG_TOPIC),
    }


def event_records(events: pd.DataFrame, use_arrival_time: bool, id_prefix: str = "",
                  live: bool = False):
    """(key, value, timestamp_ms) for each row of a world's events table.

    `live` stamps each event with the wall clock as it is sent (the world's actions happening
    now); `id_prefix` makes a benchmark's replay new events rather than duplicates of an
    earlier run."""
    surfaces = events["surface"] if "surface" in events else pd.Series("homefeed", index=events.index)
    cols = [events[c].to_numpy() for c in ("event_id", F.USER_ID, F.PIN_ID, "action_type",
                                            "event_time", "arrival_time")] + [surfaces.to_numpy()]
    for event_id, user, pin, action, event_time, arrival, surface in zip(*cols):
        when = time.time_ns() // 1_000_000 if live else int(event_time)
        ev = E.ActionEvent(f"{id_prefix}{event_id}", int(user), int(pin), E.ActionType.parse(action), when,
                           surface=str(surface))
        yield str(int(user)).encode(), ev.to_json(), int(arrival) if use_arrival_time else None


def impression_records(impressions: pd.DataFrame, use_arrival_time: bool, id_prefix: str = "",
                       live: bool = False):
    """(key, value, timestamp_ms) for each row of a world's impressions (`World.impressions()`),
    keyed by user id like actions; `live` and `id_prefix` as in `event_records`."""
    cols = [impressions[c].to_numpy() for c in ("event_id", F.USER_ID, F.PIN_ID, "event_time",
                                                 "arrival_time", "surface", F.REQUEST_ID)]
    for event_id, user, pin, shown, arrival, surface, request in zip(*cols):
        when = time.time_ns() // 1_000_000 if live else int(shown)
        ev = E.ImpressionEvent(f"{id_prefix}{event_id}", int(user), int(pin), when, surface=str(surface),
                               request_id=int(request))
        yield str(int(user)).encode(), ev.to_json(), int(arrival) if use_arrival_time else None


def pin_records(pins: pd.DataFrame, start_ms: int):
    """(key, value, timestamp_ms) of one upsert per pin of a world's pins.parquet; a pin's
    `pin_duration_ms` (null, or a world without the column: unknown) is sent when known."""
    durations = (pins[F.PIN_DURATION_MS].astype("Int64").tolist() if F.PIN_DURATION_MS in pins
                 else [None] * len(pins))
    for pin, topic, emb, created, duration in zip(pins[F.PIN_ID], pins[F.PIN_TOPIC], pins[F.PIN_EMBEDDING],
                                                  pins[F.PIN_CREATED_MS], durations):
        # A pin's features exist from its creation (or the world's start, for older pins).
        version = max(int(created), start_ms)
        up = E.PinUpsert(int(pin), int(topic), tuple(float(v) for v in emb), int(created), version,
                         duration_ms=None if duration is pd.NA else int(duration))
        yield str(int(pin)).encode(), up.to_json(), version


class ProduceFailed(RuntimeError):
    """Some records were not acknowledged by the broker (after the client's own retries)."""

    def __init__(self, sent: int, failed: int, first_error: BaseException | None):
        super().__init__(f"{failed} of {sent} records were not acknowledged by the broker "
                         f"(first error: {type(first_error).__name__}: {first_error})")
        self.sent, self.failed, self.first_error = sent, failed, first_error


class Producer:
    """Sends records and checks every one: a record the broker did not acknowledge (after the
    client's retries, acks=all) is counted, and `send_all` raises ProduceFailed with the count."""

    def __init__(self, settings: Settings, producer=None):
        from homefeed.stream.clients import make_producer

        self.settings = settings
        self.producer = producer or make_producer(settings, linger_ms=10, batch_size=256 * 1024)
        self.sent = 0
        self.failed = 0
        self.first_error: BaseException | None = None
        self._lock = threading.Lock()  # errbacks run on the client's I/O thread

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
            self.first_error = self.first_error or exc

    def send_all(self, topic: str, records, rate: float = 0.0, total: int | None = None,
                 desc: str = "produce") -> int:
        """Send (key, value, timestamp) records; `rate` events/s (0 = as fast as possible).
        Returns the number sent; raises ProduceFailed when any of them was not acknowledged."""
        from kafka.errors import KafkaError

        start = time.perf_counter()
        n, failed_before = 0, self.failed
        for key, value, ts in tqdm(records, total=total, desc=desc, unit="ev", mininterval=1.0,
                                   disable=total is not None and total < 1000):
            try:
                self.producer.send(topic, key=key, value=value, timestamp_ms=ts).add_errback(self._failed)
            except KafkaError as exc:  # e.g. no metadata within max_block_ms: the broker is down
                self._failed(exc)
            n += 1
            if rate > 0:
                ahead = n / rate - (time.perf_counter() - start)
                if ahead > 0.002:
                    time.sleep(ahead)
        self.producer.flush()
        self.sent += n
        if self.failed > failed_before:
            raise ProduceFailed(n, self.failed - failed_before, self.first_error)
        return n

    def send_bad_events(self, kinds: list[str] | None = None, impressions: bool = False) -> dict[str, str]:
        """One malformed record of each kind (`bad_event_samples`, or with `impressions` the
        impressions topic's `bad_impression_samples`): name -> the reason it must get."""
        now = time.time_ns() // 1_000_000
        samples = bad_impression_samples(now) if impressions else bad_event_samples(now)
        topic = self.settings.impressions_topic if impressions else self.settings.actions_topic
        chosen = {k: samples[k] for k in (kinds or samples)}
        before = self.failed
        for name, (value, _) in chosen.items():
            self.producer.send(topic, key=b"bad", value=value).add_errback(self._failed)
        self.producer.flush()
        if self.failed > before:
            raise ProduceFailed(len(chosen), self.failed - before, self.first_error)
        return {name: reason for name, (_, reason) in chosen.items()}

    def close(self) -> None:
        self.producer.close()


def load_world_tables(world_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    from homefeed.world import load_world

    world = load_world(world_dir)
    return world.events, world.pins, world.start_ms
