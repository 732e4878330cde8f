"""The ranker's dense input: one definition for training and serving.

1. Raw inputs, typed: `UserInputs` (U users) and `CandidateInputs` (N candidates). Training has
   them by their Feast names (the point-in-time dataset's columns, the shape
   `get_online_features(...).to_dict()` returns) and converts with `user_inputs` /
   `candidate_inputs`:

    user = {"seq_action_times": [...U sequences], "profile_embedding": [...U], "profile_*": [...U],
            "ue_decayed": [...U], "ue_as_of_ms": [...U]}           # engagement: optional
    cand = {"embedding": [...N], "pin_created_ms": [...N], "pin_duration_ms": [...N],   # duration: optional
            "pe_decayed": [...N], "pe_as_of_ms": [...N]}

   Serving builds them straight from its typed online features (`homefeed.serving.ranking`).
2. `dense_from_inputs(user, cand, request_time_ms, user_index)` -> [N, F] float32, the one
   computation; `dense_features(user, cand, ...)` is steps 1 and 2 on columns.

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
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from homefeed import engagement as EN
from homefeed import features as F

DAY_MS = 86_400_000
MINUTE_MS = 60_000
DENSE_VERSION = 3  # 2: engagement counters; 3: pin duration
# Recency when there is no visible action at all: 28 days (the profile window), in minutes.
NO_ACTION_MINUTES = 28 * 24 * 60

# the profile's scalar columns, in `UserInputs.profile_scalars` order
_PROFILE_SCALARS = (F.PROFILE_ACTIONS_28D, F.PROFILE_REPIN_RATE_28D, F.PROFILE_HIDE_RATE_28D,
                    F.PROFILE_DAYS_ACTIVE_28D)
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


@dataclass
class UserInputs:
    """U users' raw dense inputs, typed (what `dense_from_inputs` reads)."""

    action_times: Sequence[np.ndarray]  # U int64 arrays, epoch ms, newest first
    profile_emb: np.ndarray  # [U, D] float32, zeros without a profile
    has_profile: np.ndarray  # [U] bool
    profile_scalars: np.ndarray  # [U, 4] float64: actions, repin rate, hide rate, days active; 0: missing
    engagement: Any = None  # [U] stored counter arrays (None: no row), `homefeed.engagement.dense_block`'s
    engagement_as_of_ms: Any = None  # [U] as-of times (None: no row)


@dataclass
class CandidateInputs:
    """N candidates' raw dense inputs, typed (what `dense_from_inputs` reads)."""

    emb: np.ndarray  # [N, D] float32, zeros where unknown
    created_ms: np.ndarray  # [N] float64, NaN where unknown
    duration_ms: np.ndarray  # [N] float64, NaN where unknown (null)
    engagement: Any = None  # [N] stored counter arrays, as `UserInputs.engagement`
    engagement_as_of_ms: Any = None


def dense_features(user: Mapping[str, Any], cand: Mapping[str, Any], request_time_ms: Any,
                   user_index: Any = None, embedding_dim: int | None = None) -> np.ndarray:
    """[N, F] float32 dense features, F = len(dense_feature_names(D)). See the module docstring.

    `user` holds U rows of seq_action_times (newest first) and the profile_* features (None =
    no profile), `cand` N rows of embedding, pin_created_ms and (optional) pin_duration_ms,
    `request_time_ms` is one value per user row (or a scalar), `user_index` [N] the user row of
    each candidate (default: all 0).
    `embedding_dim` is only needed when no profile and no candidate embedding is known at all.
    """
    dim = embedding_dim or _dim(list(cand[F.PIN_EMBEDDING]) + list(user[F.PROFILE_EMBEDDING]))
    return dense_from_inputs(user_inputs(user, dim), candidate_inputs(cand, dim), request_time_ms, user_index)


