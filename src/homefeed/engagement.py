"""Engagement counters at read time: one definition for training and serving.

The stream consumer (homefeed.stream.engagement) stores, per user and per pin, half-life decayed
counts of each kind in `features.ENGAGEMENT_KINDS` as values at `as_of` (the newest counted event
time). Whoever reads them brings them to its own time t with the same rule:

1. decay: value(t) = value(as_of) * 2^(-max(0, t - as_of) / half_life) (a reader never sees a
   count that went stale between events; a row stamped after t is not decayed upwards);
2. counts: log1p of every decayed count (kinds x half-lives);
3. rates: at the 1 d half-life (the counts carry the other windows), each action kind over
   impressions, smoothed towards a prior,
   (actions + PRIOR_STRENGTH * prior) / (impressions + PRIOR_STRENGTH); an entity never shown
   (or before impressions flow) gets the prior.

The dataset builder applies it at each row's serve time to the row the point-in-time join chose,
the ranking service at the request time to the row it read from Redis: the same stored row at the
same instant gives the same numbers (tests/test_serve_time.py checks it end to end).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from homefeed import features as F

KINDS = F.ENGAGEMENT_KINDS
HALF_LIVES_MS = np.asarray(F.ENGAGEMENT_HALF_LIVES_MS, dtype=np.float64)
N_VALUES = len(KINDS) * len(HALF_LIVES_MS)  # stored values per entity, kind-major
IMPRESSION = KINDS.index("impression")
# Prior action rates per impression and their weight (in impressions) for the smoothed rates.
PRIOR_RATE = {"repin": 0.02, "click": 0.1, "hide": 0.01}
PRIOR_STRENGTH = 20.0
RATE_KINDS = tuple(k for k in KINDS if k != "impression")
RATE_HALF_LIFE = 1  # rates at one half-life (1 d): the counts carry the other windows


def _hl_name(ms: float) -> str:
    return f"{int(ms // 86_400_000)}d" if ms % 86_400_000 == 0 else f"{int(ms // 3_600_000)}h"


def dense_names(prefix: str) -> tuple[str, ...]:
    """Names of `dense_block`'s columns, e.g. prefix 'pin' -> pin_log_click_1d, pin_click_rate_1d."""
    hls = [_hl_name(h) for h in HALF_LIVES_MS]
    return (tuple(f"{prefix}_log_{k}_{h}" for k in KINDS for h in hls)
            + tuple(f"{prefix}_{k}_rate_{hls[RATE_HALF_LIFE]}" for k in RATE_KINDS))


def stored_arrays(decayed: Any, as_of_ms: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, N_VALUES] float64 and [n] int64 from stored values (lists/arrays; None/NaN = no row:
    zeros)."""
    values = list(decayed) if decayed is not None else [None] * n
    if len(values) != n:
        raise ValueError(f"expected {n} engagement rows, got {len(values)}")
    present = [isinstance(v, (list, tuple, np.ndarray)) and len(v) == N_VALUES for v in values]
    if n and all(present):
        out = np.asarray(np.stack(values), dtype=np.float64)
    else:
        out = np.zeros((n, N_VALUES), dtype=np.float64)
        for i in np.flatnonzero(present):
            out[i] = np.asarray(values[i], dtype=np.float64)
    as_of = np.zeros(n, dtype=np.int64)
    if as_of_ms is not None:
        raw = pd.to_numeric(pd.Series(list(as_of_ms), dtype=object), errors="coerce").to_numpy(np.float64)
        as_of = np.where(np.isnan(raw), 0, raw).astype(np.int64)
    return out, as_of


def decay_to(decayed: np.ndarray, as_of_ms: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
    """[n, K, H] counts at t_ms from stored [n, K*H] values at as_of_ms (step 1)."""
    n = decayed.shape[0]
    age = np.maximum(0, np.asarray(t_ms, dtype=np.int64) - np.asarray(as_of_ms, dtype=np.int64))
    factor = np.exp2(-age.astype(np.float64)[:, None] / HALF_LIVES_MS[None, :])  # [n, H]
    return decayed.reshape(n, len(KINDS), len(HALF_LIVES_MS)) * factor[:, None, :]


def dense_block(decayed: Any, as_of_ms: Any, t_ms: Any) -> np.ndarray:
    """[n, len(dense_names(..))] float64: log counts then smoothed rates at t_ms (steps 1-3).

    `decayed` [n] stored value arrays (None = no row), `as_of_ms` [n], `t_ms` [n] read times."""
    t = np.asarray(t_ms, dtype=np.int64).reshape(-1)
    values, as_of = stored_arrays(decayed, as_of_ms, t.size)
    counts = decay_to(values, as_of, t)  # [n, K, H]
    shown = counts[:, IMPRESSION, RATE_HALF_LIFE]
    rates = [(counts[:, KINDS.index(k), RATE_HALF_LIFE] + PRIOR_STRENGTH * PRIOR_RATE[k])
             / (shown + PRIOR_STRENGTH) for k in RATE_KINDS]
    return np.concatenate([np.log1p(counts.reshape(t.size, -1)), np.stack(rates, axis=1)], axis=1)
