"""The tensor contract between data and model: training and serving both build a `RankingBatch`.

One row = one (user, candidate pin) pair at one request. With B rows and L = seq_len:

=================  ===========  ========  =================================================
field              shape        dtype     meaning
=================  ===========  ========  =================================================
seq_pin_emb        [B, L, D]    float32   embeddings of the engaged pins, newest first;
                                          zero at padding and for unknown pins
seq_action         [B, L]       int64     ActionType ids (1..), 0 at padding; IMPRESSION_ACTION_ID
                                          for an impression (models with sequence_impressions)
seq_time_ms        [B, L]       int64     action times, epoch ms (0 at padding)
seq_mask           [B, L]       bool      True = a real action, False = padding
request_time_ms    [B]          int64     when the request was served, epoch ms
cand_emb           [B, D]       float32   candidate pin embedding (zero if unknown)
dense              [B, F]       float32   user profile + pin + context dense features
labels             [B, H]       float32   optional, one 0/1 label per head (config.heads order)
weights            [B]          float32   optional per-example (per-user) loss weights
groups             [B]          int64     optional, training only: the row's user, for the
                                          within-user ranking loss (model.loss.within_group_pairwise)
=================  ===========  ========  =================================================

Sequences are stored **newest first**: position 0 is the most recent action, real actions form a
prefix of each row and padding fills the tail. `seq_mask` is the single source of truth for
"real vs padding" (no action id doubles as padding, unlike the reference code).

A model trained with `sequence_impressions` reads the action sequence and the impression sequence
merged by time (`merge_impressions`, the one function training's RankingData and serving's
RankingEngine call), impressions carrying the model-only action id `IMPRESSION_ACTION_ID`.

Serving ranks N candidates for one user: it pads the user's sequence with `pad_rows` (the rule
`build_batch` applies, in `homefeed.serving.fast_model.UserTensors.from_sequence`), and
`RankingBatch.one_user` gives a batch whose user-side tensors are [1, L, ...] **expanded**
(stride 0, no copy) to [N, L, ...] (the served ranker's plain reference path).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from homefeed.events import ACTION_VOCAB_SIZE

_SEQ_FIELDS = ("seq_pin_emb", "seq_action", "seq_time_ms", "seq_mask")
# An impression in a model's sequence: one past the last ActionType id (a model-only id; the
# models that read impressions have an action embedding one row larger, ModelConfig).
IMPRESSION_ACTION_ID = ACTION_VOCAB_SIZE


@dataclass
class RankingBatch:
    seq_pin_emb: Tensor
    seq_action: Tensor
    seq_time_ms: Tensor
    seq_mask: Tensor
    request_time_ms: Tensor
    cand_emb: Tensor
    dense: Tensor
    labels: Tensor | None = None
    weights: Tensor | None = None
    groups: Tensor | None = None

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.cand_emb.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.seq_action.shape[1])

    @property
    def emb_dim(self) -> int:
        return int(self.cand_emb.shape[1])

    @property
    def dense_dim(self) -> int:
        return int(self.dense.shape[1])

    @property
    def device(self) -> torch.device:
        return self.cand_emb.device

    def __len__(self) -> int:
        return self.batch_size

    # -- masks ----------------------------------------------------------------------------------
    def visible_mask(self) -> Tensor:
        """[B, L] bool: real actions that happened at or before the request time.

        This is the inference-time mask: only padding and *future* actions (time > request time,
        which would leak the label) are hidden. TransAct's training-only random time window is
        applied on top of it in `homefeed.model.transact.time_window_mask`.
        """
        return self.seq_mask & (self.seq_time_ms <= self.request_time_ms[:, None])

    # -- moves and slices -------------------------------------------------------------------------
    def _map(self, fn) -> "RankingBatch":
        return RankingBatch(**{  # type: ignore[arg-type]
            f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
            for f in dataclasses.fields(self)
        })

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "RankingBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "RankingBatch":
        return self._map(lambda t: t.pin_memory())

    def select(self, index: Tensor | slice | Sequence[int]) -> "RankingBatch":
        """Rows `index` (a slice keeps views; an index tensor copies)."""
        if not isinstance(index, (slice, Tensor)):
            index = torch.as_tensor(index, dtype=torch.long)
        return self._map(lambda t: t[index])

    def validate(self, emb_dim: int | None = None, seq_len: int | None = None,
                 dense_dim: int | None = None, n_heads: int | None = None) -> "RankingBatch":
        """Check shapes and dtypes against the contract (and a model config's sizes if given)."""
        B = self.batch_size
        L = self.seq_len
        D = self.emb_dim

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"RankingBatch: {msg}")

        need(self.cand_emb.dim() == 2, f"cand_emb must be [B, D], got {tuple(self.cand_emb.shape)}")
        need(tuple(self.seq_pin_emb.shape) == (B, L, D),
             f"seq_pin_emb must be {(B, L, D)}, got {tuple(self.seq_pin_emb.shape)}")
        for name in ("seq_action", "seq_time_ms", "seq_mask"):
            need(tuple(getattr(self, name).shape) == (B, L),
                 f"{name} must be {(B, L)}, got {tuple(getattr(self, name).shape)}")
        need(tuple(self.request_time_ms.shape) == (B,),
             f"request_time_ms must be [B]={B}, got {tuple(self.request_time_ms.shape)}")
        need(self.dense.dim() == 2 and self.dense.shape[0] == B,
             f"dense must be [B, F], got {tuple(self.dense.shape)}")
        need(self.seq_pin_emb.is_floating_point() and self.cand_emb.is_floating_point()
             and self.dense.is_floating_point(), "embeddings and dense must be floating point")
        need(self.seq_action.dtype == torch.long, f"seq_action must be int64, got {self.seq_action.dtype}")
        need(self.seq_time_ms.dtype == torch.long, "seq_time_ms must be int64")
        need(self.request_time_ms.dtype == torch.long, "request_time_ms must be int64")
        need(self.seq_mask.dtype == torch.bool, f"seq_mask must be bool, got {self.seq_mask.dtype}")
        if self.labels is not None:
            need(self.labels.dim() == 2 and self.labels.shape[0] == B, "labels must be [B, H]")
        if self.weights is not None:
            need(tuple(self.weights.shape) == (B,), "weights must be [B]")
        if emb_dim is not None:
            need(D == emb_dim, f"emb_dim {D} != model's {emb_dim}")
        if seq_len is not None:
            need(L == seq_len, f"seq_len {L} != model's {seq_len}")
        if dense_dim is not None:
            need(self.dense_dim == dense_dim, f"dense_dim {self.dense_dim} != model's {dense_dim}")
        if n_heads is not None and self.labels is not None:
            need(self.labels.shape[1] == n_heads, f"labels have {self.labels.shape[1]} heads, model {n_heads}")
        return self

    # -- serving shape --------------------------------------------------------------------------
    @classmethod
    def one_user(
        cls,
        seq_pin_emb: Tensor,
        seq_action: Tensor,
        seq_time_ms: Tensor,
        seq_mask: Tensor,
        request_time_ms: Tensor | int,
        cand_emb: Tensor,
        dense: Tensor | None = None,
    ) -> "RankingBatch":
        """One user's sequence ([L, ...] or [1, L, ...]) against N candidates ([N, D]).

        The user-side tensors are expanded (stride 0 along the batch dim), not copied; `dense`
        may be [N, F], or [F] / [1, F] (broadcast the same way), or None (F = 0).
        """
        n = int(cand_emb.shape[0])

        def user(t: Tensor, dims: int) -> Tensor:
            if t.dim() == dims:
                t = t.unsqueeze(0)
            if t.shape[0] != 1:
                raise ValueError(f"user-side tensor must have batch size 1, got {tuple(t.shape)}")
            return t.expand(n, *t.shape[1:])

        device = cand_emb.device
        rt = torch.as_tensor(request_time_ms, dtype=torch.long, device=device).reshape(1)
        if dense is None:
            dense = cand_emb.new_zeros((n, 0))
        elif dense.dim() == 1 or dense.shape[0] == 1:
            dense = user(dense, 1)
        return cls(
            seq_pin_emb=user(seq_pin_emb, 2),
            seq_action=user(seq_action, 1),
            seq_time_ms=user(seq_time_ms, 1),
            seq_mask=user(seq_mask, 1),
            request_time_ms=rt.expand(n),
            cand_emb=cand_emb,
            dense=dense,
        )

    def is_one_user(self) -> bool:
        """True when the sequence tensors are broadcast views of a single user's (stride 0)."""
        return self.batch_size >= 1 and all(getattr(self, f).stride(0) == 0 for f in _SEQ_FIELDS)


