"""Model configuration: one flat dataclass (nanoGPT style) that fully describes a ranker.

The config is exported next to the weights (`to_dict`, JSON-able) and read back at serving time
(`from_dict`), so every size the weights depend on lives here.

Defaults follow the TransAct paper / Pinterest's reference module (seq_len 100, 32-d action and
pin embeddings, 2 post-LN encoder layers, 2 heads, feed-forward 32, dropout 0.1, first K=10 output
tokens + max-pool) with DCN v2 cross layers in the ranker (v1.1). One deliberate departure: the
training-only random time-window mask is off by default (the paper uses 24 h). It hides the
actions of the last T ~ U[0, window] before each training request; where intent lives in the
last minutes, as in our synthetic world, a 24 h window hides exactly the signal the model is for
(measured: docs/benchmarks.md, "TransAct and the baselines"). `time_window_ms=86_400_000` (or
`homefeed train --set time_window_ms=86400000`) restores the paper's setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from homefeed.events import ACTION_VOCAB_SIZE, ActionType

ENCODER_KINDS = (
    "none",  # no sequence feature: the baseline every lift is measured against
    "avg_pool",  # mean of the engaged pin embeddings
    "cnn",  # 1D convolution over [pin_emb, action_emb], masked max-pool
    "rnn",  # Elman RNN run oldest -> newest, last state
    "lstm",  # LSTM run oldest -> newest, last state
    "transformer",  # vanilla: pin embeddings only, no action embedding, no early fusion
    "din",  # DIN: candidate-queried local activation unit over [pin_emb, action_emb], weighted sum
    "transact_v10",  # TransAct, output = all L tokens flattened
    "transact_v11",  # TransAct, output = first K tokens + Linear(max-pool), flattened
)
TRANSACT_KINDS = ("transact_v10", "transact_v11")

DEFAULT_HEADS = tuple(a.wire_name for a in ActionType)  # ('repin', 'click', 'hide')
DAY_MS = 24 * 3600 * 1000


@dataclass
class ModelConfig:
    # -- sequence encoder ---------------------------------------------------------------------
    encoder: str = "transact_v11"
    seq_len: int = 100  # L: latest actions kept (sequences are newest first)
    emb_dim: int = 32  # D: pin embedding width (engaged pins and candidate)
    action_vocab_size: int = ACTION_VOCAB_SIZE  # ids 1..vocab-1 are actions, 0 is padding
    # The sequence input is the action sequence and the impression sequence (pins shown) merged
    # by time, newest first, capped at seq_len (homefeed.model.batch.merge_impressions); an
    # impression's action id is one past the last ActionType id, so the action embedding has one
    # more row. Exported with the config: serving reads impressions only for such a model.
    sequence_impressions: bool = False
    action_emb_dim: int = 32
    n_layers: int = 2  # transformer encoder layers (TransAct and vanilla transformer)
    n_heads: int = 2
    ff_dim: int = 32  # transformer feed-forward width
    dropout: float = 0.1
    top_k: int = 10  # v1.1: first K output tokens kept (the K most recent actions)
    time_window_ms: int = 0  # training-only random time-window mask, T ~ U[0, window]; paper: DAY_MS
    hidden_dim: int = 64  # CNN channels / RNN and LSTM hidden size
    cnn_kernel: int = 3
    din_hidden: tuple[int, ...] = (80, 40)  # DIN's local activation unit (the paper's 80-40 MLP)
    # Multiplies engaged-pin and candidate embeddings at the model input (None: sqrt(emb_dim)).
    # Why: pin embeddings are unit-length (~0.18 per value at D=32) while nn.Embedding action
    # vectors start at ~1 per value, so unscaled, the two halves of a token that must be compared
    # are ~6x smaller than the part that carries no candidate information (docs/training.md).
    pin_emb_scale: float | None = None
    # -- ranker -----------------------------------------------------------------------------
    dense_dim: int = 0  # F: user profile + pin + context dense features
    mlp_dims: tuple[int, ...] = (128, 64)
    dcn_layers: int = 2  # 0 = plain MLP; >0 = DCN v2 cross layers before the MLP
    dcn_rank: int = 0  # 0 = full-rank cross weight; r > 0 = low-rank U V^T of rank r
    # (a full-rank cross layer has input_dim^2 weights: ~1.2M for v1.1's 1,088-d input, but
    #  ~93M for v1.0's 9,632-d one -- use dcn_rank or dcn_layers=0 with transact_v10)
    heads: tuple[str, ...] = field(default_factory=lambda: DEFAULT_HEADS)

    def __post_init__(self) -> None:
        self.mlp_dims = tuple(int(d) for d in self.mlp_dims)
        self.din_hidden = tuple(int(d) for d in self.din_hidden)
        self.heads = tuple(str(h) for h in self.heads)
        self.sequence_impressions = bool(self.sequence_impressions)
        if self.sequence_impressions:  # room for the impression id (IMPRESSION_ACTION_ID)
            self.action_vocab_size = max(int(self.action_vocab_size), ACTION_VOCAB_SIZE + 1)
        if self.pin_emb_scale is None:
            self.pin_emb_scale = float(self.emb_dim) ** 0.5
        self.pin_emb_scale = float(self.pin_emb_scale)
        self.validate()

    # -- derived sizes ------------------------------------------------------------------------
    @property
    def user_token_dim(self) -> int:
        """Width of the user-side half of a TransAct token: [action_emb, engaged_pin_emb]."""
        return self.action_emb_dim + self.emb_dim

    @property
    def transact_dim(self) -> int:
        """d_model of TransAct: [action_emb, engaged_pin_emb, candidate_emb]."""
        return self.action_emb_dim + 2 * self.emb_dim

    @property
    def n_heads_out(self) -> int:
        return len(self.heads)

    def head_index(self, name: str) -> int:
        try:
            return self.heads.index(name)
        except ValueError:
            raise KeyError(f"no head {name!r}; heads are {self.heads}") from None

    # -- checks ---------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"ModelConfig: {msg}")

        need(self.encoder in ENCODER_KINDS, f"encoder {self.encoder!r} not in {ENCODER_KINDS}")
        for name in ("seq_len", "emb_dim", "action_emb_dim", "n_layers", "n_heads", "ff_dim",
                     "hidden_dim", "cnn_kernel"):
            need(int(getattr(self, name)) >= 1, f"{name} must be >= 1")
        need(self.action_vocab_size >= 2, "action_vocab_size must be >= 2 (0 is padding)")
        need(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        need(self.time_window_ms >= 0, "time_window_ms must be >= 0")
        need(self.dense_dim >= 0, "dense_dim must be >= 0")
        need(self.pin_emb_scale is not None and self.pin_emb_scale > 0, "pin_emb_scale must be > 0")
        need(self.dcn_layers >= 0 and self.dcn_rank >= 0, "dcn_layers and dcn_rank must be >= 0")
        need(all(d >= 1 for d in self.mlp_dims), "mlp_dims must be positive")
        need(all(d >= 1 for d in self.din_hidden), "din_hidden must be positive")
        need(len(self.heads) >= 1, "at least one head")
        need(len(set(self.heads)) == len(self.heads), f"duplicate heads in {self.heads}")
        if self.encoder == "transact_v11":
            need(1 <= self.top_k <= self.seq_len, "top_k must be in [1, seq_len]")
        if self.encoder in TRANSACT_KINDS:
            need(self.transact_dim % self.n_heads == 0,
                 f"transact_dim {self.transact_dim} not divisible by n_heads {self.n_heads}")
        if self.encoder == "transformer":
            need(self.emb_dim % self.n_heads == 0,
                 f"emb_dim {self.emb_dim} not divisible by n_heads {self.n_heads}")

    # -- export ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mlp_dims"] = list(self.mlp_dims)
        out["din_hidden"] = list(self.din_hidden)
        out["heads"] = list(self.heads)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown key(s) {unknown}")
        # configs saved before pin_emb_scale existed were trained on raw embeddings
        return cls(**{"pin_emb_scale": 1.0, **data})

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
