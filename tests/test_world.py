"""The synthetic world: determinism, the file contract, statistics and the effects it must carry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from homefeed.cli import main
from homefeed.errors import UserError
from homefeed.events import action_names
from homefeed.features import LABEL_COLUMNS
from homefeed.world import DAY_MS, DEFAULT_START_MS, WORLD_FILES, WorldParams, generate_world, load_world

TINY = WorldParams(users=200, pins=500, days=4, seed=3)
TINY_ARGS = ["--users", "200", "--pins", "500", "--days", "4", "--seed", "3", "--embedding-dim", "32"]
PARQUETS = [name for name in WORLD_FILES if name.endswith(".parquet")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "world"
    generate_world(TINY, out, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_world(tiny_dir)


@pytest.fixture(scope="module")
def shown(tiny) -> pd.DataFrame:
    """Impressions with the pin's topic and creation time."""
    return tiny.requests.merge(tiny.pins[["pin_id", "topic_id", "pin_created_ms"]], on="pin_id")


# -- determinism and the CLI -----------------------------------------------------------------------


def test_cli_same_seed_gives_identical_bytes(tiny_dir, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["world", "generate", "--out", str(out), *TINY_ARGS, "-q"]) == 0
    assert "world written to" in capsys.readouterr().out
    for name in WORLD_FILES:
        assert (out / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_different_seed_gives_different_files(tiny_dir, tmp_path):
    out = tmp_path / "other"
    generate_world(WorldParams(users=200, pins=500, days=4, seed=4), out, progress=False)
    for name in PARQUETS:
        assert (out / name).read_bytes() != (tiny_dir / name).read_bytes(), name


def test_cli_rejects_bad_parameters(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["world", "generate", "--out", str(out), "--days", "1", "-q"]) == 2
    assert "days must be in 2.." in capsys.readouterr().err
    assert not out.exists()


def test_cli_start_accepts_iso_date(tmp_path):
    out = tmp_path / "w"
    args = ["--users", "20", "--pins", "50", "--days", "2", "--embedding-dim", "8", "-q"]
    assert main(["world", "generate", "--out", str(out), "--start", "2026-03-02", *args]) == 0
    meta = json.loads((out / "world.json").read_text())
    assert meta["start_ms"] == 1_772_409_600_000
    assert meta["start_iso"] == "2026-03-02T00:00:00Z"


# -- invalid parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(users=0), "users"),
        (dict(pins=-5), "pins"),
        (dict(days=1), "days"),
        (dict(late_fraction=1.5), "late_fraction"),
        (dict(non_core_share=-0.1), "non_core_share"),
        (dict(new_pin_share=float("nan")), "new_pin_share"),
        (dict(embedding_dim=0), "embedding_dim"),
        (dict(n_topics=1), "n_topics"),
        (dict(pins=10, n_topics=24), "pins (10) must be >= n_topics"),
        (dict(min_candidates=20, max_candidates=10), "min_candidates"),
        (dict(seed=-1), "seed"),
        (dict(start_ms=1_000), "start_ms"),
        (dict(users=2.5), "users must be an integer"),
    ],
)
def test_invalid_params_raise_before_writing(tmp_path, changes, message):
    out = tmp_path / "world"
    params = WorldParams(**{**TINY.to_dict(), **changes})
    with pytest.raises(UserError, match=re.escape(message)):
        generate_world(params, out, progress=False)
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "taken"
    out.write_text("keep me")
    with pytest.raises(UserError, match="not a directory"):
        generate_world(TINY, out, progress=False)
    assert out.read_text() == "keep me"


def test_out_below_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        generate_world(TINY, tmp_path / "file" / "world", progress=False)


def test_load_world_of_a_non_world_directory(tmp_path):
    with pytest.raises(UserError, match="not a world directory"):
        load_world(tmp_path)


# -- file contract ---------------------------------------------------------------------------------


