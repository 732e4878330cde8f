"""`homefeed experiment retrain`: how fast does a ranker go stale under popularity drift, and does
the sequence model go stale faster than the model without it (the article's retraining finding)?

One point-in-time dataset (`homefeed dataset build`, every request day with its ``day`` column) is
sliced by day in memory; nothing is rebuilt through Feast. For each model two regimes:

* **frozen**: trained once on the first ``train_days`` usable days, evaluated on every later day;
* **retrained**: before evaluating day t, the newest model trained on the days [r - window, r - 1]
  of its refresh day r <= t; a fresh one is trained every ``every`` days (from the first
  evaluated day on).

Both regimes are evaluated on the same days and the same requests, so their difference on a day
is the cost of staleness on that day, free of the day's own difficulty. `retrain_schedule` is the
pure scheduling rule (tested on its own: a model never trains on the day it is evaluated on, or a
later one). Training, prediction and metrics are the project's own (`homefeed.training.train`,
`homefeed.training.data`, `homefeed.metrics` via `homefeed.training.evaluate`).

Intervals are a stratified, paired percentile bootstrap: requests are resampled with replacement
within each evaluated day (day sizes fixed), the same resampled requests for every model and
regime, so differences between models or regimes are paired.

Outputs in ``--out``: ``retrain.json`` (what ``--json`` prints), ``retrain.md``, ``retrain.csv``
(one row per model, regime, day) and ``retrain.png``. See docs/experiments.md.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from homefeed import features as F
from homefeed.errors import UserError

log = logging.getLogger(__name__)

K = 3
REGIMES = ("frozen", "retrained")
HEADS = ("repin", "click", "hide")  # per-request HIT@3 of each head
PRIMARY = "repin"  # the article measures engagement by repins
RESULT_STEM = "retrain"


# -- the schedule (pure) ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Assignment:
    """Which model scores `eval_day` in a regime: the one trained on `train_days`, built before
    the day `trained_at` (so it saw no day >= trained_at)."""

    regime: str
    eval_day: int
    train_days: tuple[int, ...]
    trained_at: int

    @property
    def age_days(self) -> int:
        """Days between the model's newest training day and the evaluated day (>= 1)."""
        return self.eval_day - max(self.train_days)

    def to_dict(self) -> dict:
        return {"regime": self.regime, "eval_day": self.eval_day, "train_days": list(self.train_days),
                "trained_at": self.trained_at, "age_days": self.age_days}


def retrain_schedule(days: Iterable[int], train_days: int, window: int, every: int) -> list[Assignment]:
    """The frozen and the retrained regime's model for every evaluated day.

    `days` are the dataset's usable days (any order, gaps allowed). The frozen model trains on the
    first `train_days` of them; every later day is evaluated. The retrained regime refreshes on
    the first evaluated day and then whenever `every` or more days have passed since the last
    refresh; a refresh on day r trains on the dataset's days in [r - window, r - 1]. With
    ``window == train_days`` the first retrained model is the frozen one (same days).
    """
    days = sorted({int(d) for d in days})
    bad = [f"{name} must be >= 1 (got {value})" for name, value in
           (("--train-days", train_days), ("--window", window), ("--every", every)) if value < 1]
    if bad:
        raise UserError("; ".join(bad))
    if len(days) <= train_days:
        raise UserError(f"the dataset has {len(days)} usable days {days}; --train-days {train_days} "
                        "leaves no day to evaluate")
    first, evaluated = tuple(days[:train_days]), days[train_days:]
    out = [Assignment("frozen", t, first, evaluated[0]) for t in evaluated]
    refresh, current = None, ()
    for t in evaluated:
        if refresh is None or t - refresh >= every:
            refresh = t
            current = tuple(d for d in days if refresh - window <= d < refresh)
            if not current:
                raise UserError(f"no dataset day in the window [{refresh - window}, {refresh - 1}] "
                                f"for the refresh on day {refresh}; use a larger --window")
        out.append(Assignment("retrained", t, current, refresh))
    for a in out:  # the invariant the whole experiment rests on
        if max(a.train_days) >= a.eval_day or a.trained_at > a.eval_day:
            raise AssertionError(f"schedule leaks: {a}")
    return out


# -- bootstrap ------------------------------------------------------------------------------------

