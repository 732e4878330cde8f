"""Offline evaluation math (numpy/pandas only, no torch): HIT@k, hide rate, AUC, lift CIs.

Inputs are flat arrays with one entry per (request, candidate) row: `scores` (a head's model
score, higher = ranked first), 0/1 `labels`, and `groups` (request ids, any hashable dtype; rows
need not be sorted or contiguous). Everything is vectorised (sort + bincount), no Python loop over
requests.

Ties
----
`hit_at_k` and `hide_rate_in_top_k` treat tied scores by their **exact expectation under a
uniformly random tie-break**: a tie group that straddles the top-k cutoff lends each of its members
the same fractional share (free slots / group size). This is deterministic and independent of
row order, and a constant-score model scores exactly what random ordering would, never more.
`topic_diversity_at_k` (a count of distinct values, not a sum) breaks ties by original row order
(stable sort), which is documented there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

DEFAULT_K = 3


# ---------------------------------------------------------------------------------------------
# shared ranking helper
# ---------------------------------------------------------------------------------------------


@dataclass
class _Ranking:
    order: np.ndarray  # row indices sorted by (request, score desc, original order)
    codes: np.ndarray  # request code per sorted row, 0..G-1
    uniques: pd.Index  # request id per code
    position: np.ndarray  # 0-based stable rank within the request, per sorted row
    above: np.ndarray  # rows of the same request with a strictly higher score
    tie_size: np.ndarray  # size of the row's tie group (same request, same score)
    n_groups: int

    def inclusion(self, k: int) -> np.ndarray:
        """Probability that each sorted row lands in its request's top k (random tie-break)."""
        free = np.clip(k - self.above, 0, self.tie_size)
        return free / self.tie_size

    def per_request_sum(self, values_sorted: np.ndarray) -> np.ndarray:
        return np.bincount(self.codes, weights=values_sorted, minlength=self.n_groups)

    def sizes(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n_groups)


def _rank(scores: Any, groups: Any) -> _Ranking:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    codes, uniques = pd.factorize(np.asarray(groups).reshape(-1), sort=False)
    if codes.size != s.size:
        raise ValueError(f"scores ({s.size}) and groups ({codes.size}) differ in length")
    if (codes < 0).any():
        raise ValueError("groups contain missing values")
    order = np.lexsort((-s, codes))  # stable: ties keep original order
    sc = codes[order]
    ss = s[order]
    n = s.size
    idx = np.arange(n)
    new_req = np.ones(n, dtype=bool)
    new_req[1:] = sc[1:] != sc[:-1]
    new_tie = new_req.copy()
    new_tie[1:] |= ss[1:] != ss[:-1]
    req_start = np.maximum.accumulate(np.where(new_req, idx, 0)) if n else idx
    tie_start = np.maximum.accumulate(np.where(new_tie, idx, 0)) if n else idx
    tie_id = np.cumsum(new_tie) - 1
    tie_size = np.bincount(tie_id)[tie_id] if n else idx
    return _Ranking(order=order, codes=sc, uniques=pd.Index(uniques), position=idx - req_start,
                    above=tie_start - req_start, tie_size=tie_size, n_groups=len(uniques))


