"""Serving benchmarks: `homefeed bench model` and `homefeed bench features` (JSON with --json).

* ``model``: forward time of `ServedRanker` (user-side split, fused, chunked on CPU; bf16 + CUDA
  graphs on GPU) against the plain formulation (the unchanged `Ranker` in fp32 eager on the
  per-candidate copied batch) for one user with 100 actions and N = 100, 1000, 5000 candidates,
  both measured in the same run (interleaved), with the max abs difference of the probabilities.
  Untrained model, ModelConfig defaults (transact_v11, seq_len 100, emb_dim 32), seeded init.
  Needs only torch and numpy: ``PYTHONPATH=src python -m homefeed.bench.serve model --json``
  runs it on a machine without feast/bentoml/redis.
* ``features``: p50/p95/p99 of the features of one 1,000-candidate request (user sequence +
  profile + 1,000 pins) through the Feast SDK and through `OnlineFeatureReader` (cold: every
  pin read from Redis; warm: pins from the cache), against a private redis-server it starts
  (or ``--redis-url``).

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np


def _pct(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3),
            "n": int(a.size)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(),
            "load_avg_1m": round(load[0], 2) if load else None,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


def run_model_bench(ns: tuple[int, ...] = (100, 1000, 5000), actions: int = 100, repeats: int = 5,
                    device: str | None = None, dtype: str | None = None, threads: int | None = None,
                    encoder: str = "transact_v11", seed: int = 0, chunk_tokens: int = 4096,
                    cuda_graphs: bool | None = None, workers: int = 1, compile: bool = False,
                    layer0: str | None = None, log=None) -> dict[str, Any]:
    import torch

    from homefeed.model import ModelConfig, build_model
    from homefeed.serving.fast_model import ServedRanker, UserTensors

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads is None and dev.type == "cpu":
        # One intra-op thread for BOTH formulations by default: on a small shared host,
        # OpenMP barriers wait for threads the OS has descheduled (see docs/serving.md).
        threads = 1
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    config = ModelConfig(encoder=encoder)
    model = build_model(config).eval()  # deterministic init (seeded), untrained
    served = ServedRanker(model, device=dev, dtype=dtype, chunk_tokens=chunk_tokens,
                          cuda_graphs=cuda_graphs, workers=workers, compile=compile, layer0=layer0)
    plain_model = served.model  # same weights, fp32, eval, on the device
    L, D = config.seq_len, config.emb_dim
    g = torch.Generator().manual_seed(seed + 1)
    request_ms = 1_767_225_600_000
    n_act = min(actions, L)
    user = UserTensors.from_sequence(
        torch.randn(n_act, D, generator=g).numpy(),
        torch.randint(1, config.action_vocab_size, (n_act,), generator=g).numpy(),
        request_ms - 60_000 * (1 + np.arange(n_act)), L, request_ms)
    user_dev = user.to(dev)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    rows = []
    for n in ns:
        cand = torch.randn(n, D, generator=g).to(dev)
        dense = torch.zeros(n, config.dense_dim, device=dev) if config.dense_dim else None
        batch = user_dev.batch(cand, dense, copy_rows=True)  # the plain per-candidate copy

        def plain(batch=batch):
            out = plain_model.predict(batch)
            sync()
            return out

        def fast():
            out = served.score_tensor(user_dev, cand, dense)
            sync()
            return out

        with torch.inference_mode():
            ref = plain()  # warm-up (and the reference output)
            got = fast()  # warm-up (captures the CUDA graph of this bucket)
            got = fast()
            diff = float((got.float() - ref.float()).abs().max())
            t_plain, t_fast = [], []
            for _ in range(repeats):  # interleaved, so machine noise hits both alike
                t0 = time.perf_counter()
                plain()
                t_plain.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                fast()
                t_fast.append((time.perf_counter() - t0) * 1000)
            # end to end from numpy (host -> device -> numpy), what the service pays
            cand_np = cand.cpu().numpy()
            t_e2e = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                served.score(user, cand_np, None if dense is None else dense.cpu().numpy())
                t_e2e.append((time.perf_counter() - t0) * 1000)
        p, f = float(np.median(t_plain)), float(np.median(t_fast))
        row = {"n": n, "plain_ms": round(p, 3), "served_ms": round(f, 3), "speedup": round(p / f, 2),
               "max_abs_diff": diff, "plain_min_ms": round(min(t_plain), 3),
               "served_min_ms": round(min(t_fast), 3), "served_e2e_ms": round(float(np.median(t_e2e)), 3),
               "repeats": repeats}
        rows.append(row)
        if log:
            log(row)
        del batch
    out = {
        "bench": "model",
        "encoder": encoder,
        "actions": n_act,
        "seq_len": L,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else _cpu_model(),
        "dtype": str(served.dtype).replace("torch.", ""),
        "dtype_requested": served.dtype_requested,
        "kernels": served.describe()["kernels"],
        "plain": "Ranker.predict on the per-candidate copied batch, fp32, eager",
        "served": dict(served.describe(), chunk_tokens=chunk_tokens, workers=workers),
        "tolerance": served.tolerance,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "tf32_matmul": bool(getattr(torch.backends.cuda.matmul, "allow_tf32", False)) if cuda else None,
        "rows": rows,
    }
    out.update(_machine())
    return out


def bench_model(args) -> int:
    ns = tuple(int(x) for x in str(args.sizes).split(",") if x)
    log = None if args.json else (lambda row: print(
        f"N={row['n']:>5}  plain {row['plain_ms']:9.2f} ms  served {row['served_ms']:8.2f} ms  "
        f"x{row['speedup']:<6} max|diff| {row['max_abs_diff']:.2e}", flush=True))
    result = run_model_bench(ns=ns, actions=args.actions, repeats=args.repeats, device=args.device,
                             dtype=args.dtype, threads=args.threads, encoder=args.encoder,
                             seed=args.seed, chunk_tokens=args.chunk_tokens,
                             cuda_graphs=False if args.no_cuda_graphs else None,
                             workers=args.workers, compile=args.compile, layer0=args.layer0, log=log)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        k = result["kernels"]
        print(f"device {result['device']} ({result['device_name']}), dtype {result['dtype']} "
              f"(asked: {result['dtype_requested']}), torch {result['torch']}, "
              f"{result['torch_threads']} threads, kernels: "
              + ", ".join(f"{key}={val}" for key, val in k.items() if key not in ("torch", "threads")))
    return 0


def add_bench_model_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add `model` to the `bench` group's subparsers (an argparse _SubParsersAction)."""
    p = bench_subparsers.add_parser("model", help="served (split/fused) vs plain TransAct forward time")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--sizes", default="100,1000,5000", help="candidate counts (default 100,1000,5000)")
    p.add_argument("--actions", type=int, default=100, help="actions in the user's sequence (default 100)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per size and formulation (default 5)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                   help="served compute dtype (default: float32 on CPU, bfloat16 on CUDA; auto: "
                        "bfloat16 on CUDA and on CPUs with native bf16, else float32)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for both formulations (default: 1 on CPU, torch's "
                        "default on CUDA; 0 = torch's default)")
    p.add_argument("--encoder", default="transact_v11", help="encoder kind (default transact_v11)")
    p.add_argument("--chunk-tokens", type=int, default=4096, help="CPU: tokens per candidate chunk")
    p.add_argument("--workers", type=int, default=1,
                   help="CPU: Python threads running candidate chunks side by side (with --threads 1)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: eager autocast only")
    p.add_argument("--layer0", choices=["decomposed", "sdpa"], default=None,
                   help="layer-0 formulation (default: decomposed on CPU, sdpa on CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA graphs: capture a torch.compile'd forward (one compile per bucket)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic request (default 0)")
    p.set_defaults(func=bench_model)
    return p


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------


def _features_setup(home, redis_url: str | None, n_pins: int, dim_seed: int = 0):
    """Start a private redis (unless redis_url), apply a private copy of the feature repo, push
    `n_pins` pins and one user with a 100-long sequence and a profile. -> (store, settings, stop)."""
    import shutil

    import pandas as pd

    from homefeed import features as F
    from homefeed.envscope import scoped_env
    from homefeed.settings import SOURCE_ROOT, load_settings
    from homefeed.stack import LocalStack, free_port

    # REDIS_URL: the given one, else unset so the private redis-server's port counts
    env = {"HOMEFEED_HOME": str(home), "REDIS_URL": redis_url or None}
    if not redis_url:
        env["HOMEFEED_REDIS_PORT"] = str(free_port())
    scope = contextlib.ExitStack()
    scope.enter_context(scoped_env(env, restore=("HOMEFEED_REDIS_PORT", "HOMEFEED_FEATURE_REPO")))
    local = None

    def stop():
        with scope:  # the environment comes back even if stopping redis fails
            if local:
                local.down()

    try:
        settings = load_settings()
        local = None if redis_url else LocalStack(settings)
        if local:
            local._up_redis()
        from homefeed.feature_store import apply_repo, open_store

        repo = home / "feature_repo"
        shutil.copytree(SOURCE_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
        os.environ["HOMEFEED_FEATURE_REPO"] = str(repo)
        apply_repo(repo)
        store = open_store(repo)
        rng = np.random.default_rng(dim_seed)
        ts = pd.Timestamp.now(tz="UTC").floor("s")
        dim = settings.embedding_dim
        for s in range(0, n_pins, 5000):
            ids = np.arange(s + 1, min(n_pins, s + 5000) + 1, dtype=np.int64)
            store.push("pin_features_push", pd.DataFrame({
                F.PIN_ID: ids,
                F.PIN_EMBEDDING: list(rng.normal(size=(ids.size, dim)).astype(np.float32)),
                F.PIN_TOPIC: rng.integers(0, 100, ids.size).astype(np.int64),
                F.PIN_CREATED_MS: np.full(ids.size, ts.value // 1_000_000, dtype=np.int64),
                F.PIN_DURATION_MS: np.full(ids.size, 30_000, dtype=np.int64),
                F.EVENT_TIMESTAMP: ts, F.CREATED: ts}))
        L = settings.sequence_length
        store.push("user_action_sequence_push", pd.DataFrame([{
            F.USER_ID: 1, F.EVENT_TIMESTAMP: ts, F.CREATED: ts,
            F.SEQ_PIN_IDS: rng.integers(1, n_pins + 1, L).astype(np.int64),
            F.SEQ_ACTION_TYPES: rng.integers(1, 4, L).astype(np.int32),
            F.SEQ_ACTION_TIMES: ts.value // 1_000_000 - np.arange(L, dtype=np.int64) * 60_000,
            F.SEQ_LENGTH: np.int32(L)}]))
        store.write_to_online_store(F.USER_PROFILE, pd.DataFrame({
            F.USER_ID: [1], F.PROFILE_EMBEDDING: [rng.normal(size=dim).astype(np.float32)],
            F.PROFILE_ACTIONS_28D: [10], F.PROFILE_REPIN_RATE_28D: np.array([0.3], dtype=np.float32),
            F.PROFILE_HIDE_RATE_28D: np.array([0.05], dtype=np.float32), F.PROFILE_DAYS_ACTIVE_28D: [5],
            F.EVENT_TIMESTAMP: [ts], F.CREATED: [ts]}))
        return store, settings, stop
    except BaseException:
        stop()
        raise


def run_features_bench(candidates: int = 1000, n_pins: int = 20_000, repeats: int = 200,
                       sdk_repeats: int = 50, redis_url: str | None = None,
                       max_staleness_s: float = 60.0, gc_freeze: bool = True, log=None) -> dict[str, Any]:
    import gc
    import tempfile
    from pathlib import Path

    from homefeed import features as F
    from homefeed.serving.online_features import OnlineFeatureReader

    tmp = tempfile.TemporaryDirectory(prefix="homefeed-bench-features-")
    store, settings, stop = _features_setup(Path(tmp.name), redis_url, n_pins)
    try:
        rng = np.random.default_rng(1)
        requests = [rng.choice(np.arange(1, n_pins + 1), candidates, replace=False)
                    for _ in range(max(repeats, sdk_repeats))]
        pin_refs = F.feature_refs(F.PIN_FEATURES, F.PIN_FEATURE_NAMES)
        user_refs = (F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES)
                     + F.feature_refs(F.USER_PROFILE, F.PROFILE_FEATURE_NAMES))

        def sdk(ids):
            store.get_online_features(features=user_refs, entity_rows=[{F.USER_ID: 1}]).to_dict()
            store.get_online_features(features=pin_refs, entity_rows=[{F.PIN_ID: int(i)} for i in ids]).to_dict()

        reader = OnlineFeatureReader(store, settings, max_staleness_s=max_staleness_s)

        def fast(ids):
            reader.user_features(1)
            reader.pin_features(ids)

        def timed(fn, reqs, before=None):
            out = []
            for ids in reqs:
                if before:
                    before()
                t0 = time.perf_counter()
                fn(ids)
                out.append((time.perf_counter() - t0) * 1000)
            return out

        for ids in requests[:5]:  # warm-up: connections, registry cache, imports
            sdk(ids)
            fast(ids)
        if gc_freeze:  # what a service does after start-up: no full GC passes over the
            gc.collect()  # long-lived objects (imports, registry, cache) inside requests
            gc.freeze()
        results = {}
        results["feast_sdk"] = _pct(timed(sdk, requests[:sdk_repeats]))
        if log:
            log("feast_sdk", results["feast_sdk"])
        results["fast_cold"] = _pct(timed(fast, requests[:repeats], before=reader.invalidate))
        if log:
            log("fast_cold", results["fast_cold"])
        reader.warm(np.arange(1, n_pins + 1))
        results["fast_warm"] = _pct(timed(fast, requests[:repeats]))
        if log:
            log("fast_warm", results["fast_warm"])
        user_only = timed(lambda ids: reader.user_features(1), requests[:repeats])
        results["fast_user_only"] = _pct(user_only)
        pins_warm = timed(reader.pin_features, requests[:repeats])
        results["fast_pins_warm_only"] = _pct(pins_warm)
        # correctness spot check against the SDK (the tests do this thoroughly)
        ids = requests[0]
        want = store.get_online_features(features=pin_refs, entity_rows=[{F.PIN_ID: int(i)} for i in ids]).to_dict()
        got = reader.pin_features(ids)
        same = all(got.embedding[i].tolist() == want[F.PIN_EMBEDDING][i] for i in range(len(ids)))
        out = {"bench": "features", "candidates": candidates, "catalog_pins": n_pins,
               "request": "1 user (sequence + profile) + candidates pins (embedding, topic, created)",
               "redis": "external" if redis_url else "private redis-server on localhost",
               "max_staleness_s": max_staleness_s, "gc_freeze": gc_freeze, "results": results,
               "speedup_warm_p99": round(results["feast_sdk"]["p99_ms"] / results["fast_warm"]["p99_ms"], 1),
               "speedup_cold_p99": round(results["feast_sdk"]["p99_ms"] / results["fast_cold"]["p99_ms"], 1),
               "equal_to_sdk": bool(same), "reader_stats": reader.stats_dict()}
        out.update(_machine())
        reader.close()
        return out
    finally:
        if gc_freeze:
            gc.unfreeze()
        stop()
        tmp.cleanup()


def bench_features(args) -> int:
    log = None if args.json else (lambda name, s: print(
        f"{name:<12} p50 {s['p50_ms']:8.3f} ms  p95 {s['p95_ms']:8.3f} ms  p99 {s['p99_ms']:8.3f} ms", flush=True))
    result = run_features_bench(candidates=args.candidates, n_pins=args.pins, repeats=args.repeats,
                                sdk_repeats=args.sdk_repeats, redis_url=args.redis_url,
                                max_staleness_s=args.max_staleness_s,
                                gc_freeze=not args.no_gc_freeze, log=log)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def add_bench_features_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add `features` to the `bench` group's subparsers (an argparse _SubParsersAction)."""
    p = bench_subparsers.add_parser("features", help="online feature read: Feast SDK vs the fast reader")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--candidates", type=int, default=1000, help="pins per request (default 1000)")
    p.add_argument("--pins", type=int, default=20_000, help="pins pushed to the store (default 20000)")
    p.add_argument("--repeats", type=int, default=200, help="timed requests, fast reader (default 200)")
    p.add_argument("--sdk-repeats", type=int, default=50, help="timed requests, Feast SDK (default 50)")
    p.add_argument("--max-staleness-s", type=float, default=60.0,
                   help="pin-cache staleness bound of the fast reader, seconds (default 60)")
    p.add_argument("--no-gc-freeze", action="store_true",
                   help="do not gc.freeze() after warm-up (default: freeze, as a service should)")
    p.add_argument("--redis-url", default=None,
                   help="use this Redis (its db is written to!) instead of starting a private one")
    p.set_defaults(func=bench_features)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m homefeed.bench.serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="BENCHMARK", required=True)
    add_bench_model_parser(sub)
    add_bench_features_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