def user_inputs(user: Mapping[str, Any], dim: int) -> UserInputs:
    """Step 1 (columns by Feast name, see the module docstring) -> `UserInputs`."""
    times = list(user[F.SEQ_ACTION_TIMES])
    u = len(times)
    profile_emb, has_profile = _matrix(user[F.PROFILE_EMBEDDING], u, dim)
    scalars = np.stack([_column(user[name], u, 0.0) for name in _PROFILE_SCALARS], axis=1)
    return UserInputs([np.asarray(ts if _is_vector(ts) else [], dtype=np.int64) for ts in times],
                      profile_emb, has_profile, scalars, user.get(F.UE_DECAYED), user.get(F.UE_AS_OF_MS))


def candidate_inputs(cand: Mapping[str, Any], dim: int) -> CandidateInputs:
    """Step 1 for the candidates -> `CandidateInputs` (no pin_duration_ms column: all unknown)."""
    emb_values = list(cand[F.PIN_EMBEDDING])
    n = len(emb_values)
    emb, _ = _matrix(emb_values, n, dim)
    durations = cand.get(F.PIN_DURATION_MS)  # None: no such column or key (all unknown)
    return CandidateInputs(emb, _column(cand[F.PIN_CREATED_MS], n, np.nan),
                           np.full(n, np.nan) if durations is None else _column(durations, n, np.nan),
                           cand.get(F.PE_DECAYED), cand.get(F.PE_AS_OF_MS))


def dense_from_inputs(user: UserInputs, cand: CandidateInputs, request_time_ms: Any,
                      user_index: Any = None) -> np.ndarray:
    """Step 2: [N, F] float32 dense features from typed inputs (arguments as `dense_features`)."""
    u = len(user.action_times)
    n = cand.emb.shape[0]
    idx = np.zeros(n, dtype=np.int64) if user_index is None else np.asarray(user_index, dtype=np.int64)
    rt = np.broadcast_to(np.asarray(request_time_ms, dtype=np.int64), (u,))

    # user side, once per user row
    profile_emb = user.profile_emb
    actions, repin, hide, days = user.profile_scalars.T
    visible = np.zeros(u)
    last_ms = np.full(u, -1, dtype=np.int64)
    for i, ts in enumerate(user.action_times):
        ts = ts[ts < rt[i]]  # only actions before the request count (newest first)
        visible[i] = ts.size
        if ts.size:
            last_ms[i] = ts.max()
    minutes = np.where(last_ms >= 0, (rt - last_ms) / MINUTE_MS, NO_ACTION_MINUTES)
    hour = (rt % DAY_MS) / (DAY_MS / 24)
    user_scalars = np.stack([
        user.has_profile.astype(np.float64),
        np.log1p(actions),
        repin,
        hide,
        days / 28.0,
        np.sin(2 * np.pi * hour / 24),
        np.cos(2 * np.pi * hour / 24),
        np.log1p(visible),
        np.log1p(np.clip(minutes, 0, NO_ACTION_MINUTES)),
    ], axis=1)

    # candidate side
    cand_emb = cand.emb
    created = cand.created_ms
    age_days = np.where(np.isnan(created), 0.0, (rt[idx] - np.nan_to_num(created)) / DAY_MS)
    duration = cand.duration_ms
    has_duration = np.nan_to_num(duration, nan=-1.0) >= 0
    duration_s = np.where(has_duration, np.nan_to_num(duration), 0.0) / 1000.0
    norm = np.linalg.norm(profile_emb, axis=1)[idx] * np.linalg.norm(cand_emb, axis=1)
    match = np.einsum("nd,nd->n", profile_emb[idx], cand_emb) / np.maximum(norm, 1e-9)
    # engagement: the user's counters at its request time, the candidate's at its row's
    user_engagement = EN.dense_block(user.engagement, user.engagement_as_of_ms, rt)
    pin_engagement = EN.dense_block(cand.engagement, cand.engagement_as_of_ms, rt[idx])
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
