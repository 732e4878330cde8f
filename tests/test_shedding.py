"""Load shedding in a real `bentoml serve`: past `serving_max_inflight` /rank requests in flight
in a worker, a quick 503 with Retry-After; health and metrics are never shed.

Deterministic, no timing luck: a request is held in flight by a client that sends its headers
and half its body, and the test waits until the worker's `homefeed_serving_inflight` gauge says
it is counted before sending the others. Then it sends the rest of the body.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_service import PINS, USER, http, start_service, stop_service, tiny_model, write_features

from homefeed.feature_store import open_store
from homefeed.stack import LocalStack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def limited_service(feature_repo, stack, tmp_path_factory):
    """One worker, at most one /rank request in flight."""
    tmp = tmp_path_factory.mktemp("shedding")
    private = stack.replace(home=tmp / "home", redis_port=free_port())
    redis_stack = LocalStack(private)
    redis_stack._up_redis()
    saved = os.environ["HOMEFEED_REDIS_PORT"]
    os.environ["HOMEFEED_REDIS_PORT"] = str(private.redis_port)
    port = free_port()
    proc = None
    log_path = tmp / "service.log"
    try:
        write_features(open_store(feature_repo))
        tag, _ = tiny_model(tmp)
        env = dict(os.environ, BENTOML_HOME=str(tmp / "bentoml"), HOMEFEED_MODEL=tag,
                   BENTOML_DO_NOT_TRACK="true", HOMEFEED_SERVING_WORKERS="1",
                   HOMEFEED_SERVING_MAX_INFLIGHT="1", HOMEFEED_SERVING_RETRY_AFTER_S="2")
        proc, url = start_service(port, env, log_path)
        yield {"url": url, "port": port, "log": log_path}
    finally:
        stop_service(proc)
        os.environ["HOMEFEED_REDIS_PORT"] = saved
        redis_stack.down()


def metric(url: str, name: str) -> float:
    status, text = http("GET", url + "/metrics")
    assert status == 200
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M)
    return sum(float(v) for v in values) if values else 0.0


class HeldRequest:
    """A /rank request whose body arrives in two halves: in flight until `finish()`."""

    def __init__(self, port: int, body: dict):
        self.body = json.dumps(body).encode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (f"POST /rank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n").encode()
        self.half = len(self.body) // 2
        self.sock.sendall(head + self.body[: self.half])

    def finish(self) -> tuple[int, dict]:
        self.sock.sendall(self.body[self.half:])
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)


def wait_until(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def post_rank(url: str) -> tuple[int, dict, str | None]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + "/rank", json.dumps({"user_id": USER, "candidates": PINS[:10]}).encode(),
                                 {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("Retry-After")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers.get("Retry-After")


def test_past_the_limit_a_503_with_retry_after_and_health_is_never_shed(limited_service):
    url = limited_service["url"]
    assert post_rank(url)[0] == 200  # warm: the pin cache, the connection to Redis
    wait_until(lambda: metric(url, "homefeed_serving_inflight") == 0)
    shed_before = metric(url, "homefeed_serving_shed_total")

    held = HeldRequest(limited_service["port"], {"user_id": USER, "candidates": PINS[:20], "k": 5})
    try:
        wait_until(lambda: metric(url, "homefeed_serving_inflight") == 1)  # counted by the worker
        with ThreadPoolExecutor(3) as pool:  # three more, concurrently: the limit is 1
            shed = list(pool.map(lambda _: post_rank(url), range(3)))
        for status, body, retry_after in shed:
            assert status == 503, body
            assert retry_after == "2" and body["retry_after_s"] == 2
            assert body["error"] == "overloaded" and "limit 1" in body["reason"]
        # never shed: health, readiness, metrics, info
        for path in ("/livez", "/readyz", "/metrics"):
            assert http("GET", url + path)[0] == 200, path
        assert http("POST", url + "/info", {})[0] == 200
    finally:
        status, out = held.finish()
    assert status == 200 and len(out["items"]) == 5, out

    # the slot is free again as soon as an answer is out: sequential calls are never shed
    for _ in range(5):
        status, out, _ = post_rank(url)
        assert status == 200, out
    assert metric(url, "homefeed_serving_shed_total") - shed_before == 3
    assert metric(url, "homefeed_serving_inflight") == 0

    time.sleep(0.5)  # the log file is written by another process
    text = limited_service["log"].read_text(errors="replace")
    lines = [line for line in text.splitlines() if "shed" in line and "/rank" in line]
    assert lines and all("INFO" in line for line in lines), text[-3000:]
    assert "Traceback" not in text and " 500 " not in text, text[-3000:]
