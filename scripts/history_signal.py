"""Where a dataset's history signal points: within a user, and across users.

    python scripts/history_signal.py DATASET_DIR [--split test] [--min-candidates 4] [--head click]

For the rows `homefeed evaluate --min-candidates N` scores, it prints, per split:
1. the within-user GAUC of two serve-time history summaries (minutes since the user's last
   action; minus the number of actions in the sequence): > 0.5 means the label is more likely
   after a gap and with fewer earlier actions, for the same user;
2. the pooled AUC of the sequence length (all users together) and the correlation, across users,
   of a user's label rate with their mean sequence length.

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


def summarise(ds, split: str, min_candidates: int, head: str) -> dict:
    req, imp = ds.split(split)
    size = imp.groupby(F.REQUEST_ID)[F.PIN_ID].transform("size")
    imp = imp[size >= min_candidates].reset_index(drop=True)
    rows = imp.merge(req[[F.SNAPSHOT_ID, "request_time_ms", F.SEQ_ACTION_TIMES, F.SEQ_LENGTH]],
                     on=F.SNAPSHOT_ID, validate="many_to_one")
    served = rows["request_time_ms"].to_numpy(np.int64)
    last = np.array([t[0] if len(t) else -1 for t in rows[F.SEQ_ACTION_TIMES]], dtype=np.int64)
    minutes = np.where(last > 0, (served - last) / 60_000, 1e6)
    y = rows[f"label_{head}"].to_numpy()
    user = rows[F.USER_ID].to_numpy()
    length = rows[F.SEQ_LENGTH].to_numpy()
    per_user = pd.DataFrame({"user": user, "y": y, "n": length}).groupby("user").mean()
    return {"split": split, "rows": int(len(rows)),
            "gauc_minutes_since_last_action": round(metrics.gauc(minutes, y, user), 4),
            "gauc_minus_sequence_length": round(metrics.gauc(-length, y, user), 4),
            "pooled_auc_sequence_length": round(metrics.auc(length, y), 4),
            "across_users_corr_rate_vs_mean_length": round(float(np.corrcoef(per_user.y, per_user.n)[0, 1]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--split", action="append", help="train, valid, test (default: train and test)")
    parser.add_argument("--min-candidates", type=int, default=4)
    parser.add_argument("--head", default="click")
    args = parser.parse_args()
    ds = load_dataset(args.dataset)
    for split in args.split or ["train", "test"]:
        print(summarise(ds, split, args.min_candidates, args.head))


if __name__ == "__main__":
    main()
