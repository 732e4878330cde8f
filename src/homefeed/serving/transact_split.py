"""TransAct split for serving: layer 0 as a per-user part plus a per-candidate part.

`TransActSplit(encoder, config, device)` holds a `homefeed.model.transact.TransActEncoder`'s
weights in the shapes this formulation uses; `homefeed.serving.fast_model.ServedRanker` runs it.
The reference it must match is `TransActEncoder.forward` (the module trained and evaluated);
tests/test_fast_model.py checks every path of `ServedRanker` against it.

1. Per model (`__init__`): the user and candidate halves of layer 0's q/k/v projection, the
   candidate part of (value projection + output projection + residual), per-head blocks.
2. Per user (`user_tokens`, `user_layer0`): the user half of the tokens and every layer-0
   matrix that depends only on the user (S, G, UVO or, in "sdpa" mode, q/k/v).
3. Per candidate chunk (`layer0`, then `layer` for each later layer, `finish`, `pool`): the
   candidate-dependent work.

The algebra of step 2 and 3
---------------------------
A TransAct token is ``x[n, l] = [a_l, p_l | c_n]``: action embedding and engaged-pin embedding of
position l (user side, width U = A + D), and the candidate embedding (width D). Early fusion
makes every token candidate-dependent, so after layer 0 nothing is shareable. Layer 0 is:

* **Input projection** (the split in `homefeed.model.transact`): ``q/k/v[n, l] = u/q/k/v_user[l] +
  q/k/v_cand[n]`` with the user half ``u @ W_in[:, :U].T + b_in`` computed once ([L, 3d]) and the
  candidate half once per candidate ([N, 3d]); the [N, L, 3d] tensor and the [N, L, d] tokens are
  never built.
* **Attention logits.** Per head, ``q[n,l]·k[n,m] = q[n,l]·k_user[m] + q[n,l]·k_cand[n]``; the second
  term is constant along the key axis m, so softmax removes it exactly. What is left is
  ``S[l, m] + T[n, m]`` with ``S = q_user k_userᵀ`` ([L, L] per head, once per user) and
  ``T = c (W_q,cand-half ᵀ k_userᵀ)`` ([N, L]: a [D, h·L] matrix is precomputed per user, so
  T is one [N, D] x [D, h·L] matmul). Layer 0 needs no Q·Kᵀ over N·L tokens at all.
* **Attention values and output projection.** Softmax rows sum to 1, so ``Σ_m p·v[n, m] =
  Σ_m p·v_user[m] + v_cand[n]``; the user part folds with the output projection into one
  [h·L, d] matrix per user (``v_user,h W_o,hᵀ`` per head), the candidate part into a per-model
  [D, d] matrix (``W_v,candᵀ W_oᵀ`` plus the residual's identity on the candidate columns).
  Layer 0's attention block is then: ``softmax(S + T) @ UVO + U0[l] + C0[n]``, one broadcast add,
  one softmax and one [N·L, h·L] x [h·L, d] matmul.

Not shared: layer 0's residual + LayerNorm + feed-forward (candidate-dependent through c_n and
softmax(S + T)), and every later layer entirely (its Q/K/V are projections of candidate-dependent
hidden states: the user-only parts of keys/values are *not* reusable after layer 1's input). The
DCN cross layers and MLP see the candidate-dependent encoder output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from homefeed.model.config import ModelConfig


class TransActSplit:
    """Weights of a TransActEncoder in the shapes the split formulation uses (fp32, on device)."""

    def __init__(self, encoder: Any, config: ModelConfig, device: torch.device):
        sd = {k: v.detach().to(device=device, dtype=torch.float32) for k, v in encoder.state_dict().items()}
        self.config = config
        self.d = d = config.transact_dim
        self.U = U = config.user_token_dim
        self.D = D = config.emb_dim
        self.h = h = config.n_heads
        self.dh = dh = d // h
        self.scale = 1.0 / math.sqrt(dh)
        self.n_layers = config.n_layers
        self.top_k = config.top_k
        self.v11 = config.encoder == "transact_v11"
        self.action_emb = sd["action_emb.weight"]
        for layer in encoder.encoder.layers:  # what the formulation below assumes
            if layer.norm_first or getattr(layer, "activation_relu_or_gelu", 1) != 1:
                raise ValueError("ServedRanker expects post-LN encoder layers with ReLU")
        self.layers = []
        for i in range(config.n_layers):
            p = f"encoder.layers.{i}."
            self.layers.append({k: sd[p + k] for k in (
                "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
                "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")})
            eps = encoder.encoder.layers[i].norm1.eps, encoder.encoder.layers[i].norm2.eps
            self.layers[-1]["eps"] = eps
        self.final_norm: tuple[Tensor, Tensor, float] | None = None
        if "encoder.norm.weight" in sd:
            self.final_norm = (sd["encoder.norm.weight"], sd["encoder.norm.bias"], encoder.encoder.norm.eps)
        self.pool_w: Tensor | None = sd.get("pool_proj.weight")
        self.pool_b: Tensor | None = sd.get("pool_proj.bias")
        l0 = self.layers[0]
        W_in, b_in = l0["self_attn.in_proj_weight"], l0["self_attn.in_proj_bias"]
        Wq, _, Wv = W_in.split(d)
        self.b_in = b_in
        # user half [3d, U] and candidate halves [d, D] of the q/k/v projections
        self.W_in_u = W_in[:, :U].contiguous()  # [3d, U]: one matmul for the user's q, k, v
        self.Wq_c_T = Wq[:, U:].T.contiguous()  # [D, d]
        self.Wo = l0["self_attn.out_proj.weight"]
        self.bo = l0["self_attn.out_proj.bias"]
        # Candidate part of (attention output + residual): c @ (Wv_cᵀ Woᵀ + [0 | I]) + bo.
        embed_c = torch.zeros(D, d, device=device)
        embed_c[:, U:] = torch.eye(D, device=device)
        self.H_c = (Wv[:, U:].T @ self.Wo.T + embed_c).contiguous()  # [D, d]
        # Per-head column blocks of Wo: Wo[:, h*dh:(h+1)*dh]
        self.Wo_heads = self.Wo.view(d, h, dh).permute(1, 2, 0).contiguous()  # [h, dh, d] = Wo_hᵀ
        self.Wq_c_heads = Wq[:, U:].view(h, dh, D).permute(0, 2, 1).contiguous()  # [h, D, dh]

    def user_tokens(self, seq_pin_emb: Tensor, seq_action: Tensor, seq_mask: Tensor) -> Tensor:
        """[L', U] user half of the tokens: [action_emb, engaged pin emb (0 at padding)]."""
        action = self.action_emb[seq_action]
        pins = torch.where(seq_mask[:, None], seq_pin_emb.to(action.dtype), 0.0)
        return torch.cat([action, pins], dim=-1)

    def user_layer0(self, u: Tensor, key_bias: Tensor | None, mode: str) -> dict[str, Any]:
        """Everything layer 0 needs from the user: u [Lv, U] -> per-user matrices."""
        Lv = u.shape[0]
        h, dh, d, D = self.h, self.dh, self.d, self.D
        qkv_u = F.linear(u, self.W_in_u, self.b_in)  # [Lv, 3d], biases included
        uq, uk, uv = qkv_u.split(d, dim=-1)
        ukh = uk.view(Lv, h, dh).transpose(0, 1)  # [h, Lv, dh]
        uvh = uv.view(Lv, h, dh).transpose(0, 1)
        U0 = torch.cat([u, u.new_zeros(Lv, D)], dim=-1)  # [Lv, d]: residual, user columns
        out: dict[str, Any] = {"U0": U0}
        if mode == "decomposed":
            uqh = uq.view(Lv, h, dh).transpose(0, 1)
            S = (uqh @ ukh.transpose(1, 2)) * self.scale  # [h, Lv(l), Lv(m)]
            if key_bias is not None:
                S = S + key_bias.to(S.dtype)
            out["S"] = S.permute(1, 0, 2).reshape(Lv, h * Lv)  # [l, (h, m)]
            # T[n, (h, m)] = scale * (c_n Wq_c,hᵀ) · uk_h[m]  ->  c @ G, G [D, h*Lv]
            G = (self.Wq_c_heads @ ukh.transpose(1, 2)) * self.scale  # [h, D, Lv]
            G = G.permute(1, 0, 2).reshape(D, h * Lv)
            out["G"] = torch.cat([G, self.H_c.to(G.dtype)], dim=1).contiguous()  # [D, h*Lv + d]
            out["b"] = torch.cat([self.bo.new_zeros(h * Lv), self.bo]).to(G.dtype)
            out["UVO"] = (uvh @ self.Wo_heads.to(uvh.dtype)).reshape(h * Lv, d)  # [(h, m), d]
        else:  # "sdpa": one attention call, N*Lv queries against the user's Lv keys/values
            out["uq"] = uq
            out["k"] = ukh[None]  # [1, h, Lv, dh]
            out["v"] = uvh[None]
            out["mask"] = None if key_bias is None else (key_bias == 0)[None, None, None, :]
        return out

    # -- per candidate chunk --------------------------------------------------------------------
    def layer0(self, st: dict[str, Any], c: Tensor, mode: str) -> Tensor:
        """Layer 0 for candidates c [Nc, D] -> hidden states [Nc, Lv, d]."""
        Nc = c.shape[0]
        Lv = st["U0"].shape[0]
        h, d, dh = self.h, self.d, self.dh
        if mode == "decomposed":
            TC = torch.addmm(st["b"], c.to(st["G"].dtype), st["G"])  # [Nc, h*Lv + d]
            T, C0 = TC[:, : h * Lv], TC[:, h * Lv:]
            logits = st["S"][None] + T[:, None, :]  # [Nc, Lv, h*Lv]
            P = torch.softmax(logits.view(Nc, Lv, h, Lv), dim=-1).view(Nc * Lv, h * Lv)
            y = (P @ st["UVO"].to(P.dtype)).view(Nc, Lv, d)
        else:
            cq = c @ self.Wq_c_T  # [Nc, d] (autocast dtype on CUDA)
            with torch.autocast(c.device.type, enabled=False):  # residual part stays fp32
                C0 = torch.addmm(self.bo, c.float(), self.H_c)  # [Nc, d]
            q = (st["uq"][None] + cq[:, None, :]).view(1, Nc * Lv, h, dh).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, st["k"].to(q.dtype), st["v"].to(q.dtype),
                                               attn_mask=st["mask"])
            o = o.transpose(1, 2).reshape(Nc * Lv, d)
            y = F.linear(o, self.Wo.to(o.dtype)).view(Nc, Lv, d)
        y = y + st["U0"][None].to(y.dtype) + C0[:, None, :].to(y.dtype)
        return self._norm_ffn(y, self.layers[0])

    def _norm_ffn(self, y: Tensor, p: dict) -> Tensor:
        """post-LN tail of a layer: LN1(y) -> FFN -> LN2(x + ffn)."""
        d = self.d
        x = F.layer_norm(y, (d,), p["norm1.weight"], p["norm1.bias"], p["eps"][0])
        f = F.relu(F.linear(x, p["linear1.weight"], p["linear1.bias"]))
        f = F.linear(f, p["linear2.weight"], p["linear2.bias"])
        return F.layer_norm(x + f, (d,), p["norm2.weight"], p["norm2.bias"], p["eps"][1])

    def layer(self, i: int, x: Tensor, mask: Tensor | None) -> Tensor:
        """A full (candidate-dependent) encoder layer on x [Nc, Lv, d]; mask [1,1,1,Lv] bool."""
        p = self.layers[i]
        Nc, Lv, d = x.shape
        h, dh = self.h, self.dh
        qkv = F.linear(x, p["self_attn.in_proj_weight"], p["self_attn.in_proj_bias"])
        q, k, v = qkv.view(Nc, Lv, 3, h, dh).unbind(2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask)
        o = o.transpose(1, 2).reshape(Nc, Lv, d)
        y = x + F.linear(o, p["self_attn.out_proj.weight"], p["self_attn.out_proj.bias"])
        return self._norm_ffn(y, p)

    def finish(self, x: Tensor) -> Tensor:
        if self.final_norm is not None:
            w, b, eps = self.final_norm
            x = F.layer_norm(x, (self.d,), w, b, eps)
        return x

    def pool(self, pooled: Tensor) -> Tensor:
        assert self.pool_w is not None, "v1.0 has no pool projection"
        return F.linear(pooled, self.pool_w, self.pool_b)


__all__ = ["TransActSplit"]
