"""Where KuaiRand's realtime engagement signal points: across users vs within a user.

    python scripts/engagement_signal.py WORLD_DIR [--min-candidates 4]

WORLD_DIR is a world written by `homefeed world import-kuairand` (any world with impressions
works). From its impressions alone (requests.parquet: every shown candidate with its labels):

1. point-in-time decayed counts per user and per video of impressions and clicks (half-lives
   1 h, 1 d, 7 d): an impression counts for rows served after it arrived (its time + the world's
   arrival delay), as the stream consumer's counters do; smoothed click rates from them, and the
   minutes since the user's last impression / click;
2. the test GAUC of each feature alone over the population `homefeed evaluate --min-candidates N`
   scores (> 0.5: more clicks where the feature is higher, for the same user);
3. logistic regressions fitted on the training days, scored on the test days: pointwise (BCE
   over all rows) and pairwise within users (a logistic loss on same-user positive/negative score
   differences: homefeed train's `--pair-weight`).

docs/kuairand.md ("Issue 23, second pass") has the figures and what they mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from homefeed import metrics

HALF_LIVES = {"1h": 3_600_000, "1d": 86_400_000, "7d": 7 * 86_400_000}
PRIOR_CLICK, PRIOR_WEIGHT = 0.45, 2.0


def counters(r: pd.DataFrame, key: str, arrival_delay_ms: int) -> dict[str, np.ndarray]:
    """Step 1 for one entity column: values read at each row's served time."""
    n = len(r)
    out = {f"{key}_{kind}_{h}": np.zeros(n) for kind in ("imp", "clk") for h in HALF_LIVES}
    since_imp, since_clk = np.full(n, np.nan), np.full(n, np.nan)
    for _, g in r.groupby(key, sort=False):
        rows = g.index.to_numpy()
        shown, served, clicked = (g["shown_time"].to_numpy(), g["served_time"].to_numpy(),
                                  g["label_click"].to_numpy())
        arrived = shown + arrival_delay_ms
        order, ptr = np.argsort(arrived, kind="stable"), 0
        state = {h: [0.0, 0.0, None] for h in HALF_LIVES}  # imps, clicks, as of
        last_imp = last_clk = np.nan
        for j in np.argsort(served, kind="stable"):
            while ptr < len(order) and arrived[order[ptr]] <= served[j]:
                i = order[ptr]
                for h, hl in HALF_LIVES.items():
                    v = state[h]
                    if v[2] is not None and shown[i] > v[2]:
                        f = 2 ** (-(shown[i] - v[2]) / hl)
                        v[0], v[1], v[2] = v[0] * f, v[1] * f, shown[i]
                    late = 1.0 if v[2] is None else 2 ** (-max(0, v[2] - shown[i]) / hl)
                    v[0] += late
                    v[1] += late * clicked[i]
                    v[2] = shown[i] if v[2] is None else v[2]
                last_imp = np.nanmax([last_imp, shown[i]])
                if clicked[i]:
                    last_clk = np.nanmax([last_clk, shown[i]])
                ptr += 1
            for h, hl in HALF_LIVES.items():
                v = state[h]
                f = 0.0 if v[2] is None else 2 ** (-(served[j] - v[2]) / hl)
                out[f"{key}_imp_{h}"][rows[j]] = v[0] * f
                out[f"{key}_clk_{h}"][rows[j]] = v[1] * f
            since_imp[rows[j]] = (served[j] - last_imp) / 60_000
            since_clk[rows[j]] = (served[j] - last_clk) / 60_000
    out[f"{key}_minutes_since_imp"], out[f"{key}_minutes_since_clk"] = since_imp, since_clk
    return out


def features(r: pd.DataFrame, arrival_delay_ms: int) -> pd.DataFrame:
    raw = {**counters(r, "user_id", arrival_delay_ms), **counters(r, "pin_id", arrival_delay_ms)}
    x = {}
    for key in ("user_id", "pin_id"):
        for h in HALF_LIVES:
            x[f"{key}_log_imp_{h}"] = np.log1p(raw[f"{key}_imp_{h}"])
            x[f"{key}_click_rate_{h}"] = ((raw[f"{key}_clk_{h}"] + PRIOR_WEIGHT * PRIOR_CLICK)
                                          / (raw[f"{key}_imp_{h}"] + PRIOR_WEIGHT))
    for what in ("imp", "clk"):
        minutes = raw[f"user_id_minutes_since_{what}"]
        x[f"user_log_minutes_since_{what}"] = np.log1p(np.nan_to_num(minutes, nan=1e6))
        x[f"user_no_earlier_{what}"] = np.isnan(minutes).astype(float)
    return pd.DataFrame(x)


def fit(x: np.ndarray, y: np.ndarray, users: np.ndarray, pairwise: bool) -> np.ndarray:
    """Step 3: weights of a standardised logistic regression (LBFGS, tiny L2)."""
    xt = torch.tensor(x, dtype=torch.float64)
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    if pairwise:
        df = pd.DataFrame({"u": users, "y": y, "i": np.arange(len(y))})
        pairs = df[df.y == 1].merge(df[df.y == 0], on="u", suffixes=("_p", "_n"))
        ip, ineg = torch.tensor(pairs.i_p.to_numpy()), torch.tensor(pairs.i_n.to_numpy())
    yt = torch.tensor(y, dtype=torch.float64)
    opt = torch.optim.LBFGS([w], max_iter=300)

    def closure():
        opt.zero_grad()
        s = xt @ w[1:] + w[0]
        loss = (torch.nn.functional.softplus(-(s[ip] - s[ineg])).mean() if pairwise
                else torch.nn.functional.binary_cross_entropy_with_logits(s, yt))
        loss = loss + 1e-4 * (w[1:] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", type=Path)
    ap.add_argument("--min-candidates", type=int, default=4)
    args = ap.parse_args()
    meta = json.loads((args.world / "world.json").read_text())
    r = pd.read_parquet(args.world / "requests.parquet")
    r = r.sort_values(["served_time", "request_id", "position"]).reset_index(drop=True)
    r["shown_time"] = r["served_time"] + 1  # an impression is shown 1 ms after it was served
    x = features(r, int(meta.get("behaviour", {}).get("arrival_delay_ms", 0)))
    test = (r["served_time"] >= meta["split_ms"]).to_numpy()
    size = r.groupby("request_id")["pin_id"].transform("size").to_numpy()
    pop, train = test & (size >= args.min_candidates), ~test
    y, users = r["label_click"].to_numpy(), r["user_id"].to_numpy()

    def gauc(score: np.ndarray) -> float:
        return round(metrics.gauc(score[pop], y[pop], users[pop]), 4)

    out = {"rows": int(len(r)), "scored_rows": int(pop.sum()),
           "single_feature_test_gauc": {c: gauc(x[c].to_numpy()) for c in x}}
    sets = {"user and video 7d click rate": ["user_id_click_rate_7d", "pin_id_click_rate_7d"],
            "all": list(x.columns)}
    mean, std = x[train].mean(), x[train].std().replace(0, 1)
    z = ((x - mean) / std).to_numpy()
    cols = {c: i for i, c in enumerate(x.columns)}
    for name, chosen in sets.items():
        idx = [cols[c] for c in chosen]
        for kind in ("pointwise", "pairwise"):
            w = fit(z[train][:, idx], y[train], users[train], kind == "pairwise")
            out.setdefault("logistic_regression_test_gauc", {})[f"{name}, {kind}"] = gauc(z[:, idx] @ w[1:])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
