"""Overload and load shedding of the ranking service (docs/benchmarks.md, "Overload and load
shedding"; issue 24): per in-flight limit, the sustainable rate, then 4x it, open-loop.

    PYTHONPATH=src python scripts/bench_overload.py WORKDIR LIMITS SIZES [FACTOR] [SECONDS] [keepalive]
    PYTHONPATH=src python scripts/bench_overload.py /tmp/ovl 0,8 100 4 20

1. A private stack (redis + broker on free ports, private feature repo: homefeed.bench.faults).
2. 2,000 pins and 10 users with 100-action sequences written to the online store.
3. An untrained TransAct v1.1 with ModelConfig defaults (2 layers, the demo's shape), seeded.
4. Per limit (HOMEFEED_SERVING_MAX_INFLIGHT; 0 = no shedding, as before issue 24): `bentoml serve`
   with the default workers x threads, then per size `homefeed.bench.serve_http.overload_test`:
   8 closed-loop clients (320 calls at < 1,000 candidates, 48 at 1,000 and more) give the
   sustainable rate and the baseline p99; FACTOR x that rate open-loop for SECONDS; worker RSS
   before, right after and 10 s after. `keepalive`: each client thread keeps its connection
   (as a load balancer does), else a new connection per request. One JSON line per row; all rows in
   WORKDIR/overload.json.
"""
import json
import os
import sys
import time
from pathlib import Path

from homefeed.bench.faults import private_stack, seeded_ranker, serve_ranking
from homefeed.bench.serve_http import overload_test, service_pids
from homefeed.http_client import post_json

work = Path(sys.argv[1])
work.mkdir(parents=True, exist_ok=True)
limits = [int(x) for x in sys.argv[2].split(",")]
sizes = [int(x) for x in sys.argv[3].split(",")]
factor = float(sys.argv[4]) if len(sys.argv) > 4 else 4.0
seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
keepalive = len(sys.argv) > 6 and sys.argv[6] == "keepalive"  # else a new connection per request
out = []
with private_stack(work) as (settings, stack):
    tag, users = seeded_ranker(settings, work)  # steps 2-3
    for limit in limits:
        env = {"HOMEFEED_MODEL": tag, "HOMEFEED_SERVING_MAX_INFLIGHT": str(limit)}
        with serve_ranking(work / f"service-limit{limit}.log", env, timeout_s=240) as (url, proc):
            info = post_json(url + "/info", {}, timeout_s=60)
            for n in sizes:
                row = overload_test(url, n, clients=8, baseline_requests=320 if n < 1000 else 48, factor=factor,
                                    seconds=seconds, workers=info["workers"], user_ids=users, max_pin_id=2000,
                                    pids=service_pids(proc.pid), keepalive=keepalive)
                row.update(limit=limit, threads=info["threads_per_worker"], load_avg_1m=round(os.getloadavg()[0], 2),
                           date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                print(json.dumps(row), flush=True)
                out.append(row)
(work / "overload.json").write_text(json.dumps(out, indent=1))
