"""The dataset build in chunks of users: the same dataset as a one-chunk build, per-chunk parts
and validation results (a private pipeline: real redis-server, broker and Feast, as
tests/test_training.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import replay

from homefeed import features as F
from homefeed.events import ActionEvent, ActionType
from homefeed.training.dataset import user_chunk


def test_user_chunks_are_stable_and_spread():
    ids = np.arange(1, 10_001)
    got = user_chunk(ids, 8)
    assert got.tolist()[:8] == user_chunk(ids[:8], 8).tolist()  # a user's chunk is its own
    assert set(got.tolist()) == set(range(8)) and np.bincount(got).min() > 1_000
    assert (user_chunk(ids, 1) == 0).all()


@pytest.mark.integration
@pytest.mark.slow
def test_a_build_in_chunks_of_users_is_the_one_chunk_build(pipeline, tmp_path):
    from homefeed.feature_store import open_store
    from homefeed.training.dataset import build_dataset, load_dataset
    from homefeed.training.profiles_job import run_profile_job
    from homefeed.world import WorldParams, generate_world, load_world

    generate_world(WorldParams(users=30, pins=150, days=4, seed=7, n_topics=6, non_core_share=0.2,
                               late_fraction=0.2, min_candidates=5, max_candidates=7),
                   tmp_path / "world", progress=False)
    world = load_world(tmp_path / "world")
    events = [(ActionEvent(r.event_id, int(r.user_id), int(r.pin_id), ActionType.parse(r.action_type),
                           int(r.event_time)), int(r.arrival_time)) for r in world.events.itertuples()]
    replay(pipeline, events, world.pins, world.start_ms, batch_max_events=20)
    run_profile_job(pipeline)
    store = open_store(pipeline.feature_repo)

    metas = {n: build_dataset(tmp_path / "world", tmp_path / f"ds{n}", pipeline, store=store, warmup_days=1,
                              valid_days=1, test_days=1, progress=False, chunks=n) for n in (1, 3)}
    one, three = metas[1], metas[3]
    for name in ("requests.parquet", "impressions.parquet"):
        assert len(list((tmp_path / "ds3" / name).glob("part-*.parquet"))) == 3
    assert [p["chunk"] for p in three["layout"]["parts"]] == [0, 1, 2]
    assert sum(p["impressions"] for p in three["layout"]["parts"]) == len(world.requests[world.requests["day"] >= 1])

    # equal tables after sorting, as written
    for name, keys in (("requests.parquet", [F.SNAPSHOT_ID]), ("impressions.parquet", [F.SNAPSHOT_ID, F.PIN_ID])):
        a, b = (pq.read_table(tmp_path / d / name).replace_schema_metadata(None)
                .sort_by([(k, "ascending") for k in keys])
                for d in ("ds1", "ds3"))
        assert a.num_rows > 0 and a.schema == b.schema and a.equals(b), name
    # ... and the same Dataset, row for row, as training reads it
    d1, d3 = load_dataset(tmp_path / "ds1"), load_dataset(tmp_path / "ds3")
    for attr in ("requests", "impressions", "pins"):
        left, right = (pa.Table.from_pandas(getattr(d, attr)) for d in (d1, d3))
        assert left.equals(right), attr

    skip = ("layout", "build_seconds", "build_timings_s", "validation")
    assert {k: v for k, v in one.items() if k not in skip} == {k: v for k, v in three.items() if k not in skip}
    assert three["audit"]["leaked_actions"] == 0 and three["audit"]["sequence_actions"] > 0
    # validation per chunk, with the whole dataset's label-rate bounds
    v1, v3 = one["validation"], three["validation"]
    assert v1["success"] and v3["success"], (v1["failures"], v3["failures"])
    assert [c["chunk"] for c in v3["chunks"]] == [0, 1, 2] and all(c["success"] for c in v3["chunks"])
    assert v3["rows"] == v1["rows"] == sum(p["impressions"] for p in three["layout"]["parts"])
    assert v3["parameters"] == v1["parameters"] and v3["evaluated"] == v1["evaluated"]
