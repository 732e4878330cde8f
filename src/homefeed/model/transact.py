"""TransAct: transformer over the user's realtime action sequence, early-fused with the candidate.

Follows the KDD 2023 paper and Pinterest's reference module (`pinterest/transformer_user_action`),
with its known quirks fixed (see docs/transact.md):

- padding is an explicit mask (`RankingBatch.seq_mask`), not the lowest action id;
- the random time window T is drawn **per row**, not once per batch;
- the max-pool runs over visible positions only (padding can never win it);
- positions hidden by a mask are also zeroed in the output: in a post-LN layer a token's own
  input reaches its output through the residual, so the key-padding mask alone would still
  leak a masked action into the first-K slots;
- a row with nothing visible (cold start) yields an all-zero output, never NaN.

Where the serving split goes
----------------------------
A token is ``concat[action_emb, engaged_pin_emb | candidate_emb]``: the first
``config.user_token_dim`` columns depend only on the user, the last ``emb_dim`` only on the
candidate. The first thing the encoder does with tokens is layer 0's attention input projection
``x @ W_in.T + b_in`` (W_in = ``encoder.layers.0.self_attn.in_proj_weight``, [3d, d]) and the
residual ``x + ...``. Splitting ``W_in[:, :user_token_dim]`` (user half: [L, 3d], once per request)
from ``W_in[:, user_token_dim:]`` (candidate half: [N, 3d], once per candidate) gives
``qkv[n, l] = user_qkv[l] + cand_qkv[n] + b_in`` without ever materialising the [N, L, d] tokens.

Three formulations, one reference
---------------------------------
1. **`TransActEncoder.forward` is the reference**: the module that is trained, evaluated and
   exported; every other formulation is tested against it.
2. `transact_one_user`: the same computation for one user and N candidates, written out op by
   op from the weights (no `nn.TransformerEncoder`), unsplit; tests/test_model.py
   (`test_transact_one_user_matches_module`) checks it equals the reference.
3. `homefeed.serving.transact_split.TransActSplit`: the serving split (layer 0 per user + per
   candidate), run by `homefeed.serving.fast_model.ServedRanker`; tests/test_fast_model.py
   (`test_served_equals_plain_module`, `test_every_transact_formulation_agrees`) checks its
   scores equal the reference's (`Ranker.predict` on the per-candidate batch).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from homefeed.model.batch import RankingBatch
from homefeed.model.config import ModelConfig

# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------


def newest_position(visible: Tensor, seq_time_ms: Tensor) -> Tensor:
    """[B] index of the newest visible action per row (largest time; ties -> lowest index, i.e.
    the newest under the newest-first order). Meaningless for rows with nothing visible."""
    lowest = torch.iinfo(seq_time_ms.dtype).min
    return torch.where(visible, seq_time_ms, torch.full_like(seq_time_ms, lowest)).argmax(dim=1)


def time_window_mask(
    visible: Tensor,
    seq_time_ms: Tensor,
    request_time_ms: Tensor,
    window_ms: Tensor | int,
) -> Tensor:
    """Training-only random time window, applied on top of an eval visibility mask.

    `window_ms` is T, a scalar or one value per row ([B]). Hides actions with
    ``request_time - action_time < T`` (those within T before the request), except the newest
    visible action of each row, which always stays (the paper: never mask every position).
    Rows with nothing visible stay empty. Returns the new [B, L] visibility.
    """
    t = torch.as_tensor(window_ms, dtype=torch.long, device=seq_time_ms.device)
    if t.dim() == 0:
        t = t.expand(seq_time_ms.shape[0])
    age = request_time_ms[:, None] - seq_time_ms
    keep = visible & (age >= t[:, None])
    newest = newest_position(visible, seq_time_ms)
    rows = torch.arange(visible.shape[0], device=visible.device)
    keep[rows, newest] |= visible[rows, newest]
    return keep


def sample_time_windows(batch_size: int, window_ms: int, device: torch.device,
                        generator: torch.Generator | None = None) -> Tensor:
    """[B] int64, T ~ U[0, window_ms], one draw per row (uses the global torch RNG unless a
    generator is given, so torch.manual_seed makes it deterministic)."""
    dtype = torch.float32 if device.type == "mps" else torch.float64
    u = torch.rand(batch_size, device=device, generator=generator, dtype=dtype)
    return (u * window_ms).round().to(torch.long)


# ---------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------


class TransActEncoder(nn.Module):
    """`forward(batch) -> [B, out_dim]`; out_dim = L*d (v1.0) or (K+1)*d (v1.1), d = A + 2D."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.encoder not in ("transact_v10", "transact_v11"):
            raise ValueError(f"TransActEncoder needs a transact encoder kind, got {config.encoder!r}")
        self.config = config
        self.version = "v1.1" if config.encoder == "transact_v11" else "v1.0"
        d = config.transact_dim
        self.d_model = d
        self.action_emb = nn.Embedding(config.action_vocab_size, config.action_emb_dim, padding_idx=0)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=config.n_heads,
            dim_feedforward=config.ff_dim,
            dropout=config.dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,  # post-LN, as the reference (PyTorch default)
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=config.n_layers,
                                             enable_nested_tensor=False)
        self.pool_proj: nn.Linear | None
        if self.version == "v1.1":
            self.pool_proj = nn.Linear(d, d)
            self.out_dim = (config.top_k + 1) * d
        else:
            self.pool_proj = None
            self.out_dim = config.seq_len * d
        self.time_window_ms = config.time_window_ms

    def visibility(self, batch: RankingBatch) -> Tensor:
        """[B, L] bool: which actions the encoder may see in this mode."""
        visible = batch.visible_mask()  # eval: padding and future actions hidden
        if self.training and self.time_window_ms > 0:
            t = sample_time_windows(batch.batch_size, self.time_window_ms, visible.device)
            visible = time_window_mask(visible, batch.seq_time_ms, batch.request_time_ms, t)
        return visible

    def forward(self, batch: RankingBatch, visible: Tensor | None = None) -> Tensor:
        B, L = batch.seq_action.shape
        if L != self.config.seq_len:
            raise ValueError(f"batch seq_len {L} != model seq_len {self.config.seq_len}")
        # (1) action embedding; padding_idx 0 keeps padded positions at a zero vector.
        action = self.action_emb(batch.seq_action)
        pins = torch.where(batch.seq_mask[..., None], batch.seq_pin_emb, 0.0)
        # (2) early fusion: token = [action_emb, engaged_pin_emb | candidate_emb], width A + 2D.
        #     Columns [:user_token_dim] are user-side, the rest candidate-side (serving split).
        cand = batch.cand_emb[:, None, :].expand(B, L, batch.cand_emb.shape[-1])
        tokens = torch.cat([action, pins, cand], dim=-1)
        # (3) masks: key padding from seq_mask + future actions (eval) + random per-row time
        #     window (training only). A row with nothing visible lets attention see position 0
        #     as a dummy key (so softmax has a finite entry); its outputs are zeroed below.
        if visible is None:
            visible = self.visibility(batch)
        has_any = visible.any(dim=1)
        key_padding = ~visible
        key_padding[:, 0] &= has_any
        # (4) transformer encoder: post-LN, batch_first, no positional encoding.
        out = self.encoder(tokens, src_key_padding_mask=key_padding)
        out = torch.where(visible[..., None], out, 0.0)
        # (5) output compression.
        return self._compress(out, visible, has_any)

    def _compress(self, out: Tensor, visible: Tensor, has_any: Tensor) -> Tensor:
        if self.pool_proj is None:  # v1.0: all L positions, flattened
            return out.flatten(1)
        k = self.config.top_k  # v1.1: first K (most recent) tokens + Linear(max-pool), flattened
        first_k = out[:, :k]
        lowest = torch.finfo(out.dtype).min
        pooled = torch.where(visible[..., None], out, lowest).amax(dim=1)
        pooled = torch.where(has_any[:, None], self.pool_proj(torch.where(has_any[:, None], pooled, 0.0)), 0.0)
        return torch.cat([first_k, pooled[:, None, :]], dim=1).flatten(1)


