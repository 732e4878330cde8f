"""The ranker's dense input: one definition for training and serving.

`dense_features` takes raw feature values by their Feast names (the shape
`get_online_features(...).to_dict()` returns) for U users and N candidates:

    user = {"seq_action_times": [...U sequences], "profile_embedding": [...U], "profile_*": [...U],
            "ue_decayed": [...U], "ue_as_of_ms": [...U]}           # engagement: optional
    cand = {"embedding": [...N], "pin_created_ms": [...N], "pin_duration_ms": [...N],   # duration: optional
            "pe_decayed": [...N], "pe_as_of_ms": [...N]}
    dense = dense_features(user, cand, request_time_ms, user_index)   # [N, F] float32

Serving ranks one user's candidates: U = 1 and `user_index` defaults to all zeros. Training passes
all requests at once (U = requests, `user_index` = each impression's request row).
`dense_feature_spec` is what an exported model records, so serving can refuse a model whose
dense input means something else.

The engagement counters (user and candidate pin) are decayed to the request time and turned into
log counts and smoothed rates by `homefeed.engagement.dense_block`, the rule the counters are
defined by; an absent counter row (or column) is an entity with no engagement yet.

Item metadata: the candidate's age (from pin_created_ms) and its media duration (pin_duration_ms:
`log_pin_duration_s` = log1p(seconds) and the flag `has_pin_duration`; a null, NaN or negative
value, or no such column, is an unknown duration: both 0).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np
import pandas as pd

from homefeed import engagement as EN
from homefeed import features as F

DAY_MS = 86_400_000
MINUTE_MS = 60_000
DENSE_VERSION = 3  # 2: engagement counters; 3: pin duration
# Recency when there is no visible action at all: 28 days (the profile window), in minutes.
NO_ACTION_MINUTES = 28 * 24 * 60

_SCALAR_NAMES = (
    "profile_match",  # cosine(profile embedding, candidate embedding): long-term interest in it
    "has_profile",  # 0 for a user without a daily profile yet (new users)
    "log_profile_actions_28d",
    "profile_repin_rate_28d",
    "profile_hide_rate_28d",
    "profile_days_active_frac",  # days active in the last 28 / 28
    "hour_sin",  # request hour of day (UTC), on the circle
    "hour_cos",
    "log_seq_length",  # actions visible at request time
    "log_minutes_since_last_action",
    "log_pin_age_days",  # candidate age at request time
    "log_pin_duration_s",  # log1p(candidate media duration in seconds); 0 when unknown
    "has_pin_duration",  # 1 when the candidate's duration is known
)


def dense_feature_names(embedding_dim: int) -> tuple[str, ...]:
    return (_SCALAR_NAMES + EN.dense_names("user") + EN.dense_names("pin")
            + tuple(f"profile_emb_{i}" for i in range(embedding_dim)))


def dense_feature_spec(embedding_dim: int) -> dict:
    """What an exported model records; serving refuses a model whose spec differs."""
    names = dense_feature_names(embedding_dim)
    digest = hashlib.sha256(json.dumps([DENSE_VERSION, names]).encode()).hexdigest()[:16]
    return {"version": DENSE_VERSION, "names": list(names), "dim": len(names), "digest": digest}


def _column(values: Any, n: int, fill: float) -> np.ndarray:
    """float64 [n] from a list/array/Series with None/NaN -> `fill`."""
    arr = pd.to_numeric(pd.Series(list(values) if not isinstance(values, pd.Series) else values),
                        errors="coerce").to_numpy(np.float64, na_value=np.nan)
    if arr.size != n:
        raise ValueError(f"expected {n} values, got {arr.size}")
    return np.where(np.isnan(arr), fill, arr)


def _matrix(values: Any, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, dim] float32 from a list of vectors (None -> zeros) and a [n] bool "present" mask."""
    values = list(values)
    present = np.array([_is_vector(v) and len(v) == dim for v in values], dtype=bool)
    if present.all() and n:
        return np.stack(values).astype(np.float32, copy=False), present
    out = np.zeros((n, dim), dtype=np.float32)
    for i in np.flatnonzero(present):
        out[i] = np.asarray(values[i], dtype=np.float32)
    return out, present


