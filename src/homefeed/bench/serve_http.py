"""`homefeed bench serve`: latency and throughput of a running ranking service under concurrent
HTTP load, at several candidate-set sizes, with the service's own stage breakdown.

    make demo                                   # leaves a service running; its URL is printed
    homefeed bench serve --url http://127.0.0.1:PORT --json
    homefeed bench serve --url http://127.0.0.1:PORT --candidates 100 --concurrency 8 --requests 320 \
        --overload 4 --json                     # overload: 4x the sustainable rate (issue 24)

Requests are bounded (count and time) and go only to the given URL; use a loopback address.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np

from homefeed.http_client import post_json, post_status


def run_threads(targets) -> float:
    """Start one thread per callable of `targets` at once, wait for all -> wall seconds."""
    threads = [threading.Thread(target=target) for target in targets]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began


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
                out = post_json(url + "/rank", bodies[i], timeout_s=60)
            except OSError:
                with lock:
                    errors += 1
                continue
            took = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(took)
                for stage, ms in out.get("timings_ms", {}).items():
                    stages.setdefault(stage, []).append(ms)

    post_json(url + "/rank", bodies[0], timeout_s=60)  # warm-up
    wall = run_threads([worker] * concurrency)
    lat = np.asarray(latencies)
    pct = lambda a, q: round(float(np.percentile(a, q)), 2) if len(a) else None  # noqa: E731
    return {
        "candidates": n_candidates, "requests": len(latencies), "errors": errors, "concurrency": concurrency,
        "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99),
        "throughput_rps": round(len(latencies) / wall, 2),
        "stages_ms": {s: {"p50": pct(v, 50), "p99": pct(v, 99)} for s, v in sorted(stages.items())},
    }


# -- overload -------------------------------------------------------------------------------------

_local = threading.local()


def _keepalive_post(url: str, body: bytes, timeout_s: float = 30) -> int:
    """POST on this thread's persistent connection (as a load balancer keeps them) -> HTTP status
    (0: no answer). A connection the server closed is reopened once."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    for attempt in (0, 1):
        conn = getattr(_local, "conn", None)
        if conn is None:
            conn = _local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        try:
            conn.request("POST", parts.path, body, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                _local.conn = None
            return resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            _local.conn = None
            if attempt:
                return 0
    return 0


def worker_pids(url: str, expected: int, tries: int = 60) -> list[int]:
    """The pids of the service's worker processes, from /info (each worker answers with its own;
    which one answers is up to the kernel, so ask until `expected` distinct pids came back)."""
    pids: set[int] = set()
    for _ in range(tries):
        pid = post_json(url + "/info", {}, timeout_s=60).get("pid")
        if pid:
            pids.add(int(pid))
        if len(pids) >= expected:
            break
    return sorted(pids)


def service_pids(root_pid: int) -> list[int]:
    """Every process below `root_pid` (the `bentoml serve` arbiter: its workers), from /proc."""
    import os as _os

    parent: dict[int, int] = {}
    for name in _os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [root_pid]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parent.items() if p == pid]
        found += kids
        frontier += kids
    return sorted(found)


