"""`homefeed bench validate`: what the action_events suite costs per micro-batch.

Times `validate_dataframe("action_events", batch)` (the whole suite: cached context, no stored
results) and the stream consumer's call (`failing_rows(..., structure=False)`: the value checks)
on synthetic valid batches of 1k and 10k events, repeated, and reports median and p95
milliseconds. Also times a 1k batch with one bad row (the failing path
re-runs the failed expectation for counts and examples) and the cold first call (GX import
and context load). `--json` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from homefeed.events import action_names

BENCH_NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def synthetic_events(n: int, seed: int = 0, now_ms: int = BENCH_NOW_MS) -> pd.DataFrame:
    """n valid action events (the contract's columns), newest at `now_ms`."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "event_id": [f"u{u}-{i:09d}" for i, u in enumerate(rng.integers(1, 100_000, n))],
        "user_id": rng.integers(1, 100_000, n, dtype=np.int64),
        "pin_id": rng.integers(1, 10_000_000, n, dtype=np.int64),
        "action_type": rng.choice(action_names(), n, p=[0.3, 0.6, 0.1]),
        "event_time": now_ms - rng.integers(0, 60_000, n, dtype=np.int64),
        "surface": "homefeed",
    })


def _stats(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {
        "median_ms": round(float(np.median(arr)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "min_ms": round(float(arr.min()), 2),
        "max_ms": round(float(arr.max()), 2),
    }


def run_bench(sizes: list[int], repeats: int, project_dir: Path | None = None) -> dict:
    from homefeed.settings import Settings
    from homefeed.validation import runner

    settings = Settings()
    t0 = time.perf_counter()
    first = runner.validate_dataframe("action_events", synthetic_events(100), settings=settings,
                                      now_ms=BENCH_NOW_MS, project_dir=project_dir)
    cold_ms = (time.perf_counter() - t0) * 1000
    if not first.success:
        raise RuntimeError("benchmark data failed validation:\n" + first.to_text())

    results = []
    for n in sizes:
        batch = synthetic_events(n, seed=n)
        for _ in range(2):  # warm-up
            runner.validate_dataframe("action_events", batch, settings=settings, now_ms=BENCH_NOW_MS,
                                      project_dir=project_dir)
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            report = runner.validate_dataframe("action_events", batch, settings=settings,
                                               now_ms=BENCH_NOW_MS, project_dir=project_dir)
            samples.append((time.perf_counter() - t) * 1000)
            assert report.success
        row = {"events": n, "passing": True, **_stats(samples)}
        row["events_per_s"] = round(n / (row["median_ms"] / 1000))
        # The consumer's call: failing_rows with the value checks only (structure by construction).
        stream = []
        for _ in range(repeats):
            t = time.perf_counter()
            rejected = runner.failing_rows("action_events", batch, settings=settings, now_ms=BENCH_NOW_MS,
                                           project_dir=project_dir, structure=False)
            stream.append((time.perf_counter() - t) * 1000)
            assert not rejected
        row["stream_path"] = _stats(stream)
        results.append(row)

    bad = synthetic_events(1000, seed=1)
    bad.loc[bad.index[7], "action_type"] = "like"
    samples = []
    for i in range(max(3, repeats // 3) + 1):
        t = time.perf_counter()
        report = runner.validate_dataframe("action_events", bad, settings=settings,
                                           now_ms=BENCH_NOW_MS, project_dir=project_dir)
        if i:  # first one is a warm-up
            samples.append((time.perf_counter() - t) * 1000)
        assert not report.success
    results.append({"events": 1000, "passing": False, "defect": "one unknown action_type",
                    **_stats(samples)})

    import great_expectations as gx

    return {
        "benchmark": "validate",
        "suite": "action_events",
        "path": "homefeed.validation.validate_dataframe",
        "expectations": first.evaluated,
        "repeats": repeats,
        "cold_first_call_ms": round(cold_ms, 1),
        "results": results,
        "great_expectations": gx.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def bench_validate(args) -> int:
    try:
        sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        from homefeed.errors import UserError

        raise UserError(f"--sizes wants comma-separated integers, got {args.sizes!r}") from None
    result = run_bench(sizes, max(1, args.repeats), args.project_dir)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"action_events suite ({result['expectations']} expectations), validate_dataframe, "
          f"{result['repeats']} repeats; cold first call {result['cold_first_call_ms']} ms")
    for row in result["results"]:
        label = f"{row['events']:>6} events" + ("" if row["passing"] else " (1 bad row)")
        print(f"  {label}: median {row['median_ms']} ms, p95 {row['p95_ms']} ms")
        if "stream_path" in row:
            print(f"  {label}, the consumer's value checks: median {row['stream_path']['median_ms']} ms, "
                  f"p95 {row['stream_path']['p95_ms']} ms")
    return 0


def add_bench_validate_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add `validate` to the `bench` group's subparsers (argparse _SubParsersAction)."""
    p = bench_subparsers.add_parser("validate", help="cost of the action_events GX suite per micro-batch")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--sizes", default="1000,10000", help="batch sizes in events (default 1000,10000)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per size (default 30)")
    p.add_argument("--project-dir", type=Path, default=None, help="GX project directory")
    p.set_defaults(func=bench_validate)
    return p


def register_bench(subparsers_or_parser) -> None:
    """Hook this module into a `bench` group: pass the group's subparsers action, or the
    group's parser (its subparsers are created here)."""
    if hasattr(subparsers_or_parser, "add_parser"):
        add_bench_validate_parser(subparsers_or_parser)
    else:
        add_bench_validate_parser(
            subparsers_or_parser.add_subparsers(dest="bench_command", metavar="BENCH"))


__all__ = ["add_bench_validate_parser", "bench_validate", "register_bench", "run_bench",
           "synthetic_events"]
