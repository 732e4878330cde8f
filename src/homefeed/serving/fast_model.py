"""Serving-time ranker: ONE user against N candidates, sharing every user-only computation.

`ServedRanker(ranker)` wraps a trained `homefeed.model.Ranker` (any encoder kind) and scores one
request: ``score(user, cand_emb, dense) -> np.ndarray [N, H]`` probabilities, equal to
``ranker.predict(batch)`` on the per-candidate batch within a stated tolerance (fp32 CPU:
1e-5 absolute on probabilities, measured ~1e-7; bf16 CPU or CUDA: 2e-2, measured ~3e-3;
fp16 CUDA: 1e-2). ``dtype="auto"`` (the service default) picks bf16 on CUDA and on a CPU with
native bf16 dot products (AVX512-BF16 / AMX / Arm BF16, see `homefeed.serving.hardware`), fp32
elsewhere.

This module imports nothing but torch, numpy and `homefeed.model` (no feast/bentoml/redis), so it
runs on a GPU machine that only has torch.

What is shared per user (computed once per request) and what is not
------------------------------------------------------------------
A TransAct token is ``x[n, l] = [a_l, p_l | c_n]`` (user half, candidate half). Layer 0's
input projection, attention logits and attention values split into a per-user part and a
per-candidate part (the algebra: `homefeed.serving.transact_split`), so layer 0 never builds
the [N, L, 3d] projections nor a Q·Kᵀ over N·L tokens; later layers are candidate-dependent.

* **Action embedding lookup, padding/future mask, key-padding bias**: once per user. On CPU, masked
  positions (padding, future actions) are dropped before any work (exact: a masked key has zero
  attention weight in every layer and a masked query's output is zeroed and excluded from the
  max-pool), so a user with 12 actions costs 12 tokens per candidate, not ``seq_len``.

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
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from homefeed.model.batch import RankingBatch, pad_rows
from homefeed.model.config import TRANSACT_KINDS, ModelConfig
from homefeed.model.ranker import Ranker
from homefeed.serving.hardware import dtype_name, kernel_info, resolve_dtype, torch_at_least
from homefeed.serving.transact_split import TransActSplit

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
        entries and pads the tail (`homefeed.model.pad_rows`, training's padding rule). `pin_emb`
        is [n, D] (zero rows for unknown pins); an empty sequence (cold start) needs `emb_dim`."""
        (acts,), (n,) = pad_rows([action_types], seq_len, np.int64)
        (times,), (n_times,) = pad_rows([action_times], seq_len, np.int64)
        n = int(n)
        if n_times != n:
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
        return cls(torch.from_numpy(seq_emb), torch.from_numpy(acts), torch.from_numpy(times),
                   torch.from_numpy(np.arange(seq_len) < n), int(request_time_ms))

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
        self.dtype_requested = "default" if dtype is None else dtype_name(dtype)
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
        self.params = TransActSplit(self.model.encoder, self.config, self.device) if self.transact else None
        self.chunk_tokens = int(chunk_tokens)
        self.workers = max(1, int(workers))
        self._pool = None
        # Graphs for TransAct only: the baselines' encoder runs once per user (tiny), and the
        # recurrent ones sync with the host (pack_padded_sequence), which capture forbids.
        graphs_ok = (cuda and self.transact and hasattr(torch.cuda, "CUDAGraph")
                     and torch_at_least(2, 4))
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
        return {"encoder": self.config.encoder, "device": str(self.device), "dtype": dtype_name(self.dtype),
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

    def _transact_static(self, P: TransActSplit, seq_pin_emb: Tensor, seq_action: Tensor,
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


__all__ = ["ServedRanker", "TOLERANCE", "UserTensors"]