def dense_features(user: Mapping[str, Any], cand: Mapping[str, Any], request_time_ms: Any,
                   user_index: Any = None, embedding_dim: int | None = None) -> np.ndarray:
    """[N, F] float32 dense features, F = len(dense_feature_names(D)). See the module docstring.

    `user` holds U rows of seq_action_times (newest first) and the profile_* features (None =
    no profile), `cand` N rows of embedding, pin_created_ms and (optional) pin_duration_ms,
    `request_time_ms` is one value per user row (or a scalar), `user_index` [N] the user row of
    each candidate (default: all 0).
    `embedding_dim` is only needed when no profile and no candidate embedding is known at all.
    """
    times = list(user[F.SEQ_ACTION_TIMES])
    u = len(times)
    emb_values = list(cand[F.PIN_EMBEDDING])
    n = len(emb_values)
    idx = np.zeros(n, dtype=np.int64) if user_index is None else np.asarray(user_index, dtype=np.int64)
    rt = np.broadcast_to(np.asarray(request_time_ms, dtype=np.int64), (u,))

    # user side, once per user row
    dim = embedding_dim or _dim(emb_values + list(user[F.PROFILE_EMBEDDING]))
    profile_emb, has_profile = _matrix(user[F.PROFILE_EMBEDDING], u, dim)
    actions = _column(user[F.PROFILE_ACTIONS_28D], u, 0.0)
    visible = np.zeros(u)
    last_ms = np.full(u, -1, dtype=np.int64)
    for i, ts in enumerate(times):
        ts = np.asarray(ts if _is_vector(ts) else [], dtype=np.int64)
        ts = ts[ts < rt[i]]  # only actions before the request count (newest first)
        visible[i] = ts.size
        if ts.size:
            last_ms[i] = ts.max()
    minutes = np.where(last_ms >= 0, (rt - last_ms) / MINUTE_MS, NO_ACTION_MINUTES)
    hour = (rt % DAY_MS) / (DAY_MS / 24)
    user_scalars = np.stack([
        has_profile.astype(np.float64),
        np.log1p(actions),
        _column(user[F.PROFILE_REPIN_RATE_28D], u, 0.0),
        _column(user[F.PROFILE_HIDE_RATE_28D], u, 0.0),
        _column(user[F.PROFILE_DAYS_ACTIVE_28D], u, 0.0) / 28.0,
        np.sin(2 * np.pi * hour / 24),
        np.cos(2 * np.pi * hour / 24),
        np.log1p(visible),
        np.log1p(np.clip(minutes, 0, NO_ACTION_MINUTES)),
    ], axis=1)

    # candidate side
    cand_emb, _ = _matrix(emb_values, n, dim)
    created = _column(cand[F.PIN_CREATED_MS], n, np.nan)
    age_days = np.where(np.isnan(created), 0.0, (rt[idx] - np.nan_to_num(created)) / DAY_MS)
    durations = cand.get(F.PIN_DURATION_MS)  # None: no such column or key (all unknown)
    duration = np.full(n, np.nan) if durations is None else _column(durations, n, np.nan)
    has_duration = np.nan_to_num(duration, nan=-1.0) >= 0
    duration_s = np.where(has_duration, np.nan_to_num(duration), 0.0) / 1000.0
    norm = np.linalg.norm(profile_emb, axis=1)[idx] * np.linalg.norm(cand_emb, axis=1)
    match = np.einsum("nd,nd->n", profile_emb[idx], cand_emb) / np.maximum(norm, 1e-9)
    # engagement: the user's counters at its request time, the candidate's at its row's
    user_engagement = EN.dense_block(user.get(F.UE_DECAYED), user.get(F.UE_AS_OF_MS), rt)
    pin_engagement = EN.dense_block(cand.get(F.PE_DECAYED), cand.get(F.PE_AS_OF_MS), rt[idx])
    out = np.concatenate([
        match[:, None],
        user_scalars[idx],
        np.log1p(np.clip(age_days, 0, None))[:, None],
        np.log1p(duration_s)[:, None],
        has_duration.astype(np.float64)[:, None],
        user_engagement[idx],
        pin_engagement,
        profile_emb[idx],
    ], axis=1)
    return out.astype(np.float32)


def _is_vector(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))  # a missing value is None or NaN


def _dim(vectors: list) -> int:
    for v in vectors:
        if _is_vector(v):
            return len(v)
    raise ValueError("no embedding among the candidates and profiles: pass embedding_dim")
