"""Kernel-level profile of the served TransAct forward (CUDA graphs off, so kernels are visible).

    PYTHONPATH=src python scripts/profile_served.py [--n 1000] [--compile]

Prints the top CUDA kernels by total time for one request, eager bf16 and the plain fp32 module.
"""

import argparse

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from homefeed.model import ModelConfig, build_model
from homefeed.serving.fast_model import ServedRanker, UserTensors

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=1000)
ap.add_argument("--rows", type=int, default=25)
args = ap.parse_args()
torch.manual_seed(0)
cfg = ModelConfig()
model = build_model(cfg).eval()
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
served = ServedRanker(model, device=dev, cuda_graphs=False)
decomposed = ServedRanker(model, device=dev, cuda_graphs=False, layer0="decomposed")
L, D = cfg.seq_len, cfg.emb_dim
rt = 1_767_225_600_000
user = UserTensors.from_sequence(np.random.randn(L, D).astype(np.float32), np.random.randint(1, 4, L),
                                 rt - 60_000 * (1 + np.arange(L)), L, rt).to(dev)
cand = torch.randn(args.n, D, device=dev)
for name, fn in [("served eager bf16", lambda: served.score_tensor(user, cand)),
                 ("served eager bf16, decomposed layer 0", lambda: decomposed.score_tensor(user, cand)),
                 ("plain fp32", lambda: served.model.predict(user.batch(cand, None, copy_rows=True)))]:
    with torch.inference_mode():
        for _ in range(5):
            fn()
        dev.type == "cuda" and torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                fn()
            dev.type == "cuda" and torch.cuda.synchronize()
    print(f"== {name}: N={args.n} (10 requests)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
