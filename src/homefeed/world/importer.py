"""The shared part of every importer: real interaction logs -> the world file contract.

A dataset module (movielens.py, kuairand.py) reads and validates its files, maps its rows to
(user, item, time, action) and calls these steps, in this order:

1. `drop_exact_duplicates` drops rows repeated verbatim and counts them.
2. `time_shift` moves the timeline by whole weeks onto >= 2000-01-01 (the pipeline rejects
   earlier event times), or puts day 0 where the user asked.
3. `order_events` gives the events a total, input-order-independent order: sorted by
   (user, time, key) and spread so a user's events have distinct milliseconds (second-grain
   data: spread inside the second; millisecond data: ties moved forward 1 ms each).
4. `bucket_requests` + `Requests` group each user's rows into requests shown `REQUEST_LEAD_MS`
   before their first row (so a request's own events are never in its history), numbered in
   request-time order; `shuffled_positions` puts a request's candidates in a seeded random order.
5. `item_embeddings` builds item vectors from the TRAINING period's interactions only (PPMI/SVD
   of item co-occurrence) blended with the item's category multi-hot.
6. `segments_from_history` is the fallback segment rule (training-period events per user).
7. `world_tables` + `world_meta` assemble the five files (columns, dtypes and sort orders of
   docs/world.md); `homefeed.world.format.write_world` writes them atomically and
   `format.prepare_out` checks --out before any work. Reading errors are raised as `UserError`
   naming file and line before anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import sparse

from homefeed.errors import UserError
from homefeed.events import MIN_EVENT_TIME_MS, ActionType
from homefeed.features import (
    PIN_CREATED_MS,
    PIN_DURATION_MS,
    PIN_EMBEDDING,
    PIN_ID,
    PIN_TOPIC,
    REQUEST_ID,
    SERVED_TIME,
    USER_ID,
)
from homefeed.world.format import (
    DAY_MS,
    EVENTS_FILE,
    FORMAT_VERSION,
    HAS_IMPRESSIONS,
    HOUR_MS,
    LABEL_CLICK,
    LABEL_HIDE,
    LABEL_REPIN,
    MAX_EMBEDDING_DIM,
    PINS_FILE,
    REQUESTS_FILE,
    SECOND_MS,
    USERS_FILE,
    WORLD_FILES,
    list_array,
    utc_iso,
)

WEEK_MS = 7 * DAY_MS
REQUEST_LEAD_MS = 1  # a request is shown this long before its first row

# Tie-breaking for second-grain data: the k-th event (by key) of one user within one second
# happens at second + TIE_BASE_MS + k * step, step = TIE_STEP_MS (or 980 // group size for > 98
# ties), so one second's events stay inside that second and the next second's start after a gap.
TIE_BASE_MS = 10
TIE_STEP_MS = 10
TIE_SPAN_MS = 980
MAX_TIES = TIE_SPAN_MS  # step >= 1 ms

HISTORY_SEGMENTS = ("core", "casual", "new")

# PPMI smoothing of the context distribution (Levy, Goldberg & Dagan 2015) and the randomized
# SVD's oversampling and power iterations.
PPMI_ALPHA = 0.75
SVD_OVERSAMPLE = 10
SVD_POWER_ITERS = 7

ACTION_NAMES = np.array([""] + [a.wire_name for a in ActionType], dtype=object)


def quantiles(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"mean": 0.0, "max": 0}
    out = {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (10, 25, 50, 75, 90, 99)}
    out["mean"] = round(float(np.mean(values)), 3)
    out["max"] = int(np.max(values))
    return out


# -- options every importer has --------------------------------------------------------------------


def check_int(problems: list[str], name: str, value, low: int, high: int) -> None:
    """Append a problem unless `value` is an integer in low..high."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        problems.append(f"{name} must be an integer, got {value!r}")
    elif not low <= value <= high:
        problems.append(f"{name} must be in {low}..{high}, got {value}")


