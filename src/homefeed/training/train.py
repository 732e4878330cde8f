"""The training loop: AdamW on the weighted multi-head BCE, validation, early stopping.

    result = train(model_config, train_data, valid_data, TrainConfig(epochs=3))
    result.model, result.history, result.examples_per_s

1. Each epoch shuffles the training rows (at most `max_steps_per_epoch` batches of them). The loss
   is the weighted multi-head BCE, plus `pair_weight` x the within-user pairwise ranking term
   (homefeed.model.loss) when that is > 0; batches then hold each user's rows together.
2. Validation runs at the end of each epoch, or every `eval_every` optimizer steps when set
   (so a recipe of short epochs still notices when validation stops improving).
3. Early stopping (`patience` > 0): the score is the recipe's `early_stop` head and
   `early_stop_metric` (hit3, auc or gauc: per-user AUC weighted by the user's rows) on the
   validation split; after `patience` validations without a new best the run stops and the best
   validation's weights are restored. `epochs` is then a cap, not the budget.

`run_training` is what `homefeed train` calls: it gates on the `training_set` checkpoint, trains
one or several encoders on the same data, and writes one run directory per model::

    <out>/<encoder>/model.safetensors   weights (state_dict, incl. dense standardisation)
    <out>/<encoder>/config.json         ModelConfig.to_dict()
    <out>/<encoder>/run.json            train config, history, validation metrics, throughput,
                                        dense-feature spec, schema fingerprint, GX result
    <out>/<encoder>/curves.png          training loss and validation HIT@3 per epoch
    <out>/<encoder>/predictions.parquet test-split scores (what `homefeed evaluate` reads)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from homefeed import features as F
from homefeed import metrics
from homefeed.errors import UserError
from homefeed.model import (
    ENCODER_KINDS,
    ModelConfig,
    Ranker,
    WeightedMultiHeadBCE,
    build_model,
    count_parameters,
    default_label_weight_matrix,
    within_group_pairwise,
)
from homefeed.model.store import CONFIG_FILE, RUN_FILE, WEIGHTS_FILE  # noqa: F401  (the run's files)
from homefeed.training.data import PinTable, RankingData, dense_feature_spec
from homefeed.training.dataset import Dataset, load_dataset, training_frame
from homefeed.training.recipe import PER_MODEL_TRAIN_KEYS

log = logging.getLogger(__name__)
CURVES_FILE = "curves.png"
PREDICTIONS_FILE = "predictions.parquet"


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    neg_keep: float = 1.0  # share of no-action impressions kept in training (reweighted)
    hide_weight: float = 5.0  # label-weight matrix: a hide as a negative for repin/click
    pair_weight: float = 0.0  # weight of the within-user pairwise ranking term; 0 = pointwise only
    patience: int = 0  # early stopping after this many validations without a new best; 0 = off
    early_stop: str = "repin"  # the head whose validation metric is monitored
    early_stop_metric: str = "hit3"  # hit3 | auc | gauc (see EARLY_STOP_METRICS)
    eval_every: int = 0  # validate every N optimizer steps; 0 = at the end of each epoch
    max_steps_per_epoch: int = 0  # 0 = the whole training split
    eval_batch_size: int = 2048
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = torch's default

    def __post_init__(self) -> None:
        if self.early_stop_metric not in EARLY_STOP_METRICS:
            raise UserError(f"early_stop_metric must be one of {', '.join(EARLY_STOP_METRICS)}, "
                            f"got {self.early_stop_metric!r}")
        if self.patience < 0 or self.eval_every < 0 or self.pair_weight < 0:
            raise UserError("patience, eval_every and pair_weight must be >= 0")

    @property
    def monitor(self) -> str:
        """The validation key early stopping watches, e.g. `gauc_click`."""
        return EARLY_STOP_METRICS[self.early_stop_metric].format(head=self.early_stop)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# early_stop_metric -> the key of the validation metrics (metrics.evaluate_heads)
EARLY_STOP_METRICS = {"hit3": "hit@3_{head}", "auc": "auc_{head}", "gauc": "gauc_{head}"}


@dataclass
class TrainResult:
    model: Ranker
    model_config: ModelConfig
    train_config: TrainConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_step: int = 0  # optimizer steps done when the kept weights were taken
    evals: list[dict] = field(default_factory=list)  # every validation: epoch, step, score, metrics
    valid_metrics: dict = field(default_factory=dict)
    examples_per_s: float = 0.0
    train_seconds: float = 0.0
    examples_seen: int = 0


def set_seed(seed: int) -> None:
    """Same seed, same data order, init, dropout and time-window masks (on one device/thread count)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: Ranker, data: RankingData, batch_size: int = 2048, device: str = "cpu",
            progress: bool = False) -> np.ndarray:
    """Probabilities [N, H] for every row of `data`, in row order."""
    model.eval()
    out = []
    for batch in tqdm(data.loader(batch_size, shuffle=False), desc="predict", leave=False,
                      disable=not progress):
        out.append(torch.sigmoid(model(batch.to(device))).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.heads)), np.float32)


