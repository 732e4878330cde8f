"""Helpers shared by the tests (plain functions, not fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from homefeed import features as F
from homefeed.events import ActionEvent
from homefeed.settings import Settings
from homefeed.training.dataset import Dataset, save_dataset

DAY = 86_400_000


def assert_same_contract_as_generator(world_dir: Path, tmp_path: Path):
    """An imported world has the synthetic generator's parquet schemas and world.json keys, and
    its requests and events in the generator's sort orders. Returns the loaded world."""
    from homefeed.world import WORLD_FILES, WorldParams, generate_world, load_world

    synth = tmp_path / "synth"
    generate_world(WorldParams(users=20, pins=50, days=2, embedding_dim=8, n_topics=4), synth,
                   progress=False)
    for name in WORLD_FILES:
        if name.endswith(".parquet"):
            assert pq.read_schema(world_dir / name) == pq.read_schema(synth / name), name
    meta = json.loads((world_dir / "world.json").read_text())
    synth_meta = json.loads((synth / "world.json").read_text())
    assert set(synth_meta) <= set(meta) and set(synth_meta["summary"]) <= set(meta["summary"])
    world = load_world(world_dir)
    keys = world.requests[["request_time", "request_id", "position"]].to_records(index=False).tolist()
    assert keys == sorted(keys)
    order = world.events[["arrival_time", "event_id"]].to_records(index=False).tolist()
    assert order == sorted(order) and world.events.event_id.is_unique
    return meta


def replay(settings: Settings, events: list[tuple[ActionEvent, int]], pins: pd.DataFrame | None = None,
           start_ms: int = 0, batch_max_events: int = 1, impressions: pd.DataFrame | None = None) -> None:
    """Produce (event, arrival_ms) records with record timestamp = arrival, and a world's
    `impressions` rows (World.impressions()) the same way, then run the real consumer until
    idle. One partition per topic: each topic's records are consumed in arrival order."""
    from homefeed.stream.consumer import build_consumer
    from homefeed.stream.producer import Producer, impression_records, pin_records

    producer = Producer(settings)
    if pins is not None:
        producer.send_all(settings.pins_topic, pin_records(pins, start_ms), total=len(pins))
    records = sorted(events, key=lambda e: e[1])
    producer.send_all(settings.actions_topic, ((str(e.user_id).encode(), e.to_json(), arrival)
                                               for e, arrival in records), total=len(records))
    if impressions is not None:
        producer.send_all(settings.impressions_topic,
                          impression_records(impressions.sort_values("arrival_time", kind="stable"),
                                             use_arrival_time=True), total=len(impressions))
    producer.close()
    consumer = build_consumer(settings.replace(batch_max_events=batch_max_events), validate=False)
    consumer.run(idle_exit_s=3)


