"""A logistic-regression reference ranker: the simple baseline every claimed lift is checked against.

Before a sequence model's lift over the no-sequence ranker means anything, the no-sequence ranker
must hold its own against a simple model on obvious features. This one sees exactly the rows the
neural rankers see (the dataset's serve-time snapshots: nothing serving could not have read):

1. features per impression: the rankers' dense features (homefeed.model.dense: profile, recency,
   candidate age, hour) plus six summaries of the serve-time history (`HISTORY_FEATURES`);
2. standardised with the training split's mean and deviation;
3. one L2-regularised logistic regression per head, fitted by L-BFGS on the training split
   (deterministic: full batch, no sampling);
4. a run directory (`run.json`, `predictions.parquet`) under the runs directory, so
   `homefeed evaluate --compare` scores it beside the trained models on the same requests, with
   paired intervals. It is a reference, not a servable model: `homefeed export` refuses it (no
   weights file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from homefeed import features as F
from homefeed.events import ActionType
from homefeed.model import embed_pins, lookup_pin_rows
from homefeed.model.config import DEFAULT_HEADS
from homefeed.training.data import PinTable, RankingData, dense_feature_names
from homefeed.training.dataset import load_dataset

NAME = "logreg"
HOUR_MS = 3_600_000
RECENT = 20  # actions looked at for the candidate's topic
LAST_ENGAGED = 5  # engaged (non-hide) actions averaged for the candidate's similarity
HISTORY_FEATURES = (
    "log_actions_1h",  # visible actions in the hour before the serve time
    "log_actions_24h",
    "log_clicks_24h",
    "topic_share_recent",  # share of the last RECENT actions on the candidate's topic
    "topic_hidden_recent",  # the candidate's topic was hidden among them
    "similarity_last_engaged",  # cosine(candidate, mean of the last LAST_ENGAGED engaged pins)
)


def history_features(data: RankingData) -> np.ndarray:
    """[N, len(HISTORY_FEATURES)] float64 for every impression of `data` (step 1)."""
    pins = data.pins
    rt = data.request_ms[:, None]
    times = data.seq_times
    visible = (np.arange(times.shape[1])[None, :] < data.seq_lengths[:, None]) & (times < rt)
    age = rt - times
    actions_1h = (visible & (age <= HOUR_MS)).sum(1)
    actions_24h = (visible & (age <= 24 * HOUR_MS)).sum(1)
    clicks_24h = (visible & (age <= 24 * HOUR_MS) & (data.seq_actions == int(ActionType.CLICK))).sum(1)

    rows = lookup_pin_rows(data.seq_pins, pins.rows)
    known = visible & (rows >= 0)
    topic_by_row = pins.topic.to_numpy()  # PinTable: row i is the i-th pin
    seq_topic = np.where(known, topic_by_row[np.maximum(rows, 0)] if len(topic_by_row) else -1, -1)
    engaged = known & (data.seq_actions != int(ActionType.HIDE))
    weights = (engaged & (np.cumsum(engaged, axis=1) <= LAST_ENGAGED)).astype(np.float32)
    mean_emb = np.zeros((len(times), pins.emb.shape[1]), dtype=np.float32)
    for a in range(0, len(times), 8192):  # [rows, L, D] in slices: bounded memory
        w = weights[a:a + 8192]
        emb = embed_pins(data.seq_pins[a:a + 8192], pins.rows, pins.emb)  # unknown pins: zeros
        mean_emb[a:a + 8192] = (emb * w[..., None]).sum(1) / np.maximum(w.sum(1), 1)[:, None]

    s = data.req_index  # snapshot row of each impression
    cand_row = lookup_pin_rows(data.cand, pins.rows)
    cand_emb = embed_pins(data.cand, pins.rows, pins.emb)
    cand_topic = np.where(cand_row >= 0, topic_by_row[np.maximum(cand_row, 0)] if len(topic_by_row) else -2, -2)
    recent = np.arange(times.shape[1])[None, :] < RECENT
    same = (seq_topic[s] == cand_topic[:, None]) & known[s] & recent
    n_recent = np.maximum((known[s] & recent).sum(1), 1)
    hidden = same & (data.seq_actions[s] == int(ActionType.HIDE))
    norm = np.linalg.norm(mean_emb[s], axis=1) * np.linalg.norm(cand_emb, axis=1)
    sim = np.einsum("nd,nd->n", mean_emb[s], cand_emb) / np.maximum(norm, 1e-9)
    return np.stack([np.log1p(actions_1h[s]), np.log1p(actions_24h[s]), np.log1p(clicks_24h[s]),
                     same.sum(1) / n_recent, hidden.any(1).astype(np.float64), sim], axis=1)


def features(data: RankingData) -> np.ndarray:
    return np.concatenate([data.dense.astype(np.float64), history_features(data)], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, max_iter: int = 200) -> np.ndarray:
    """One head, step 3: full-batch L-BFGS (scipy) on the mean log loss + l2 * |w|^2.
    Returns [F + 1] weights, the bias last."""
    from scipy.optimize import minimize
    from scipy.special import expit

    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    penalty = np.ones(xb.shape[1])
    penalty[-1] = 0.0  # the bias is not shrunk

    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = xb @ w
        # log(1 + e^z) - y z, stable for large |z|
        loss = np.mean(np.logaddexp(0.0, z) - y * z) + l2 * np.sum(penalty * w * w)
        grad = xb.T @ (expit(z) - y) / len(y) + 2 * l2 * penalty * w
        return float(loss), grad

    got = minimize(loss_and_grad, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter})
    return got.x


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(x @ w[:-1] + w[-1])


def fit_reference(dataset_dir: Path | str, runs_dir: Path | str, seq_len: int | None = None,
                  heads: tuple[str, ...] = DEFAULT_HEADS, l2: float = 1e-4) -> dict:
    """Steps 1-4; returns run.json's content."""
    from homefeed.training.train import PREDICTIONS_FILE, RUN_FILE

    started = time.perf_counter()
    ds = load_dataset(dataset_dir)
    pins = PinTable(ds.pins, int(ds.meta["embedding_dim"]))
    seq_len = int(seq_len or ds.meta["sequence_length"])
    train = RankingData(*ds.split("train"), pins, seq_len, heads)
    test = RankingData(*ds.split("test"), pins, seq_len, heads)
    x_train, x_test = features(train), features(test)
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    frame = test.impressions[[F.REQUEST_ID, F.PIN_ID]].copy()
    fitted = {}
    for j, head in enumerate(heads):
        y = train.labels[:, j]
        if 0 < y.sum() < len(y):
            frame[f"score_{head}"] = predict_logistic(fit_logistic(x_train, y, l2=l2), x_test)
            fitted[head] = True
        else:  # one class only in training: a constant score (the head is not measurable)
            frame[f"score_{head}"] = float(y.mean()) if len(y) else 0.0
            fitted[head] = False
    out = Path(runs_dir) / NAME
    out.mkdir(parents=True, exist_ok=True)
    n_features = x_train.shape[1]
    run = {
        "encoder": NAME,
        "reference": "logistic regression on the dense features + serve-time history summaries; "
                     "not servable (homefeed.training.reference)",
        "features": list(dense_feature_names(int(ds.meta["embedding_dim"]))) + list(HISTORY_FEATURES),
        "parameters": sum(n_features + 1 for ok in fitted.values() if ok),
        "fitted_heads": fitted,
        "l2": l2,
        "dataset": str(ds.path),
        "dataset_counts": ds.meta["counts"],
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    frame.to_parquet(out / PREDICTIONS_FILE, index=False)
    return run
