"""Data -> tensors: the torch Dataset/collate over point-in-time datasets.

The dense features come from `homefeed.model.dense` (re-exported here), the one definition that
serving imports too, so training and serving cannot compute a different vector.

The sequence itself goes through `homefeed.model.build_batch`, which pads with
`homefeed.model.pad_rows`, the padding serving applies too (`UserTensors.from_sequence`);
`RankingData.collate` only gathers rows and calls it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from homefeed import features as F
from homefeed.events import ACTION_VOCAB_SIZE
from homefeed.model import IMPRESSION_ACTION_ID, RankingBatch, build_batch, make_pin_rows, merge_impressions
from homefeed.model.dense import (  # noqa: F401  (re-exported: training's public names)
    DAY_MS,
    MINUTE_MS,
    dense_feature_names,
    dense_feature_spec,
    dense_features,
)

# -- pin table ------------------------------------------------------------------------------------

class PinTable:
    """Embeddings by pin id for build_batch: `rows` maps pin id -> row of `emb` (-1: unknown)."""

    def __init__(self, pins: pd.DataFrame, embedding_dim: int):
        ids = pins[F.PIN_ID].to_numpy(np.int64)
        self.rows = make_pin_rows(ids)
        self.emb = (np.stack(pins[F.PIN_EMBEDDING].to_numpy()).astype(np.float32) if len(ids)
                    else np.zeros((0, embedding_dim), np.float32))
        self.topic = pd.Series(pins[F.PIN_TOPIC].to_numpy(), index=ids)


# -- the torch dataset ------------------------------------------------------------------------------

def _padded(values: pd.Series, seq_len: int, dtype) -> np.ndarray:
    out = np.zeros((len(values), seq_len), dtype=dtype)
    for i, v in enumerate(values):
        v = np.asarray(v, dtype=dtype)[:seq_len]  # newest first: keep the newest seq_len
        out[i, : v.size] = v
    return out


class RankingData(torch.utils.data.Dataset):
    """Impressions of some splits as a map-style dataset of row indices; `collate` turns a list of
    indices into a `RankingBatch` (user side gathered per row, then homefeed.model.build_batch).

    `sequence_impressions` (the model's setting): the sequence input is the action sequence and
    the snapshot's impression sequence merged by time (homefeed.model.merge_impressions, what
    serving calls); the dense features still read the action sequence alone.

    `neg_keep` < 1 keeps that share of impressions without any action (seeded) and weighs the kept
    ones 1/neg_keep, so the loss stays an unbiased estimate while epochs get much cheaper.
    """

    def __init__(self, requests: pd.DataFrame, impressions: pd.DataFrame, pins: PinTable,
                 seq_len: int, heads: tuple[str, ...], neg_keep: float = 1.0, seed: int = 0,
                 sequence_impressions: bool = False):
        if not 0 < neg_keep <= 1:
            raise ValueError("neg_keep must be in (0, 1]")
        labels = impressions[[f"label_{h}" for h in heads]].to_numpy(np.float32)
        weights = np.ones(len(impressions), dtype=np.float32)
        if neg_keep < 1:
            negative = labels.max(axis=1) == 0
            keep = ~negative | (np.random.default_rng(seed).random(len(impressions)) < neg_keep)
            impressions, labels, weights = impressions[keep], labels[keep], weights[keep]
            weights[negative[keep]] = 1.0 / neg_keep
        self.impressions = impressions.reset_index(drop=True)
        self.requests = requests.reset_index(drop=True)
        self.pins = pins
        self.seq_len = seq_len
        self.heads = heads
        self.labels = labels
        self.weights = weights
        # user-side row (snapshot: one per request and serve time) of every impression
        req_row = pd.Series(np.arange(len(self.requests)), index=self.requests[F.SNAPSHOT_ID])
        self.req_index = req_row.loc[self.impressions[F.SNAPSHOT_ID]].to_numpy(np.int64)
        # user side once per snapshot, padded to seq_len (newest first)
        self.action_vocab_size = IMPRESSION_ACTION_ID + 1 if sequence_impressions else ACTION_VOCAB_SIZE
        if sequence_impressions:
            if F.IMP_PIN_IDS not in self.requests:
                raise ValueError("the dataset has no impression sequences (built before they existed): "
                                 "rebuild it to train with sequence_impressions")
            req = self.requests
            self.seq_pins, self.seq_actions, self.seq_times, self.seq_lengths = merge_impressions(
                req[F.SEQ_PIN_IDS], req[F.SEQ_ACTION_TYPES], req[F.SEQ_ACTION_TIMES], req[F.IMP_PIN_IDS],
                req[F.IMP_TIMES], seq_len, req[F.SEQ_LENGTH].to_numpy(np.int64),
                req[F.IMP_LENGTH].to_numpy(np.int64))
        else:
            self.seq_pins = _padded(self.requests[F.SEQ_PIN_IDS], seq_len, np.int64)
            self.seq_actions = _padded(self.requests[F.SEQ_ACTION_TYPES], seq_len, np.int64)
            self.seq_times = _padded(self.requests[F.SEQ_ACTION_TIMES], seq_len, np.int64)
            self.seq_lengths = np.minimum(self.requests[F.SEQ_LENGTH].to_numpy(np.int64), seq_len)
        self.request_ms = self.requests["request_time_ms"].to_numpy(np.int64)
        self.cand = self.impressions[F.PIN_ID].to_numpy(np.int64)
        self.dense = dense_features(self.requests, self.impressions, self.request_ms, self.req_index)

    def __len__(self) -> int:
        return len(self.cand)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int] | np.ndarray) -> RankingBatch:
        idx = np.asarray(indices, dtype=np.int64)
        r = self.req_index[idx]
        batch = build_batch(self.seq_pins[r], self.seq_actions[r], self.seq_times[r], self.request_ms[r],
                            self.cand[idx], self.pins.rows, self.pins.emb, self.seq_len,
                            dense=self.dense[idx], labels=self.labels[idx], weights=self.weights[idx],
                            seq_lengths=self.seq_lengths[r], action_vocab_size=self.action_vocab_size)
        users = self.user_ids
        if users is not None:
            batch.groups = torch.from_numpy(np.ascontiguousarray(users[idx], dtype=np.int64))
        return batch

    def loader(self, batch_size: int, shuffle: bool, seed: int = 0, by_user: bool = False) -> DataLoader:
        """Batches of `batch_size` rows. `by_user` (with `shuffle`): users in a seeded random order,
        each user's rows together (shuffled among themselves), so a batch holds pairs of one user's
        rows for the within-user ranking loss; a user with more rows than a batch spills over."""
        if not (by_user and shuffle):
            generator = torch.Generator().manual_seed(seed)
            return DataLoader(self, batch_size=batch_size, shuffle=shuffle, generator=generator,
                              collate_fn=self.collate, num_workers=0)
        users = self.user_ids
        if users is None:
            raise ValueError("grouping batches by user needs the impressions' user ids")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(users))  # rows shuffled, then grouped by a random user rank
        _, codes = np.unique(users, return_inverse=True)
        rank = rng.permutation(codes.max() + 1)[codes[order]]
        order = order[np.argsort(rank, kind="stable")]
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return DataLoader(self, batch_sampler=batches, collate_fn=self.collate, num_workers=0)

    # -- evaluation helpers -----------------------------------------------------------------------
    @property
    def request_ids(self) -> np.ndarray:
        return self.impressions[F.REQUEST_ID].to_numpy()

    @property
    def user_ids(self) -> np.ndarray | None:
        """The user of every impression (GAUC's groups, the pairwise loss's); None when neither
        frame has one. Looked up once (collate reads it for every batch)."""
        if not hasattr(self, "_user_ids"):
            self._user_ids = (self.impressions[F.USER_ID].to_numpy() if F.USER_ID in self.impressions
                              else self.requests[F.USER_ID].to_numpy()[self.req_index]
                              if F.USER_ID in self.requests else None)
        return self._user_ids

    def dense_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.dense.mean(axis=0), self.dense.std(axis=0)