def _binary(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if y.size != n:
        raise ValueError(f"{name} ({y.size}) and scores ({n}) differ in length")
    return (y > 0.5).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# HIT@k
# ---------------------------------------------------------------------------------------------


def hit_at_k_per_request(scores: Any, labels: Any, groups: Any, k: int = DEFAULT_K,
                         normalization: str = "min") -> pd.Series:
    """HIT@k of each request that has at least one positive (Series indexed by request id).

    For a request with P >= 1 positives, rank its candidates by `scores` (descending) and let
    hits = number of positives among the top k (fractional under ties, see module docstring):

    - ``normalization="min"`` (default): ``hits / min(P, k)`` -- the fraction of the positives
      that *could* fit in the top k that did. A perfect ranker scores exactly 1.0 on every
      request; a request with more than k positives is not capped below 1.
    - ``normalization="positives"``: ``hits / P``, the paper's literal "fraction of the head's
      positives found in the top k" (a perfect ranker scores k/P < 1 when P > k).

    Requests with no positive are left out (nothing to find). Requests with fewer than k
    candidates have all of them in the top k.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    r = _rank(scores, groups)
    y = _binary(labels, r.order.size)[r.order]
    hits = r.per_request_sum(r.inclusion(k) * y)
    npos = r.per_request_sum(y)
    if normalization == "min":
        denom = np.minimum(npos, k)
    elif normalization == "positives":
        denom = npos
    else:
        raise ValueError(f"normalization must be 'min' or 'positives', got {normalization!r}")
    keep = npos > 0
    return pd.Series(hits[keep] / denom[keep], index=r.uniques[keep], name=f"hit@{k}")


def hit_at_k(scores: Any, labels: Any, group_ids: Any, k: int = DEFAULT_K,
             normalization: str = "min") -> float:
    """Mean of `hit_at_k_per_request` over requests with >= 1 positive (NaN if there are none)."""
    per = hit_at_k_per_request(scores, labels, group_ids, k, normalization)
    return float(per.mean()) if len(per) else float("nan")


# ---------------------------------------------------------------------------------------------
# hides in the repin-ranked top k
# ---------------------------------------------------------------------------------------------


def hide_rate_in_top_k_per_request(repin_scores: Any, hide_labels: Any, groups: Any,
                                   k: int = DEFAULT_K, only_requests_with_hides: bool = True) -> pd.Series:
    """Per request: hidden candidates among the top k by the *repin* score, divided by the
    number of top-k slots, min(k, request size). Lower is better. By default only requests
    containing at least one hide are kept (elsewhere the value is 0 for every model)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    r = _rank(repin_scores, groups)
    hide = _binary(hide_labels, r.order.size, "hide_labels")[r.order]
    in_top = r.per_request_sum(r.inclusion(k) * hide)
    slots = np.minimum(r.sizes(), k)
    keep = r.per_request_sum(hide) > 0 if only_requests_with_hides else slots > 0
    return pd.Series(in_top[keep] / slots[keep], index=r.uniques[keep], name=f"hide_rate@{k}")


def hide_rate_in_top_k(repin_scores: Any, hide_labels: Any, groups: Any, k: int = DEFAULT_K,
                       only_requests_with_hides: bool = True) -> float:
    """Mean of `hide_rate_in_top_k_per_request` (lower is better; NaN if no request qualifies)."""
    per = hide_rate_in_top_k_per_request(repin_scores, hide_labels, groups, k, only_requests_with_hides)
    return float(per.mean()) if len(per) else float("nan")


# ---------------------------------------------------------------------------------------------
# diversity
# ---------------------------------------------------------------------------------------------


def topic_diversity_at_k_per_request(scores: Any, topics: Any, groups: Any,
                                     k: int = DEFAULT_K) -> pd.Series:
    """Number of distinct topics among each request's top k by score. Ties are broken by
    original row order (earlier row ranks first)."""
    r = _rank(scores, groups)
    t_codes, _ = pd.factorize(np.asarray(topics).reshape(-1), sort=False)
    if t_codes.size != r.order.size:
        raise ValueError("topics and scores differ in length")
    top = r.position < k
    pairs = np.unique(np.stack([r.codes[top], t_codes[r.order][top]]), axis=1)
    distinct = np.bincount(pairs[0], minlength=r.n_groups) if pairs.size else np.zeros(r.n_groups)
    return pd.Series(distinct.astype(np.float64), index=r.uniques, name=f"topics@{k}")


def topic_diversity_at_k(scores: Any, topics: Any, groups: Any, k: int = DEFAULT_K) -> float:
    """Mean number of distinct topics in each request's top k (higher = more diverse)."""
    per = topic_diversity_at_k_per_request(scores, topics, groups, k)
    return float(per.mean()) if len(per) else float("nan")


# ---------------------------------------------------------------------------------------------
# AUC
# ---------------------------------------------------------------------------------------------


def auc(scores: Any, labels: Any) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney U) formula with average ranks for ties, i.e.
    P(score_pos > score_neg) + 0.5 * P(tie). NaN when only one class is present."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary(labels, s.size)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    n = ss.size
    new = np.ones(n, dtype=bool)
    new[1:] = ss[1:] != ss[:-1]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)  # exclusive
    avg_rank = (starts + 1 + ends) / 2.0  # mean of 1-based ranks start+1..end
    ranks = np.empty(n)
    ranks[order] = avg_rank[group]
    u = ranks[y > 0].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auc_per_group(scores: Any, labels: Any, groups: Any) -> pd.DataFrame:
    """AUC within each group (e.g. user) that has both classes, same tie rule as `auc`; a frame
    indexed by group with columns `auc` and `n` (rows of the group), sorted by group."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary(labels, s.size).astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    frame = pd.DataFrame({"g": np.asarray(groups).reshape(-1), "s": s, "y": y})
    frame["r"] = frame.groupby("g")["s"].rank(method="average")
    frame["ry"] = frame["r"] * frame["y"]
    agg = frame.groupby("g").agg(n=("y", "size"), pos=("y", "sum"), rank_pos=("ry", "sum"))
    agg = agg[(agg["pos"] > 0) & (agg["pos"] < agg["n"])]
    neg = agg["n"] - agg["pos"]
    out = pd.DataFrame({"auc": (agg["rank_pos"] - agg["pos"] * (agg["pos"] + 1) / 2.0) / (agg["pos"] * neg),
                        "n": agg["n"].astype(np.int64)})
    out.index.name = None
    return out


def gauc(scores: Any, labels: Any, groups: Any) -> float:
    """Group AUC (KuaiRand papers' user-level GAUC): the per-group AUCs averaged with weights =
    rows of the group, over groups with both classes; NaN when there is none."""
    per = auc_per_group(scores, labels, groups)
    return float((per["auc"] * per["n"]).sum() / per["n"].sum()) if len(per) else float("nan")


# ---------------------------------------------------------------------------------------------
# paired bootstrap of a relative lift
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiftCI:
    lift: float  # mean(a) / mean(b) - 1 on the full sample
    low: float  # percentile interval bounds
    high: float
    n_requests: int
    n_boot: int
    confidence: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict[str, float]:
        return {"lift": self.lift, "low": self.low, "high": self.high,
                "n_requests": self.n_requests, "n_boot": self.n_boot, "confidence": self.confidence}


def bootstrap_lift_ci(metric_a_per_request: Any, metric_b_per_request: Any, n_boot: int = 1000,
                      seed: int = 0, confidence: float = 0.95, max_chunk_elems: int = 4_000_000) -> LiftCI:
    """Relative lift of model a over model b, ``mean(a) / mean(b) - 1``, with a paired
    percentile bootstrap interval: each replicate resamples *requests* with replacement and
    uses the same requests for a and b. Deterministic for a given `seed`.

    Two pandas Series are aligned on their index (requests present in both); plain arrays must
    be aligned already (same length, same request per position).
    """
    if isinstance(metric_a_per_request, pd.Series) and isinstance(metric_b_per_request, pd.Series):
        a_s, b_s = metric_a_per_request.align(metric_b_per_request, join="inner")
        a, b = a_s.to_numpy(np.float64), b_s.to_numpy(np.float64)
    else:
        a = np.asarray(metric_a_per_request, dtype=np.float64).reshape(-1)
        b = np.asarray(metric_b_per_request, dtype=np.float64).reshape(-1)
        if a.size != b.size:
            raise ValueError(f"paired metrics differ in length: {a.size} vs {b.size}")
    n = a.size
    if n == 0:
        raise ValueError("no requests to bootstrap")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = a.mean() / b.mean() - 1.0
        rng = np.random.default_rng(seed)
        chunk = max(1, max_chunk_elems // n)
        lifts = np.empty(n_boot)
        for start in range(0, n_boot, chunk):
            m = min(chunk, n_boot - start)
            idx = rng.integers(0, n, size=(m, n))
            lifts[start:start + m] = a[idx].mean(axis=1) / b[idx].mean(axis=1) - 1.0
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(lifts, [alpha, 1.0 - alpha])
    return LiftCI(float(lift), float(low), float(high), n, int(n_boot), float(confidence))


# ---------------------------------------------------------------------------------------------
# all heads at once
# ---------------------------------------------------------------------------------------------


def evaluate_heads(scores: Any, labels: Any, groups: Any, heads: Sequence[str],
                   k: int = DEFAULT_K, repin_head: str = "repin", hide_head: str = "hide",
                   users: Any = None) -> dict[str, float]:
    """Standard report for [N, H] scores and labels: ``hit@k_<head>`` and ``auc_<head>`` for
    every head, ``gauc_<head>`` (user-level GAUC, `gauc`) when `users` (one id per row) is
    given, plus ``hide_rate@k`` (hides in the repin-ranked top k) when both heads exist."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    heads = list(heads)
    if s.ndim != 2 or s.shape != y.shape or s.shape[1] != len(heads):
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be [N, {len(heads)}]")
    out: dict[str, float] = {}
    for j, head in enumerate(heads):
        out[f"hit@{k}_{head}"] = hit_at_k(s[:, j], y[:, j], groups, k)
        out[f"auc_{head}"] = auc(s[:, j], y[:, j])
        if users is not None:
            out[f"gauc_{head}"] = gauc(s[:, j], y[:, j], users)
    if repin_head in heads and hide_head in heads:
        out[f"hide_rate@{k}"] = hide_rate_in_top_k(s[:, heads.index(repin_head)],
                                                   y[:, heads.index(hide_head)], groups, k)
    return out