def test_parquet_schemas(tiny_dir):
    schema = {name: pq.read_schema(tiny_dir / name) for name in PARQUETS}
    assert schema["pins.parquet"] == pa.schema([
        ("pin_id", pa.int64()), ("topic_id", pa.int64()),
        ("embedding", pa.list_(pa.float32())), ("pin_created_ms", pa.int64()),
        ("pin_duration_ms", pa.int64()),
    ])
    assert schema["users.parquet"] == pa.schema([
        ("user_id", pa.int64()), ("segment", pa.string()), ("is_core", pa.bool_()),
        ("first_active_ms", pa.int64()),
    ])
    assert schema["requests.parquet"] == pa.schema([
        ("request_id", pa.int64()), ("user_id", pa.int64()), ("request_time", pa.int64()),
        ("day", pa.int32()), ("position", pa.int32()), ("pin_id", pa.int64()),
        ("served_time", pa.int64()), *((label, pa.int8()) for label in LABEL_COLUMNS),
    ])
    assert schema["events.parquet"] == pa.schema([
        ("event_id", pa.string()), ("user_id", pa.int64()), ("pin_id", pa.int64()),
        ("action_type", pa.string()), ("event_time", pa.int64()), ("arrival_time", pa.int64()),
        ("surface", pa.string()), ("request_id", pa.int64()),
    ])


def test_pin_durations_are_drawn_per_topic_and_leave_the_rest_of_the_world_alone(tiny, tiny_dir, tmp_path):
    from homefeed.world.generate import DURATION_MAX_S, DURATION_MIN_S

    pins = tiny.pins
    assert str(pins.pin_duration_ms.dtype) == "Int64" and pins.pin_duration_ms.notna().all()
    assert pins.pin_duration_ms.between(DURATION_MIN_S * 1000, DURATION_MAX_S * 1000).all()
    # topics differ in their typical length: the spread of topic medians is well above what
    # pins drawn around one median would show
    medians = np.log(pins.groupby("topic_id").pin_duration_ms.median().astype(float))
    assert medians.std() > 0.5
    # a world written before durations existed (no column) still loads: every duration unknown
    old = tmp_path / "old"
    old.mkdir()
    for name in WORLD_FILES:
        (old / name).write_bytes((tiny_dir / name).read_bytes())
    pq.write_table(pq.read_table(tiny_dir / "pins.parquet").drop_columns(["pin_duration_ms"]),
                   old / "pins.parquet")
    loaded = load_world(old)
    assert str(loaded.pins.pin_duration_ms.dtype) == "Int64" and loaded.pins.pin_duration_ms.isna().all()
    assert loaded.pins.drop(columns="pin_duration_ms").equals(tiny.pins.drop(columns="pin_duration_ms"))


def test_world_json_records_params_and_summary(tiny, tiny_dir):
    meta = json.loads((tiny_dir / "world.json").read_text())
    assert tiny.params == TINY
    assert meta["seed"] == 3 and meta["start_ms"] == DEFAULT_START_MS
    assert meta["embedding_dim"] == 32 and meta["n_topics"] == 24
    assert meta["end_ms"] == DEFAULT_START_MS + 4 * DAY_MS
    summary = meta["summary"]
    assert summary["impressions"] == len(tiny.requests)
    assert summary["events"] == len(tiny.events)
    assert summary["requests"] == tiny.requests.request_id.nunique()
    for action in action_names():
        assert summary["events_by_action"][action] == (tiny.events.action_type == action).sum()
    assert set(summary["events_per_user"]) >= {"p10", "p50", "p90", "p99", "max"}