def common_option_problems(params) -> list[str]:
    """Problems with the options shared by every importer: embedding_dim, eval_days, seed,
    core_min_events, arrival_delay_ms, max_vocab, cf_dim, bucket_ms, genre_weight."""
    problems: list[str] = []
    for name, low, high in (("embedding_dim", 2, MAX_EMBEDDING_DIM), ("eval_days", 1, 100_000),
                            ("seed", 0, 2**63 - 1), ("core_min_events", 1, 10**9),
                            ("arrival_delay_ms", 0, HOUR_MS), ("max_vocab", 0, 20_000)):
        check_int(problems, name, getattr(params, name), low, high)
    if params.cf_dim is not None:
        check_int(problems, "cf_dim", params.cf_dim, 0, MAX_EMBEDDING_DIM)
    b = params.bucket_ms
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b <= 0 or b % SECOND_MS \
            or DAY_MS % b:
        problems.append(f"bucket_ms must be whole seconds dividing one day, got {b!r}")
    w = params.genre_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
        problems.append(f"genre_weight must be in [0, 1], got {w!r}")
    return problems


def embedding_behaviour(params, emb_info: dict) -> dict:
    """world.json `behaviour`: the fixed constants and embedding options of an import."""
    return {
        "request_lead_ms": REQUEST_LEAD_MS,
        "arrival_delay_ms": params.arrival_delay_ms,
        "genre_weight": params.genre_weight,
        "cf_dim": emb_info["cf_dim"],
        "max_vocab": params.max_vocab,
        "ppmi_alpha": PPMI_ALPHA,
        "svd_oversample": SVD_OVERSAMPLE,
        "svd_power_iters": SVD_POWER_ITERS,
    }


# -- 1. duplicates, 2. time shift, 3. event order --------------------------------------------------


