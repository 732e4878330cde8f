"""`homefeed bench events`: events/s through the events API with broker acknowledgement, and
whether every 202 reached the topic across an API restart.

1. Without --url: a private broker (homefeed.stack.private_stack, Kafka only) and one API process
   (`homefeed events serve`, one worker) on free ports.
2. `clients` threads post batches of `batch` valid actions for `seconds`; a call that is not a
   202 (503, a refused connection while the API restarts) is counted and its events are not
   counted as sent, exactly as a client would see them.
3. --restart: halfway, SIGTERM the API (it drains in-flight calls, flushes, exits) and start a new
   one on the same port; the clients keep going.
4. The topic is read back from the beginning: every event id of a 202 must be there (`lost`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from homefeed.events import ActionEvent, ActionType
from homefeed.settings import SOURCE_ROOT, Settings


def _start_api(port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "homefeed.cli", "events", "serve", "--port", str(port)],
                            cwd=SOURCE_ROOT, env=dict(os.environ), stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the events API exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def topic_event_ids(settings: Settings, timeout_s: float = 30) -> list[str]:
    """Every event id on the actions topic (read from the beginning until the end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka_client_config(), enable_auto_commit=False)
    try:
        parts = [TopicPartition(settings.actions_topic, p)
                 for p in consumer.partitions_for_topic(settings.actions_topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        ids: list[str] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
                ids += [json.loads(r.value)["event_id"] for r in records]
        return ids
    finally:
        consumer.close()


def _clients(url: str, seconds: float, batch: int, clients: int, on_halfway=None) -> dict:
    import httpx

    accepted_ids: list[list[str]] = [[] for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[dict[str, int]] = [{} for _ in range(clients)]
    stop = threading.Event()
    now = int(time.time() * 1000)

    def client(c: int) -> None:
        http = httpx.Client(base_url=url, timeout=10)
        users = np.random.default_rng(c).integers(1, 100_000, 10_000)
        i = 0
        while not stop.is_set():
            ids = [f"bench-{now}-{c}-{i + j}" for j in range(batch)]
            body = [ActionEvent(ids[j], int(users[(i + j) % len(users)]), 1 + (i + j) % 5000, ActionType.CLICK,
                                int(time.time() * 1000)).to_dict() for j in range(batch)]
            i += batch
            t0 = time.perf_counter()
            try:
                status = http.post("/v1/actions", json=body).status_code
            except httpx.TransportError as exc:
                status = type(exc).__name__
            if status == 202:
                latencies[c].append(time.perf_counter() - t0)
                accepted_ids[c] += ids
            else:
                failures[c][str(status)] = failures[c].get(str(status), 0) + 1
                stop.wait(0.05)  # back off a moment, as a client honouring Retry-After would
        http.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    if on_halfway is not None:
        stop.wait(seconds / 2)
        on_halfway()
        stop.wait(max(0.0, seconds - (time.perf_counter() - started)))
    else:
        stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    elapsed = time.perf_counter() - started
    lat = np.array([x for c in latencies for x in c]) * 1000
    fails: dict[str, int] = {}
    for f in failures:
        for k, v in f.items():
            fails[k] = fails.get(k, 0) + v
    ids = [x for c in accepted_ids for x in c]
    return {"seconds": round(elapsed, 1), "accepted_events": len(ids), "events_per_s": round(len(ids) / elapsed),
            "requests_202": len(lat), "request_p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "request_p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "failed_requests": fails, "_ids": ids}


def run_bench(url: str | None, seconds: float = 20.0, batch: int = 100, clients: int = 2,
              restart: bool = False) -> dict:
    import logging

    from homefeed.stack import free_port, private_stack

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    out = {"batch": batch, "clients": clients, "machine": f"{os.cpu_count()} cores"}
    if url is not None:
        if restart:
            raise ValueError("--restart needs the private stack (no --url)")
        result = _clients(url.rstrip("/"), seconds, batch, clients)
        result.pop("_ids")
        return {**out, **result}
    with tempfile.TemporaryDirectory(prefix="homefeed-bench-events-") as tmp, \
            private_stack(Path(tmp), services=("kafka",)) as (settings, _):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "api.log"
        procs = [_start_api(port, log)]
        try:
            _wait_ready(url, procs[0])
            restarted: dict = {}

            def restart_api() -> None:
                t0 = time.perf_counter()
                procs[-1].terminate()
                procs[-1].wait(30)
                restarted["exit_code"] = procs[-1].returncode
                procs.append(_start_api(port, log))
                _wait_ready(url, procs[-1])
                restarted["down_s"] = round(time.perf_counter() - t0, 2)

            result = _clients(url, seconds, batch, clients, restart_api if restart else None)
            on_topic = topic_event_ids(settings)
            accepted = result.pop("_ids")
            present = set(on_topic)
            result["lost"] = sum(1 for x in accepted if x not in present)
            result["on_topic"] = len(on_topic)
            result["duplicates_on_topic"] = len(on_topic) - len(present)
            if restart:
                result["restart"] = restarted
            result["api_log_tracebacks"] = log.read_text(errors="replace").count("Traceback")
            return {**out, **result}
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)


def add_bench_events_parser(sub) -> None:
    p = sub.add_parser("events", help="events/s through the events API with broker acknowledgement")
    p.add_argument("--url", help="a running API (default: start one on a private broker)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to send (default 20)")
    p.add_argument("--batch", type=int, default=100, help="events per request (default 100)")
    p.add_argument("--clients", type=int, default=2, help="concurrent HTTP clients (default 2)")
    p.add_argument("--restart", action="store_true",
                   help="restart the API halfway and check every 202 reached the topic (private broker only)")
    p.set_defaults(func=cmd_bench_events)


def cmd_bench_events(args) -> int:
    print(json.dumps(run_bench(args.url, seconds=args.seconds, batch=args.batch, clients=args.clients,
                               restart=args.restart), indent=1))
    return 0
