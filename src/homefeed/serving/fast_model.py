"""Serving-time ranker: ONE user against N candidates, sharing every user-only computation.

`ServedRanker(ranker)` wraps a trained `homefeed.model.Ranker` (any encoder kind) and scores one
request: ``score(user, cand_emb, dense) -> np.ndarray [N, H]`` probabilities, equal to
``ranker.predict(batch)`` on the per-candidate batch within a stated tolerance (fp32 CPU:
1e-5 absolute on probabilities, measured ~1e-7; bf16 CPU or CUDA: 2e-2, measured ~3e-3;
fp16 CUDA: 1e-2). ``dtype="auto"`` (the service default) picks bf16 on CUDA and on a CPU with
native bf16 dot products (AVX512-BF16 / AMX / Arm BF16, see `cpu_bf16_native`), fp32 elsewhere.

This module imports nothing but torch, numpy and `homefeed.model` (no feast/bentoml/redis), so it
runs on a GPU machine that only has torch.

What is shared per user (computed once per request) and what is not
------------------------------------------------------------------
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
* **Action embedding lookup, padding/future mask, key-padding bias**: once per user. On CPU, masked
  positions (padding, future actions) are dropped before any work (exact: a masked key has zero
  attention weight in every layer and a masked query's output is zeroed and excluded from the
  max-pool), so a user with 12 actions costs 12 tokens per candidate, not ``seq_len``.

Not shared: layer 0's residual + LayerNorm + feed-forward (candidate-dependent through c_n and
softmax(S + T)), and every later layer entirely (its Q/K/V are projections of candidate-dependent
hidden states: the user-only parts of keys/values are *not* reusable after layer 1's input). The
DCN cross layers and MLP see the candidate-dependent encoder output.

Baseline encoders (none, avg_pool, cnn, rnn, lstm, vanilla transformer) never look at the
candidate: they run once on the user ([1, L]) and their output is broadcast (stride 0) to the N
rows of the ranker's cross layers and MLP.

DIN looks at the candidate (its attention query), so its output is per candidate: the encoder's
own split (`DINEncoder.user_state` once per user, `score_candidates` per chunk of candidates, see
`homefeed.model.din`) never builds the [N, L, 4D+A] activation-unit input; same chunking, dtypes
and static path as the other encoders, no CUDA graphs.

Execution
---------
* CPU (fp32, or bf16 under CPU autocast): masked positions dropped, candidates processed in
  chunks of ~`chunk_tokens` tokens so each chunk's activations stay in cache (layer 0 via the
  S+T decomposition, later layers via `F.scaled_dot_product_attention`, the flash CPU kernel),
  inference_mode. bf16 matmuls go to oneDNN where it takes them; on a CPU without native bf16
  they are emulated (correct, ~10x slower than fp32), which is why "auto" checks the hardware.
* CUDA: static shapes (no compaction: masks are tensors, so nothing branches on data), bf16
  autocast by default, N padded up to a bucket and the whole request (user precompute, encoder,
  cross layers, MLP, sigmoid) replayed as one CUDA graph per bucket; eager autocast as fallback
  (torch < 2.4 or capture failure). Layer 0 runs as one attention call with N·L queries against
  the user's L keys/values (``scaled_dot_product_attention`` with batch 1).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from homefeed.model.batch import RankingBatch
from homefeed.model.config import TRANSACT_KINDS, ModelConfig
from homefeed.model.ranker import Ranker

log = logging.getLogger(__name__)

# Tolerances on probabilities (max abs difference against `ranker.predict` in fp32).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class UserTensors:
    """One user's sequence at one request ([L, ...], newest first, `seq_mask` = real action)."""

    seq_pin_emb: Tensor  # [L, D] float32
    seq_action: Tensor  # [L] int64
    seq_time_ms: Tensor  # [L] int64
    seq_mask: Tensor  # [L] bool
    request_time_ms: int

    @property
    def seq_len(self) -> int:
        return int(self.seq_action.shape[0])

    def visible(self) -> Tensor:
        """[L] bool: inference mask (padding and future actions hidden)."""
        return self.seq_mask & (self.seq_time_ms <= int(self.request_time_ms))

    def scaled(self, pin_scale: float) -> "UserTensors":
        """The same user with engaged-pin embeddings times `pin_scale` (ModelConfig.pin_emb_scale)."""
        if pin_scale == 1.0:
            return self
        return dataclasses.replace(self, seq_pin_emb=self.seq_pin_emb * pin_scale)

    def to(self, device: torch.device | str) -> "UserTensors":
        return UserTensors(self.seq_pin_emb.to(device), self.seq_action.to(device),
                           self.seq_time_ms.to(device), self.seq_mask.to(device),
                           int(self.request_time_ms))

    @classmethod
    def from_arrays(cls, seq_pin_emb: Any, seq_action: Any, seq_time_ms: Any, seq_mask: Any,
                    request_time_ms: int) -> "UserTensors":
        """From [L, D] / [L] arrays or tensors (already padded to the model's seq_len)."""
        return cls(
            torch.as_tensor(np.asarray(seq_pin_emb, dtype=np.float32) if not isinstance(seq_pin_emb, Tensor)
                            else seq_pin_emb.float()),
            torch.as_tensor(seq_action, dtype=torch.long),
            torch.as_tensor(seq_time_ms, dtype=torch.long),
            torch.as_tensor(seq_mask, dtype=torch.bool),
            int(request_time_ms),
        )

    @classmethod
    def from_sequence(cls, pin_emb: Any, action_types: Any, action_times: Any, seq_len: int,
                      request_time_ms: int, emb_dim: int | None = None) -> "UserTensors":
        """From the variable-length feature arrays (newest first): keeps the newest `seq_len`
        entries and pads the tail. `pin_emb` is [n, D] (zero rows for unknown pins); an empty
        sequence (cold start) needs `emb_dim`."""
        acts = np.asarray(action_types, dtype=np.int64).reshape(-1)[:seq_len]
        times = np.asarray(action_times, dtype=np.int64).reshape(-1)[:seq_len]
        n = acts.size
        if times.size != n:
            raise ValueError("action_types and action_times have different lengths")
        emb = np.asarray(pin_emb, dtype=np.float32)
        d = emb.shape[-1] if emb.ndim == 2 and emb.shape[-1] else emb_dim
        if d is None:
            raise ValueError("emb_dim is needed for an empty sequence")
        emb = emb.reshape(-1, d)[:seq_len]
        if emb.shape[0] != n:
            raise ValueError(f"pin_emb has {emb.shape[0]} rows, the sequence {n} actions")
        seq_emb = np.zeros((seq_len, d), dtype=np.float32)
        seq_emb[:n] = emb
        seq_act = np.zeros(seq_len, dtype=np.int64)
        seq_act[:n] = acts
        seq_time = np.zeros(seq_len, dtype=np.int64)
        seq_time[:n] = times
        mask = np.zeros(seq_len, dtype=bool)
        mask[:n] = True
        return cls(torch.from_numpy(seq_emb), torch.from_numpy(seq_act), torch.from_numpy(seq_time),
                   torch.from_numpy(mask), int(request_time_ms))

    @classmethod
    def from_batch(cls, batch: RankingBatch, row: int = 0) -> "UserTensors":
        return cls(batch.seq_pin_emb[row], batch.seq_action[row], batch.seq_time_ms[row],
                   batch.seq_mask[row], int(batch.request_time_ms[row]))

    def batch(self, cand_emb: Tensor, dense: Tensor | None = None, copy_rows: bool = False) -> RankingBatch:
        """The module's batch for this user against N candidates: broadcast views (stride 0),
        or, with `copy_rows`, the plain per-candidate copy ([N, L, ...] materialised)."""
        b = RankingBatch.one_user(self.seq_pin_emb, self.seq_action, self.seq_time_ms, self.seq_mask,
                                  int(self.request_time_ms), cand_emb, dense)
        return b._map(lambda t: t.contiguous()) if copy_rows else b