def _stratified_boot(values: list[np.ndarray], n_boot: int, seed: int,
                     max_chunk_elems: int = 4_000_000) -> np.ndarray:
    """values[d]: [n_d, C] per-request metrics of day d (C aligned columns). Returns the daily
    means of `n_boot` replicates, [n_boot, D, C]: each replicate resamples each day's requests
    with replacement, the same rows for all columns (paired)."""
    rng = np.random.default_rng(seed)
    cols = values[0].shape[1] if values else 0
    out = np.empty((n_boot, len(values), cols))
    for d, v in enumerate(values):
        n = len(v)
        if n == 0:
            out[:, d] = np.nan
            continue
        chunk = max(1, max_chunk_elems // (n * max(cols, 1)))
        for start in range(0, n_boot, chunk):
            m = min(chunk, n_boot - start)
            out[start:start + m, d] = v[rng.integers(0, n, size=(m, n))].mean(axis=1)
    return out


def _estimate(point: float, reps: np.ndarray | None, confidence: float = 0.95) -> dict:
    if reps is None or not np.isfinite(reps).any():
        return {"value": float(point), "interval": None}
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(reps, [alpha, 1 - alpha])
    return {"value": float(point), "interval": [float(lo), float(hi)]}


def _pooled(means: np.ndarray, sizes: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """Mean over the requests of several days from daily means [..., D, C] and day sizes [D]."""
    w = sizes[list(rows)].astype(np.float64)
    return np.tensordot(means[..., list(rows), :], w, axes=([-2], [0])) / w.sum()


def _slope(means: np.ndarray, days: np.ndarray) -> np.ndarray:
    """OLS slope per day of daily means [..., D, C] against `days`."""
    x = days - days.mean()
    return np.tensordot(means, x, axes=([-2], [0])) / max(float((x ** 2).sum()), 1e-12)


# -- the experiment ---------------------------------------------------------------------------------

def _gate(ds, force: bool) -> dict | None:
    """The dataset's own `training_set` result (stored by `homefeed dataset build` for every
    split, so for every day trained on here). A failed set is refused unless `force`."""
    validation = ds.meta.get("validation")
    if validation is None:
        log.warning("%s has no stored training_set validation result (built with --no-validate?); "
                    "training without the gate", ds.path)
    elif not validation.get("success", False):
        failed = ", ".join(f"{f.get('type', '?')} [{f.get('check', '?')}]" for f in validation.get("failures", []))
        if not force:
            raise UserError(f"the dataset failed the training_set checkpoint at build time ({failed}); "
                            "use --force to run anyway")
        log.warning("the dataset failed the training_set checkpoint (%s); going on (--force)", failed)
    return validation


def run_retrain_experiment(dataset_dir: Path | str, models: Sequence[str], cfg, *, train_days: int = 3,
                           window: int = 3, every: int = 2, tail_days: int = 2, baseline: str = "none",
                           seq_len: int | None = None, model_overrides: dict | None = None,
                           n_boot: int = 1000, force: bool = False, progress: bool = True) -> dict:
    """Train and evaluate every (model, regime) of `retrain_schedule`; returns the result dict
    (see docs/experiments.md). `cfg` is a `homefeed.training.train.TrainConfig`: the same seed
    and settings for every training, and no validation split (fixed epochs)."""
    from tqdm import tqdm

    from homefeed import metrics
    from homefeed.model import DEFAULT_HEADS, ENCODER_KINDS
    from homefeed.training.data import PinTable, RankingData, dense_feature_spec
    from homefeed.training.dataset import load_dataset
    from homefeed.training.evaluate import per_request_metrics
    from homefeed.training.train import model_config_for, predict, train

    started = time.perf_counter()
    models = list(dict.fromkeys(models))
    unknown = [m for m in models if m not in ENCODER_KINDS]
    if unknown or not models:
        raise UserError(f"unknown model(s) {unknown}; choose from {', '.join(ENCODER_KINDS)}")
    if tail_days < 1:
        raise UserError("--tail-days must be >= 1")
    if n_boot < 0:
        raise UserError("--n-boot must be >= 0")
    ds = load_dataset(dataset_dir)
    validation = _gate(ds, force)
    all_days = sorted(int(d) for d in ds.requests["day"].unique())
    schedule = retrain_schedule(all_days, train_days, window, every)
    evaluated = sorted({a.eval_day for a in schedule})
    heads = tuple(DEFAULT_HEADS)
    dim = int(ds.meta["embedding_dim"])
    seq_len = seq_len or int(ds.meta["sequence_length"])
    pins = PinTable(ds.pins, dim)
    spec = dense_feature_spec(dim)

    # Which days each distinct training set must score (frozen and the first refresh may share one).
    jobs: dict[tuple[int, ...], set[int]] = {}
    for a in schedule:
        jobs.setdefault(a.train_days, set()).add(a.eval_day)
    refreshes = sorted({a.trained_at for a in schedule if a.regime == "retrained"})
    log.info("retrain experiment on %s: days %s; frozen trains on %s; evaluating %s; refreshes on %s "
             "(window %d, every %d); %d distinct training sets x %d models",
             ds.path, all_days, list(schedule[0].train_days), evaluated, refreshes, window, every,
             len(jobs), len(models))

    impressions = bool((model_overrides or {}).get("sequence_impressions", False))  # every model alike
    eval_data = {d: RankingData(*ds.days(d), pins, seq_len, heads, sequence_impressions=impressions) for d in
                 tqdm(evaluated, desc="evaluation days", unit="day", disable=not progress, leave=False)}
    per_day: dict[tuple[str, tuple[int, ...], int], dict] = {}
    trainings = []
    bar = tqdm(total=len(jobs) * len(models), desc="retrain experiment", unit="model", disable=not progress)
    for days_used, to_score in jobs.items():
        train_data = RankingData(*ds.days(*days_used), pins, seq_len, heads, neg_keep=cfg.neg_keep,
                                 seed=cfg.seed, sequence_impressions=impressions)
        used_by = sorted({a.regime for a in schedule if a.train_days == days_used})
        for enc in models:
            bar.set_postfix(model=enc, days=f"{days_used[0]}-{days_used[-1]}")
            log.info("training %s on days %s (%d examples; used by %s for days %s)", enc, list(days_used),
                     len(train_data), "+".join(used_by), sorted(to_score))
            mc = model_config_for(enc, seq_len, dim, spec["dim"], **(model_overrides or {}))
            result = train(mc, train_data, None, cfg, progress)
            trainings.append({"model": enc, "train_days": list(days_used), "used_by": used_by,
                              "scores_days": sorted(to_score), "examples": len(train_data),
                              "train_seconds": round(result.train_seconds, 2),
                              "final_train_loss": result.history[-1]["train_loss"] if result.history else None})
            for d in sorted(to_score):
                data = eval_data[d]
                scores = predict(result.model, data, cfg.eval_batch_size, cfg.device)
                per_req = per_request_metrics(scores, data.impressions, heads)
                per_day[(enc, days_used, d)] = {
                    "per_request": per_req,
                    "auc": {h: metrics.auc(scores[:, j], data.labels[:, j]) for j, h in enumerate(heads)},
                    "requests": int(data.impressions[F.REQUEST_ID].nunique()),
                }
            del result
            bar.update()
        del train_data
    bar.close()

    result = {
        "experiment": "retrain",
        "dataset": str(ds.path),
        "k": K,
        "models": models,
        "baseline": baseline if baseline in models else None,
        "primary_metric": f"hit_at_3_{PRIMARY}",
        "parameters": {"train_days": train_days, "window": window, "every": every, "tail_days": tail_days,
                       "seq_len": seq_len, "model_overrides": model_overrides or {}, "n_boot": n_boot,
                       "train_config": cfg.to_dict()},
        "days": {"dataset": all_days, "frozen_train": list(schedule[0].train_days), "evaluated": evaluated,
                 "refreshes": refreshes},
        "schedule": [a.to_dict() for a in schedule],
        "trainings": trainings,
        "validation_success": None if validation is None else bool(validation.get("success")),
    }
    result["daily"] = _daily(schedule, models, per_day, heads)
    result.update(_summarise(schedule, models, per_day, evaluated, tail_days,
                             result["baseline"], n_boot, cfg.seed))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _daily(schedule, models, per_day, heads) -> dict:
    out: dict = {}
    for enc in models:
        for a in schedule:
            got = per_day[(enc, a.train_days, a.eval_day)]
            entry = {h: {"hit_at_3": _mean(got["per_request"][h]), "auc": got["auc"][h],
                         "n_requests": int(len(got["per_request"][h]))} for h in heads}
            hr = got["per_request"]["hide_rate_top3"]
            entry["hide_rate_top3"] = {"value": _mean(hr), "n_requests": int(len(hr))}
            entry.update(requests=got["requests"], train_days=list(a.train_days), trained_at=a.trained_at,
                         age_days=a.age_days)
            out.setdefault(enc, {}).setdefault(a.regime, {})[str(a.eval_day)] = entry
    return out


def _mean(series: pd.Series) -> float | None:
    return float(series.mean()) if len(series) else None


class _DailyMeans:
    """Per-request values of the evaluated days -> daily means: the point estimate [1, D, C] and
    the stratified bootstrap replicates [n_boot, D, C] (None without a bootstrap). `estimate(fn,
    *args)` applies a statistic fn(means, sizes, *args) -> [B] to both."""

    def __init__(self, values: list[np.ndarray], n_columns: int, n_boot: int, seed: int):
        self.sizes = np.array([len(v) for v in values])
        self.point = np.stack([v.mean(axis=0) if len(v) else np.full(n_columns, np.nan) for v in values])[None]
        self.reps = _stratified_boot(values, n_boot, seed) if n_boot else None

    def estimate(self, fn, *args) -> dict:
        return _estimate(fn(self.point, self.sizes, *args)[0],
                         None if self.reps is None else fn(self.reps, self.sizes, *args))


# statistics of daily means m [B, D, C] (day sizes [D]); c, f, r, a, b are column indices
def _first(m, sizes, c):
    return m[:, 0, c]


def _tail(m, sizes, rows, c):
    return _pooled(m, sizes, rows)[:, c]


def _change(m, sizes, rows, c):
    """Pooled value of the days `rows` relative to the first evaluated day."""
    return _pooled(m, sizes, rows)[:, c] / m[:, 0, c] - 1


def _day_slope(m, sizes, days, c):
    return _slope(m, days)[:, c]


def _relative_slope(m, sizes, days, c):
    return _slope(m, days)[:, c] / m[:, 0, c]


def _gain(m, sizes, rows, r, f):
    """Column r relative to column f over the pooled days `rows` (paired: the same requests)."""
    pooled = _pooled(m, sizes, rows)
    return pooled[:, r] / pooled[:, f] - 1


def _day_ratio(m, sizes, i, a, b):
    return m[:, i, a] / m[:, i, b] - 1


def _gain_difference(m, sizes, rows, r, f, base_r, base_f):
    return _gain(m, sizes, rows, r, f) - _gain(m, sizes, rows, base_r, base_f)


def _change_difference(m, sizes, rows, c, base_c):
    return _change(m, sizes, rows, c) - _change(m, sizes, rows, base_c)


def _summarise(schedule, models, per_day, evaluated, tail_days, baseline, n_boot, seed) -> dict:
    """Decay per (model, regime), retraining gain per model, and the sequence-vs-baseline
    comparison, per head, from one stratified paired bootstrap per head."""
    by = {(a.regime, a.eval_day): a for a in schedule}
    combos = [(enc, regime) for enc in models for regime in REGIMES]
    col = {c: i for i, c in enumerate(combos)}
    days = np.array(evaluated, dtype=np.float64)
    tail = list(range(max(1, len(evaluated) - tail_days), len(evaluated)))  # never the first day
    differ = [i for i, d in enumerate(evaluated)
              if by[("frozen", d)].train_days != by[("retrained", d)].train_days]
    summary: dict = {enc: {regime: {} for regime in REGIMES} | {"retraining_gain": {}} for enc in models}
    versus: dict = {}
    for head in HEADS:
        # [n_d, C] per day: the same requests (those with a positive for the head) in every column
        values = [pd.concat([per_day[(enc, by[(regime, d)].train_days, d)]["per_request"][head]
                             for enc, regime in combos], axis=1, join="inner").to_numpy(np.float64)
                  for d in evaluated]
        dm = _DailyMeans(values, len(combos), n_boot, seed)
        for enc in models:
            for regime in REGIMES:
                c = col[(enc, regime)]
                block = {"first_day": evaluated[0], "hit_at_3_first": dm.estimate(_first, c)["value"],
                         "tail_days": [evaluated[i] for i in tail], "n_requests": int(dm.sizes.sum())}
                if tail:
                    block["hit_at_3_tail"] = dm.estimate(_tail, tail, c)["value"]
                    block["relative_change"] = dm.estimate(_change, tail, c)
                    block["slope_per_day"] = dm.estimate(_day_slope, days, c)
                    block["relative_slope_per_day"] = dm.estimate(_relative_slope, days, c)
                summary[enc][regime][head] = block
            f, r = col[(enc, "frozen")], col[(enc, "retrained")]
            gain = {"days": [evaluated[i] for i in differ], "n_requests": int(dm.sizes[differ].sum())}
            if differ:
                gain["lift"] = dm.estimate(_gain, differ, r, f)
                gain["by_day"] = {str(evaluated[i]): dm.estimate(_day_ratio, i, r, f) for i in differ}
            summary[enc]["retraining_gain"][head] = gain
        if baseline is None:
            continue
        bf, br = col[(baseline, "frozen")], col[(baseline, "retrained")]
        for enc in models:
            if enc == baseline:
                continue
            f, r = col[(enc, "frozen")], col[(enc, "retrained")]
            entry: dict = {"lift_by_day": {
                regime: {str(d): dm.estimate(_day_ratio, i, col[(enc, regime)], col[(baseline, regime)])
                         for i, d in enumerate(evaluated)} for regime in REGIMES}}
            if differ:
                entry["gain_difference"] = dm.estimate(_gain_difference, differ, r, f, br, bf)
            if tail:
                entry["frozen_decay_difference"] = dm.estimate(_change_difference, tail, f, bf)
            versus.setdefault(enc, {})[head] = entry
    return {"summary": summary, "vs_baseline": versus, "finding": _finding(versus, baseline)}


def _finding(versus: dict, baseline: str | None) -> dict:
    """The article: retraining benefits the sequence model much more than the model without it.
    Here: the repin retraining gain of each sequence model minus the baseline's, with its interval."""
    claim = ("without retraining the sequence model decays faster: retraining benefits it more than "
             "the model without the sequence")
    if baseline is None or not versus:
        return {"claim": claim, "verdict": "not tested",
                "evidence": "needs the no-sequence model and at least one sequence model (--models ...,none)"}
    verdicts, lines = {}, []
    for enc, heads in versus.items():
        diff = heads[PRIMARY].get("gain_difference")
        if diff is None or diff["interval"] is None:
            verdicts[enc] = "inconclusive"
            lines.append(f"{enc}: no day where the frozen and retrained models differ, or no bootstrap")
            continue
        lo, hi = diff["interval"]
        verdicts[enc] = "reproduced" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
        lines.append(f"{enc}: repin HIT@3 retraining gain minus {baseline}'s = {100 * diff['value']:+.2f} "
                     f"points of relative lift, 95% interval [{100 * lo:+.2f}, {100 * hi:+.2f}]")
    overall = next(iter(verdicts.values())) if len(set(verdicts.values())) == 1 else "mixed"
    return {"claim": claim, "verdict": overall, "by_model": verdicts, "evidence": "; ".join(lines)}


# -- outputs ----------------------------------------------------------------------------------------

def daily_rows(result: dict) -> pd.DataFrame:
    """Long format, one row per (model, regime, day)."""
    rows = []
    for enc, regimes in result["daily"].items():
        for regime, by_day in regimes.items():
            for day, e in by_day.items():
                rows.append({"model": enc, "regime": regime, "day": int(day), "requests": e["requests"],
                             "train_days": " ".join(map(str, e["train_days"])), "trained_at": e["trained_at"],
                             "age_days": e["age_days"],
                             **{f"hit_at_3_{h}": e[h]["hit_at_3"] for h in HEADS},
                             **{f"n_requests_{h}": e[h]["n_requests"] for h in HEADS},
                             **{f"auc_{h}": e[h]["auc"] for h in HEADS},
                             "hide_rate_top3": e["hide_rate_top3"]["value"]})
    return pd.DataFrame(rows)


def _num(x, fmt: str = "{:.4f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else fmt.format(x)


def _pct(e: dict | None) -> str:
    if not e or e.get("value") is None or not np.isfinite(e["value"]):
        return "n/a"
    text = f"{100 * e['value']:+.2f}%"
    if e.get("interval"):
        lo, hi = e["interval"]
        text += f" [{100 * lo:+.2f}%, {100 * hi:+.2f}%]"
    return text


def retrain_markdown(result: dict) -> str:
    p, days = result["parameters"], result["days"]
    models = result["models"]
    lines = [
        f"Retraining experiment on `{result['dataset']}`: frozen models trained on days "
        f"{days['frozen_train']}; retrained models on the {p['window']} days before each refresh "
        f"(refreshes on days {days['refreshes']}, every {p['every']} days). Evaluated on days "
        f"{days['evaluated']}; {p['train_config']['epochs']} epoch(s), seed {p['train_config']['seed']}.",
        "",
        f"Repin HIT@{result['k']} per day (model age in days in brackets):",
        "",
        "| day | " + " | ".join(f"`{m}` {r}" for m in models for r in REGIMES) + " | requests |",
        "|---|" + "---|" * (len(models) * len(REGIMES) + 1),
    ]
    for d in days["evaluated"]:
        cells = []
        for m in models:
            for r in REGIMES:
                e = result["daily"][m][r][str(d)]
                cells.append(f"{_num(e[PRIMARY]['hit_at_3'])} ({e['age_days']})")
        req = result["daily"][models[0]]["frozen"][str(d)]["requests"]
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {req:,} |")

    lines += ["", f"Decay of repin HIT@{result['k']} (tail = days {_first_block(result)['tail_days']} pooled, "
              "relative to the first evaluated day; 95% bootstrap intervals over requests):", "",
              "| model | regime | first day | tail | tail vs first | slope / day (relative) |",
              "|---|---|---|---|---|---|"]
    for m in models:
        for r in REGIMES:
            b = result["summary"][m][r][PRIMARY]
            lines.append(f"| `{m}` | {r} | {_num(b['hit_at_3_first'])} | {_num(b.get('hit_at_3_tail'))} | "
                         f"{_pct(b.get('relative_change'))} | {_pct(b.get('relative_slope_per_day'))} |")

    lines += ["", "Retraining gain: retrained vs frozen on the days their models differ "
              "(same requests, relative lift):", "",
              "| model | days | repin | click | hide head |", "|---|---|---|---|---|"]
    for m in models:
        g = result["summary"][m]["retraining_gain"]
        lines.append(f"| `{m}` | {g[PRIMARY]['days']} | " + " | ".join(_pct(g[h].get("lift")) for h in HEADS) + " |")

    if result["vs_baseline"]:
        base = result["baseline"]
        lines += ["", f"Against `{base}` (difference of relative changes; positive gain difference = "
                  "retraining helps the sequence model more):", "",
                  "| model | repin gain difference | frozen decay difference |", "|---|---|---|"]
        for m, heads in result["vs_baseline"].items():
            lines.append(f"| `{m}` | {_pct(heads[PRIMARY].get('gain_difference'))} | "
                         f"{_pct(heads[PRIMARY].get('frozen_decay_difference'))} |")
        lines += ["", f"Repin HIT@{result['k']} lift over `{base}` per day:", "",
                  "| model | regime | " + " | ".join(str(d) for d in days["evaluated"]) + " |",
                  "|---|---|" + "---|" * len(days["evaluated"])]
        for m, heads in result["vs_baseline"].items():
            for r in REGIMES:
                by_day = heads[PRIMARY]["lift_by_day"][r]
                lines.append(f"| `{m}` | {r} | " + " | ".join(_pct({"value": by_day[str(d)]["value"]})
                                                               for d in days["evaluated"]) + " |")
    f = result["finding"]
    lines += ["", f"**Finding** ({f['claim']}): **{f['verdict']}**. {f['evidence']}."]
    return "\n".join(lines) + "\n"


def _first_block(result: dict) -> dict:
    m = result["models"][0]
    return result["summary"][m]["frozen"][PRIMARY]


def plot_retrain(result: dict, path: Path) -> None:
    """Left: repin HIT@3 per day, one line per model x regime (dashed = frozen), refreshes
    marked; right: the retraining gain per day (retrained vs frozen) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    evaluated = result["days"]["evaluated"]
    for i, m in enumerate(result["models"]):
        for r, style in zip(REGIMES, ("--", "-")):
            ys = [result["daily"][m][r][str(d)][PRIMARY]["hit_at_3"] for d in evaluated]
            ys = [np.nan if y is None else y for y in ys]
            left.plot(evaluated, ys, style, marker="o", color=f"C{i}", label=f"{m} {r}")
        by_day = result["summary"][m]["retraining_gain"][PRIMARY].get("by_day", {})
        if by_day:
            xs = [int(d) for d in by_day]
            vals = [100 * by_day[d]["value"] for d in by_day]
            ivs = [by_day[d]["interval"] for d in by_day]
            if all(iv is not None for iv in ivs):
                err = [[v - 100 * iv[0] for v, iv in zip(vals, ivs)], [100 * iv[1] - v for v, iv in zip(vals, ivs)]]
            else:
                err = None
            offset = (i - (len(result["models"]) - 1) / 2) * 0.12
            right.errorbar(np.array(xs) + offset, vals, yerr=err, fmt="o", capsize=3, color=f"C{i}", label=m)
    for r in result["days"]["refreshes"]:
        left.axvline(r - 0.5, color="grey", lw=0.6, ls=":")
    left.set(xlabel="day", ylabel=f"repin HIT@{result['k']}", title="repin HIT@3 per day (dotted: refresh)")
    left.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xticks(evaluated)
        ax.set_xlim(min(evaluated[0], *result["days"]["refreshes"]) - 0.7, evaluated[-1] + 0.5)
    right.axhline(0, color="black", lw=0.7)
    right.set(xlabel="day", ylabel="% retrained vs frozen", title="retraining gain per day (95% CI)")
    if right.has_data():
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_retrain(result: dict, out_dir: Path | str) -> dict[str, Path]:
    from homefeed.jsonable import jsonable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{RESULT_STEM}.{ext}" for ext in ("json", "md", "csv", "png")}
    paths["json"].write_text(json.dumps(jsonable(result), indent=2) + "\n")
    paths["md"].write_text(retrain_markdown(result))
    daily_rows(result).to_csv(paths["csv"], index=False)
    plot_retrain(result, paths["png"])
    return paths


# -- CLI --------------------------------------------------------------------------------------------

def cmd_retrain(args) -> int:
    from homefeed.training.cli import parse_models, parse_overrides, print_result, train_config

    result = run_retrain_experiment(args.dataset, parse_models(args.models), train_config(args),
                                    train_days=args.train_days, window=args.window or args.train_days,
                                    every=args.every, tail_days=args.tail_days, baseline=args.baseline,
                                    seq_len=args.seq_len, model_overrides=parse_overrides(args.set),
                                    n_boot=args.n_boot, force=args.force, progress=not args.quiet)
    paths = write_retrain(result, args.out)
    log.info("written: %s", ", ".join(str(p) for p in paths.values()))
    print_result(result, paths, args.json)
    return 0


def register(parser) -> None:
    from homefeed.training.cli import add_training_arguments

    sub = parser.add_subparsers(dest="command", metavar="EXPERIMENT", required=True)
    p = sub.add_parser("retrain", help="HIT@3 per day of frozen vs periodically retrained models "
                                       "(popularity drift), with and without the sequence")
    p.add_argument("--dataset", required=True, type=Path, help="directory from `homefeed dataset build`")
    p.add_argument("--models", default="transact_v11,none", help="comma-separated encoders or 'all'")
    p.add_argument("--baseline", default="none", help="the no-sequence model (default: none)")
    p.add_argument("--train-days", type=int, default=3, help="frozen model: the first K usable days (default 3)")
    p.add_argument("--window", type=int, default=0,
                   help="retrained models: the W days before each refresh (default: --train-days)")
    p.add_argument("--every", type=int, default=2, help="refresh the retrained model every E days (default 2)")
    p.add_argument("--tail-days", type=int, default=2, help="last evaluated days pooled for the decay (default 2)")
    add_training_arguments(p, epochs=2)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--out", type=Path, default=Path("runs/retrain"), help="where retrain.{json,md,csv,png} go")
    p.add_argument("--force", action="store_true", help="run even if the dataset failed validation")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of markdown")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_retrain)
