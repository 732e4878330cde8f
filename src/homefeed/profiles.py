"""Daily user profiles: the long-term, batch-computed view of a user (the article's PinnerSAGE role).

One snapshot per user per day d, computed at the start of day d from the events that had
*arrived* before that moment and happened within the last 28 days. Filtering on arrival time,
not event time, is what keeps training honest: an event that reaches us late cannot appear in a
profile that, in production, was computed before it existed.

The profile deliberately blurs the short term: a single engagement-weighted mean embedding over
28 days cannot tell the session intent of the last ten minutes from the favourite topic of last
month, nor a fresh hide from an old one. That gap is what the realtime action sequence fills.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from homefeed.errors import UserError
from homefeed.events import ActionType
from homefeed.features import (
    CREATED,
    EVENT_TIMESTAMP,
    PIN_EMBEDDING,
    PIN_ID,
    PROFILE_ACTIONS_28D,
    PROFILE_DAYS_ACTIVE_28D,
    PROFILE_EMBEDDING,
    PROFILE_HIDE_RATE_28D,
    PROFILE_REPIN_RATE_28D,
    USER_ID,
)

DAY_MS = 86_400_000
WINDOW_DAYS = 28
# Engagement weights of the profile embedding: a hide pulls the profile away from that pin.
ACTION_WEIGHTS = {ActionType.REPIN: 1.0, ActionType.CLICK: 0.5, ActionType.HIDE: -0.5}
_NORM_EPS = 1e-9

PROFILE_COLUMNS = (
    USER_ID,
    EVENT_TIMESTAMP,
    CREATED,
    PROFILE_EMBEDDING,
    PROFILE_ACTIONS_28D,
    PROFILE_REPIN_RATE_28D,
    PROFILE_HIDE_RATE_28D,
    PROFILE_DAYS_ACTIVE_28D,
)


def _pin_embeddings(pins: pd.DataFrame, pin_ids: np.ndarray, embedding_dim: int) -> np.ndarray:
    """[len(pin_ids), D] float64 embeddings; a pin missing from `pins` contributes zeros."""
    table_ids = pins[PIN_ID].to_numpy(dtype=np.int64)
    if len(table_ids):
        matrix = np.stack(pins[PIN_EMBEDDING].to_numpy()).astype(np.float64)
        if matrix.shape[1] != embedding_dim:
            raise UserError(
                f"pin embeddings have {matrix.shape[1]} dimensions, expected {embedding_dim}"
            )
    else:
        matrix = np.zeros((0, embedding_dim))
    order = np.argsort(table_ids, kind="stable")
    where = np.searchsorted(table_ids, pin_ids, sorter=order)
    where = np.minimum(where, max(len(table_ids) - 1, 0))
    found = len(table_ids) > 0
    out = np.zeros((len(pin_ids), embedding_dim))
    if found:
        hit = table_ids[order[where]] == pin_ids
        out[hit] = matrix[order[where[hit]]]
    return out


def _action_ids(names: pd.Series) -> np.ndarray:
    codes, uniques = pd.factorize(names, sort=True)
    try:
        ids = np.array([int(ActionType.parse(str(name))) for name in uniques], dtype=np.int64)
    except ValueError as exc:
        raise UserError(f"events: {exc}") from None
    return ids[codes]


def _empty(embedding_dim: int) -> pd.DataFrame:
    return _frame(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, embedding_dim)),
                  *(np.zeros(0, np.int64) for _ in range(4)))


def _frame(user_ids, snapshot_ms, emb_sum, actions, repins, hides, days_active) -> pd.DataFrame:
    norm = np.linalg.norm(emb_sum, axis=1, keepdims=True)
    embedding = np.where(norm > _NORM_EPS, emb_sum / np.maximum(norm, _NORM_EPS), 0.0).astype(np.float32)
    stamp = pd.to_datetime(snapshot_ms, unit="ms", utc=True).as_unit("us")
    with np.errstate(invalid="ignore", divide="ignore"):
        repin_rate = np.where(actions > 0, repins / np.maximum(actions, 1), 0.0).astype(np.float32)
        hide_rate = np.where(actions > 0, hides / np.maximum(actions, 1), 0.0).astype(np.float32)
    return pd.DataFrame({
        USER_ID: np.asarray(user_ids, dtype=np.int64),
        EVENT_TIMESTAMP: stamp,
        CREATED: stamp,
        PROFILE_EMBEDDING: pd.Series(list(embedding), dtype=object),
        PROFILE_ACTIONS_28D: np.asarray(actions, dtype=np.int64),
        PROFILE_REPIN_RATE_28D: repin_rate,
        PROFILE_HIDE_RATE_28D: hide_rate,
        PROFILE_DAYS_ACTIVE_28D: np.asarray(days_active, dtype=np.int64),
    }, columns=list(PROFILE_COLUMNS))


def _schedule(enter: np.ndarray, leave: np.ndarray, days: int):
    """Index lists of items entering / leaving the window at each snapshot day."""
    live = (enter < leave) & (enter < days)
    idx = np.flatnonzero(live)
    by_enter = idx[np.argsort(enter[idx], kind="stable")]
    by_leave = idx[np.argsort(leave[idx], kind="stable")]
    enter_bounds = np.searchsorted(enter[by_enter], np.arange(days + 1))
    leave_bounds = np.searchsorted(leave[by_leave], np.arange(days + 1))
    return by_enter, enter_bounds, by_leave, leave_bounds


def build_daily_profiles(
    events: pd.DataFrame,
    pins: pd.DataFrame,
    start_ms: int,
    days: int,
    embedding_dim: int,
) -> pd.DataFrame:
    """`user_profile` feature rows for snapshot days 0..days-1 (snapshot d at start_ms + d days).

    Snapshot d of a user uses the events with arrival_time < its time and event_time >= its
    time - 28 days. Columns: user_id, event_timestamp and created (both the snapshot time,
    datetime64[us, UTC]), profile_embedding (float32 arrays: L2-normalised weighted mean of the
    engaged pins' embeddings; repin 1.0, click 0.5, hide -0.5; zeros when the weights cancel),
    profile_actions_28d, profile_repin_rate_28d, profile_hide_rate_28d, profile_days_active_28d
    (distinct days with an event, days counted from start_ms). Only users with at least one
    event in the window get a row. Sorted by event_timestamp, user_id.
    """
    if days < 1:
        raise UserError(f"days must be >= 1, got {days}")
    if embedding_dim < 1:
        raise UserError(f"embedding_dim must be >= 1, got {embedding_dim}")
    if events.empty:
        return _empty(embedding_dim)

    user_ids, user = np.unique(events[USER_ID].to_numpy(dtype=np.int64), return_inverse=True)
    action = _action_ids(events["action_type"])
    weight = np.zeros(len(action))
    for a, w in ACTION_WEIGHTS.items():
        weight[action == int(a)] = w
    weighted = _pin_embeddings(pins, events[PIN_ID].to_numpy(dtype=np.int64), embedding_dim)
    weighted *= weight[:, None]
    is_repin = (action == int(ActionType.REPIN)).astype(np.int64)
    is_hide = (action == int(ActionType.HIDE)).astype(np.int64)

    # An event is in snapshot d when it arrived before the snapshot (d >= first_day) and
    # happened at most 28 days before it (d <= event_day + 28): it enters the running sums
    # at `enter` and leaves them at `leave`, so each event is added and removed once.
    event_ms = events["event_time"].to_numpy(dtype=np.int64)
    arrival_ms = events["arrival_time"].to_numpy(dtype=np.int64)
    event_day = np.floor_divide(event_ms - start_ms, DAY_MS)
    enter = np.maximum(np.floor_divide(arrival_ms - start_ms, DAY_MS) + 1, 0)
    leave = event_day + WINDOW_DAYS + 1

    # Active days: one item per (user, event day), present from its earliest arrival on.
    pair_key = user.astype(np.int64) * (np.int64(1) << 32) + (event_day - event_day.min())
    pair_ids, pair_of_event = np.unique(pair_key, return_inverse=True)
    pair_enter = np.full(len(pair_ids), np.iinfo(np.int64).max)
    np.minimum.at(pair_enter, pair_of_event, enter)
    first = np.zeros(len(pair_ids), dtype=np.int64)
    first[pair_of_event] = np.arange(len(pair_of_event))  # any event of the pair
    pair_user, pair_leave = user[first], leave[first]

    n_users = len(user_ids)
    emb_sum = np.zeros((n_users, embedding_dim))
    counts = np.zeros((3, n_users), dtype=np.int64)  # actions, repins, hides
    days_active = np.zeros(n_users, dtype=np.int64)
    ev_in, ev_in_at, ev_out, ev_out_at = _schedule(enter, leave, days)
    pr_in, pr_in_at, pr_out, pr_out_at = _schedule(pair_enter, pair_leave, days)
    per_event = np.stack([np.ones(len(user), dtype=np.int64), is_repin, is_hide])

    parts = []
    for d in range(days):
        entering = ev_in[ev_in_at[d]:ev_in_at[d + 1]]
        leaving = ev_out[ev_out_at[d]:ev_out_at[d + 1]]
        for sel, sign in ((entering, 1), (leaving, -1)):
            if len(sel):
                np.add.at(emb_sum, user[sel], sign * weighted[sel])
                for row in range(3):
                    added = np.bincount(user[sel], per_event[row, sel], minlength=n_users)
                    counts[row] += sign * added.astype(np.int64)
        emb_sum[counts[0] == 0] = 0.0  # drop float residue of users whose window emptied
        days_active += np.bincount(pair_user[pr_in[pr_in_at[d]:pr_in_at[d + 1]]], minlength=n_users)
        days_active -= np.bincount(pair_user[pr_out[pr_out_at[d]:pr_out_at[d + 1]]], minlength=n_users)
        have = np.flatnonzero(counts[0] > 0)
        if len(have):  # fancy indexing copies: later days do not change these rows
            parts.append((user_ids[have], np.full(len(have), start_ms + d * DAY_MS, dtype=np.int64),
                          emb_sum[have], counts[0, have], counts[1, have], counts[2, have],
                          days_active[have]))
    if not parts:
        return _empty(embedding_dim)
    # one frame for all days (a frame per day costs milliseconds each: minutes over 20 years)
    return _frame(*(np.concatenate(column) for column in zip(*parts)))