def dead_letters(settings: Settings) -> list[tuple[bytes, dict[str, str]]]:
    """(value, headers as text) of every record on the dead-letter topic of `settings`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.effective_kafka_bootstrap,
                             consumer_timeout_ms=2000)
    parts = [TopicPartition(settings.dead_letter_topic, p)
             for p in consumer.partitions_for_topic(settings.dead_letter_topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = [(r.value, {k: v.decode() for k, v in r.headers}) for r in consumer]
    consumer.close()
    return out


# -- a planted dataset --------------------------------------------------------------------------------

def planted_dataset(path: Path, n_requests: int = 800, dim: int = 8, seq_len: int = 16, seed: int = 0,
                    leak: bool = False) -> Dataset:
    """Requests whose three newest actions are repins of one 'intent' topic; candidates of that
    topic get repinned much more often. The profile carries no signal: only the sequence does."""
    rng = np.random.default_rng(seed)
    n_topics, n_pins, n_cand = 6, 240, 12
    centroids = rng.standard_normal((n_topics, dim))
    pin_topic = np.arange(n_pins) % n_topics
    emb = centroids[pin_topic] / np.linalg.norm(centroids[pin_topic], axis=1, keepdims=True)
    emb = emb + 0.25 * rng.standard_normal((n_pins, dim)) / np.sqrt(dim)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    pin_ids = np.arange(1, n_pins + 1)
    # media durations (no signal, and no draw from rng: the planted data stays as it was); every
    # seventh pin's is unknown (null)
    duration = pd.array([None if p % 7 == 0 else 4_000 + 1_500 * (p % 40) for p in pin_ids], dtype="Int64")
    start = 1_767_571_200_000
    req_rows, imp_rows = [], []
    for r in range(n_requests):
        day = 1 + 3 * r // n_requests  # days 1..3: train, valid, test
        rt = start + day * DAY + (r % 500) * 60_000
        intent = rng.integers(n_topics)
        length = int(rng.integers(4, seq_len))
        of_intent = pin_ids[pin_topic == intent]
        seq_pins = np.concatenate([rng.choice(of_intent, 3), rng.choice(pin_ids, length - 3)])
        seq_acts = np.concatenate([[1, 1, 1], rng.integers(1, 4, length - 3)]).astype(np.int32)
        seq_times = rt - 30_000 * np.arange(1, length + 1)
        if leak and r == 5:
            seq_times[0] = rt + 1_000  # an action after the request: must fail validation
        # pins shown before (no signal, and no draw from rng: the planted data stays as it was);
        # some times equal an action's (the merge's tie rule), every fifth request has none
        n_imp = r % 5 * 3
        imp_pins = pin_ids[(r * 7 + np.arange(n_imp)) % n_pins]
        imp_times = rt - 15_000 * np.arange(1, n_imp + 1)
        req_rows.append({
            F.REQUEST_ID: r + 1, F.USER_ID: 1 + r % 40, "request_time_ms": rt, "day": day,
            "split": ("train", "valid", "test")[day - 1], "segment": "core" if r % 3 else "new",
            "is_core": bool(r % 3), F.SEQ_PIN_IDS: seq_pins.astype(np.int64),
            F.SEQ_ACTION_TYPES: seq_acts, F.SEQ_ACTION_TIMES: seq_times.astype(np.int64),
            F.SEQ_LENGTH: np.int32(length), F.IMP_PIN_IDS: imp_pins.astype(np.int64),
            F.IMP_TIMES: imp_times.astype(np.int64), F.IMP_LENGTH: np.int32(n_imp),
            F.PROFILE_EMBEDDING: emb[rng.integers(n_pins)],
            F.PROFILE_ACTIONS_28D: 50, F.PROFILE_REPIN_RATE_28D: 0.3, F.PROFILE_HIDE_RATE_28D: 0.05,
            F.PROFILE_DAYS_ACTIVE_28D: 10})
        cands = np.concatenate([rng.choice(of_intent, 4, replace=False),
                                rng.choice(pin_ids[pin_topic != intent], n_cand - 4, replace=False)])
        for pos, pin in enumerate(rng.permutation(cands)):
            hit = pin_topic[pin - 1] == intent
            repin = rng.random() < (0.6 if hit else 0.03)
            imp_rows.append({F.REQUEST_ID: r + 1, F.USER_ID: 1 + r % 40, F.PIN_ID: int(pin),
                             "position": pos, "label_repin": int(repin),
                             "label_click": int(repin or rng.random() < 0.05),
                             "label_hide": int(not hit and rng.random() < 0.03),
                             F.PIN_EMBEDDING: emb[pin - 1], F.PIN_TOPIC: int(pin_topic[pin - 1]),
                             F.PIN_CREATED_MS: start - 5 * DAY, F.PIN_DURATION_MS: duration[pin - 1]})
    requests = pd.DataFrame(req_rows)
    impressions = pd.DataFrame(imp_rows)
    impressions[F.PIN_DURATION_MS] = impressions[F.PIN_DURATION_MS].astype("Int64")
    for frame in (requests, impressions):
        frame[F.EVENT_TIMESTAMP] = pd.to_datetime(
            requests.set_index(F.REQUEST_ID).loc[frame[F.REQUEST_ID], "request_time_ms"].to_numpy(),
            unit="ms", utc=True).astype("datetime64[us, UTC]")
    pins = pd.DataFrame({F.PIN_ID: pin_ids, F.PIN_EMBEDDING: list(emb), F.PIN_TOPIC: pin_topic,
                         F.PIN_CREATED_MS: start - 5 * DAY, F.PIN_DURATION_MS: duration})
    meta = {"embedding_dim": dim, "sequence_length": seq_len, "start_ms": start, "days": 4,
            "splits": {"train": [1], "valid": [2], "test": [3]},
            "schema_fingerprint": F.schema_fingerprint(dim, seq_len),
            "counts": {s: {"requests": int((requests["split"] == s).sum())} for s in ("train", "valid", "test")}}
    ds = Dataset(path, requests, impressions, pins, meta)
    save_dataset(ds)
    return ds


