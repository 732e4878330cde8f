"""Bulk load: a world's history (a generated world, an import, a warehouse export in the world
format) into the offline log and the online store without a broker, through the stream
consumer's own code, so the result is the one `stream produce` + `stream consume` give.

1. Read the world (homefeed.world.load_world): pins, action events, impressions.
2. Serialize them with the producer's functions (homefeed.stream.producer: `pin_records`,
   `event_records`, `impression_records`): the same keys, bytes and record timestamps (the
   arrival time) as `homefeed stream produce`. Pins go first, as produce sends them; then the
   events and impressions merged in arrival order (an event before an impression that arrives
   in the same millisecond); with `inject_bad`, produce's malformed samples last.
3. Number them as a broker would, deterministically: per topic one partition and offsets 0, 1,
   ... in send order. The partition is negative, so it never is a Kafka partition, and derived
   from the world's files (`load_partition`): the engagement counters' offset marks (one per
   topic and partition, homefeed.stream.engagement) then never hide a live record, nor another
   world's load, and loading the same world again counts nothing twice (a crashed load is
   resumed by running it again; the log gets copies, which its readers drop).
4. Apply them in batches of `batch` records with `SequenceBuilder.apply`, the consumer's
   micro-batch: parse and cheap checks, the batch suites, the sequence merge with its
   compare-and-set state in Redis, the engagement counters, the log, the Feast writes. A batch
   is a large micro-batch: batch boundaries only decide whether an entity's events of one
   second of arrival time make one logged version or several within that second, as the
   consumer's polls do.
5. Dead letters (records that fail a check) go to a JSON-lines file (`DeadLetterFile`) instead
   of the dead-letter topic: the same key, value and reason/detail/source headers.

An outage (Redis, the disk) or a record that passes every check but cannot be applied stops the
load with its error (the stream consumer retries the first and dead-letters the second as
`apply_failed`); run it again once fixed: step 3 makes that a resume.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import os
import time
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from homefeed.settings import Settings

DEFAULT_BATCH = 20_000
# Partitions of bulk loads: -1 .. -PARTITION_SPACE (Kafka's are >= 0).
PARTITION_SPACE = 2**31 - 1


class DeadLetterFile:
    """The dead-letter producer of a bulk load: each dead letter is one JSON line (topic, key
    and value base64-encoded, headers as text) in `path`, created at the first one. Offers the
    calls `SequenceBuilder` makes on a Kafka producer (send, flush, close)."""

    class _Written:
        """The result of a send: written already."""

        def get(self, timeout=None) -> None:
            return None

    def __init__(self, path: Path):
        self.path = Path(path)
        self.count = 0
        self._fh = None

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers=()):
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps({
            "topic": topic, "key": None if key is None else base64.b64encode(key).decode(),
            "value": None if value is None else base64.b64encode(value).decode(),
            "headers": {name: data.decode("utf-8", "replace") for name, data in headers}}) + "\n")
        self.count += 1
        return self._Written()

    def flush(self, timeout=None) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self, timeout=None) -> None:
        if self._fh is not None:
            self.flush()
            self._fh.close()
            self._fh = None


def read_dead_letters(path: Path) -> list[dict]:
    """A dead-letter file's entries, key and value decoded back to bytes."""
    out = []
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        for name in ("key", "value"):
            if entry[name] is not None:
                entry[name] = base64.b64decode(entry[name])
        out.append(entry)
    return out


def load_partition(world_dir: Path) -> int:
    """Step 3: the partition of this world's records, from a digest of its files."""
    from homefeed.world import WORLD_FILES

    digest = hashlib.sha256()
    for name in WORLD_FILES:
        with open(Path(world_dir) / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return -1 - int.from_bytes(digest.digest()[:8], "big") % PARTITION_SPACE


def world_records(world, shown, bad: dict[str, tuple[bytes, str]]):
    """Step 2: (topic kind, key, value, timestamp ms) in send order; the kind is "pins",
    "actions" or "impressions". `shown`: the world's impressions; `bad`: malformed samples."""
    from homefeed.stream.producer import event_records, impression_records, pin_records

    for key, value, ts in pin_records(world.pins, world.start_ms):
        yield "pins", key, value, ts
    actions = (("actions", *r) for r in event_records(world.events, use_arrival_time=True))
    impressions = (("impressions", *r) for r in impression_records(shown, use_arrival_time=True))
    yield from heapq.merge(actions, impressions, key=lambda r: r[3])  # stable: actions first on ties
    now = time.time_ns() // 1_000_000  # produce sends them without a timestamp: the broker's clock
    for value, _ in bad.values():
        yield "actions", b"bad", value, now


def consumer_records(settings: Settings, records, partition: int):
    """Step 3: Kafka ConsumerRecords of (kind, key, value, timestamp) records, numbered per topic."""
    from kafka.consumer.fetcher import ConsumerRecord

    topics = {"pins": settings.pins_topic, "actions": settings.actions_topic,
              "impressions": settings.impressions_topic}
    offsets = dict.fromkeys(topics, 0)
    for kind, key, value, ts in records:
        offset, offsets[kind] = offsets[kind], offsets[kind] + 1
        yield ConsumerRecord(topics[kind], partition, -1, offset, ts, 0, key, value, [], None,
                             len(key), len(value), -1)


def bulk_load(settings: Settings, world_dir: Path, *, batch: int = DEFAULT_BATCH, validate: bool = True,
              inject_bad: bool = False, dead_letters: Path | None = None, progress: bool = True) -> dict:
    """Steps 1-5; returns the counts, the builder's totals, the seconds per stage of its batches
    (builder.STAGES) and the seconds in all."""
    from homefeed.stream.consumer import ConsumeStats, build_builder
    from homefeed.stream.producer import bad_event_samples
    from homefeed.world import load_world

    started = time.perf_counter()
    world = load_world(world_dir)
    shown = world.impressions()
    bad = bad_event_samples(time.time_ns() // 1_000_000) if inject_bad else {}
    n_events, n_pins, n_shown, n_bad = len(world.events), len(world.pins), len(shown), len(bad)
    partition = load_partition(world_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dlq = DeadLetterFile(dead_letters or settings.home / "dead-letters" / f"bulk-{stamp}.jsonl")
    builder = build_builder(settings, validate, dlq)
    builder.warm_up()
    stats = ConsumeStats()
    records = consumer_records(settings, world_records(world, shown, bad), partition)
    try:
        with tqdm(total=n_pins + n_events + n_shown + n_bad, desc="bulk load", unit="rec",
                  mininterval=1.0, disable=not progress) as bar:
            while chunk := list(islice(records, batch)):
                stats.add(builder.apply(chunk))
                bar.update(len(chunk))
    finally:
        dlq.close()
    return {"events": n_events, "impressions": n_shown, "pins": n_pins, "bad_events": n_bad,
            "applied": stats.applied, "duplicates": stats.duplicates, "dead_lettered": stats.dead_lettered,
            "dead_letters": str(dlq.path) if dlq.count else None, "partition": partition,
            "batches": stats.batches,
            "stage_s": {stage: round(sum(v), 1) for stage, v in stats.stage_s.items() if any(v)},
            "seconds": round(time.perf_counter() - started, 1)}
