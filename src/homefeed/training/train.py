"""The training loop: AdamW on the weighted multi-head BCE, per-epoch validation, early stopping.

    result = train(model_config, train_data, valid_data, TrainConfig(epochs=3))
    result.model, result.history, result.examples_per_s

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
)
from homefeed.model.store import CONFIG_FILE, RUN_FILE, WEIGHTS_FILE  # noqa: F401  (the run's files)
from homefeed.training.data import PinTable, RankingData, dense_feature_spec
from homefeed.training.dataset import Dataset, load_dataset, training_frame

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
    patience: int = 0  # early stopping on validation repin HIT@3; 0 = off
    max_steps_per_epoch: int = 0  # 0 = the whole training split
    eval_batch_size: int = 2048
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = torch's default

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    model: Ranker
    model_config: ModelConfig
    train_config: TrainConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
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
    scores = predict(model, data, batch_size, device)
    return metrics.evaluate_heads(scores, data.labels, data.request_ids, list(model.heads))


def train(model_config: ModelConfig, train_data: RankingData, valid_data: RankingData | None,
          cfg: TrainConfig, progress: bool = True) -> TrainResult:
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
    best_score, best_state, bad_epochs = -math.inf, None, 0
    log.info("training %s (%s parameters) on %d examples", model_config.encoder,
             f"{count_parameters(model):,}", len(train_data))

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        loader = train_data.loader(cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)
        steps = min(len(loader), cfg.max_steps_per_epoch or len(loader))
        losses, seen, started = [], 0, time.perf_counter()
        bar = tqdm(loader, total=steps, desc=f"{model_config.encoder} epoch {epoch}", unit="batch",
                   disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            if step >= steps:
                break
            batch = batch.to(device)
            out = loss_fn(model(batch), batch.labels, batch.weights)
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            losses.append(float(out.total.detach()))
            seen += batch.batch_size
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        result.train_seconds += seconds
        result.examples_seen += seen
        entry = {"epoch": epoch, "train_loss": float(np.mean(losses)), "examples": seen,
                 "seconds": round(seconds, 2), "examples_per_s": round(seen / seconds, 1),
                 "step_losses": [round(x, 5) for x in losses]}
        if valid_data is not None and len(valid_data):
            entry["valid"] = evaluate_data(model, valid_data, cfg.eval_batch_size, cfg.device)
            score = entry["valid"]["hit@3_repin"] if "hit@3_repin" in entry["valid"] else -entry["train_loss"]
        else:
            score = -entry["train_loss"]
        result.history.append(entry)
        log.info("%s epoch %d: loss %.4f, %.0f ex/s%s", model_config.encoder, epoch, entry["train_loss"],
                 entry["examples_per_s"], "".join(f", {k} {v:.4f}" for k, v in entry.get("valid", {}).items()
                                                  if k.startswith("hit@")))
        if score > best_score:
            best_score, result.best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if cfg.patience and bad_epochs >= cfg.patience:
                if epoch < cfg.epochs:
                    log.info("early stop after epoch %d (best %d)", epoch, result.best_epoch)
                break
    if best_state is not None and cfg.patience:
        model.load_state_dict(best_state)  # early stopping keeps the best epoch's weights
    else:
        result.best_epoch = len(result.history)
    model.eval()
    result.valid_metrics = result.history[result.best_epoch - 1].get("valid", {})
    result.examples_per_s = result.examples_seen / max(result.train_seconds, 1e-9)
    return result


# -- homefeed train ------------------------------------------------------------------------------

MODEL_CHOICES = ENCODER_KINDS


def model_config_for(encoder: str, seq_len: int, emb_dim: int, dense_dim: int, **overrides) -> ModelConfig:
    """The comparison's configs: reference defaults everywhere; TransAct v1.0's flattened L*d
    output makes a full-rank DCN cross layer huge (~93M weights), so it gets a rank-64 one."""
    extra = {"dcn_rank": 64} if encoder == "transact_v10" else {}
    extra.update(overrides)
    return ModelConfig(encoder=encoder, seq_len=seq_len, emb_dim=emb_dim, dense_dim=dense_dim, **extra)


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
                 model_overrides: dict | None = None, suffix: str = "", progress: bool = True) -> dict:
    ds = load_dataset(dataset_dir)
    for enc in encoders:
        if enc not in ENCODER_KINDS:
            raise UserError(f"unknown model {enc!r}; choose from {', '.join(ENCODER_KINDS)} or 'all'")
    validation = validate_training_set(ds, force, settings)
    dim = int(ds.meta["embedding_dim"])
    seq_len = seq_len or int(ds.meta["sequence_length"])
    heads = ModelConfig().heads
    pins = PinTable(ds.pins, dim)
    data = {s: RankingData(*ds.split(s), pins, seq_len, heads, neg_keep=cfg.neg_keep if s == "train" else 1.0,
                           seed=cfg.seed) for s in ("train", "valid", "test")}
    spec = dense_feature_spec(dim)
    out_dir = Path(out_dir)
    summary_file = out_dir / "train_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    for enc in encoders:
        mc = model_config_for(enc, seq_len, dim, spec["dim"], **(model_overrides or {}))
        result = train(mc, data["train"], data["valid"], cfg, progress)
        run_dir = out_dir / f"{enc}{suffix}"
        save_run(run_dir, result, ds, validation, spec, data["test"])
        summary[run_dir.name] = {"examples_per_s": round(result.examples_per_s, 1),
                                 "best_epoch": result.best_epoch, "valid": result.valid_metrics,
                                 "run_dir": str(run_dir)}
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
