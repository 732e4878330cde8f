"""DIN (Zhou et al. 2018, "Deep Interest Network for Click-Through Rate Prediction"): attention
over the user's history with the candidate as query, the sequence baseline published benchmarks
compare against.

1. History token l = [p_l, a_l]: the engaged pin's embedding and its action-type embedding
   (homefeed's actions have types: a hide is not a repin).
2. Local activation unit: an MLP (`ModelConfig.din_hidden`, PReLU, then Linear -> 1) over
   [p_l, a_l, c, p_l - c, p_l * c] gives one weight w_l per position (c: candidate embedding).
   The paper's [key, query, key - query, key * query] input, with the action embedding added on
   the key side so the weight can depend on what the user did with the pin.
3. Weights are NOT softmax-normalised (the paper, section 4.3: normalising would lose the
   intensity of the user's interest; how many engaged pins resemble the candidate is signal,
   e.g. KuaiRand's click rates). Padding and future actions get weight 0 (`visible_mask`).
4. Output = sum_l w_l [p_l, a_l] (width D + A), exact zeros for a user with no visible action.

Serving one user against N candidates (`user_state` once, `score_candidates` per chunk): the
first Linear splits exactly into a user part ((W_p + W_d) p_l + W_a a_l + b, [L, H] once per user),
a candidate part ((W_c - W_d) c, [N, H]) and the product term W_m (p_l * c) = c @ M with
M[d, (l, j)] = p_l[d] W_m[j, d] precomputed per user ([D, L*H]): no [N, L, 4D+A] input is built.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from homefeed.model.batch import RankingBatch
from homefeed.model.config import ModelConfig


class DINEncoder(nn.Module):
    """Candidate-queried attention pooling of the history (out_dim = emb_dim + action_emb_dim)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D, A = config.emb_dim, config.action_emb_dim
        self.emb_dim, self.action_dim = D, A
        self.action_emb = nn.Embedding(config.action_vocab_size, A, padding_idx=0)
        layers: list[nn.Module] = []
        width = 4 * D + A  # [p, a, c, p - c, p * c]
        for hidden in config.din_hidden:
            layers += [nn.Linear(width, hidden), nn.PReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.activation_unit = nn.Sequential(*layers)
        self.out_dim = D + A

    # -- training / batch path ----------------------------------------------------------------
    def forward(self, batch: RankingBatch) -> Tensor:
        visible = batch.visible_mask()  # [B, L]
        p = batch.seq_pin_emb  # [B, L, D]
        a = self.action_emb(batch.seq_action)  # [B, L, A]
        c = batch.cand_emb[:, None].expand_as(p)
        x = torch.cat([p, a, c, p - c, p * c], dim=-1)
        weights = _masked(self.activation_unit(x).squeeze(-1), visible)  # [B, L]
        tokens = _masked(torch.cat([p, a], dim=-1), visible[..., None])
        return torch.einsum("bl,blc->bc", weights, tokens)

    # -- serving: one user, N candidates --------------------------------------------------------
    def user_state(self, seq_pin_emb: Tensor, seq_action: Tensor, visible: Tensor) -> dict[str, Tensor]:
        """Per-user precompute for `score_candidates` (inputs [L, D], [L], [L] bool)."""
        first = self.activation_unit[0]
        assert isinstance(first, nn.Linear)
        D, A = self.emb_dim, self.action_dim
        w = first.weight  # [H, 4D + A], columns: p | a | c | p - c | p * c
        w_p, w_a, w_c = w[:, :D], w[:, D:D + A], w[:, D + A:2 * D + A]
        w_d, w_m = w[:, 2 * D + A:3 * D + A], w[:, 3 * D + A:]
        p = seq_pin_emb
        a = self.action_emb(seq_action)
        L, H = p.shape[0], w.shape[0]
        return {
            "user": p @ (w_p + w_d).T + a @ w_a.T + first.bias,  # [L, H]
            "cand_w": (w_c - w_d).T,  # [D, H]
            "prod": (p[:, None, :] * w_m[None]).permute(2, 0, 1).reshape(D, L * H),  # [D, L*H]
            "tokens": _masked(torch.cat([p, a], dim=-1), visible[:, None]),  # [L, D + A]
            "visible": visible,  # [L]
        }

    def score_candidates(self, state: dict[str, Tensor], cand: Tensor) -> Tensor:
        """The encoder's output for N candidates [N, D] of the user in `state`: [N, D + A]."""
        user = state["user"]
        L, H = user.shape
        h = user[None] + (cand @ state["cand_w"])[:, None] + (cand @ state["prod"]).view(-1, L, H)
        for layer in list(self.activation_unit)[1:]:
            h = layer(h)
        weights = _masked(h.squeeze(-1), state["visible"])  # [N, L]
        return weights @ state["tokens"].to(weights.dtype)


def _masked(x: Tensor, keep: Tensor) -> Tensor:
    """x where `keep` (broadcast), exact zeros elsewhere (whatever x holds there)."""
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