def drop_exact_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The frame without rows that repeat an earlier row in every column, index kept (so it can
    still name source lines); (frame, rows dropped)."""
    dup = frame.duplicated(keep="first")
    n = int(dup.sum())
    return (frame[~dup.to_numpy()] if n else frame), n


def time_shift(first_day_ms: int, start_ms: int | None = None) -> int:
    """Milliseconds to add to every time: onto `start_ms` when given, else 0 when the data starts
    on or after 2000-01-01, else the whole number of weeks that moves it there (keeps weekdays)."""
    if start_ms is not None:
        return int(start_ms) - first_day_ms
    if first_day_ms >= MIN_EVENT_TIME_MS:
        return 0
    return -(-(MIN_EVENT_TIME_MS - first_day_ms) // WEEK_MS) * WEEK_MS


@dataclass
class EventOrder:
    order: np.ndarray  # permutation of the input rows into (user, time, key) order
    event_ms: np.ndarray  # [n] in that order: distinct per user, strictly increasing (not shifted)
    group_id: np.ndarray  # [n] index of the (user, time) group each row belongs to
    group_size: np.ndarray  # [groups] rows per (user, time) group

    def stats(self) -> dict:
        tie_share = float((self.group_size[self.group_id] > 1).mean()) if len(self.group_id) else 0.0
        return {"tie_share": tie_share, "max_group": int(self.group_size.max()) if len(self.group_size) else 0}


def order_events(user: np.ndarray, time: np.ndarray, key: np.ndarray, *, grain_ms: int) -> EventOrder:
    """Sort rows by (user, time, key) and give each user's rows distinct milliseconds.

    `time` is in units of `grain_ms` (1000: unix seconds, 1: epoch ms). Second-grain ties are
    spread inside their second (TIE_BASE_MS + k * step); millisecond ties are moved forward 1 ms
    each (and any later row of the user they would reach with them), so the order stays the
    sorted one. `key` (e.g. item id, then line number) makes the order independent of the
    input's row order.
    """
    user = np.asarray(user, dtype=np.int64)
    time = np.asarray(time, dtype=np.int64)
    keys = key if isinstance(key, tuple) else (key,)
    order = np.lexsort((*reversed([np.asarray(k) for k in keys]), time, user))
    user, time = user[order], time[order]
    n = len(user)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (user[1:] != user[:-1]) | (time[1:] != time[:-1])
    group_start = np.flatnonzero(new_group)
    group_size = np.diff(np.append(group_start, n))
    group_id = np.cumsum(new_group) - 1
    rank = np.arange(n) - group_start[group_id]
    if grain_ms == SECOND_MS:
        if n and group_size.max() > MAX_TIES:
            g = int(np.argmax(group_size))
            raise UserError(f"user {int(user[group_start[g]])} has {int(group_size[g])} rows in one "
                            f"second (at most {MAX_TIES} can be ordered within it)")
        step = np.where(group_size <= TIE_SPAN_MS // TIE_STEP_MS, TIE_STEP_MS,
                        TIE_SPAN_MS // np.maximum(group_size, 1))[group_id]
        event_ms = time * SECOND_MS + TIE_BASE_MS + rank * step
    elif grain_ms == 1:
        # y_i = max(t_i, y_{i-1} + 1) within a user  <=>  y_i = i + cummax_j<=i (t_j - j).
        idx = np.arange(n, dtype=np.int64)
        event_ms = idx + pd.Series(time - idx).groupby(user).cummax().to_numpy(np.int64)
    else:
        raise ValueError(f"grain_ms must be 1 or 1000, got {grain_ms}")
    return EventOrder(order=order, event_ms=event_ms, group_id=group_id, group_size=group_size)


# -- 4. requests ------------------------------------------------------------------------------------


def bucket_requests(user: np.ndarray, event_ms: np.ndarray, start_ms: int, bucket_ms: int) -> np.ndarray:
    """bool [n]: row starts a request (rows sorted by user, time): a new user or a new bucket
    (buckets of `bucket_ms` aligned to day 0)."""
    bucket = (event_ms - start_ms) // bucket_ms
    new_req = np.ones(len(user), dtype=bool)
    new_req[1:] = (user[1:] != user[:-1]) | (bucket[1:] != bucket[:-1])
    return new_req


def parse_duration(text: str, flag: str = "--bucket") -> int:
    """`day`, `hour` or N{d,h,m,s} -> milliseconds (> 0)."""
    raw = str(text).strip().lower()
    named = {"day": DAY_MS, "daily": DAY_MS, "hour": HOUR_MS, "hourly": HOUR_MS}
    if raw in named:
        return named[raw]
    match = re.fullmatch(r"(\d+)\s*(d|h|m|min|s)", raw)
    if not match or int(match.group(1)) <= 0:
        raise UserError(f"{flag} {text!r}: expected day, hour or a duration like 6h, 30m, 900s")
    unit = {"d": DAY_MS, "h": HOUR_MS, "m": 60_000, "min": 60_000, "s": SECOND_MS}[match.group(2)]
    return int(match.group(1)) * unit


def parse_bucket(text: str) -> int:
    """`day`, `hour` or N{d,h,m,s} -> milliseconds; must be whole seconds and divide one day."""
    ms = parse_duration(text, "--bucket")
    if DAY_MS % ms:
        raise UserError(f"--bucket {text!r}: the bucket must divide one day (1d, 12h, 6h, 1h, 30m, ...)")
    return ms


@dataclass
class Requests:
    """Requests from a 'starts a request' mask over rows sorted by (user, time)."""

    of: np.ndarray  # [n] request index per row (in (user, time) order)
    first: np.ndarray  # [R] first row of each request
    user: np.ndarray  # [R]
    time: np.ndarray  # [R] request_time = first row's time - REQUEST_LEAD_MS
    id: np.ndarray  # [R] request_id 1.. in request-time order (ties: user id)
    size: np.ndarray  # [R] rows per request

    @classmethod
    def from_starts(cls, new_req: np.ndarray, user: np.ndarray, event_ms: np.ndarray) -> "Requests":
        of = np.cumsum(new_req) - 1
        first = np.flatnonzero(new_req)
        req_user = user[first]
        req_time = event_ms[first] - REQUEST_LEAD_MS
        by_time = np.lexsort((req_user, req_time))
        req_id = np.empty(len(first), dtype=np.int64)
        req_id[by_time] = np.arange(1, len(first) + 1)
        size = np.diff(np.append(first, len(user)))
        return cls(of=of, first=first, user=req_user, time=req_time, id=req_id, size=size)


def shuffled_positions(req_of: np.ndarray, seed: int) -> np.ndarray:
    """int32 position 0..n-1 of each row within its request (`req_of` non-decreasing), in a
    seeded random order: the display order carries no signal and ties in a ranking are random."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 3])))
    noise = rng.random(len(req_of))
    order = np.lexsort((noise, req_of))
    starts = np.searchsorted(req_of, req_of, side="left")
    pos = np.empty(len(req_of), dtype=np.int64)
    pos[order] = np.arange(len(req_of)) - starts[order]
    return pos.astype(np.int32)


