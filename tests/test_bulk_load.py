"""The bulk loader (`homefeed stream load`, homefeed.stream.bulk) against the stream: one small
world through Kafka (produce + consume) and through the bulk loader, each into a fresh Redis and
offline log, must leave the same log, online sequences and engagement counters.

Micro-batch boundaries differ between the two (and between two Kafka runs: they fall where the
consumer's polls do), so the comparison takes what they cannot change: every logged event,
impression and pin version; each user's sequence as of the end of every second of arrival time
(a window split across batches logs its intermediate state too, within that second); each
counter's newest version, its online value and the dead letters' reasons. Counter versions in
between depend on how the consumer's fetches interleave partitions and topics, not compared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from helpers import dead_letters

from homefeed import features as F
from homefeed import offline_log
from homefeed.feature_store import open_store
from homefeed.redis_client import pipeline_client
from homefeed.stream.bulk import bulk_load, read_dead_letters
from homefeed.stream.engagement import EngagementCounters
from homefeed.stream.producer import Producer
from homefeed.stream.replay import replay_world
from homefeed.world import WorldParams, generate_world, load_world

pytestmark = [pytest.mark.integration]

WORLD = WorldParams(users=40, pins=200, days=3, seed=13, n_topics=4, late_fraction=0.2)
LIST_COLUMNS = (F.SEQ_PIN_IDS, F.SEQ_ACTION_TYPES, F.SEQ_ACTION_TIMES)


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def sequences_by_second(offline_dir) -> pd.DataFrame:
    """Each user's logged sequence as of the end of every second of arrival time (created) in
    which it changed: the newest version created within that second."""
    seqs = offline_log.read(offline_dir, F.USER_ACTION_SEQUENCE)
    seqs["second"] = seqs[F.CREATED].astype("int64") // 10**6
    last = _sorted(seqs, [F.USER_ID, F.CREATED, F.EVENT_TIMESTAMP]).groupby(
        [F.USER_ID, "second"], as_index=False).last()
    for column in LIST_COLUMNS:
        last[column] = last[column].map(tuple)
    return last[[F.USER_ID, "second", *LIST_COLUMNS, F.SEQ_LENGTH]]


def newest_counters(offline_dir) -> dict[str, pd.DataFrame]:
    """Per engagement view, each entity's newest logged version."""
    out = {}
    for view, (key, names) in F.ENGAGEMENT_VIEWS.items():
        logged = _sorted(offline_log.read(offline_dir, view), [key, F.EVENT_TIMESTAMP, F.CREATED])
        out[view] = logged.groupby(key, as_index=False).last()[[key, *names]]
    return out


def outcome(settings, world) -> dict:
    """What a path left in the offline log and in Redis (homefeed's keys and Feast's)."""
    users = sorted(int(u) for u in world.events[F.USER_ID].unique())
    pins = sorted(int(p) for p in world.pins[F.PIN_ID])
    store = open_store(settings.feature_repo)
    online = store.get_online_features(
        features=F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES),
        entity_rows=[{F.USER_ID: u} for u in users]).to_dict()
    client = pipeline_client(settings)
    counters = EngagementCounters(client, store.project, 1000)
    try:
        stored = {F.USER_ENGAGEMENT: counters.read(F.USER_ENGAGEMENT, users),
                  F.PIN_ENGAGEMENT: counters.read(F.PIN_ENGAGEMENT, pins)}
    finally:
        client.close()
    log = settings.offline_dir
    return {
        "events": _sorted(offline_log.read(log, F.ACTION_EVENTS), [F.USER_ID, "event_id"]),
        "impressions": _sorted(offline_log.read(log, F.IMPRESSION_EVENTS), [F.USER_ID, "event_id"]),
        "pins": _sorted(offline_log.read(log, F.PIN_FEATURES), [F.PIN_ID, F.EVENT_TIMESTAMP]),
        "sequences": sequences_by_second(log),
        "newest_counters": newest_counters(log),
        "online_sequences": {name: online[name] for name in F.SEQUENCE_FEATURE_NAMES},
        "counters": stored,
    }


def assert_same_counters(stream: dict[int, dict], bulk: dict[int, dict]) -> None:
    """Counts and as-of times equal; decayed values up to the rounding of a different order."""
    assert sorted(stream) == sorted(bulk)
    for entity, got in stream.items():
        assert bulk[entity]["totals"] == got["totals"] and bulk[entity]["as_of"] == got["as_of"], entity
        assert bulk[entity]["decayed"] == pytest.approx(got["decayed"], rel=1e-9), entity


