"""`homefeed bench train`: training and inference throughput of a ranker (default TransAct v1.1).

Synthetic batches with the real shapes (seq_len actions of which a random prefix is real, D-dim
embeddings, the dense-feature width of `dense_feature_spec`), so the number depends on the model
and the device only. Also measures the data path (`build_batch` from numpy rows, what every
training step and every serving request runs) to show it is not the bottleneck.

    homefeed bench train --json                 # CPU, and CUDA when available
    homefeed bench train --device cpu --steps 20 --batch-size 1024
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from homefeed.model import ModelConfig, RankingBatch, build_batch, build_model, make_pin_rows
from homefeed.model.loss import WeightedMultiHeadBCE
from homefeed.training.data import dense_feature_spec
from homefeed.training.train import model_config_for

DAY_MS = 86_400_000


def synthetic_batch(batch_size: int, config: ModelConfig, seed: int = 0) -> RankingBatch:
    g = torch.Generator().manual_seed(seed)
    B, L, D = batch_size, config.seq_len, config.emb_dim
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    request = torch.full((B,), 1_767_571_200_000 + 10 * DAY_MS, dtype=torch.long)
    ages = torch.sort(torch.randint(1_000, 3 * DAY_MS, (B, L), generator=g), dim=1).values
    return RankingBatch(
        seq_pin_emb=torch.randn(B, L, D, generator=g) * mask[..., None],
        seq_action=torch.randint(1, config.action_vocab_size, (B, L), generator=g) * mask,
        seq_time_ms=torch.where(mask, request[:, None] - ages, 0),
        seq_mask=mask,
        request_time_ms=request,
        cand_emb=torch.randn(B, D, generator=g),
        dense=torch.randn(B, config.dense_dim, generator=g),
        labels=(torch.rand(B, len(config.heads), generator=g) < 0.1).float(),
        weights=torch.ones(B),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(config: ModelConfig, device: str, batch_size: int, steps: int, warmup: int) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(config).to(dev)
    loss_fn = WeightedMultiHeadBCE(config.heads).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = synthetic_batch(batch_size, config).to(dev)

    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(dev)
            start = time.perf_counter()
        out = loss_fn(model(batch), batch.labels, batch.weights)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
    _sync(dev)
    train_s = (time.perf_counter() - start) / steps

    model.eval()
    with torch.no_grad():
        for i in range(warmup + steps):
            if i == warmup:
                _sync(dev)
                start = time.perf_counter()
            model(batch)
        _sync(dev)
    eval_s = (time.perf_counter() - start) / steps
    return {
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "batch_size": batch_size,
        "train_ms_per_step": round(1000 * train_s, 2),
        "train_examples_per_s": round(batch_size / train_s, 1),
        "eval_examples_per_s": round(batch_size / eval_s, 1),
    }


def bench_collate(config: ModelConfig, batch_size: int, repeats: int = 20) -> dict:
    """build_batch from numpy rows (already padded per request, as RankingData keeps them)."""
    rng = np.random.default_rng(0)
    L, D, P = config.seq_len, config.emb_dim, 5000
    pin_rows, pin_emb = make_pin_rows(np.arange(1, P + 1)), rng.standard_normal((P, D)).astype(np.float32)
    lengths = rng.integers(0, L + 1, batch_size)
    pins = rng.integers(1, P + 1, (batch_size, L))
    acts = rng.integers(1, config.action_vocab_size, (batch_size, L))
    times = np.sort(rng.integers(1, 10**9, (batch_size, L)))[:, ::-1] + 1_767_000_000_000
    req = np.full(batch_size, 1_768_000_000_000)
    cand = rng.integers(1, P + 1, batch_size)
    dense = rng.standard_normal((batch_size, config.dense_dim)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(repeats):
        build_batch(pins, acts, times, req, cand, pin_rows, pin_emb, L, dense=dense, seq_lengths=lengths)
    seconds = (time.perf_counter() - start) / repeats
    return {"batch_size": batch_size, "ms_per_batch": round(1000 * seconds, 2),
            "examples_per_s": round(batch_size / seconds, 1)}


def run_bench(model: str = "transact_v11", devices: str = "all", batch_size: int = 512, steps: int = 10,
              warmup: int = 3, seq_len: int = 100, emb_dim: int = 32) -> dict:
    config = model_config_for(model, seq_len, emb_dim, dense_feature_spec(emb_dim)["dim"])
    wanted = ["cpu", "cuda"] if devices == "all" else [devices]
    results, skipped = [], []
    for dev in wanted:
        if dev == "cuda" and not torch.cuda.is_available():
            skipped.append("cuda (not available)")
            continue
        results.append(bench_model(config, dev, batch_size, steps, warmup))
    return {"model": model, "config": config.to_dict(), "torch": str(torch.__version__),
            "results": results, "skipped": skipped, "collate": bench_collate(config, batch_size)}


def cmd_bench_train(args) -> int:
    result = run_bench(args.model, args.device, args.batch_size, args.steps, args.warmup, args.seq_len)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in result["results"]:
            print(f"{result['model']} on {r['device']}: train {r['train_examples_per_s']:,.0f} ex/s "
                  f"({r['train_ms_per_step']} ms/step of {r['batch_size']}), eval "
                  f"{r['eval_examples_per_s']:,.0f} ex/s")
        print(f"data path (build_batch): {result['collate']['examples_per_s']:,.0f} ex/s")
        for s in result["skipped"]:
            print(f"skipped: {s}")
    return 0


def add_bench_train_parser(bench_subparsers) -> None:
    from homefeed.model import ENCODER_KINDS

    p = bench_subparsers.add_parser("train", help="ranker training/inference throughput (examples/s)")
    p.add_argument("--model", default="transact_v11", choices=ENCODER_KINDS,
                   help="sequence encoder to time (default transact_v11)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"],
                   help="all = CPU, plus CUDA when available")
    p.add_argument("--batch-size", type=int, default=512, help="examples per step (default 512)")
    p.add_argument("--seq-len", type=int, default=100, help="actions per sequence (default 100)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_bench_train)