# -- 5. embeddings ----------------------------------------------------------------------------------


class EmbeddingOptions(Protocol):
    embedding_dim: int
    cf_dim: int | None
    genre_weight: float  # share of the squared norm given to the category multi-hot
    max_vocab: int
    seed: int


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray | None:
    """None when the sizes match; else a fixed random matrix with orthonormal rows or columns."""
    if in_dim == out_dim:
        return None
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 2])))
    q, r = np.linalg.qr(rng.standard_normal((max(in_dim, out_dim), min(in_dim, out_dim))))
    q = q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))[None, :]
    return q if in_dim > out_dim else q.T  # [in_dim, out_dim]


def cf_dim_for(params: EmbeddingOptions, n_genres: int) -> int:
    return params.cf_dim if params.cf_dim is not None else max(params.embedding_dim - n_genres, 4)


def genre_embedding(genres: np.ndarray, params: EmbeddingOptions) -> np.ndarray:
    """The embedding of items without a collaborative part: [0 * cf, genre multi-hot] projected."""
    return _combine(np.zeros((len(genres), cf_dim_for(params, genres.shape[1]))), genres, params)


def _combine(cf_unit: np.ndarray, genres: np.ndarray, params: EmbeddingOptions) -> np.ndarray:
    has_cf = np.linalg.norm(cf_unit, axis=1) > 0
    g_unit = _unit_rows(genres.astype(np.float64))
    w = float(params.genre_weight)
    cf_w = np.where(has_cf, math.sqrt(1.0 - w), 0.0)[:, None]
    g_w = np.where(has_cf, math.sqrt(w), 1.0)[:, None]
    feats = np.concatenate([cf_w * cf_unit, g_w * g_unit], axis=1)
    proj = _projection(feats.shape[1], params.embedding_dim, params.seed)
    if proj is not None:
        feats = feats @ proj
    return _unit_rows(feats).astype(np.float32)


