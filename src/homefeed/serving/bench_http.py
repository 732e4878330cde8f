"""`homefeed bench serve`: latency and throughput of a running ranking service under concurrent
HTTP load, at several candidate-set sizes, with the service's own stage breakdown.

    make demo                                   # leaves a service running; its URL is printed
    homefeed bench serve --url http://127.0.0.1:PORT --json

Requests are bounded (count and time) and go only to the given URL; use a loopback address.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import numpy as np


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def load_test(url: str, n_candidates: int, requests: int, concurrency: int, user_ids: list[int],
              max_pin_id: int, seed: int = 0, time_limit_s: float = 120.0) -> dict:
    rng = np.random.default_rng(seed)
    bodies = [{"user_id": int(rng.choice(user_ids)),
               "candidates": rng.choice(np.arange(1, max_pin_id + 1), n_candidates, replace=False).tolist(),
               "k": 10} for _ in range(requests)]
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors = 0
    lock = threading.Lock()
    next_index = iter(range(requests))
    deadline = time.monotonic() + time_limit_s

    def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                out = _post(url + "/rank", bodies[i])
            except OSError:
                with lock:
                    errors += 1
                continue
            took = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(took)
                for stage, ms in out.get("timings_ms", {}).items():
                    stages.setdefault(stage, []).append(ms)

    _post(url + "/rank", bodies[0])  # warm-up
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.asarray(latencies)
    pct = lambda a, q: round(float(np.percentile(a, q)), 2) if len(a) else None  # noqa: E731
    return {
        "candidates": n_candidates, "requests": len(latencies), "errors": errors, "concurrency": concurrency,
        "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99),
        "throughput_rps": round(len(latencies) / wall, 2),
        "stages_ms": {s: {"p50": pct(v, 50), "p99": pct(v, 99)} for s, v in sorted(stages.items())},
    }


def cmd_bench_serve(args) -> int:
    from homefeed.errors import UserError

    users = [int(u) for u in args.users.split(",")]
    sizes = [int(x) for x in args.candidates.split(",")]
    if max(sizes) > args.max_pin_id:
        raise UserError(f"--max-pin-id {args.max_pin_id} is smaller than {max(sizes)} candidates; "
                        "ids beyond the catalogue are fine (they rank as unknown pins)")
    url = args.url.rstrip("/")
    try:  # what serves: model, dtype, kernels, workers x threads (a service without /info: None)
        served = _post(url + "/info", {})
    except OSError:
        served = None
    rows = [load_test(url, n, args.requests, args.concurrency, users, args.max_pin_id)
            for n in sizes]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {"url": args.url, "served": served, "rows": rows, "machine": f"{os.cpu_count()} cores",
              "load_avg_1m": round(load[0], 2) if load else None,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


def add_bench_serve_parser(bench_subparsers) -> None:
    p = bench_subparsers.add_parser("serve", help="latency/throughput of a running /rank service")
    p.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:3000")
    p.add_argument("--candidates", default="100,500,1000", help="candidate-set sizes")
    p.add_argument("--requests", type=int, default=200, help="requests per size")
    p.add_argument("--concurrency", type=int, default=4,
                   help="clients sending requests back to back (default 4)")
    p.add_argument("--users", default="1,2,3,4,5,6,7,8,9,10", help="user ids to rank for")
    p.add_argument("--max-pin-id", type=int, default=500, help="candidates are drawn from 1..this")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(func=cmd_bench_serve)
