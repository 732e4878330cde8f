"""Offline evaluation on the test split: HIT@3 per head per request, AUC, user-level GAUC, hides in
the repin-ranked top 3, topic diversity, relative lifts with paired bootstrap intervals, by core /
non-core user and by the world's user segment (e.g. KuaiRand's activity degree).

Definitions are in docs/evaluation.md (and homefeed.metrics). In short, for each request of the
test days and each head: rank its candidates by that head's score; HIT@3 = positives in the top 3
/ min(positives, 3), averaged over requests with at least one positive. A lift is
mean(model) / mean(no-sequence model) - 1 over the same requests; its interval resamples requests.

A metric the test split cannot measure is None in the result, never NaN, and its lifts are
skipped: HIT@3 without a request holding a positive, AUC without both classes, GAUC without a user
holding both, the hide rate without a hide. `result["not_measurable"]` says which heads and why
(e.g. an explicit-feedback log has no clicks); the reports print "not measurable".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from homefeed import features as F
from homefeed import metrics
from homefeed.errors import UserError
from homefeed.jsonable import jsonable
from homefeed.model import DEFAULT_HEADS
from homefeed.training.dataset import load_dataset
from homefeed.training.train import PREDICTIONS_FILE, RUN_FILE

log = logging.getLogger(__name__)

K = 3
SEGMENTS = ("core", "non_core")
# display order of the comparison (models present in the runs directory only)
MODEL_ORDER = ("none", "avg_pool", "cnn", "rnn", "lstm", "transformer", "din", "transact_v10", "transact_v11",
               "logreg")


def find_runs(runs_dir: Path | str) -> dict[str, Path]:
    runs_dir = Path(runs_dir)
    found = {p.parent.name: p.parent for p in runs_dir.glob(f"*/{RUN_FILE}")
             if (p.parent / PREDICTIONS_FILE).is_file()}
    if not found:
        raise UserError(f"no trained models under {runs_dir} (expected */{RUN_FILE}); run `homefeed train`")
    order = {n: i for i, n in enumerate(MODEL_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def test_frame(dataset_dir: Path | str) -> tuple[pd.DataFrame, dict]:
    """Test impressions with labels, pin topic and the user's segment."""
    ds = load_dataset(dataset_dir)
    req, imp = ds.split("test")
    frame = imp.merge(req[[F.SNAPSHOT_ID, "is_core", "segment"]], on=F.SNAPSHOT_ID, how="left",
                      validate="many_to_one")
    return frame, ds.meta


def _value(x) -> float | None:
    """A metric's value, None when it cannot be measured (NaN: no request, user or class)."""
    return float(x) if x is not None and np.isfinite(x) else None


def _mean(series: pd.Series) -> float | None:
    return _value(series.mean()) if len(series) else None


def not_measurable(frame: pd.DataFrame, heads: tuple[str, ...]) -> dict[str, dict]:
    """{head: {"metrics": [...], "reason": ...}} for the heads whose test labels lack a class."""
    out = {}
    for h in heads:
        positives = int((frame[f"label_{h}"].to_numpy() > 0.5).sum())
        if positives == 0:
            out[h] = {"metrics": ["hit_at_3", "auc", "gauc"] + (["hide_rate_top3"] if h == "hide" else []),
                      "reason": f"no positive label_{h} in the test split"}
        elif positives == len(frame):
            out[h] = {"metrics": ["auc", "gauc"], "reason": f"no negative label_{h} in the test split"}
    return out


