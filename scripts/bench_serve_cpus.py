"""`/rank` latency and throughput per CPU split of the service (workers x threads), at
concurrency 1, 2 and 4 (docs/benchmarks.md, "Serving over HTTP: CPUs").

    PYTHONPATH=src python scripts/bench_serve_cpus.py WORKDIR '[[1,1],[1,2],[2,1]]' 100,1000 12

1. A private stack (redis + broker on free ports, private feature repo: homefeed.bench.faults).
2. 2,000 pins and 10 users with 100-action sequences written to the online store.
3. An untrained TransAct v1.1 with ModelConfig defaults (2 layers, the demo's shape), seeded,
   exported to a private BentoML store.
4. Per [workers, threads]: `bentoml serve` with HOMEFEED_SERVING_WORKERS/THREADS, then
   `homefeed.bench.serve_http.load_test` per size and concurrency (REQUESTS at >= 1,000
   candidates, 3x that below). One JSON line per row; all rows in WORKDIR/results.json.
"""
import json
import os
import sys
from pathlib import Path

from homefeed.bench.faults import private_stack, seeded_ranker, serve_ranking
from homefeed.bench.serve_http import load_test
from homefeed.http_client import post_json

work = Path(sys.argv[1])
work.mkdir(parents=True, exist_ok=True)
configs = json.loads(sys.argv[2])  # [[workers, threads], ...]
sizes = [int(x) for x in sys.argv[3].split(",")]
requests = int(sys.argv[4])
out = []
with private_stack(work) as (settings, stack):
    tag, users = seeded_ranker(settings, work)  # steps 2-3
    for workers, threads in configs:
        env = {"HOMEFEED_MODEL": tag, "HOMEFEED_SERVING_WORKERS": str(workers),
               "HOMEFEED_SERVING_THREADS": str(threads)}
        with serve_ranking(work / f"service-{workers}x{threads}.log", env, timeout_s=240) as (url, proc):
            info = post_json(url + "/info", {}, timeout_s=60)
            for n in sizes:
                for c in (1, 2, 4):
                    row = load_test(url, n, requests if n >= 1000 else 3 * requests, c, users, 2000, time_limit_s=240)
                    row.update(workers=workers, threads=threads, load_avg_1m=round(os.getloadavg()[0], 2),
                               dtype=info["served"]["dtype"], kernels=info["served"]["kernels"])
                    print(json.dumps(row), flush=True)
                    out.append(row)
(work / "results.json").write_text(json.dumps(out, indent=1))
