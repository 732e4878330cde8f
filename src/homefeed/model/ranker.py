"""The ranker: sequence encoder + candidate embedding + dense features -> one logit per head.

    pins = config.pin_emb_scale * (engaged-pin and candidate embeddings)   (see ModelConfig)
    x0 = concat[encoder(batch), cand_emb, (dense - dense_mean) / dense_std]
    x  = DCN v2 cross layers (x_{l+1} = x0 * (W_l x_l + b_l) + x_l), if config.dcn_layers > 0
    x  = MLP (Linear -> ReLU -> Dropout)*
    logits = Linear(x) -> [B, H], H = len(config.heads)

`dense_mean` / `dense_std` are buffers (saved with the weights): set them from training data with
`set_dense_stats` so training and serving standardise dense features identically.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from homefeed.model.batch import RankingBatch
from homefeed.model.config import ModelConfig
from homefeed.model.encoders import build_encoder


class CrossLayer(nn.Module):
    """DCN v2 cross layer: x0 * (W x + b) + x, W full rank or low rank (U V^T)."""

    def __init__(self, dim: int, rank: int = 0):
        super().__init__()
        self.proj: nn.Module
        if rank and rank < dim:
            self.proj = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))
        else:
            self.proj = nn.Linear(dim, dim)

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.proj(x) + x


class Ranker(nn.Module):
    dense_mean: Tensor
    dense_std: Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = build_encoder(config)
        self.input_dim = int(self.encoder.out_dim) + config.emb_dim + config.dense_dim  # type: ignore[arg-type]
        self.register_buffer("dense_mean", torch.zeros(config.dense_dim))
        self.register_buffer("dense_std", torch.ones(config.dense_dim))
        self.cross = nn.ModuleList(CrossLayer(self.input_dim, config.dcn_rank)
                                   for _ in range(config.dcn_layers))
        layers: list[nn.Module] = []
        width = self.input_dim
        for dim in config.mlp_dims:
            layers += [nn.Linear(width, dim), nn.ReLU(), nn.Dropout(config.dropout)]
            width = dim
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, len(config.heads))

    @property
    def heads(self) -> tuple[str, ...]:
        return self.config.heads

    def set_dense_stats(self, mean: np.ndarray | Tensor, std: np.ndarray | Tensor,
                        min_std: float = 1e-6) -> None:
        """Standardisation for the dense features (per-feature mean and std of training data).
        A feature that never varied in training (std < min_std) is centred, not scaled: dividing
        by ~0 would turn any other value at serving time (a new user's has_profile = 0 when every
        training user had one) into a saturating input."""
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(-1)
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32)).reshape(-1)
        std_t = torch.where(std_t < min_std, torch.ones_like(std_t), std_t)
        if mean_t.numel() != self.config.dense_dim or std_t.numel() != self.config.dense_dim:
            raise ValueError(f"dense stats must have {self.config.dense_dim} values")
        self.dense_mean.copy_(mean_t)
        self.dense_std.copy_(std_t)

    def scale_pins(self, batch: RankingBatch) -> RankingBatch:
        """The batch with engaged-pin and candidate embeddings times config.pin_emb_scale."""
        s = self.config.pin_emb_scale
        if s == 1.0:
            return batch
        return dataclasses.replace(batch, seq_pin_emb=batch.seq_pin_emb * s, cand_emb=batch.cand_emb * s)

    def features(self, batch: RankingBatch) -> Tensor:
        """x0: the ranker's input row [B, input_dim]."""
        batch = self.scale_pins(batch)
        seq = self.encoder(batch)
        dense = (batch.dense - self.dense_mean) / self.dense_std
        return torch.cat([seq, batch.cand_emb, dense], dim=-1)

    def forward(self, batch: RankingBatch) -> Tensor:
        x0 = self.features(batch)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(self.mlp(x))

    @torch.no_grad()
    def predict(self, batch: RankingBatch) -> Tensor:
        """Probabilities [B, H] in eval mode (restores the previous mode)."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self(batch))
        finally:
            self.train(was_training)


def build_model(config: ModelConfig) -> Ranker:
    return Ranker(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