# ---------------------------------------------------------------------------------------------
# numpy-side builders
# ---------------------------------------------------------------------------------------------


def make_pin_rows(pin_ids: Iterable[int] | np.ndarray, size: int | None = None) -> np.ndarray:
    """Dense id -> row mapping: `rows[pin_id]` is the row of `pin_id` in the embedding table
    (`pin_ids[i]` -> i), -1 for pins not in the table. Memory is O(max pin id)."""
    ids = np.asarray(pin_ids, dtype=np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError("pin ids must be >= 0")
    n = int(ids.max()) + 1 if ids.size else 0
    rows = np.full(max(n, size or 0), -1, dtype=np.int64)
    rows[ids] = np.arange(ids.size, dtype=np.int64)
    return rows


def lookup_pin_rows(pin_ids: np.ndarray, pin_rows: np.ndarray) -> np.ndarray:
    """Row of each pin id in the embedding table; -1 for unknown ids (negative, beyond the
    mapping array, or mapped to -1)."""
    ids = np.asarray(pin_ids, dtype=np.int64)
    inside = (ids >= 0) & (ids < len(pin_rows))
    rows = np.where(inside, pin_rows[np.where(inside, ids, 0)] if len(pin_rows) else -1, -1)
    return rows.astype(np.int64, copy=False)


def embed_pins(pin_ids: np.ndarray, pin_rows: np.ndarray, pin_emb: np.ndarray) -> np.ndarray:
    """Embeddings for an array of pin ids (any shape) -> shape + (D,); unknown pin -> zeros."""
    rows = lookup_pin_rows(pin_ids, pin_rows)
    table = np.asarray(pin_emb, dtype=np.float32)
    if table.shape[0] == 0:
        return np.zeros(rows.shape + (table.shape[1],), dtype=np.float32)
    out = table[np.maximum(rows, 0)]
    out[rows < 0] = 0.0
    return out


def pad_rows(rows: Sequence[Any], seq_len: int, dtype: Any,
             lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length rows (newest first) -> ([B, seq_len] zero-padded, [B] kept lengths).

    Each row is truncated to its first `seq_len` entries (the newest) and, if `lengths` is given,
    to its first `lengths[i]` entries. A 2-D array is accepted as B rows (give `lengths` then).
    """
    b = len(rows)
    arrs = [np.asarray(r, dtype=dtype).reshape(-1) for r in rows]
    lens = np.fromiter((a.size for a in arrs), dtype=np.int64, count=b)
    if lengths is not None:
        lens = np.minimum(lens, np.asarray(lengths, dtype=np.int64))
    lens = np.clip(lens, 0, seq_len)
    out = np.zeros((b, seq_len), dtype=dtype)
    if b:
        mask = np.arange(seq_len)[None, :] < lens[:, None]
        out[mask] = np.concatenate([a[:n] for a, n in zip(arrs, lens)]) if lens.sum() else []
    return out, lens


def merge_impressions(seq_pin_ids: Sequence[Any], seq_action_types: Sequence[Any],
                      seq_action_times: Sequence[Any], imp_pin_ids: Sequence[Any], imp_times: Sequence[Any],
                      seq_len: int, seq_lengths: Any = None,
                      imp_lengths: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """B users' action sequences and impression sequences (rows newest first, any length, each
    cut to `seq_lengths` / `imp_lengths` when given) merged into one sequence per user: newest
    first by time, an action before an impression of the same millisecond, each input's own order
    kept, capped at `seq_len`; impressions get `IMPRESSION_ACTION_ID`.

    Returns ([B, seq_len] pin ids, action ids, times, zero-padded; [B] lengths), the arrays
    `build_batch` takes. Training (RankingData) and serving (RankingEngine) both call this.
    """
    pins, lens = pad_rows(seq_pin_ids, seq_len, np.int64, seq_lengths)
    acts, _ = pad_rows(seq_action_types, seq_len, np.int64, seq_lengths)
    times, _ = pad_rows(seq_action_times, seq_len, np.int64, seq_lengths)
    ipins, ilens = pad_rows(imp_pin_ids, seq_len, np.int64, imp_lengths)
    itimes, _ = pad_rows(imp_times, seq_len, np.int64, imp_lengths)
    b = len(lens)
    all_pins = np.concatenate([pins, ipins], axis=1)
    all_acts = np.concatenate([acts, np.full_like(ipins, IMPRESSION_ACTION_ID)], axis=1)
    all_times = np.concatenate([times, itimes], axis=1)
    real = np.concatenate([np.arange(seq_len)[None, :] < lens[:, None],
                           np.arange(seq_len)[None, :] < ilens[:, None]], axis=1)
    # newest first; padding last; stable: ties keep actions (first half) before impressions
    key = np.where(real, -all_times.astype(np.float64), np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :seq_len]
    out_lens = np.minimum(lens + ilens, seq_len)
    keep = np.arange(seq_len)[None, :] < out_lens[:, None]
    rows = np.arange(b)[:, None]
    return (np.where(keep, all_pins[rows, order], 0), np.where(keep, all_acts[rows, order], 0),
            np.where(keep, all_times[rows, order], 0), out_lens)


def _as_rows(x: Any, b: int, name: str) -> Sequence[Any]:
    if isinstance(x, np.ndarray) and x.dtype != object and x.ndim == 2:
        rows: Sequence[Any] = list(x)
    else:
        rows = list(x)
    if len(rows) != b:
        raise ValueError(f"{name}: {len(rows)} rows, expected {b}")
    return rows


def build_batch(
    seq_pin_ids: Sequence[Any],
    seq_action_types: Sequence[Any],
    seq_action_times: Sequence[Any],
    request_time_ms: Any,
    cand_pin_ids: Any,
    pin_rows: np.ndarray,
    pin_emb: np.ndarray,
    seq_len: int,
    dense: Any = None,
    labels: Any = None,
    weights: Any = None,
    seq_lengths: Any = None,
    action_vocab_size: int = ACTION_VOCAB_SIZE,
) -> RankingBatch:
    """Build a `RankingBatch` from per-row arrays.

    - `seq_pin_ids`, `seq_action_types`, `seq_action_times`: B aligned sequences (lists, arrays,
      or a pandas Series of arrays), **newest first**, any length; kept: the newest `seq_len`
      (or `seq_lengths[i]` if given, e.g. the feature view's seq_length column).
    - `request_time_ms` [B], `cand_pin_ids` [B].
    - `pin_rows`: id -> row mapping array (see `make_pin_rows`); `pin_emb` [P, D] table. Unknown
      pins (engaged or candidate) get a zero embedding; the action itself still counts as real.
    - `dense` [B, F] (None -> F = 0), `labels` [B, H], `weights` [B].

    Raises ValueError on misaligned sequences or action ids outside 1..action_vocab_size-1
    (the model's: ModelConfig.action_vocab_size, one more with impressions).
    """
    cand = np.asarray(cand_pin_ids, dtype=np.int64).reshape(-1)
    b = cand.size
    pins_r = _as_rows(seq_pin_ids, b, "seq_pin_ids")
    acts_r = _as_rows(seq_action_types, b, "seq_action_types")
    times_r = _as_rows(seq_action_times, b, "seq_action_times")
    pins, lens = pad_rows(pins_r, seq_len, np.int64, seq_lengths)
    acts, lens_a = pad_rows(acts_r, seq_len, np.int64, seq_lengths)
    times, lens_t = pad_rows(times_r, seq_len, np.int64, seq_lengths)
    if not (np.array_equal(lens, lens_a) and np.array_equal(lens, lens_t)):
        bad = int(np.flatnonzero((lens != lens_a) | (lens != lens_t))[0])
        raise ValueError(f"row {bad}: seq_pin_ids, seq_action_types and seq_action_times "
                         "have different lengths")
    mask = np.arange(seq_len)[None, :] < lens[:, None]
    if mask.any():
        real = acts[mask]
        if real.min() < 1 or real.max() >= action_vocab_size:
            raise ValueError(f"action ids must be in 1..{action_vocab_size - 1}, "
                             f"got values in [{real.min()}, {real.max()}]")
    d = np.asarray(pin_emb).shape[1]
    seq_emb = embed_pins(pins, pin_rows, pin_emb)
    seq_emb[~mask] = 0.0
    rt = np.asarray(request_time_ms, dtype=np.int64).reshape(-1)
    if rt.size != b:
        raise ValueError(f"request_time_ms: {rt.size} values, expected {b}")
    dense_np = (np.zeros((b, 0), dtype=np.float32) if dense is None
                else np.asarray(dense, dtype=np.float32).reshape(b, -1))
    return RankingBatch(
        seq_pin_emb=torch.from_numpy(seq_emb.reshape(b, seq_len, d)),
        seq_action=torch.from_numpy(acts),
        seq_time_ms=torch.from_numpy(times),
        seq_mask=torch.from_numpy(mask),
        request_time_ms=torch.from_numpy(rt.copy()),
        cand_emb=torch.from_numpy(embed_pins(cand, pin_rows, pin_emb)),
        dense=torch.from_numpy(np.ascontiguousarray(dense_np)),
        labels=None if labels is None else torch.as_tensor(
            np.asarray(labels, dtype=np.float32).reshape(b, -1)),
        weights=None if weights is None else torch.as_tensor(
            np.asarray(weights, dtype=np.float32).reshape(b)),
    )
