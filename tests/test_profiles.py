"""Daily user profiles: hand-checked values, no leakage of late events, agreement with a slow
reference implementation on a generated world."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from homefeed.errors import UserError
from homefeed.features import (
    CREATED,
    EVENT_TIMESTAMP,
    PROFILE_ACTIONS_28D,
    PROFILE_DAYS_ACTIVE_28D,
    PROFILE_EMBEDDING,
    PROFILE_HIDE_RATE_28D,
    PROFILE_REPIN_RATE_28D,
    USER_ID,
)
from homefeed.profiles import build_daily_profiles
from homefeed.world import DAY_MS, WorldParams, generate_world, load_world

START = 1_767_571_200_000  # 2026-01-05 00:00 UTC
H = 3_600_000
S2 = np.sqrt(0.5)


def at(day: int, hour: float) -> int:
    return START + day * DAY_MS + int(hour * H)


def pins_2d() -> pd.DataFrame:
    return pd.DataFrame({
        "pin_id": [1, 2, 3],
        "topic_id": [0, 1, 0],
        "embedding": [np.array(v, dtype=np.float32) for v in ([1, 0], [0, 1], [S2, S2])],
        "pin_created_ms": [START - DAY_MS] * 3,
    })


def events_frame(rows) -> pd.DataFrame:
    """rows: (user, pin, action, event_time, arrival_time)"""
    df = pd.DataFrame(rows, columns=["user_id", "pin_id", "action_type", "event_time", "arrival_time"])
    df.insert(0, "event_id", [f"e{i:010d}" for i in range(len(df))])
    df["surface"] = "homefeed"
    return df


def row(profiles: pd.DataFrame, user: int, day: int):
    stamp = pd.Timestamp(START + day * DAY_MS, unit="ms", tz="UTC")
    hit = profiles[(profiles[USER_ID] == user) & (profiles[EVENT_TIMESTAMP] == stamp)]
    assert len(hit) <= 1
    return None if hit.empty else hit.iloc[0]


def test_hand_checked_values_and_schema():
    ev = events_frame([
        (10, 1, "repin", at(0, 10), at(0, 10) + 500),
        (10, 2, "click", at(1, 9), at(1, 9) + 300),
        (10, 1, "hide", at(1, 12), at(1, 12) + 300),
        (20, 3, "click", at(2, 8), at(2, 8) + 100),
        (20, 3, "hide", at(2, 9), at(2, 9) + 100),  # cancels the click: zero embedding
    ])
    prof = build_daily_profiles(ev, pins_2d(), START, 4, 2)
    assert list(prof.columns) == [
        USER_ID, EVENT_TIMESTAMP, CREATED, PROFILE_EMBEDDING, PROFILE_ACTIONS_28D,
        PROFILE_REPIN_RATE_28D, PROFILE_HIDE_RATE_28D, PROFILE_DAYS_ACTIVE_28D,
    ]
    assert str(prof[EVENT_TIMESTAMP].dtype) == "datetime64[us, UTC]"
    assert (prof[CREATED] == prof[EVENT_TIMESTAMP]).all()
    assert prof[USER_ID].dtype == np.int64 and prof[PROFILE_ACTIONS_28D].dtype == np.int64
    assert prof[PROFILE_REPIN_RATE_28D].dtype == np.float32
    assert prof[PROFILE_DAYS_ACTIVE_28D].dtype == np.int64

    assert row(prof, 10, 0) is None  # nothing had arrived at the start of day 0
    day1 = row(prof, 10, 1)
    assert day1[PROFILE_EMBEDDING].dtype == np.float32
    np.testing.assert_allclose(day1[PROFILE_EMBEDDING], [1.0, 0.0], atol=1e-6)
    assert (day1[PROFILE_ACTIONS_28D], day1[PROFILE_DAYS_ACTIVE_28D]) == (1, 1)
    assert day1[PROFILE_REPIN_RATE_28D] == 1.0 and day1[PROFILE_HIDE_RATE_28D] == 0.0

    # Day 2: 1.0*[1,0] + 0.5*[0,1] - 0.5*[1,0] = [0.5, 0.5] -> normalised.
    day2 = row(prof, 10, 2)
    np.testing.assert_allclose(day2[PROFILE_EMBEDDING], [S2, S2], atol=1e-6)
    assert day2[PROFILE_ACTIONS_28D] == 3 and day2[PROFILE_DAYS_ACTIVE_28D] == 2
    assert day2[PROFILE_REPIN_RATE_28D] == pytest.approx(1 / 3)
    assert day2[PROFILE_HIDE_RATE_28D] == pytest.approx(1 / 3)
    np.testing.assert_allclose(row(prof, 10, 3)[PROFILE_EMBEDDING], [S2, S2], atol=1e-6)

    cancelled = row(prof, 20, 3)
    np.testing.assert_array_equal(cancelled[PROFILE_EMBEDDING], [0.0, 0.0])
    assert cancelled[PROFILE_ACTIONS_28D] == 2 and cancelled[PROFILE_HIDE_RATE_28D] == 0.5
    assert row(prof, 20, 2) is None
    assert len(prof) == 4  # user 10 on days 1-3, user 20 on day 3


def test_late_event_is_absent_until_it_arrived():
    ev = events_frame([
        (7, 1, "repin", at(0, 9), at(0, 9) + 200),
        # Happened on day 1, reached us on day 3 at 01:00 (late by 26 hours).
        (7, 2, "repin", at(1, 23), at(3, 1)),
    ])
    prof = build_daily_profiles(ev, pins_2d(), START, 5, 2)
    for day in (2, 3):  # the day before it arrived, and the snapshot taken just before arrival
        r = row(prof, 7, day)
        assert r[PROFILE_ACTIONS_28D] == 1 and r[PROFILE_DAYS_ACTIVE_28D] == 1
        np.testing.assert_allclose(r[PROFILE_EMBEDDING], [1.0, 0.0], atol=1e-6)
    r = row(prof, 7, 4)
    assert r[PROFILE_ACTIONS_28D] == 2 and r[PROFILE_DAYS_ACTIVE_28D] == 2
    np.testing.assert_allclose(r[PROFILE_EMBEDDING], [S2, S2], atol=1e-6)


def test_events_leave_after_28_days():
    ev = events_frame([
        (5, 1, "repin", at(0, 10), at(0, 10) + 100),
        (5, 2, "click", at(20, 10), at(20, 10) + 100),
    ])
    prof = build_daily_profiles(ev, pins_2d(), START, 31, 2)
    assert row(prof, 5, 28)[PROFILE_ACTIONS_28D] == 2  # day 0 is exactly 28 days back
    day29 = row(prof, 5, 29)
    assert day29[PROFILE_ACTIONS_28D] == 1 and day29[PROFILE_DAYS_ACTIVE_28D] == 1
    np.testing.assert_allclose(day29[PROFILE_EMBEDDING], [0.0, 1.0], atol=1e-6)
    assert row(prof, 5, 30) is not None


def test_empty_events_and_bad_input():
    empty = build_daily_profiles(events_frame([]), pins_2d(), START, 3, 2)
    assert empty.empty and PROFILE_EMBEDDING in empty.columns
    bad = events_frame([(1, 1, "like", at(0, 1), at(0, 1) + 1)])
    with pytest.raises(UserError, match="unknown action_type"):
        build_daily_profiles(bad, pins_2d(), START, 3, 2)
    ok = events_frame([(1, 1, "repin", at(0, 1), at(0, 1) + 1)])
    with pytest.raises(UserError, match="dimensions"):
        build_daily_profiles(ok, pins_2d(), START, 3, 4)


def _reference(ev, emb_of, start, day):
    """The definition, row by row, for one snapshot."""
    t = start + day * DAY_MS
    inside = ev[(ev.arrival_time < t) & (ev.event_time >= t - 28 * DAY_MS)]
    out = {}
    weights = {"repin": 1.0, "click": 0.5, "hide": -0.5}
    for user, g in inside.groupby("user_id"):
        vec = sum(weights[a] * emb_of[p] for a, p in zip(g.action_type, g.pin_id))
        norm = np.linalg.norm(vec)
        out[user] = (
            vec / norm if norm > 1e-9 else np.zeros_like(vec), len(g),
            (g.action_type == "repin").mean(), (g.action_type == "hide").mean(),
            ((g.event_time - start) // DAY_MS).nunique(),
        )
    return out


def test_matches_reference_on_a_generated_world(tmp_path):
    generate_world(WorldParams(users=60, pins=200, days=5, seed=11, late_fraction=0.2), tmp_path, progress=False)
    world = load_world(tmp_path)
    prof = build_daily_profiles(world.events, world.pins, world.start_ms, 5, 32)
    emb_of = dict(zip(world.pins.pin_id, (e.astype(np.float64) for e in world.pins.embedding)))
    for day in range(5):
        want = _reference(world.events, emb_of, world.start_ms, day)
        got = prof[prof[EVENT_TIMESTAMP] == pd.Timestamp(world.start_ms + day * DAY_MS, unit="ms", tz="UTC")]
        assert sorted(got[USER_ID]) == sorted(want)
        for r in got.itertuples(index=False):
            vec, actions, repin_rate, hide_rate, days_active = want[r.user_id]
            np.testing.assert_allclose(r.profile_embedding, vec, atol=1e-5)
            assert r.profile_actions_28d == actions and r.profile_days_active_28d == days_active
            assert r.profile_repin_rate_28d == pytest.approx(repin_rate, abs=1e-6)
            assert r.profile_hide_rate_28d == pytest.approx(hide_rate, abs=1e-6)


def test_fast_enough_on_a_default_sized_history():
    rng = np.random.default_rng(0)
    n, users, pins, days = 300_000, 2000, 5000, 14
    event_time = START + rng.integers(0, days * DAY_MS, size=n)
    ev = pd.DataFrame({
        "user_id": rng.integers(1, users + 1, size=n),
        "pin_id": rng.integers(1, pins + 1, size=n),
        "action_type": rng.choice(["repin", "click", "hide"], size=n),
        "event_time": event_time,
        "arrival_time": event_time + 300,
    })
    pin_frame = pd.DataFrame({
        "pin_id": np.arange(1, pins + 1),
        "embedding": list(rng.standard_normal((pins, 32)).astype(np.float32)),
    })
    import time

    began = time.perf_counter()
    prof = build_daily_profiles(ev, pin_frame, START, days, 32)
    assert time.perf_counter() - began < 10.0  # ~1 s on 2 cores; a per-user loop takes minutes
    assert prof[USER_ID].nunique() == users