# ---------------------------------------------------------------------------------------------
# the same, written out op by op: one user, N candidates (tested equal to the module's forward)
# ---------------------------------------------------------------------------------------------


def _layer_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)


def transact_one_user(
    weights: Mapping[str, Tensor] | TransActEncoder,
    config: ModelConfig,
    seq_pin_emb: Tensor,
    seq_action: Tensor,
    seq_time_ms: Tensor,
    seq_mask: Tensor,
    request_time_ms: Tensor | int,
    cand_emb: Tensor,
) -> Tensor:
    """TransAct output for ONE user and N candidates, inference semantics -> [N, out_dim].

    A pure function of the weights (a `TransActEncoder` or its `state_dict()`; keys relative to
    the encoder, e.g. ``encoder.layers.0.self_attn.in_proj_weight``) and the user's [L, ...]
    sequence tensors; equals the reference, ``TransActEncoder.eval()``, on the broadcast batch.
    Written out op by op (multi-head attention, post-LN, ReLU feed-forward) so the math is
    readable without `nn.TransformerEncoder`; see the module docstring for where layer 0's input
    projection splits.
    """
    w = weights.state_dict() if isinstance(weights, nn.Module) else weights
    n = cand_emb.shape[0]
    L = seq_action.shape[-1]
    d = config.transact_dim
    h = config.n_heads
    dh = d // h
    seq_pin_emb = seq_pin_emb.reshape(L, -1)
    seq_action = seq_action.reshape(L)
    seq_time_ms = seq_time_ms.reshape(L)
    seq_mask = seq_mask.reshape(L)
    rt = torch.as_tensor(request_time_ms, dtype=torch.long, device=seq_time_ms.device).reshape(())

    # (3) inference mask: padding and future actions
    visible = seq_mask & (seq_time_ms <= rt)  # [L]
    has_any = bool(visible.any())
    key_padding = ~visible
    if not has_any:
        key_padding = key_padding.clone()
        key_padding[0] = False  # dummy key, outputs zeroed below
    # (1) + (2) user half [L, A+D] computed once; tokens [N, L, d]
    action = w["action_emb.weight"][seq_action]
    action = torch.where(seq_action[:, None] > 0, action, 0.0)
    pins = torch.where(seq_mask[:, None], seq_pin_emb, 0.0)
    user = torch.cat([action, pins], dim=-1)
    x = torch.cat([user[None].expand(n, L, user.shape[-1]),
                   cand_emb[:, None, :].expand(n, L, cand_emb.shape[-1])], dim=-1)
    bias = torch.zeros(L, dtype=x.dtype, device=x.device).masked_fill(key_padding, float("-inf"))
    # (4) encoder layers
    for i in range(config.n_layers):
        p = f"encoder.layers.{i}."
        qkv = x @ w[p + "self_attn.in_proj_weight"].T + w[p + "self_attn.in_proj_bias"]  # [N, L, 3d]
        q, k, v = (t.reshape(n, L, h, dh).transpose(1, 2) for t in qkv.split(d, dim=-1))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh) + bias  # [N, h, L, L]
        attn = scores.softmax(dim=-1) @ v  # [N, h, L, dh]
        attn = attn.transpose(1, 2).reshape(n, L, d)
        attn = attn @ w[p + "self_attn.out_proj.weight"].T + w[p + "self_attn.out_proj.bias"]
        x = _layer_norm(x + attn, w[p + "norm1.weight"], w[p + "norm1.bias"])
        ff = torch.relu(x @ w[p + "linear1.weight"].T + w[p + "linear1.bias"])
        ff = ff @ w[p + "linear2.weight"].T + w[p + "linear2.bias"]
        x = _layer_norm(x + ff, w[p + "norm2.weight"], w[p + "norm2.bias"])
    if "encoder.norm.weight" in w:  # a final norm, if the stack ever gets one
        x = _layer_norm(x, w["encoder.norm.weight"], w["encoder.norm.bias"])
    x = torch.where(visible[None, :, None], x, 0.0)
    # (5) compression
    if config.encoder == "transact_v10":
        return x.flatten(1)
    first_k = x[:, : config.top_k]
    if has_any:
        pooled = torch.where(visible[None, :, None], x, torch.finfo(x.dtype).min).amax(dim=1)
        pooled = pooled @ w["pool_proj.weight"].T + w["pool_proj.bias"]
    else:
        pooled = x.new_zeros((n, d))
    return torch.cat([first_k, pooled[:, None, :]], dim=1).flatten(1)