def evaluate_data(model: Ranker, data: RankingData, batch_size: int = 2048, device: str = "cpu") -> dict:
    """Validation metrics: HIT@3, AUC and user-level GAUC per head (homefeed.metrics)."""
    scores = predict(model, data, batch_size, device)
    return metrics.evaluate_heads(scores, data.labels, data.request_ids, list(model.heads),
                                  users=data.user_ids)


@dataclass
class _BestSoFar:
    """Early-stopping bookkeeping: the best score, its weights, and validations since."""

    patience: int
    score: float = -math.inf
    state: dict | None = None
    bad: int = 0
    entry: dict = field(default_factory=dict)

    def update(self, score: float, model: Ranker, entry: dict) -> bool:
        """Record one validation; True when the run should stop."""
        if score > self.score:
            self.score, self.entry, self.bad = score, entry, 0
            if self.patience:
                self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad += 1
        return bool(self.patience) and self.bad >= self.patience


def train(model_config: ModelConfig, train_data: RankingData, valid_data: RankingData | None,
          cfg: TrainConfig, progress: bool = True) -> TrainResult:
    if cfg.early_stop not in model_config.heads:
        raise UserError(f"early_stop head {cfg.early_stop!r} is not one of the model's heads {model_config.heads}")
    set_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    model = build_model(model_config)
    model.set_dense_stats(*train_data.dense_stats())  # saved with the weights, used by serving
    model.to(device)
    loss_fn = WeightedMultiHeadBCE(model_config.heads,
                                   default_label_weight_matrix(model_config.heads, cfg.hide_weight)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = TrainResult(model, model_config, cfg)
    best = _BestSoFar(cfg.patience)
    has_valid = valid_data is not None and len(valid_data) > 0
    log.info("training %s (%s parameters) on %d examples", model_config.encoder,
             f"{count_parameters(model):,}", len(train_data))

    def validate(epoch: int, step: int, fallback: float) -> bool:
        """Score the model on validation (or -training loss without one); True = stop."""
        entry: dict = {"epoch": epoch, "step": step}
        score = fallback
        if has_valid:
            entry["valid"] = evaluate_data(model, valid_data, cfg.eval_batch_size, cfg.device)
            value = entry["valid"].get(cfg.monitor, float("nan"))  # evaluate_heads: NaN, never None
            score = float(value) if np.isfinite(value) else fallback
            model.train()
        entry["score"] = score
        result.evals.append(entry)
        return best.update(score, model, entry)

    global_step, stop = 0, False
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        loader = train_data.loader(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch,
                                   by_user=cfg.pair_weight > 0)
        steps = min(len(loader), cfg.max_steps_per_epoch or len(loader))
        losses, seen, started, evals_before = [], 0, time.perf_counter(), len(result.evals)
        eval_seconds = 0.0
        bar = tqdm(loader, total=steps, desc=f"{model_config.encoder} epoch {epoch}", unit="batch",
                   disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            if step >= steps:
                break
            batch = batch.to(device)
            logits = model(batch)
            out = loss_fn(logits, batch.labels, batch.weights)
            loss = out.total
            if cfg.pair_weight:
                loss = loss + cfg.pair_weight * within_group_pairwise(logits, batch.labels, batch.groups).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            seen += batch.batch_size
            global_step += 1
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if cfg.eval_every and has_valid and global_step % cfg.eval_every == 0:
                t0 = time.perf_counter()
                stop = validate(epoch, global_step, -float(np.mean(losses[-cfg.eval_every:])))
                eval_seconds += time.perf_counter() - t0
                if stop:
                    break
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started - eval_seconds
        result.train_seconds += seconds
        result.examples_seen += seen
        entry: dict[str, Any] = {
            "epoch": epoch, "train_loss": float(np.mean(losses)), "examples": seen,
            "seconds": round(seconds, 2), "examples_per_s": round(seen / max(seconds, 1e-9), 1),
            "step_losses": [round(x, 5) for x in losses]}
        if not (cfg.eval_every and has_valid):
            stop = validate(epoch, global_step, -entry["train_loss"])
        if len(result.evals) > evals_before and "valid" in result.evals[-1]:
            entry["valid"] = result.evals[-1]["valid"]  # the epoch's last validation
        result.history.append(entry)
        log.info("%s epoch %d: loss %.4f, %.0f ex/s%s", model_config.encoder, epoch, entry["train_loss"],
                 entry["examples_per_s"], "".join(f", {k} {v:.4f}" for k, v in entry.get("valid", {}).items()
                                                  if k.startswith("hit@") or k == cfg.monitor))
        if stop:
            if epoch < cfg.epochs or len(losses) < steps:
                log.info("early stop at step %d (best: step %d, %s %.4f)", global_step,
                         best.entry.get("step", 0), cfg.monitor, best.score)
            break
    if best.state is not None:  # early stopping keeps the best validation's weights
        model.load_state_dict(best.state)
        result.best_epoch, result.best_step = best.entry["epoch"], best.entry["step"]
        result.valid_metrics = best.entry.get("valid", {})
    else:  # no early stopping: the last weights, validated where the last validation was earlier
        if has_valid and result.evals and result.evals[-1]["step"] != global_step:
            validate(len(result.history), global_step, -result.history[-1]["train_loss"])
        result.best_epoch, result.best_step = len(result.history), global_step
        result.valid_metrics = result.evals[-1].get("valid", {}) if result.evals else {}
    model.eval()
    result.examples_per_s = result.examples_seen / max(result.train_seconds, 1e-9)
    return result


# -- homefeed train ------------------------------------------------------------------------------

MODEL_CHOICES = ENCODER_KINDS


def model_config_for(encoder: str, seq_len: int, emb_dim: int, dense_dim: int, **overrides) -> ModelConfig:
    """The comparison's configs: reference defaults everywhere; TransAct v1.0's flattened L*d
    output makes a full-rank DCN cross layer huge (~93M weights), so it gets a rank-64 one."""
    extra: dict[str, Any] = {"dcn_rank": 64} if encoder == "transact_v10" else {}
    extra.update(overrides)
    return ModelConfig(encoder=encoder, seq_len=seq_len, emb_dim=emb_dim, dense_dim=dense_dim, **extra)


def configs_for(encoder: str, seq_len: int, emb_dim: int, dense_dim: int, cfg: TrainConfig,
                model_overrides: dict | None = None, per_model: dict[str, dict] | None = None,
                ) -> tuple[ModelConfig, TrainConfig]:
    """One model's (ModelConfig, TrainConfig): built-in sizes < `model_overrides` (every model)
    < `per_model[encoder]` ({"model": ModelConfig fields, "train": PER_MODEL_TRAIN_KEYS})."""
    own = (per_model or {}).get(encoder, {})
    unknown = sorted(set(own.get("train", {})) - set(PER_MODEL_TRAIN_KEYS))
    if unknown:
        raise UserError(f"per-model training keys are {', '.join(PER_MODEL_TRAIN_KEYS)}; got {unknown}")
    mc = model_config_for(encoder, seq_len, emb_dim, dense_dim, **{**(model_overrides or {}), **own.get("model", {})})
    return mc, dataclasses.replace(cfg, **own.get("train", {}))


def validate_training_set(ds: Dataset, force: bool, settings=None) -> dict:
    """The gate: run the `training_set` checkpoint on the rows we train on (train + valid).
    Refuses a failing set unless `force`; the result goes into every run's run.json."""
    from homefeed.validation import run_checkpoint

    report = run_checkpoint("training_set", training_frame(ds, ("train", "valid")), settings=settings)
    log.info("%s", report.to_text())
    if not report.success and not force:
        raise UserError("the training set failed validation (use --force to train anyway):\n"
                        + report.to_text())
    return report.to_dict()


def run_training(dataset_dir: Path | str, encoders: list[str], out_dir: Path | str, cfg: TrainConfig,
                 *, seq_len: int | None = None, force: bool = False, settings=None,
                 model_overrides: dict | None = None, per_model: dict[str, dict] | None = None,
                 suffix: str = "", progress: bool = True) -> dict:
    """Train each encoder on the same data. `model_overrides`: ModelConfig fields for every
    model; `per_model[encoder]`: {"model": ModelConfig fields, "train": TrainConfig fields
    (PER_MODEL_TRAIN_KEYS)} for that model only, on top (a recipe's `[model.NAME]` tables)."""
    ds = load_dataset(dataset_dir)
    for enc in encoders:
        if enc not in ENCODER_KINDS:
            raise UserError(f"unknown model {enc!r}; choose from {', '.join(ENCODER_KINDS)} or 'all'")
    validation = validate_training_set(ds, force, settings)
    dim = int(ds.meta["embedding_dim"])
    seq_len = seq_len or int(ds.meta["sequence_length"])
    heads = ModelConfig().heads
    pins = PinTable(ds.pins, dim)
    splits: dict[bool, dict[str, RankingData]] = {}  # by sequence_impressions, built when first needed

    def data_for(impressions: bool) -> dict[str, RankingData]:
        if impressions not in splits:
            splits[impressions] = {s: RankingData(*ds.split(s), pins, seq_len, heads,
                                                  neg_keep=cfg.neg_keep if s == "train" else 1.0,
                                                  seed=cfg.seed, sequence_impressions=impressions)
                                   for s in ("train", "valid", "test")}
        return splits[impressions]

    spec = dense_feature_spec(dim)
    out_dir = Path(out_dir)
    summary_file = out_dir / "train_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    for enc in encoders:
        mc, enc_cfg = configs_for(enc, seq_len, dim, spec["dim"], cfg, model_overrides, per_model)
        data = data_for(mc.sequence_impressions)
        result = train(mc, data["train"], data["valid"], enc_cfg, progress)
        run_dir = out_dir / f"{enc}{suffix}"
        save_run(run_dir, result, ds, validation, spec, data["test"])
        summary[run_dir.name] = {"examples_per_s": round(result.examples_per_s, 1),
                                 "parameters": count_parameters(result.model),
                                 "best_epoch": result.best_epoch, "best_step": result.best_step,
                                 "valid": result.valid_metrics, "run_dir": str(run_dir)}
        summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def save_run(run_dir: Path, result: TrainResult, ds: Dataset, validation: dict, spec: dict,
             test: RankingData) -> None:
    from safetensors.torch import save_file

    from homefeed.training.report import plot_training_curves

    run_dir.mkdir(parents=True, exist_ok=True)
    model = result.model.cpu()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run_dir / WEIGHTS_FILE))
    (run_dir / CONFIG_FILE).write_text(json.dumps(result.model_config.to_dict(), indent=2) + "\n")
    run = {
        "encoder": result.model_config.encoder,
        "parameters": count_parameters(model),
        "train_config": result.train_config.to_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_step": result.best_step,
        "evals": result.evals,
        "valid_metrics": result.valid_metrics,
        "examples_per_s": round(result.examples_per_s, 1),
        "train_seconds": round(result.train_seconds, 1),
        "examples_seen": result.examples_seen,
        "dense_features": spec,
        "schema_fingerprint": ds.meta["schema_fingerprint"],
        "dataset": str(ds.path),
        "dataset_counts": ds.meta["counts"],
        "validation": validation,
        "torch": str(torch.__version__),
    }
    (run_dir / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    plot_training_curves(result.history, run_dir / CURVES_FILE, title=run_dir.name)
    scores = predict(model, test, result.train_config.eval_batch_size)
    frame = test.impressions[[F.REQUEST_ID, F.PIN_ID]].copy()
    for j, head in enumerate(model.heads):
        frame[f"score_{head}"] = scores[:, j]
    frame.to_parquet(run_dir / PREDICTIONS_FILE, index=False)


def load_run(run_dir: Path | str) -> tuple[Ranker, ModelConfig, dict]:
    """A trained model back from its run directory (weights via safetensors, no pickle)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config = ModelConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text()))
    model = build_model(config)
    model.load_state_dict(load_file(str(run_dir / WEIGHTS_FILE)))
    return model.eval(), config, json.loads((run_dir / RUN_FILE).read_text())


def predictions(run_dir: Path | str) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / PREDICTIONS_FILE)