def test_ids_ranges_and_order(tiny):
    pins, users, req, ev = tiny.pins, tiny.users, tiny.requests, tiny.events
    assert pins.pin_id.tolist() == list(range(1, 501))
    assert users.user_id.tolist() == list(range(1, 201))
    assert pins.topic_id.between(0, 23).all() and pins.topic_id.nunique() == 24
    emb = np.stack(pins.embedding.to_numpy())
    assert emb.shape == (500, 32) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert set(users.segment) == {"core", "new", "casual", "resurrected"}
    assert (users.is_core == (users.segment == "core")).all()

    assert req.user_id.between(1, 200).all() and req.pin_id.between(1, 500).all()
    keys = req[["request_time", "request_id", "position"]].to_records(index=False).tolist()
    assert keys == sorted(keys)
    assert (req.day == (req.request_time - tiny.start_ms) // DAY_MS).all()
    assert req.day.between(0, 3).all()
    assert (req.served_time == req.request_time).all()  # a request is served at one instant
    per_request = req.groupby("request_id")
    assert per_request.size().between(12, 24).all()
    assert (per_request.user_id.nunique() == 1).all() and (per_request.request_time.nunique() == 1).all()
    assert not req.duplicated(["request_id", "pin_id"]).any()
    assert (per_request.position.max() + 1 == per_request.size()).all()

    assert ev.event_id.is_unique and ev.event_id.str.fullmatch(r"e\d{10}").all()
    assert (ev.surface == "homefeed").all() and set(ev.action_type) == set(action_names())
    order = ev[["arrival_time", "event_id"]].to_records(index=False).tolist()
    assert order == sorted(order)


def test_every_event_matches_a_labelled_impression(tiny):
    req, ev = tiny.requests, tiny.events
    joined = ev.merge(req, on=["request_id", "pin_id"], how="left", suffixes=("", "_req"),
                      validate="many_to_one")
    assert joined.request_time.notna().all()
    assert (joined.user_id == joined.user_id_req).all()
    for action in action_names():
        rows = joined[joined.action_type == action]
        assert (rows[f"label_{action}"] == 1).all()
        # ... and every positive label has exactly one event.
        assert len(rows) == req[f"label_{action}"].sum()
        assert not rows.duplicated(["request_id", "pin_id"]).any()
    delay = joined.event_time - joined.request_time
    assert (delay >= 1_000).all() and (delay <= 3_600_000).all()  # seconds .. minutes
    assert (joined.event_time < tiny.end_ms + DAY_MS).all()
    # A hide ends the interaction: never clicked or repinned as well.
    hidden = req.label_hide == 1
    assert (req.label_repin[hidden] == 0).all() and (req.label_click[hidden] == 0).all()


def test_event_arrival_and_late_fraction(tiny):
    ev = tiny.events
    lag = ev.arrival_time - ev.event_time
    assert (lag >= 50).all()
    late = lag > 800
    assert 0.015 < late.mean() < 0.05
    assert lag[late].min() >= 60_000 and lag[late].max() <= 6 * 3_600_000 + 1


def test_pins_are_shown_only_after_creation(tiny, shown):
    assert (shown.pin_created_ms <= shown.request_time).all()
    new_pins = tiny.pins.pin_created_ms >= tiny.start_ms
    assert 0.15 < new_pins.mean() < 0.25  # new_pin_share 0.2
    assert shown.pin_created_ms.ge(tiny.start_ms).any()  # some new pins do get shown


def test_rates_per_impression_in_bounds(tiny):
    rates = tiny.requests[list(LABEL_COLUMNS)].mean()
    assert 0.02 < rates.label_repin < 0.10
    assert 0.05 < rates.label_click < 0.18
    assert 0.004 < rates.label_hide < 0.03
    summary = tiny.meta["summary"]["rate_per_impression"]
    assert summary["repin"] == pytest.approx(rates.label_repin, abs=1e-6)


def test_segments_and_activity(tiny):
    users, req = tiny.users, tiny.requests
    non_core = ~users.is_core
    assert non_core.mean() == pytest.approx(0.4)
    assert set(users.segment[non_core].value_counts()) <= {26, 27}  # split evenly
    days = req.groupby("user_id").day.agg(["min", "max", "nunique"])
    seg = users.set_index("user_id").segment
    assert (days.loc[seg[seg == "new"].index, "min"] >= 1).all()  # new users start mid-world
    res = req[req.user_id.isin(seg[seg == "resurrected"].index)]
    assert set(res.day) == {0, 3}  # tiny world: day 0, gap on days 1-2, back on day 3
    requests_per_user = req.groupby("user_id").request_id.nunique()
    casual, core = (requests_per_user[seg[seg == name].index].median() for name in ("casual", "core"))
    assert casual < core / 2
    first = req.groupby("user_id").request_time.min()
    assert (users.set_index("user_id").first_active_ms == first).all()  # every user acted


def test_effects_are_present(tiny):
    effects = tiny.meta["summary"]["effects"]
    assert effects["repin_rate_intent_topic"] > 4 * effects["repin_rate_other_topics"]
    assert effects["hide_rate_disliked_topic"] > 10 * effects["hide_rate_other_topics"]
    assert effects["hide_rate_after_recent_hide"] > 5 * effects["hide_rate_other_topics"]
    assert effects["repin_rate_after_recent_hide"] < effects["repin_rate_intent_topic"]


def test_recent_repins_predict_repins(tiny, shown):
    """Visible in the data alone: a candidate from the topic the user repinned in the last 30 min
    is repinned far more often: the signal a realtime sequence has and a daily profile lacks."""
    ev = tiny.events[tiny.events.action_type == "repin"].merge(tiny.pins[["pin_id", "topic_id"]], on="pin_id")
    last = ev.sort_values("arrival_time")[["user_id", "arrival_time", "event_time", "topic_id"]]
    imp = shown.sort_values("request_time")
    joined = pd.merge_asof(
        imp, last.rename(columns={"topic_id": "last_topic"}), left_on="request_time",
        right_on="arrival_time", by="user_id", allow_exact_matches=False,
    )
    recent = joined.request_time - joined.event_time < 30 * 60_000
    same = recent & (joined.topic_id == joined.last_topic)
    other = recent & (joined.topic_id != joined.last_topic)
    assert joined.label_repin[same].mean() > 2.5 * joined.label_repin[other].mean()


def test_topic_popularity_drifts(tiny, shown):
    shares = [
        np.bincount(g.topic_id, minlength=24) / len(g) for _, g in shown.groupby("day")
    ]
    day0 = shown[shown.day == 0]
    half = [day0[day0.request_id % 2 == k] for k in (0, 1)]
    noise = np.abs(np.subtract(*(np.bincount(h.topic_id, minlength=24) / len(h) for h in half))).sum()
    assert np.abs(shares[0] - shares[-1]).sum() > 1.5 * noise


# -- impressions -------------------------------------------------------------------------------


def test_impressions_are_the_shown_candidates_just_after_their_serve_time(tiny, tiny_dir, tmp_path):
    imp = tiny.impressions()
    req = tiny.requests
    assert tiny.has_impressions and len(imp) == len(req)
    assert imp.event_id.is_unique and imp.event_id.str.fullmatch(r"i\d+-\d+").all()
    joined = imp.merge(req, on=["request_id", "pin_id"], validate="one_to_one", suffixes=("", "_req"))
    assert len(joined) == len(req) and (joined.user_id == joined.user_id_req).all()
    # strictly after the request was served: its own features can never hold its impressions
    assert (joined.event_time == joined.served_time + 1).all()
    assert (imp.arrival_time == imp.event_time).all() and imp.arrival_time.is_monotonic_increasing
    assert (imp.surface == "homefeed").all()

    # A world written before the flag still loads, and has no impressions.
    old = tmp_path / "old"
    old.mkdir()
    for name in WORLD_FILES:
        (old / name).write_bytes((tiny_dir / name).read_bytes())
    meta = json.loads((old / "world.json").read_text())
    del meta["has_impressions"]
    (old / "world.json").write_text(json.dumps(meta))
    older = load_world(old)
    assert not older.has_impressions and older.impressions().empty
    assert list(older.impressions().columns) == list(imp.columns)