def test_bulk_load_leaves_what_the_stream_leaves(pipeline, tmp_path):
    world_dir = tmp_path / "world"
    generate_world(WORLD, world_dir, progress=False)
    world = load_world(world_dir)
    assert len(world.impressions()) > 0 and (world.events["arrival_time"] > world.events["event_time"]).any()

    # 1. the stream: produce's bad events, then the world, through the broker and the consumer
    producer = Producer(pipeline)
    expected_reasons = Counter(producer.send_bad_events().values())
    producer.close()
    streamed = replay_world(pipeline, world_dir)["consumer"]
    stream = outcome(pipeline, world)
    stream_reasons = Counter(headers["reason"] for _, headers in dead_letters(pipeline))
    assert stream_reasons == expected_reasons and streamed["pin_upserts"] == len(world.pins)

    # 2. the bulk loader's CLI, into a fresh Redis and an empty offline log; small batches, so
    # an entity's second of arrival time is split across batches too
    client = pipeline_client(pipeline)
    client.flushall()
    client.close()
    shutil.move(pipeline.offline_dir, tmp_path / "stream-offline")
    letters = tmp_path / "dead-letters.jsonl"
    env = {**os.environ, "HOMEFEED_ACTIONS_TOPIC": pipeline.actions_topic,
           "HOMEFEED_PINS_TOPIC": pipeline.pins_topic, "HOMEFEED_IMPRESSIONS_TOPIC": pipeline.impressions_topic,
           "HOMEFEED_DEAD_LETTER_TOPIC": pipeline.dead_letter_topic}
    done = subprocess.run([sys.executable, "-m", "homefeed.cli", "stream", "load", "--world", str(world_dir),
                           "--batch", "700", "--inject-bad", "--dead-letters", str(letters)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["batches"] > 3
    bulk = outcome(pipeline, world)

    # 3. the same counts, dead letters, log, sequences and counters
    assert (summary["events"], summary["impressions"], summary["pins"]) == (
        len(world.events), len(world.impressions()), len(world.pins))
    assert {k: summary[k] for k in ("applied", "duplicates", "dead_lettered")} == {
        k: streamed[k] for k in ("applied", "duplicates", "dead_lettered")}
    assert summary["applied"] == len(world.events) and summary["dead_letters"] == str(letters)
    entries = read_dead_letters(letters)
    assert Counter(e["headers"]["reason"] for e in entries) == expected_reasons
    assert {e["topic"] for e in entries} == {pipeline.dead_letter_topic}
    assert {e["headers"]["source"].rsplit(":", 2)[0] for e in entries} == {pipeline.actions_topic}

    for table in ("events", "impressions", "pins", "sequences"):
        pd.testing.assert_frame_equal(bulk[table], stream[table], obj=table)
    assert bulk["online_sequences"] == stream["online_sequences"]
    for view, frame in stream["newest_counters"].items():
        key, (decayed, totals, as_of) = F.ENGAGEMENT_VIEWS[view]
        mine = bulk["newest_counters"][view]
        assert mine[key].tolist() == frame[key].tolist(), view
        assert mine[totals].map(list).tolist() == frame[totals].map(list).tolist(), view
        assert (mine[as_of] == frame[as_of]).all(), view
        np.testing.assert_allclose(np.stack(mine[decayed]), np.stack(frame[decayed]), rtol=1e-9)
    for view, stored in stream["counters"].items():
        assert len(stored) > 0
        assert_same_counters(stored, bulk["counters"][view])

    # 4. loading the same world again (a resumed load) counts nothing twice: the same partition
    # and offsets, so the counters' marks skip every record; the log only gets copies
    again = bulk_load(pipeline, world_dir, batch=5000, validate=False, progress=False)
    assert again["partition"] == summary["partition"] and again["dead_lettered"] == 0
    twice = outcome(pipeline, world)
    assert twice["counters"] == bulk["counters"] and twice["online_sequences"] == bulk["online_sequences"]
    pd.testing.assert_frame_equal(twice["sequences"], bulk["sequences"])
    for view, frame in bulk["newest_counters"].items():
        pd.testing.assert_frame_equal(twice["newest_counters"][view], frame)
    events = twice["events"].drop_duplicates([F.USER_ID, "event_id"]).reset_index(drop=True)
    assert len(twice["events"]) == 2 * len(events)
    pd.testing.assert_frame_equal(events, bulk["events"])