def _randomized_svd(m: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left singular vectors and values of a square matrix (Halko et al.), deterministic."""
    n = m.shape[0]
    if n <= k + SVD_OVERSAMPLE:
        u, s, _ = np.linalg.svd(m)
        return u[:, :k], s[:k]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1])))
    q, _ = np.linalg.qr(m @ rng.standard_normal((n, k + SVD_OVERSAMPLE)))
    for _ in range(SVD_POWER_ITERS):
        q, _ = np.linalg.qr(m.T @ q)
        q, _ = np.linalg.qr(m @ q)
    ub, s, _ = np.linalg.svd(q.T @ m, full_matrices=False)
    return (q @ ub)[:, :k], s[:k]


def item_embeddings(item_ids: np.ndarray, genres: np.ndarray, train_user: np.ndarray,
                    train_item: np.ndarray, params: EmbeddingOptions, *,
                    method: str = "ppmi-svd of training-period item co-rating + genre multi-hot",
                    ) -> tuple[np.ndarray, dict, np.ndarray]:
    """float32 [I, D] unit rows for `item_ids` (ascending) from training-period ratings only.

    `genres` is the item's category multi-hot (MovieLens genres, KuaiRand tags); `train_user`,
    `train_item` the training period's (user, item) interactions. Collaborative part: PPMI
    (context smoothing 0.75) of the item-item co-occurrence counts (two items co-occur once per
    user who interacted with both in the training period), truncated to `cf_dim`
    by a seeded randomized SVD, rows U * sqrt(S), L2-normalised, each component's sign fixed.
    Blended with the L2-normalised genre multi-hot (genre_weight of the squared norm), projected
    to embedding_dim when the sizes differ, L2-normalised. Items outside the vocabulary (no
    training rating, no co-rated item, or beyond the max_vocab most rated) get genre only.
    Returns (embeddings, info for world.json, has_cf bool per item).
    """
    n_items, n_genres = genres.shape
    k = cf_dim_for(params, n_genres)
    cf_unit = np.zeros((n_items, k))
    counts = pd.Series(train_item).value_counts() if len(train_item) else pd.Series(dtype=np.int64)
    vocab = np.zeros(0, dtype=np.int64)
    if k > 0 and len(counts) and params.max_vocab > 0:
        ranked = pd.DataFrame({"item": counts.index.to_numpy(np.int64), "n": counts.to_numpy()})
        ranked = ranked.sort_values(["n", "item"], ascending=[False, True], kind="stable")
        vocab = np.sort(ranked["item"].to_numpy()[: params.max_vocab])
    if len(vocab) >= 2:
        col = np.searchsorted(vocab, train_item)
        keep = (col < len(vocab)) & (vocab[np.minimum(col, len(vocab) - 1)] == train_item)
        users, u_idx = np.unique(train_user[keep], return_inverse=True)
        col = col[keep]
        # Binary user x item matrix (repeats count once); X^T X = co-occurrence counts (exact).
        x = sparse.csr_matrix((np.ones(len(col)), (u_idx, col)), shape=(len(users), len(vocab)))
        x.sum_duplicates()
        x.data[:] = 1.0
        cooc = (x.T @ x).toarray()
        np.fill_diagonal(cooc, 0.0)
        row = cooc.sum(axis=1)
        ctx = row ** PPMI_ALPHA
        ctx_total = ctx.sum()
        if ctx_total > 0:
            # PMI(i, j) = log(C_ij / row_i / (ctx_j / sum ctx)), in place (C can be 5000^2).
            ppmi = cooc
            positive = ppmi > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                np.log(ppmi, out=ppmi, where=positive)
                ppmi -= np.log(np.where(row > 0, row, 1.0))[:, None]
                ppmi -= np.log(np.where(ctx > 0, ctx / ctx_total, 1.0))[None, :]
            ppmi[~positive] = 0.0
            np.maximum(ppmi, 0.0, out=ppmi)
            del positive
            k_eff = min(k, len(vocab))
            u, s = _randomized_svd(ppmi, k_eff, params.seed)
            vec = u * np.sqrt(s)[None, :]
            # Deterministic signs: each component's largest-magnitude entry is positive.
            pivot = np.argmax(np.abs(vec), axis=0)
            sign = np.sign(vec[pivot, np.arange(vec.shape[1])])
            vec = vec * np.where(sign == 0, 1.0, sign)[None, :]
            vec[ppmi.sum(axis=1) <= 0] = 0.0  # nothing co-rated: no collaborative evidence
            vec = _unit_rows(vec)
            rows = np.searchsorted(item_ids, vocab)
            cf_unit[rows, :k_eff] = vec
    emb = _combine(cf_unit, genres, params)
    has_cf = np.linalg.norm(cf_unit, axis=1) > 0
    info = {
        "method": method,
        "cf_dim": k,
        "genre_dims": n_genres,
        "genre_weight": params.genre_weight,
        "projected": (k + n_genres) != params.embedding_dim,
        "vocab": int(len(vocab)),
        "items_with_cf": int(has_cf.sum()),
        "items_genre_only": int((~has_cf).sum()),
    }
    return emb, info, has_cf




# -- 6. segments ------------------------------------------------------------------------------------


def users_and_train_events(user: np.ndarray, train_event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(every user id ascending, their training-period event count) from per-row arrays."""
    user_ids = np.unique(user)
    counts = pd.Series(user[train_event]).value_counts()
    return user_ids, counts.reindex(user_ids, fill_value=0).to_numpy(np.int64)


def segments_from_history(n_train_events: np.ndarray, core_min_events: int) -> np.ndarray:
    """The fallback segment per user from training-period events: >= core_min_events -> core,
    at least one -> casual, none (first seen in the evaluation period) -> new."""
    return np.where(n_train_events >= core_min_events, "core",
                    np.where(n_train_events > 0, "casual", "new")).astype(object)


# -- 7. the five files ------------------------------------------------------------------------------


@dataclass
class WorldArrays:
    """Everything world_tables needs; impressions and events in any order (sorted on output)."""

    item_ids: np.ndarray  # pins: ascending
    topic: np.ndarray
    embedding: np.ndarray  # [pins, D] float32
    created_ms: np.ndarray
    user_ids: np.ndarray  # users: ascending
    segment: np.ndarray  # object (str)
    is_core: np.ndarray  # bool
    first_active_ms: np.ndarray
    imp_rid: np.ndarray  # impressions
    imp_user: np.ndarray
    imp_time: np.ndarray
    imp_pos: np.ndarray
    imp_pin: np.ndarray
    imp_action: np.ndarray  # ActionType id, 0 = none, < 0 = a sampled negative (labels 0)
    ev_ids: np.ndarray  # events: object (str), unique
    ev_user: np.ndarray
    ev_pin: np.ndarray
    ev_action: np.ndarray
    ev_time: np.ndarray
    ev_arrival: np.ndarray
    ev_rid: np.ndarray
    # impressions: when each was served (its features are what serving read then); None = at its
    # request's time (one instant per request)
    imp_served: np.ndarray | None = None
    # pins: media duration in ms, < 0 = unknown (written as null); None = the source has no
    # durations at all (every pin's is null: every world has the same pins.parquet columns)
    duration_ms: np.ndarray | None = None


def world_tables(w: WorldArrays, start_ms: int, surface: str) -> dict[str, pa.Table]:
    """The four parquet tables with docs/world.md's columns, dtypes and sort orders."""
    imp = np.lexsort((w.imp_pos, w.imp_rid, w.imp_time))
    ev = np.lexsort((w.ev_ids.astype(str), w.ev_arrival))
    labels = {a: (w.imp_action[imp] == int(a)).astype(np.int8) for a in ActionType}
    imp_time = w.imp_time[imp]
    served = imp_time if w.imp_served is None else w.imp_served[imp]
    pins = {
        PIN_ID: pa.array(w.item_ids.astype(np.int64)),
        PIN_TOPIC: pa.array(w.topic.astype(np.int64)),
        PIN_EMBEDDING: list_array(w.embedding),
        PIN_CREATED_MS: pa.array(w.created_ms.astype(np.int64)),
    }
    duration = (np.full(len(w.item_ids), -1, dtype=np.int64) if w.duration_ms is None
                else np.asarray(w.duration_ms, dtype=np.int64))
    pins[PIN_DURATION_MS] = pa.array(duration, type=pa.int64(), mask=duration < 0)
    return {
        PINS_FILE: pa.table(pins),
        USERS_FILE: pa.table({
            USER_ID: pa.array(w.user_ids.astype(np.int64)),
            "segment": pa.array(w.segment, type=pa.string()),
            "is_core": pa.array(w.is_core.astype(bool), type=pa.bool_()),
            "first_active_ms": pa.array(w.first_active_ms.astype(np.int64)),
        }),
        REQUESTS_FILE: pa.table({
            REQUEST_ID: pa.array(w.imp_rid[imp].astype(np.int64)),
            USER_ID: pa.array(w.imp_user[imp].astype(np.int64)),
            "request_time": pa.array(imp_time.astype(np.int64)),
            "day": pa.array(((imp_time - start_ms) // DAY_MS).astype(np.int32)),
            "position": pa.array(w.imp_pos[imp].astype(np.int32)),
            PIN_ID: pa.array(w.imp_pin[imp].astype(np.int64)),
            SERVED_TIME: pa.array(served.astype(np.int64)),
            LABEL_REPIN: pa.array(labels[ActionType.REPIN]),
            LABEL_CLICK: pa.array(labels[ActionType.CLICK]),
            LABEL_HIDE: pa.array(labels[ActionType.HIDE]),
        }),
        EVENTS_FILE: pa.table({
            "event_id": pa.array(w.ev_ids[ev], type=pa.string()),
            USER_ID: pa.array(w.ev_user[ev].astype(np.int64)),
            PIN_ID: pa.array(w.ev_pin[ev].astype(np.int64)),
            "action_type": pa.array(ACTION_NAMES[w.ev_action[ev]], type=pa.string()),
            "event_time": pa.array(w.ev_time[ev].astype(np.int64)),
            "arrival_time": pa.array(w.ev_arrival[ev].astype(np.int64)),
            "surface": pa.array(np.full(len(w.ev_ids), surface, dtype=object), type=pa.string()),
            REQUEST_ID: pa.array(w.ev_rid[ev].astype(np.int64)),
        }),
    }


def base_summary(w: WorldArrays, start_ms: int, segments: tuple[str, ...]) -> dict:
    """world.json's summary fields every world has (docs/world.md)."""
    n_imp = len(w.imp_pin)
    events_per_user = np.bincount(np.searchsorted(w.user_ids, w.ev_user), minlength=len(w.user_ids))
    ev_seg = w.segment[np.searchsorted(w.user_ids, w.ev_user)]
    epu = quantiles(events_per_user)
    epu["users_without_events"] = int((events_per_user == 0).sum())
    epu["events_by_segment"] = {s: int((ev_seg == s).sum()) for s in segments}
    return {
        "users": int(len(w.user_ids)),
        "pins": int(len(w.item_ids)),
        "requests": int(len(np.unique(w.imp_rid))),
        "impressions": int(n_imp),
        "events": int(len(w.ev_ids)),
        "events_by_action": {a.wire_name: int((w.ev_action == int(a)).sum()) for a in ActionType},
        "rate_per_impression": {
            a.wire_name: round(float((w.imp_action == int(a)).mean()), 6) if n_imp else 0.0
            for a in ActionType},
        "late_fraction": 0.0,
        "non_core_share": round(float((~w.is_core.astype(bool)).mean()), 6),
        "segment_users": {s: int((w.segment == s).sum()) for s in segments},
        "events_per_user": epu,
        "effects": {},
        "pins_created_during_world": int((w.created_ms > start_ms).sum()),
    }


def world_meta(w: WorldArrays, *, source: str, days: int, seed: int, start_ms: int,
               embedding_dim: int, n_topics: int, summary: dict, has_impressions: bool) -> dict:
    """world.json's fields every world has: the WorldParams ones (load_world reads them; those
    without meaning for real data are 0), the span, the files, whether requests.parquet's rows
    were shown (`has_impressions`: a log of what was shown, not sampled negatives) and the summary."""
    imp_per_req = np.unique(w.imp_rid, return_counts=True)[1]
    end_ms = int(start_ms + days * DAY_MS)
    return {
        "format_version": FORMAT_VERSION,
        "source": source,
        "users": int(len(w.user_ids)),
        "pins": int(len(w.item_ids)),
        "days": int(days),
        "seed": int(seed),
        "start_ms": int(start_ms),
        "embedding_dim": int(embedding_dim),
        "n_topics": int(n_topics),
        "non_core_share": summary["non_core_share"],
        "late_fraction": 0.0,
        "new_pin_share": round(float((w.created_ms > start_ms).mean()), 6),
        "intent_outside_share": 0.0,
        "min_candidates": int(imp_per_req.min()),
        "max_candidates": int(imp_per_req.max()),
        "end_ms": end_ms,
        "start_iso": utc_iso(start_ms),
        "end_iso": utc_iso(end_ms),
        "files": list(WORLD_FILES[:-1]),
        HAS_IMPRESSIONS: bool(has_impressions),
        "summary": summary,
    }