def per_request_metrics(scores: np.ndarray, frame: pd.DataFrame, heads: tuple[str, ...]) -> dict[str, pd.Series]:
    """HIT@3 per request per head, hides in the repin top 3 per request, and `gauc_{head}`: per
    user AUC * rows / mean rows, a series whose mean is the GAUC (so its lift bootstraps users)."""
    groups = frame[F.REQUEST_ID].to_numpy()
    out = {h: metrics.hit_at_k_per_request(scores[:, j], frame[f"label_{h}"], groups, K)
           for j, h in enumerate(heads)}
    users = frame[F.USER_ID].to_numpy()
    for j, h in enumerate(heads):
        per_user = metrics.auc_per_group(scores[:, j], frame[f"label_{h}"], users)
        out[f"gauc_{h}"] = per_user["auc"] * per_user["n"] / (per_user["n"].mean() if len(per_user) else 1.0)
    repin = scores[:, heads.index("repin")]
    out["hide_rate_top3"] = metrics.hide_rate_in_top_k_per_request(repin, frame["label_hide"], groups, K)
    return out


def _block(scores, frame, heads, per_req, base_req, n_boot, seed) -> dict:
    block: dict = {}
    for j, h in enumerate(heads):
        entry = {"hit_at_3": _mean(per_req[h]), "auc": _value(metrics.auc(scores[:, j], frame[f"label_{h}"])),
                 "n_requests": int(len(per_req[h]))}
        g = per_req[f"gauc_{h}"]
        gauc = {"gauc": _mean(g), "gauc_users": int(len(g))}
        if len(g):
            gauc |= {f"gauc_{k}": v for k, v in _lift(g, base_req, f"gauc_{h}", n_boot, seed).items()}
        block[h] = entry | _lift(per_req[h], base_req, h, n_boot, seed) | gauc
    hr = per_req["hide_rate_top3"]
    block["hide_rate_top3"] = {"value": _mean(hr), "n_requests": int(len(hr))} | _lift(
        hr, base_req, "hide_rate_top3", n_boot, seed)
    block["topic_diversity_top3"] = _value(metrics.topic_diversity_at_k(
        scores[:, heads.index("repin")], frame[F.PIN_TOPIC], frame[F.REQUEST_ID], K))
    return block


def _lift(series: pd.Series, base: dict | None, key: str, n_boot: int, seed: int) -> dict:
    # None: the baseline itself, or no request to compare (a segment or a head without positives)
    if base is None or series.index.intersection(base[key].index).empty:
        return {"lift_vs_no_sequence": None, "interval": None}
    ci = metrics.bootstrap_lift_ci(series, base[key], n_boot=n_boot, seed=seed)
    return {"lift_vs_no_sequence": ci.lift, "interval": [ci.low, ci.high]}