def _as_tensor(x: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# TransAct: per-model constants, per-user precompute, per-candidate work
# ---------------------------------------------------------------------------------------------


class _TransActParams:
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


# ---------------------------------------------------------------------------------------------
# the served model
# ---------------------------------------------------------------------------------------------


def _bucket(n: int, minimum: int = 64) -> int:
    """Static batch size for a CUDA graph: N rounded up to a quarter of its power of two."""
    if n <= minimum:
        return minimum
    p = 1 << ((n - 1).bit_length() - 1)
    step = max(p // 4, 1)
    return -(-n // step) * step


class ServedRanker:
    """A `Ranker` prepared for serving one user against N candidates (see the module docstring).

    ``device``: "cpu", "cuda", ... (default: the ranker's). ``dtype``: compute dtype, a
    torch dtype, its name, or "auto" (see `resolve_dtype`: bfloat16 on CUDA and on a CPU with
    native bf16 matmuls, float32 on other CPUs; None = "auto" on CUDA, float32 on CPU). On CPU,
    bfloat16 runs the whole TransAct path and the ranker's top under CPU autocast (oneDNN bf16
    matmuls); the baselines' once-per-user encoder stays float32. ``cuda_graphs``: replay one CUDA graph
    per N bucket (default: on for CUDA).
    ``chunk_tokens``: CPU only, candidates per chunk = chunk_tokens // visible positions.
    ``workers``: CPU only, chunks run on this many Python threads (ATen releases the GIL); use
    it with ``torch.set_num_threads(1)``, so chunks run side by side instead of every small op
    being split across cores (fewer OpenMP barriers; this helps most on a loaded machine).
    ``layer0``: "decomposed" (S+T form, CPU default) or "sdpa" (one attention call, CUDA default).
    ``compile``: CUDA graphs only: build each bucket's graph from a `torch.compile`d forward
    (Inductor fuses the LayerNorm/residual/ReLU chains; costs a compile per bucket at start-up).
    """

    def __init__(self, ranker: Ranker, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, cuda_graphs: bool | None = None,
                 chunk_tokens: int = 4096, workers: int = 1, layer0: str | None = None,
                 max_graphs: int = 12, compile: bool = False):
        if device is None:
            device = next(iter(ranker.parameters())).device
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.dtype_requested = "default" if dtype is None else _dtype_name(dtype)
        self.dtype = resolve_dtype(dtype, self.device)
        self.config: ModelConfig = ranker.config
        # our own eval-mode copy on the device (the caller's module is left as it was)
        self.model: Ranker = copy.deepcopy(ranker).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.transact = self.config.encoder in TRANSACT_KINDS
        self.din = self.config.encoder == "din"
        self.layer0_mode = layer0 or ("sdpa" if cuda else "decomposed")
        if self.layer0_mode not in ("decomposed", "sdpa"):
            raise ValueError(f"layer0 must be 'decomposed' or 'sdpa', got {layer0!r}")
        self.params = _TransActParams(self.model.encoder, self.config, self.device) if self.transact else None
        self.chunk_tokens = int(chunk_tokens)
        self.workers = max(1, int(workers))
        self._pool = None
        # Graphs for TransAct only: the baselines' encoder runs once per user (tiny), and the
        # recurrent ones sync with the host (pack_padded_sequence), which capture forbids.
        graphs_ok = (cuda and self.transact and hasattr(torch.cuda, "CUDAGraph")
                     and _torch_at_least(2, 4))
        self.cuda_graphs = graphs_ok if cuda_graphs is None else (bool(cuda_graphs) and graphs_ok)
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, _GraphEntry] = OrderedDict()
        self._graph_lock = threading.Lock()
        self.graph_failures = 0
        self.compile = bool(compile)
        self._static_fn = torch.compile(self._transact_static, dynamic=False) if self.compile \
            else self._transact_static

    # -- public API -----------------------------------------------------------------------------
    @property
    def heads(self) -> tuple[str, ...]:
        return self.config.heads

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype]

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.config.encoder, "device": str(self.device), "dtype": _dtype_name(self.dtype),
                "dtype_requested": self.dtype_requested,
                "kernels": kernel_info(self.device, self.dtype), "cpu_workers": self.workers,
                "layer0": self.layer0_mode if self.transact else None, "cuda_graphs": self.cuda_graphs,
                "compiled": self.compile,
                "graphs_captured": len(self._graphs), "graph_failures": self.graph_failures}

    def score(self, user: UserTensors, cand_emb: Any, dense: Any = None) -> np.ndarray:
        """Probabilities [N, H] (float32 numpy) for one user against N candidates."""
        return self.score_tensor(user, cand_emb, dense).float().cpu().numpy()

    @torch.inference_mode()
    def score_tensor(self, user: UserTensors, cand_emb: Any, dense: Any = None) -> Tensor:
        """As `score`, as a float32 tensor [N, H] on the serving device."""
        cand = _as_tensor(cand_emb, torch.float32, self.device)
        if cand.dim() != 2 or cand.shape[1] != self.config.emb_dim:
            raise ValueError(f"cand_emb must be [N, {self.config.emb_dim}], got {tuple(cand.shape)}")
        n = cand.shape[0]
        dense_t = self._dense(dense, n)
        user = self._check_user(user)
        if n == 0:
            return torch.zeros((0, len(self.heads)), device=self.device)
        if self.device.type == "cuda":
            if self.cuda_graphs:
                out = self._score_graph(user, cand, dense_t)
                if out is not None:
                    return out
            with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32):
                return self._forward_static(user, cand, dense_t).float()
        if self.dtype == torch.float32:
            return self._forward_cpu(user, cand, dense_t)
        with torch.autocast("cpu", dtype=self.dtype):
            return self._forward_cpu(user, cand, dense_t).float()

    @torch.inference_mode()
    def reference(self, user: UserTensors, cand_emb: Any, dense: Any = None) -> np.ndarray:
        """The plain formulation: the module on the per-candidate copied batch (fp32, eager)."""
        cand = _as_tensor(cand_emb, torch.float32, self.device)
        dense_t = self._dense(dense, cand.shape[0])
        batch = self._check_user(user).batch(cand, dense_t, copy_rows=True)
        return self.model.predict(batch).float().cpu().numpy()

    def warmup(self, sizes: tuple[int, ...] = (100, 1000)) -> None:
        """Run (and on CUDA capture graphs for) typical request sizes."""
        L, D = self.config.seq_len, self.config.emb_dim
        g = torch.Generator().manual_seed(0)
        user = UserTensors(torch.randn(L, D, generator=g), torch.ones(L, dtype=torch.long),
                           torch.zeros(L, dtype=torch.long), torch.ones(L, dtype=torch.bool), 1)
        for n in sizes:
            self.score(user, torch.randn(n, D, generator=g),
                       torch.zeros(self.config.dense_dim) if self.config.dense_dim else None)

    # -- input handling -------------------------------------------------------------------------
    def _check_user(self, user: UserTensors) -> UserTensors:
        L = self.config.seq_len
        if user.seq_len != L:
            raise ValueError(f"user sequence has length {user.seq_len}, model seq_len is {L}")
        if tuple(user.seq_pin_emb.shape) != (L, self.config.emb_dim):
            raise ValueError(f"seq_pin_emb must be [{L}, {self.config.emb_dim}], got {tuple(user.seq_pin_emb.shape)}")
        return user.to(self.device)

    def _dense(self, dense: Any, n: int) -> Tensor:
        F_ = self.config.dense_dim
        if dense is None:
            if F_:
                raise ValueError(f"the model needs {F_} dense features per candidate")
            return torch.zeros((n, 0), device=self.device)
        t = _as_tensor(dense, torch.float32, self.device)
        if t.dim() == 1:
            t = t[None]
        if t.shape[-1] != F_ or t.shape[0] not in (1, n):
            raise ValueError(f"dense must be [N, {F_}] or [{F_}], got {tuple(t.shape)}")
        return t.expand(n, F_)

    def _scale_pins(self, user: UserTensors, cand: Tensor) -> tuple[UserTensors, Tensor]:
        """What `Ranker.scale_pins` does to a batch: every path starts here (graphs: in-graph)."""
        scale = self.config.pin_emb_scale
        return (user, cand) if scale == 1.0 else (user.scaled(scale), cand * scale)

    # -- the ranker's top (shared by every path) ------------------------------------------------
    def _top(self, seq_out: Tensor, cand: Tensor, dense: Tensor) -> Tensor:
        m = self.model
        dense = (dense - m.dense_mean) / m.dense_std
        x0 = torch.cat([seq_out, cand.to(seq_out.dtype), dense.to(seq_out.dtype)], dim=-1)
        x = x0
        for layer in m.cross:
            x = layer(x0, x)
        return torch.sigmoid(m.head(m.mlp(x)))

    def _user_encoding(self, user: UserTensors) -> Tensor:
        """Baseline encoders: the candidate-independent output for the user, [1, out_dim]."""
        one = user.batch(torch.zeros(1, self.config.emb_dim, device=self.device))
        return self.model.encoder(one)

    def _din(self, user: UserTensors, cand: Tensor, dense: Tensor, chunk: int) -> Tensor:
        """DIN: the user's precompute once, then chunks of `chunk` candidates (pins scaled)."""
        enc = self.model.encoder
        state = enc.user_state(user.seq_pin_emb, user.seq_action, user.visible())  # type: ignore[operator]
        outs = [self._top(enc.score_candidates(state, cand[s: s + chunk]), cand[s: s + chunk],  # type: ignore[operator]
                          dense[s: s + chunk]) for s in range(0, cand.shape[0], chunk)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    # -- CPU: compaction + chunks ---------------------------------------------------------------
    def _forward_cpu(self, user: UserTensors, cand: Tensor, dense: Tensor) -> Tensor:
        user, cand = self._scale_pins(user, cand)
        n = cand.shape[0]
        if self.din:
            return self._din(user, cand, dense, max(1, self.chunk_tokens // self.config.seq_len))
        if not self.transact:
            with torch.autocast("cpu", enabled=False):  # once per user on [1, L]: fp32
                enc = self._user_encoding(user)
            return self._top(enc.expand(n, enc.shape[-1]), cand, dense)
        P = self.params
        assert P is not None
        cfg = self.config
        visible = user.visible()
        idx = visible.nonzero().squeeze(1)  # visible positions, ascending
        Lv = int(idx.numel())
        out_dim = int(self.model.encoder.out_dim)  # type: ignore[arg-type]
        if Lv == 0:  # cold start: TransAct's output is exactly zero
            return self._top(cand.new_zeros((1, out_dim)).expand(n, out_dim), cand, dense)
        prefix = bool(int(idx[-1]) == Lv - 1)  # visible positions are 0..Lv-1 (the usual case)
        if prefix:
            u = P.user_tokens(user.seq_pin_emb[:Lv], user.seq_action[:Lv], user.seq_mask[:Lv])
        else:
            u = P.user_tokens(user.seq_pin_emb[idx], user.seq_action[idx], user.seq_mask[idx])
        st = P.user_layer0(u, None, self.layer0_mode)
        K = cfg.top_k
        if P.v11:
            # output slots 0..K-1 <- compacted rows whose original position is < K
            k_rows = idx[idx < K]
            k_src = torch.arange(k_rows.numel())
        chunk = max(1, self.chunk_tokens // Lv)

        def run_chunk(s: int) -> Tensor:
            c = cand[s: s + chunk]
            nc = c.shape[0]
            x = P.layer0(st, c, self.layer0_mode)
            for i in range(1, P.n_layers):
                x = P.layer(i, x, None)
            x = P.finish(x)  # [nc, Lv, d]; every position visible
            if P.v11:
                pooled = P.pool(x.amax(dim=1))
                if prefix and Lv >= K:
                    first = x[:, :K]
                else:
                    first = x.new_zeros((nc, K, P.d))
                    first[:, k_rows] = x[:, k_src]
                enc = torch.cat([first, pooled[:, None]], dim=1).flatten(1)
            else:
                full = x.new_zeros((nc, cfg.seq_len, P.d))
                full[:, idx] = x
                enc = full.flatten(1)
            return self._top(enc, c, dense[s: s + chunk])

        starts = list(range(0, n, chunk))
        if self.workers > 1 and len(starts) > 1:
            autocast = self.dtype != torch.float32  # _forward_cpu runs under autocast then

            def in_worker(s: int) -> Tensor:
                # inference mode and autocast are thread-local: set them in the worker
                with torch.inference_mode(), torch.autocast("cpu", dtype=self.dtype, enabled=autocast):
                    return run_chunk(s)
            outs = list(self._executor().map(in_worker, starts))
        else:
            outs = [run_chunk(s) for s in starts]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _executor(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="served-ranker")
        return self._pool

    # -- static shapes (CUDA eager and CUDA graphs; also runs on CPU for tests) -----------------
    def _forward_static(self, user: UserTensors, cand: Tensor, dense: Tensor) -> Tensor:
        """Data-independent control flow: full L, masks as tensors, no host sync."""
        user, cand = self._scale_pins(user, cand)
        n = cand.shape[0]
        if self.din:
            return self._din(user, cand, dense, n)
        if not self.transact:
            # once per user on [1, L]: fp32 (recurrent kernels need not support bf16)
            with torch.autocast(self.device.type, enabled=False):
                enc = self._user_encoding(user)
            return self._top(enc.expand(n, enc.shape[-1]), cand, dense)
        P = self.params
        assert P is not None
        L = self.config.seq_len
        visible = user.visible()
        return self._transact_static(P, user.seq_pin_emb, user.seq_action, user.seq_mask, visible,
                                     cand, dense, L)

    def _transact_static(self, P: _TransActParams, seq_pin_emb: Tensor, seq_action: Tensor,
                         seq_mask: Tensor, visible: Tensor, cand: Tensor, dense: Tensor, L: int) -> Tensor:
        has_any = visible.any()
        first = torch.arange(L, device=visible.device) == 0
        key_ok = visible | (first & ~has_any)  # dummy key 0 for a cold-start user (output zeroed)
        key_bias = torch.zeros(L, device=visible.device).masked_fill(~key_ok, float("-inf"))
        u = P.user_tokens(seq_pin_emb, seq_action, seq_mask)
        st = P.user_layer0(u, key_bias, self.layer0_mode)
        x = P.layer0(st, cand, self.layer0_mode)
        mask = key_ok[None, None, None, :]
        for i in range(1, P.n_layers):
            x = P.layer(i, x, mask)
        x = P.finish(x)
        vis = visible[None, :, None]
        x = torch.where(vis, x, torch.zeros((), dtype=x.dtype, device=x.device))
        if P.v11:
            lowest = torch.finfo(x.dtype).min
            pooled = torch.where(vis, x, torch.full((), lowest, dtype=x.dtype, device=x.device)).amax(dim=1)
            pooled = torch.where(has_any, pooled, torch.zeros((), dtype=x.dtype, device=x.device))
            pooled = P.pool(pooled)
            pooled = torch.where(has_any, pooled, torch.zeros((), dtype=pooled.dtype, device=x.device))
            enc = torch.cat([x[:, : P.top_k], pooled[:, None].to(x.dtype)], dim=1).flatten(1)
        else:
            enc = x.flatten(1)
        return self._top(enc, cand, dense)

    # -- CUDA graphs ----------------------------------------------------------------------------
    def _score_graph(self, user: UserTensors, cand: Tensor, dense: Tensor) -> Tensor | None:
        n = cand.shape[0]
        key = (_bucket(n),)
        with self._graph_lock:
            entry = self._graphs.get(key)
            if entry is None:
                try:
                    entry = self._capture(key[0])
                except Exception as exc:  # capture can fail on some builds/drivers: stay eager
                    self.graph_failures += 1
                    self.cuda_graphs = False
                    log.warning("CUDA graph capture failed (%s); serving eagerly", exc)
                    return None
                self._graphs[key] = entry
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            s = entry.inputs
            s["seq_pin_emb"].copy_(user.seq_pin_emb)
            s["seq_action"].copy_(user.seq_action)
            s["seq_mask"].copy_(user.seq_mask)
            s["seq_time_ms"].copy_(user.seq_time_ms)
            s["request_time_ms"].fill_(int(user.request_time_ms))
            s["cand"][:n].copy_(cand)
            s["cand"][n:].zero_()
            s["dense"][:n].copy_(dense)
            entry.graph.replay()
            return entry.output[:n].float().clone()

    def _capture(self, bucket: int) -> "_GraphEntry":
        cfg = self.config
        L, D, F_ = cfg.seq_len, cfg.emb_dim, cfg.dense_dim
        dev = self.device
        inputs = {
            "seq_pin_emb": torch.zeros(L, D, device=dev),
            "seq_action": torch.ones(L, dtype=torch.long, device=dev),
            "seq_mask": torch.ones(L, dtype=torch.bool, device=dev),
            "seq_time_ms": torch.zeros(L, dtype=torch.long, device=dev),
            "request_time_ms": torch.zeros((), dtype=torch.long, device=dev),
            "cand": torch.zeros(bucket, D, device=dev),
            "dense": torch.zeros(bucket, F_, device=dev),
        }

        def run() -> Tensor:
            s = inputs
            visible = s["seq_mask"] & (s["seq_time_ms"] <= s["request_time_ms"])
            scale = self.config.pin_emb_scale
            assert self.params is not None
            with torch.autocast(dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32,
                                cache_enabled=False):
                return self._static_fn(self.params, s["seq_pin_emb"] * scale, s["seq_action"],
                                             s["seq_mask"], visible, s["cand"] * scale, s["dense"], L)

        graph, output = self._record(run)
        return _GraphEntry(graph, inputs, output)

    def _record(self, run) -> tuple[Any, Tensor]:
        """Capture `run` as a CUDA graph -> (graph, its static output)."""
        dev = self.device
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up kernels/allocator outside the graph
                run()
        torch.cuda.current_stream(dev).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # A private memory pool per graph: replays of different buckets come in any order.
        with torch.cuda.graph(graph):
            output = run()
        return graph, output


@dataclass
class _GraphEntry:
    graph: Any
    inputs: dict[str, Tensor]
    output: Tensor


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU flags (/proc/cpuinfo) of native bf16 dot products: x86 AVX512-BF16 / AMX-BF16, Arm BF16.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _onednn_bf16() -> bool:
    """oneDNN is built in and takes bf16 matmuls on this CPU (else ATen's generic bf16 gemm)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_native() -> bool:
    """True where bf16 matmuls beat fp32 on this CPU: oneDNN is built in and usable for bf16
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: AVX-512 core or Arm bf16) AND the CPU has
    native bf16 dot products (AVX512-BF16 / AMX-BF16 / Arm BF16 in /proc/cpuinfo). Without
    them oneDNN emulates bf16 (an AVX2-only CPU runs a bf16 matmul ~10x slower than fp32)."""
    onednn_bf16 = _onednn_bf16()
    flags = _cpu_flags()
    if flags is None:  # not Linux: trust oneDNN's own check
        return onednn_bf16
    return onednn_bf16 and any(f in flags for f in _NATIVE_BF16_FLAGS)


def resolve_dtype(dtype: Any, device: torch.device | str) -> torch.dtype:
    """The compute dtype ServedRanker runs: a torch dtype or its name, "auto" or None.

    "auto": bfloat16 on CUDA, bfloat16 on a CPU with native bf16 (`cpu_bf16_native`), float32
    on any other CPU. None: bfloat16 on CUDA, float32 on CPU (the exact path). On CPU,
    float16 is refused (no fast fp16 CPU kernels); bfloat16 is allowed everywhere (slow
    without native support, but correct)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if dtype is None:
        return torch.bfloat16 if cuda else torch.float32
    if isinstance(dtype, str):
        if dtype == "auto":
            return torch.bfloat16 if cuda or (device.type == "cpu" and cpu_bf16_native()) else torch.float32
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto, {', '.join(_DTYPES)}; got {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype {dtype} is not supported: use {', '.join(_DTYPES)} or auto")
    if not cuda and dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype {dtype} is not supported on {device.type}: use float32, bfloat16 or auto")
    return dtype


def kernel_info(device: torch.device | str, dtype: torch.dtype) -> dict[str, Any]:
    """What runs the matmuls: for the benchmarks' and the service's reports."""
    device = torch.device(device)
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        return info
    get_cap = getattr(torch.backends.cpu, "get_cpu_capability", None)
    info.update({
        "cpu_capability": get_cap() if get_cap else None,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "bf16_native": cpu_bf16_native(),
        "matmul": ("fp32 (MKL)" if dtype != torch.bfloat16 else
                   "bf16 autocast, oneDNN" if _onednn_bf16() else "bf16 autocast, ATen generic (emulated)"),
    })
    return info


def _torch_at_least(major: int, minor: int) -> bool:
    try:
        parts = torch.__version__.split("+")[0].split(".")
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return True


__all__ = ["ServedRanker", "TOLERANCE", "UserTensors", "cpu_bf16_native", "kernel_info", "resolve_dtype"]
