"""The importer framework (homefeed.world.importer): the steps MovieLens and KuaiRand share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from homefeed.errors import UserError
from homefeed.events import MIN_EVENT_TIME_MS
from homefeed.world import DAY_MS
from homefeed.world.importer import (
    WEEK_MS,
    Requests,
    bucket_requests,
    drop_exact_duplicates,
    order_events,
    shuffled_positions,
    time_shift,
)


def test_exact_duplicates_are_dropped_and_counted():
    frame = pd.DataFrame({"u": [1, 1, 1, 2], "i": [5, 5, 5, 5], "t": [10, 10, 11, 10]})
    kept, n = drop_exact_duplicates(frame)
    assert n == 1 and kept.to_dict("list") == {"u": [1, 1, 2], "i": [5, 5, 5], "t": [10, 11, 10]}
    assert kept.index.tolist() == [0, 2, 3]  # source rows stay nameable
    same, zero = drop_exact_duplicates(kept)
    assert zero == 0 and same is kept


def test_time_shift_whole_weeks_onto_2000_or_onto_start():
    old = 874_713_600_000  # 1997-09-20
    shift = time_shift(old)
    assert shift % WEEK_MS == 0 and MIN_EVENT_TIME_MS <= old + shift < MIN_EVENT_TIME_MS + WEEK_MS
    recent = 1_650_844_800_000
    assert time_shift(recent) == 0
    assert time_shift(recent, recent + 3 * DAY_MS) == 3 * DAY_MS


def test_millisecond_ties_move_forward_in_a_stable_order():
    user = np.array([2, 1, 1, 1, 1, 2])
    time = np.array([5, 100, 100, 101, 100, 5])
    key = np.array([7, 9, 3, 1, 4, 2])
    eo = order_events(user, time, key, grain_ms=1)
    assert user[eo.order].tolist() == [1, 1, 1, 1, 2, 2]
    assert key[eo.order].tolist() == [3, 4, 9, 1, 2, 7]  # (user, time, key)
    # 100, 100, 100, 101 -> 100, 101, 102, 103: the later row keeps its place after the ties.
    assert eo.event_ms.tolist() == [100, 101, 102, 103, 5, 6]
    assert eo.stats() == {"tie_share": 5 / 6, "max_group": 3}
    # The same rows in another input order give the same result.
    perm = np.array([5, 3, 0, 4, 1, 2])
    again = order_events(user[perm], time[perm], key[perm], grain_ms=1)
    assert again.event_ms.tolist() == eo.event_ms.tolist()
    assert key[perm][again.order].tolist() == key[eo.order].tolist()


def test_second_ties_spread_inside_the_second():
    eo = order_events(np.array([1, 1, 1]), np.array([7, 7, 8]), np.array([3, 2, 1]), grain_ms=1000)
    assert eo.event_ms.tolist() == [7010, 7020, 8010]
    with pytest.raises(UserError, match="981 rows in one second"):
        order_events(np.ones(981, int), np.zeros(981, int), np.arange(981), grain_ms=1000)


def test_requests_buckets_ids_and_positions():
    user = np.array([1, 1, 1, 2, 2])
    ms = np.array([10, 20, DAY_MS + 5, 3, 4])
    rq = Requests.from_starts(bucket_requests(user, ms, 0, DAY_MS), user, ms)
    assert rq.of.tolist() == [0, 0, 1, 2, 2]
    assert rq.time.tolist() == [9, DAY_MS + 4, 2]
    assert rq.id.tolist() == [2, 3, 1]  # request-time order
    assert rq.size.tolist() == [2, 1, 2]
    req_of = np.repeat(np.arange(50), 7)
    pos = shuffled_positions(req_of, seed=0)
    for q in range(50):
        assert sorted(pos[req_of == q].tolist()) == list(range(7))
    assert not np.array_equal(pos, np.tile(np.arange(7), 50))
    assert np.array_equal(pos, shuffled_positions(req_of, seed=0))