def rss_mb(pids: list[int]) -> dict[int, float]:
    """Resident set size of local processes (MiB), from /proc; missing processes are left out."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        out[pid] = round(kb / 1024, 1)
    return out


def _bodies(n: int, n_candidates: int, user_ids: list[int], max_pin_id: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pool = np.arange(1, max_pin_id + 1)
    return [json.dumps({"user_id": int(rng.choice(user_ids)),
                        "candidates": rng.choice(pool, n_candidates, replace=False).tolist(),
                        "k": 10}).encode() for _ in range(n)]


def _summary(rows: list[tuple[float, int, float]], wall_s: float) -> dict:
    """rows: (latency ms, status, send lag ms) -> counts by status class and answered latency."""
    ok = np.asarray([ms for ms, status, _ in rows if status == 200])
    pct = lambda a, q: round(float(np.percentile(a, q)), 1) if len(a) else None  # noqa: E731
    statuses = [status for _, status, _ in rows]
    shed_ms = np.asarray([ms for ms, status, _ in rows if status == 503])
    return {"sent": len(rows), "ok": int(ok.size), "shed_503": statuses.count(503),
            "other_5xx": sum(500 <= s < 600 and s != 503 for s in statuses),
            "other": sum(s != 200 and not 500 <= s < 600 for s in statuses),  # 4xx, 0 = no answer
            "answered_p50_ms": pct(ok, 50), "answered_p99_ms": pct(ok, 99),
            "answered_max_ms": round(float(ok.max()), 1) if ok.size else None,
            "shed_p99_ms": pct(shed_ms, 99),
            "goodput_rps": round(ok.size / wall_s, 1), "offered_rps": round(len(rows) / wall_s, 1),
            "max_send_lag_ms": round(max((lag for *_, lag in rows), default=0.0), 1)}


def closed_loop(url: str, bodies: list[bytes], clients: int, keepalive: bool = False) -> dict:
    """`clients` threads sending `bodies` back to back: the sustainable rate and its latency.
    `keepalive`: each thread keeps its connection, else one connection per request."""
    post = _keepalive_post if keepalive else post_status
    rows: list[tuple[float, int, float]] = []
    lock = threading.Lock()
    it = iter(bodies)

    def client() -> None:
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                return
            start = time.perf_counter()
            status = post(url + "/rank", body)
            with lock:
                rows.append(((time.perf_counter() - start) * 1000, status, 0.0))

    return _summary(rows, run_threads([client] * clients))


def open_loop(url: str, bodies: list[bytes], rate: float, max_threads: int = 96, keepalive: bool = False) -> dict:
    """Send `bodies` at `rate` per second whatever the answers (an open-loop load: arrivals do
    not wait for answers, as users do not); shed requests are not retried. Latency is measured
    from each request's scheduled time, so a client that fell behind shows in it, and
    `max_send_lag_ms` says by how much the sender itself was late."""
    from concurrent.futures import ThreadPoolExecutor

    post = _keepalive_post if keepalive else post_status
    rows: list[tuple[float, int, float]] = []
    lock = threading.Lock()

    def one(body: bytes, due: float) -> None:
        lag = (time.perf_counter() - due) * 1000
        status = post(url + "/rank", body)
        with lock:
            rows.append(((time.perf_counter() - due) * 1000, status, lag))

    began = time.perf_counter()
    with ThreadPoolExecutor(max_threads) as pool:
        for i, body in enumerate(bodies):
            due = began + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            pool.submit(one, body, due)
    return _summary(rows, time.perf_counter() - began)


def overload_test(url: str, n_candidates: int = 100, clients: int = 8, baseline_requests: int = 320,
                  factor: float = 4.0, seconds: float = 20.0, settle_s: float = 10.0, workers: int | None = None,
                  user_ids: list[int] | None = None, max_pin_id: int = 200, seed: int = 0,
                  pids: list[int] | None = None, keepalive: bool = False) -> dict:
    """1. Baseline: `clients` closed-loop clients, `baseline_requests` calls: the sustainable rate
    (their throughput, nothing failing) and the answered p99 there ("unloaded": not overloaded).
    2. Overload: an open-loop `factor` x that rate for `seconds`.
    3. Worker RSS (`pids`, else the local workers that /info names: not always all of them)
    before the overload, right after, and after
    `settle_s` idle. Targets (issue 24): no 5xx but the shed 503s, answered p99 <= 2x the
    baseline's, RSS after within 10% of before. `keepalive`: every client thread keeps its
    connection (as a load balancer does), else a new connection per request."""
    users = user_ids or [1]
    info = post_json(url + "/info", {}, timeout_s=60)
    pids = pids or worker_pids(url, workers or int(info.get("workers") or 1))
    closed_loop(url, _bodies(2 * clients, n_candidates, users, max_pin_id, seed + 1), clients, keepalive)  # warm-up
    base = closed_loop(url, _bodies(baseline_requests, n_candidates, users, max_pin_id, seed), clients, keepalive)
    rate = base["goodput_rps"] * factor
    rss_before = rss_mb(pids)
    over = open_loop(url, _bodies(max(1, int(rate * seconds)), n_candidates, users, max_pin_id, seed + 2), rate,
                     keepalive=keepalive)
    rss_after = rss_mb(pids)
    time.sleep(settle_s)
    rss_settled = rss_mb(pids)
    total = lambda d: round(sum(d.values()), 1)  # noqa: E731
    ratio = (over["answered_p99_ms"] / base["answered_p99_ms"]
             if over["answered_p99_ms"] and base["answered_p99_ms"] else None)
    growth = (total(rss_settled) / total(rss_before) - 1) if rss_before and rss_settled else None
    return {"candidates": n_candidates, "clients": clients, "factor": factor, "seconds": seconds,
            "connections": "keep-alive per client thread" if keepalive else "one per request",
            "workers": len(pids), "baseline": base, "overload": over,
            "p99_ratio": round(ratio, 2) if ratio is not None else None,
            "rss_mb": {"before": rss_before, "after": rss_after, "settled": rss_settled},
            "rss_growth": round(growth, 3) if growth is not None else None,
            "targets": {"no_other_5xx": over["other_5xx"] == 0 and over["other"] == 0,
                        "p99_within_2x": ratio is not None and ratio <= 2.0,
                        "rss_within_10pct": growth is not None and growth <= 0.10}}


def cmd_bench_serve(args) -> int:
    from homefeed.errors import UserError

    users = [int(u) for u in args.users.split(",")]
    sizes = [int(x) for x in args.candidates.split(",")]
    if max(sizes) > args.max_pin_id:
        raise UserError(f"--max-pin-id {args.max_pin_id} is smaller than {max(sizes)} candidates; "
                        "ids beyond the catalogue are fine (they rank as unknown pins)")
    url = args.url.rstrip("/")
    if args.overload:
        report = overload_test(url, sizes[0], clients=args.concurrency, baseline_requests=args.requests,
                               factor=args.overload, seconds=args.overload_seconds, user_ids=users,
                               max_pin_id=args.max_pin_id, keepalive=args.keepalive)
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        report.update(url=args.url, machine=f"{os.cpu_count()} cores",
                      load_avg_1m=round(load[0], 2) if load else None,
                      date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        print(json.dumps(report, indent=None if args.json else 2))
        return 0 if all(report["targets"].values()) else 1
    try:  # what serves: model, dtype, kernels, workers x threads (a service without /info: None)
        served = post_json(url + "/info", {}, timeout_s=60)
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
    p.add_argument("--overload", type=float, default=0.0, metavar="FACTOR",
                   help="instead: measure the sustainable rate with --concurrency clients and "
                        "--requests calls at the first --candidates size, then send FACTOR x that rate "
                        "open-loop; reports shed 503s, other 5xx, answered p99 vs the baseline's and "
                        "worker RSS (exit 1 when a target of issue 24 is missed)")
    p.add_argument("--overload-seconds", type=float, default=20.0, help="how long the overload lasts")
    p.add_argument("--keepalive", action="store_true",
                   help="with --overload: each client thread keeps its connection (as a load balancer "
                        "does) instead of one connection per request")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(func=cmd_bench_serve)
