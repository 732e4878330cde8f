"""Where a dataset's history signal points: within a user, and across users.

    python scripts/history_signal.py DATASET_DIR [--split test] [--min-candidates 4] [--head click]

For the rows `homefeed evaluate --min-candidates N` scores, it prints, per split:
1. the within-user GAUC of two serve-time history summaries (minutes since the user's last
   action; minus the number of actions in the sequence): > 0.5 means the label is more likely
   after a gap and with fewer earlier actions, for the same user;
2. the pooled AUC of the sequence length (all users together) and the correlation, across users,
   of a user's label rate with their mean sequence length.

3. `--baseline`: test GAUC of three logistic regressions fitted on the validation split: the two
   history summaries alone; the user's and the pin's label rate over the training split alone
   (smoothed); both together. The rates are not serving features yet (issue 23's engagement
   counters would make them ones): this only measures what a per-user baseline is worth.

When (1) and (2) point opposite ways, a pointwise model without a per-user baseline (a user's own
click rate) learns the across-user direction and scores the within-user one backwards: the reason
homefeed's KuaiRand rankers tie `none` on click GAUC (docs/kuairand.md).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from homefeed import features as F
from homefeed import metrics
from homefeed.training.dataset import load_dataset


def scored_rows(ds, split: str, min_candidates: int) -> pd.DataFrame:
    """The split's impressions of requests with >= min_candidates, with their snapshot's history
    summaries: `minutes` since the last action (1e6: none) and `length` of the sequence."""
    req, imp = ds.split(split)
    size = imp.groupby(F.REQUEST_ID)[F.PIN_ID].transform("size")
    imp = imp[size >= min_candidates].reset_index(drop=True)
    rows = imp.merge(req[[F.SNAPSHOT_ID, "request_time_ms", F.SEQ_ACTION_TIMES, F.SEQ_LENGTH]],
                     on=F.SNAPSHOT_ID, validate="many_to_one")
    served = rows["request_time_ms"].to_numpy(np.int64)
    last = np.array([t[0] if len(t) else -1 for t in rows[F.SEQ_ACTION_TIMES]], dtype=np.int64)
    rows["minutes"] = np.where(last > 0, (served - last) / 60_000, 1e6)
    rows["length"] = rows[F.SEQ_LENGTH].to_numpy()
    return rows


def summarise(ds, split: str, min_candidates: int, head: str) -> dict:
    rows = scored_rows(ds, split, min_candidates)
    minutes, length = rows["minutes"].to_numpy(), rows["length"].to_numpy()
    y = rows[f"label_{head}"].to_numpy()
    user = rows[F.USER_ID].to_numpy()
    per_user = pd.DataFrame({"user": user, "y": y, "n": length}).groupby("user").mean()
    return {"split": split, "rows": int(len(rows)),
            "gauc_minutes_since_last_action": round(metrics.gauc(minutes, y, user), 4),
            "gauc_minus_sequence_length": round(metrics.gauc(-length, y, user), 4),
            "pooled_auc_sequence_length": round(metrics.auc(length, y), 4),
            "across_users_corr_rate_vs_mean_length": round(float(np.corrcoef(per_user.y, per_user.n)[0, 1]), 3)}


def baseline_worth(ds, min_candidates: int, head: str, prior_weight: float = 20.0) -> dict:
    """Step 3: fit on the validation split, score the test split; rates from the training split."""
    from homefeed.training.reference import fit_logistic, predict_logistic

    _, train = ds.split("train")
    label = f"label_{head}"
    prior = float(train[label].mean())

    def rate(key: str) -> pd.Series:  # smoothed toward the overall rate
        g = train.groupby(key)[label].agg(["sum", "count"])
        return (g["sum"] + prior_weight * prior) / (g["count"] + prior_weight)

    user_rate, pin_rate = rate(F.USER_ID), rate(F.PIN_ID)

    def columns(rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"history": np.stack([np.log1p(np.minimum(rows["minutes"], 1e6)),
                                     np.log1p(rows["length"])], axis=1),
                "rates": np.stack([rows[F.USER_ID].map(user_rate).fillna(prior),
                                   rows[F.PIN_ID].map(pin_rate).fillna(prior)], axis=1)}

    fit_rows, test_rows = scored_rows(ds, "valid", min_candidates), scored_rows(ds, "test", min_candidates)
    fit_x, test_x = columns(fit_rows), columns(test_rows)
    y_fit, y_test = fit_rows[label].to_numpy(float), test_rows[label].to_numpy()
    out = {}
    for name, parts in (("history", ["history"]), ("rates", ["rates"]), ("rates+history", ["rates", "history"])):
        a = np.concatenate([fit_x[p] for p in parts], axis=1)
        b = np.concatenate([test_x[p] for p in parts], axis=1)
        mean, std = a.mean(0), np.where(a.std(0) > 0, a.std(0), 1.0)
        w = fit_logistic((a - mean) / std, y_fit)
        out[f"test_gauc_{name}"] = round(metrics.gauc(predict_logistic(w, (b - mean) / std), y_test,
                                                      test_rows[F.USER_ID].to_numpy()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--split", action="append", help="train, valid, test (default: train and test)")
    parser.add_argument("--min-candidates", type=int, default=4)
    parser.add_argument("--head", default="click")
    parser.add_argument("--baseline", action="store_true",
                        help="also: what a per-user/per-pin label-rate baseline is worth (step 3)")
    args = parser.parse_args()
    ds = load_dataset(args.dataset)
    for split in args.split or ["train", "test"]:
        print(summarise(ds, split, args.min_candidates, args.head))
    if args.baseline:
        print(baseline_worth(ds, args.min_candidates, args.head))


if __name__ == "__main__":
    main()