def evaluate_runs(runs_dir: Path | str, dataset_dir: Path | str | None = None, baseline: str = "none",
                  primary: str = "transact_v11", n_boot: int = 1000, seed: int = 0,
                  min_candidates: int = 1) -> dict:
    """`min_candidates`: score only test requests with at least this many candidates (a request
    with <= 3 has HIT@3 = 1 for every model, so it can only dilute a lift)."""
    if min_candidates < 1:
        raise UserError(f"--min-candidates must be >= 1, got {min_candidates}")
    runs = find_runs(runs_dir)
    first_run = json.loads((next(iter(runs.values())) / RUN_FILE).read_text())
    frame, meta = test_frame(dataset_dir or first_run["dataset"])
    all_requests = int(frame[F.REQUEST_ID].nunique())
    if min_candidates > 1:
        size = frame.groupby(F.REQUEST_ID)[F.PIN_ID].transform("size").to_numpy()
        frame = frame[size >= min_candidates].reset_index(drop=True)
        if frame.empty:
            raise UserError(f"no test request has {min_candidates} or more candidates")
    heads = tuple(DEFAULT_HEADS)
    key = [F.REQUEST_ID, F.PIN_ID]

    scores, runs_meta = {}, {}
    for name, run_dir in runs.items():
        pred = frame[key].merge(pd.read_parquet(run_dir / PREDICTIONS_FILE), on=key, how="left")
        if pred[f"score_{heads[0]}"].isna().any():
            raise UserError(f"{run_dir} has no predictions for some test rows of this dataset; "
                            "re-train on it (predictions are written at training time)")
        scores[name] = pred[[f"score_{h}" for h in heads]].to_numpy(np.float64)
        runs_meta[name] = json.loads((run_dir / RUN_FILE).read_text())

    segments = {"all": np.ones(len(frame), bool), "core": frame["is_core"].to_numpy(bool),
                "non_core": ~frame["is_core"].to_numpy(bool)}
    per_req = {name: {seg: per_request_metrics(s[mask], frame[mask], heads) for seg, mask in segments.items()}
               for name, s in scores.items()}
    has_base = baseline in scores

    models = {}
    for name, s in scores.items():
        base = per_req[baseline] if has_base and name != baseline else None
        entry = _block(s, frame, heads, per_req[name]["all"], base and base["all"], n_boot, seed)
        entry["segments"] = {seg: _block(s[segments[seg]], frame[segments[seg]], heads, per_req[name][seg],
                                         base and base[seg], n_boot, seed) for seg in SEGMENTS}
        entry["parameters"] = runs_meta[name].get("parameters")
        entry["examples_per_s"] = runs_meta[name].get("examples_per_s")
        models[name] = entry

    # HIT@3 by the world's own segment column (KuaiRand: the activity degree).
    by_segment = {}
    seg_col = frame["segment"].fillna("unknown").astype(str).to_numpy()
    for value in sorted(set(seg_col.tolist())):
        mask = seg_col == value
        per = {name: per_request_metrics(s[mask], frame[mask], heads) for name, s in scores.items()}
        entry = {"requests": int(frame.loc[mask, F.REQUEST_ID].nunique()), "models": {}}
        for name in scores:
            base = per[baseline] if has_base and name != baseline else None
            entry["models"][name] = {
                h: {"hit_at_3": _mean(per[name][h]), "n_requests": int(len(per[name][h]))}
                | _lift(per[name][h], base, h, n_boot, seed)
                for h in ("repin", "click")}
        by_segment[value] = entry

    primary_vs = {}
    if primary in scores:
        for other in scores:
            if other == primary:
                continue
            primary_vs[other] = {}
            for m in ("repin", "click", "hide", "hide_rate_top3", "gauc_click"):
                a, b = per_req[primary]["all"][m], per_req[other]["all"][m]
                if a.index.intersection(b.index).empty:
                    continue  # not measurable on this test split: no lift
                ci = metrics.bootstrap_lift_ci(a, b, n_boot=n_boot, seed=seed)
                primary_vs[other][m] = {"lift": ci.lift, "interval": [ci.low, ci.high]}

    return {
        "k": K,
        "baseline": baseline if has_base else None,
        "primary": primary if primary in scores else None,
        "n_boot": n_boot,
        "confidence": 0.95,
        "dataset": str(dataset_dir or first_run["dataset"]),
        "test_days": meta["splits"]["test"],
        "requests": {seg: int(frame.loc[mask, F.REQUEST_ID].nunique()) for seg, mask in segments.items()},
        "min_candidates": int(min_candidates),
        "requests_before_min_candidates": all_requests,
        "not_measurable": not_measurable(frame, heads),
        "models": models,
        "by_segment": by_segment,
        "primary_vs": primary_vs,
    }


def write_comparison(result: dict, out_dir: Path | str) -> dict[str, Path]:
    """comparison.md / .csv / .png / .json in out_dir."""
    from homefeed.training.report import comparison_markdown, comparison_rows, plot_comparison

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"comparison.{ext}" for ext in ("md", "csv", "png", "json")}
    paths["md"].write_text(comparison_markdown(result))
    comparison_rows(result).to_csv(paths["csv"], index=False)
    if result["baseline"] and len(result["models"]) > 1:
        plot_comparison(result, paths["png"])
    else:
        paths.pop("png")
    paths["json"].write_text(json.dumps(jsonable(result), indent=2) + "\n")
    return paths
