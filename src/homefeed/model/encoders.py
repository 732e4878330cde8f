"""Sequence encoders behind one interface: ``forward(batch) -> [B, out_dim]``, ``out_dim`` attr.

Baselines from the TransAct paper's offline comparison, DIN (`homefeed.model.din`), plus TransAct
itself (`build_encoder`). The baselines see the inference visibility mask (padding and future
actions hidden) in both training and evaluation; the random time window is TransAct's own
training trick. The TransAct-paper baselines never look at the candidate (no early fusion): the
ranker combines their output with it. DIN uses the candidate as its attention query.
Every encoder returns exact zeros for a row with no visible action (cold start).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from homefeed.model.batch import RankingBatch
from homefeed.model.config import ModelConfig
from homefeed.model.din import DINEncoder
from homefeed.model.transact import TransActEncoder


def masked_max(x: Tensor, visible: Tensor) -> Tensor:
    """Max over dim 1 of [B, L, C] across visible positions only; rows with none -> zeros."""
    lowest = torch.finfo(x.dtype).min
    out = torch.where(visible[..., None], x, lowest).amax(dim=1)
    return torch.where(visible.any(dim=1)[:, None], out, 0.0)


def masked_mean(x: Tensor, visible: Tensor) -> Tensor:
    """Mean over dim 1 of [B, L, C] across visible positions only; rows with none -> zeros."""
    m = visible[..., None].to(x.dtype)
    return (torch.where(visible[..., None], x, 0.0)).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class NoSequence(nn.Module):
    """The no-sequence baseline: contributes nothing (out_dim 0)."""

    out_dim = 0

    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, batch: RankingBatch) -> Tensor:
        return batch.cand_emb.new_zeros((batch.batch_size, 0))


class AvgPoolEncoder(nn.Module):
    """Mean of the visible engaged-pin embeddings (out_dim D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.out_dim = config.emb_dim

    def forward(self, batch: RankingBatch) -> Tensor:
        return masked_mean(batch.seq_pin_emb, batch.visible_mask())


class _PinActionInput(nn.Module):
    """[pin_emb, action_emb] per position, zeroed where not visible."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.action_emb = nn.Embedding(config.action_vocab_size, config.action_emb_dim, padding_idx=0)
        self.width = config.emb_dim + config.action_emb_dim

    def forward(self, batch: RankingBatch, visible: Tensor) -> Tensor:
        x = torch.cat([batch.seq_pin_emb, self.action_emb(batch.seq_action)], dim=-1)
        return torch.where(visible[..., None], x, 0.0)


class CNNEncoder(nn.Module):
    """1D convolution over [pin_emb, action_emb] along the sequence, ReLU, masked max-pool."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.inputs = _PinActionInput(config)
        self.conv = nn.Conv1d(self.inputs.width, config.hidden_dim, config.cnn_kernel,
                              padding=config.cnn_kernel // 2)
        self.dropout = nn.Dropout(config.dropout)
        self.out_dim = config.hidden_dim

    def forward(self, batch: RankingBatch) -> Tensor:
        visible = batch.visible_mask()
        x = self.inputs(batch, visible)
        y = torch.relu(self.conv(x.transpose(1, 2)))[:, :, : x.shape[1]].transpose(1, 2)
        return self.dropout(masked_max(y, visible))


def chronological(x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
    """Reorder each row's visible positions oldest -> newest and left-align them.

    Sequences are stored newest first; recurrent encoders must run in time order so their last
    state is the newest action. Returns ([B, L, C] compacted, [B] lengths)."""
    B, L = visible.shape
    idx = torch.arange(L, device=visible.device).expand(B, L)
    # visible positions first, in decreasing index (= increasing time); then the rest
    key = torch.where(visible, L - 1 - idx, L + idx)
    order = key.argsort(dim=1)
    return x.gather(1, order[..., None].expand(B, L, x.shape[-1])), visible.sum(dim=1)


class _RecurrentEncoder(nn.Module):
    cell: Any = nn.RNN

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.inputs = _PinActionInput(config)
        self.rnn = self.cell(self.inputs.width, config.hidden_dim, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.out_dim = config.hidden_dim

    def forward(self, batch: RankingBatch) -> Tensor:
        visible = batch.visible_mask()
        x, lengths = chronological(self.inputs(batch, visible), visible)
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, state = self.rnn(packed)
        h = state[0] if isinstance(state, tuple) else state  # LSTM -> (h, c)
        last = h[-1]  # [B, H], state after the newest visible action
        return self.dropout(torch.where((lengths > 0)[:, None], last, 0.0))


class RNNEncoder(_RecurrentEncoder):
    """Elman RNN (tanh) over [pin_emb, action_emb], oldest -> newest; last state."""

    cell = nn.RNN


class LSTMEncoder(_RecurrentEncoder):
    """LSTM over [pin_emb, action_emb], oldest -> newest; last hidden state."""

    cell = nn.LSTM


class VanillaTransformerEncoder(nn.Module):
    """Transformer over the engaged-pin embeddings only: no action embedding, no early fusion,
    no positional encoding. Output = [masked mean, masked max] over visible positions (2D)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=config.emb_dim, nhead=config.n_heads, dim_feedforward=config.ff_dim,
            dropout=config.dropout, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.n_layers,
                                             enable_nested_tensor=False)
        self.out_dim = 2 * config.emb_dim

    def forward(self, batch: RankingBatch) -> Tensor:
        visible = batch.visible_mask()
        has_any = visible.any(dim=1)
        key_padding = ~visible
        key_padding[:, 0] &= has_any  # dummy key for empty rows; their output is zeroed
        x = torch.where(batch.seq_mask[..., None], batch.seq_pin_emb, 0.0)
        out = self.encoder(x, src_key_padding_mask=key_padding)
        return torch.cat([masked_mean(out, visible), masked_max(out, visible)], dim=-1)


ENCODERS: dict[str, type[nn.Module]] = {
    "none": NoSequence,
    "avg_pool": AvgPoolEncoder,
    "cnn": CNNEncoder,
    "rnn": RNNEncoder,
    "lstm": LSTMEncoder,
    "transformer": VanillaTransformerEncoder,
    "din": DINEncoder,
    "transact_v10": TransActEncoder,
    "transact_v11": TransActEncoder,
}


def build_encoder(config: ModelConfig) -> nn.Module:
    """The sequence encoder named by `config.encoder`; it has an `out_dim` attribute."""
    return ENCODERS[config.encoder](config)
