"""The BentoML ranking service as a real `bentoml serve` process against a real Redis.

The service gets a Redis of its own (so stopping it does not disturb other tests), a model
exported into a temporary BentoML store, and features written the way the stream consumer and
the profile job write them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from homefeed import features as F
from homefeed.feature_store import open_store
from homefeed.stack import LocalStack, free_port
from homefeed.stream.online_writer import OnlineWriter
from homefeed.training.data import PinTable, RankingData
from homefeed.training.export import export_untrained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DIM = 32
NOW = int(time.time() * 1000)
USER = 501
PINS = list(range(1, 41))
rng = np.random.default_rng(0)
EMB = {p: (v / np.linalg.norm(v)).astype(np.float32).tolist() for p, v in
       zip(PINS, rng.normal(size=(len(PINS), DIM)))}
DURATION = {p: None if p % 3 == 0 else 4_000 * p for p in PINS}  # media duration, ms; None: unknown
SEQ = {  # newest first
    F.SEQ_PIN_IDS: [3, 7, 7, 12, 30],
    F.SEQ_ACTION_TYPES: [1, 2, 1, 3, 1],
    F.SEQ_ACTION_TIMES: [NOW - 60_000 * i for i in (1, 5, 6, 30, 300)],
}
IMP_USER = 502  # a user with impressions too: SEQ's actions and these pins shown, newest first
IMPS = {F.IMP_PIN_IDS: [8, 3, 21, 22], F.IMP_TIMES: [NOW - 60_000 * i for i in (2, 5, 7, 400)]}
PROFILE = {F.PROFILE_EMBEDDING: EMB[3], F.PROFILE_ACTIONS_28D: 40, F.PROFILE_REPIN_RATE_28D: 0.4,
           F.PROFILE_HIDE_RATE_28D: 0.05, F.PROFILE_DAYS_ACTIVE_28D: 9}


def http(method: str, url: str, body: dict | None = None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def tiny_model(tmp: Path) -> tuple[str, object]:
    return export_untrained(tmp / "run", emb_dim=DIM, bentoml_home=tmp / "bentoml")


def write_features(store) -> None:
    writer = OnlineWriter(store)
    writer.write_pins([{F.PIN_ID: p, F.PIN_EMBEDDING: EMB[p], F.PIN_TOPIC: p % 5,
                        F.PIN_CREATED_MS: NOW - 86_400_000 * p, F.PIN_DURATION_MS: DURATION[p],
                        F.EVENT_TIMESTAMP: NOW - 1000,
                        F.CREATED: NOW - 1000} for p in PINS])
    writer.write_sequences([{F.USER_ID: u, F.EVENT_TIMESTAMP: SEQ[F.SEQ_ACTION_TIMES][0],
                             F.CREATED: NOW - 1000, **SEQ, F.SEQ_LENGTH: len(SEQ[F.SEQ_PIN_IDS])}
                            for u in (USER, IMP_USER)])
    writer.write_sequences([{F.USER_ID: IMP_USER, F.EVENT_TIMESTAMP: IMPS[F.IMP_TIMES][0], F.CREATED: NOW - 1000,
                             **IMPS, F.IMP_LENGTH: len(IMPS[F.IMP_PIN_IDS])}], F.IMPRESSION_SEQUENCE)
    profile = pd.DataFrame([{F.USER_ID: u, **PROFILE} for u in (USER, IMP_USER)])
    profile[F.EVENT_TIMESTAMP] = pd.Timestamp(NOW - 3_600_000, unit="ms", tz="UTC")
    profile[F.CREATED] = profile[F.EVENT_TIMESTAMP]
    store.write_to_online_store(F.USER_PROFILE, profile)


def start_service(port: int, env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`bentoml serve bento.service:Ranking` on loopback `port` with `env`, once /readyz is 200."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "bento.service:Ranking", "--port", str(port),
         "--host", "127.0.0.1"], cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(log_path.read_text(errors="replace")[-4000:])
        try:
            if http("GET", url + "/readyz")[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    stop_service(proc)
    raise AssertionError("service did not become ready")


def stop_service(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def service(feature_repo, stack, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
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
        tag, model = tiny_model(tmp)
        # One worker process: the outage tests check one replica's pin cache and gauges (each
        # worker has its own; the default is one worker per CPU, see homefeed.serving.resources).
        env = dict(os.environ, BENTOML_HOME=str(tmp / "bentoml"), HOMEFEED_MODEL=tag,
                   BENTOML_DO_NOT_TRACK="true", HOMEFEED_SERVING_WORKERS="1")
        proc, url = start_service(port, env, log_path)
        yield {"url": url, "model": model, "redis": redis_stack, "tag": tag, "log": log_path}
    finally:
        stop_service(proc)
        os.environ["HOMEFEED_REDIS_PORT"] = saved
        redis_stack.down()


def rank(service, **body):
    status, text = http("POST", service["url"] + "/rank", body)
    return status, (json.loads(text) if status == 200 else text)


def offline_scores(model, candidates: list[int], request_ms: int, impressions: bool = False) -> np.ndarray:
    """The training/evaluation path (RankingData -> build_batch -> model) on the same features;
    `impressions`: IMP_USER's, the sequence input the model's setting says (sequence_impressions)."""
    requests = pd.DataFrame([{F.SNAPSHOT_ID: 1, F.REQUEST_ID: 1, F.USER_ID: USER, "request_time_ms": request_ms, **SEQ,
                              F.SEQ_LENGTH: len(SEQ[F.SEQ_PIN_IDS]), **PROFILE,
                              **(IMPS if impressions else {F.IMP_PIN_IDS: [], F.IMP_TIMES: []}),
                              F.IMP_LENGTH: len(IMPS[F.IMP_PIN_IDS]) if impressions else 0}])
    impressions = pd.DataFrame({F.SNAPSHOT_ID: 1, F.REQUEST_ID: 1, F.USER_ID: USER, F.PIN_ID: candidates,
                                F.PIN_EMBEDDING: [EMB[p] for p in candidates],
                                F.PIN_CREATED_MS: [NOW - 86_400_000 * p for p in candidates],
                                F.PIN_DURATION_MS: pd.array([DURATION[p] for p in candidates], dtype="Int64"),
                                "label_repin": 0, "label_click": 0, "label_hide": 0})
    pins = pd.DataFrame({F.PIN_ID: PINS, F.PIN_EMBEDDING: [EMB[p] for p in PINS], F.PIN_TOPIC: 0})
    data = RankingData(requests, impressions, PinTable(pins, DIM), 100, model.heads,
                       sequence_impressions=model.config.sequence_impressions)
    with torch.no_grad():
        return torch.sigmoid(model(data.collate(np.arange(len(candidates))))).numpy()


def test_ranking_equals_offline_scores_for_the_same_features(service):
    candidates = PINS[::2]
    status, out = rank(service, user_id=USER, candidates=candidates, k=len(candidates),
                       request_time_ms=NOW, blend={"repin": 1.0})
    assert status == 200, out
    assert out["model_version"] == service["tag"] and not out["cold_start"] and not out["degraded"]
    served = {item["pin_id"]: item["heads"] for item in out["items"]}
    expected = offline_scores(service["model"], candidates, NOW)
    tolerance = json.loads(http("POST", service["url"] + "/info", {})[1])["tolerance"]  # dtype "auto"
    for i, pin in enumerate(candidates):
        for j, head in enumerate(service["model"].heads):
            assert served[pin][head] == pytest.approx(float(expected[i, j]), abs=tolerance)
    scores = [item["score"] for item in out["items"]]
    assert scores == sorted(scores, reverse=True)  # ranked by the blend
    assert set(out["timings_ms"]) >= {"features", "tensors", "model"}


def test_a_model_with_impressions_in_its_sequence_reads_them_and_ranks_as_offline(service, tmp_path):
    """`sequence_impressions` recorded at export and honoured by /rank: the service reads the
    user's impression sequence and scores what the training path scores on the merged input."""
    tag, model = export_untrained(tmp_path / "run", emb_dim=DIM, bentoml_home=tmp_path / "bentoml", seed=1,
                                  sequence_impressions=True)
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), HOMEFEED_MODEL=tag,
               BENTOML_DO_NOT_TRACK="true", HOMEFEED_SERVING_WORKERS="1")
    proc, url = start_service(free_port(), env, tmp_path / "service.log")
    try:
        candidates = PINS[1::3]
        status, text = http("POST", url + "/rank", {"user_id": IMP_USER, "candidates": candidates,
                                                    "k": len(candidates), "request_time_ms": NOW})
        assert status == 200, text
        served = {item["pin_id"]: item["heads"] for item in json.loads(text)["items"]}
        tolerance = json.loads(http("POST", url + "/info", {})[1])["tolerance"]
    finally:
        stop_service(proc)
    assert model.config.sequence_impressions
    expected = offline_scores(model, candidates, NOW, impressions=True)
    without = offline_scores(model, candidates, NOW)  # what a reader that ignored them would give
    got = np.array([[served[p][h] for h in model.heads] for p in candidates])
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    assert np.abs(got - without).max() > 10 * tolerance


def test_cold_start_user_and_unknown_pins(service):
    status, out = rank(service, user_id=999_999, candidates=[1, 2, 123_456], k=3)
    assert status == 200, out
    assert out["cold_start"] and out["unknown_pins"] == [123_456]
    assert [i for i in out["items"] if i["pin_id"] == 123_456][0]["unknown_pin"] is True


@pytest.mark.parametrize("body, field", [
    ({"user_id": USER, "candidates": list(range(1, 2002))}, "candidates"),
    ({"user_id": "abc", "candidates": [1]}, "user_id"),
    ({"user_id": True, "candidates": [1]}, "user_id"),  # strict ids: never coerced
    ({"user_id": "7", "candidates": [1]}, "user_id"),
    ({"user_id": 3.0, "candidates": [1]}, "user_id"),
    ({"user_id": USER, "candidates": [1, True]}, "candidates"),
    ({"user_id": USER, "candidates": [1], "k": "2"}, "k"),
    ({"user_id": USER, "candidates": [1, -5]}, "candidates"),
    ({"user_id": USER, "candidates": []}, "candidates"),
    ({"candidates": [1, 2]}, "user_id"),
    ({"user_id": USER, "candidates": [1], "k": 0}, "k"),
    ({"user_id": USER, "candidates": [1], "blend": {"likes": 1.0}}, "blend"),
])
def test_bad_requests_get_a_4xx_naming_the_field(service, body, field):
    status, text = http("POST", service["url"] + "/rank", body)
    assert 400 <= status < 500, text
    assert field in text


def test_oversized_body_is_refused_before_parsing(service):
    status, _ = http("POST", service["url"] + "/rank", raw=b'{"user_id": 1, "candidates": [' + b"1," * 200_000 + b"1]}")
    assert status == 413


def test_info_reports_dtype_kernels_and_cpus(service):
    from homefeed.serving.hardware import resolve_dtype

    status, text = http("POST", service["url"] + "/info", {})
    assert status == 200, text
    info = json.loads(text)
    assert info["model"] == service["tag"] and info["workers"] == 1  # as the fixture sets it
    assert info["threads_per_worker"] == 1  # the default
    served = info["served"]
    assert served["dtype_requested"] == "auto" and served["cpu_workers"] == info["threads_per_worker"]
    assert served["dtype"] == str(resolve_dtype("auto", "cpu")).replace("torch.", "")
    assert served["kernels"]["threads"] == 1 and "bf16_native" in served["kernels"]


def test_metrics_and_openapi(service):
    rank(service, user_id=USER, candidates=PINS[:5])
    status, text = http("GET", service["url"] + "/metrics")
    assert status == 200 and "homefeed_rank_stage_seconds" in text
    status, text = http("GET", service["url"] + "/docs.json")
    assert status == 200 and "/rank" in text


def timed_rank(service, **body):
    start = time.perf_counter()
    status, out = rank(service, **body)
    return status, out, time.perf_counter() - start


def wait_not_degraded(service, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status, out = rank(service, user_id=USER, candidates=PINS[:10], k=5)
        if status == 200 and not out["degraded"]:
            return out
        assert time.monotonic() < deadline, f"still degraded after {timeout_s}s: {status} {out}"
        time.sleep(0.2)


def gauge(metrics: str, name: str) -> float:
    import re

    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, flags=re.M)
    assert values, f"{name} not in /metrics"
    return float(values[-1])


def _redis_pid(service) -> int:
    return service["redis"]._running_pid("redis")


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_redis_outage_degrades_fast_and_recovers(service, fault):
    """Redis killed, or frozen (SIGSTOP: connections hang rather than fail): every call still
    answers 200, flagged degraded, in well under a second; /readyz stays up (this replica can
    answer); the breaker closes by itself once Redis is back."""
    import signal

    rank(service, user_id=USER, candidates=PINS[:10])  # warm the pin cache
    pid = _redis_pid(service)
    if fault == "stopped":
        service["redis"].down()
    else:
        os.kill(pid, signal.SIGSTOP)
    try:
        calls = [timed_rank(service, user_id=USER, candidates=PINS[:10], k=5) for _ in range(20)]
        for status, out, _ in calls:
            assert status == 200, out
            assert out["degraded"] and len(out["items"]) == 5
            assert not any(i.get("unknown_pin") for i in out["items"])  # served from the pin cache
        worst = max(seconds for *_, seconds in calls)
        assert worst < 1.0, [round(s, 3) for *_, s in calls]
        assert http("GET", service["url"] + "/readyz")[0] == 200
        status, metrics = http("GET", service["url"] + "/metrics")
        assert gauge(metrics, "homefeed_redis_up") == 0.0
        assert "homefeed_degraded_answers_total" in metrics
    finally:
        if fault == "stopped":
            service["redis"]._up_redis()  # same port and data dir: the AOF brings the features back
        else:
            os.kill(pid, signal.SIGCONT)
    out = wait_not_degraded(service)
    assert not out["cold_start"]
    assert gauge(http("GET", service["url"] + "/metrics")[1], "homefeed_redis_up") == 1.0


def test_new_user_with_only_unknown_pins_gets_neutral_vectors(service):
    status, out = rank(service, user_id=888_888, candidates=[777_001, 777_002, 777_003], k=3)
    assert status == 200, out
    assert out["cold_start"] and sorted(out["unknown_pins"]) == [777_001, 777_002, 777_003]
    assert all(item["unknown_pin"] for item in out["items"])


def test_duplicate_candidates_are_ranked_once(service):
    status, out = rank(service, user_id=USER, candidates=[3, 5, 3, 5, 5, 9], k=10)
    assert status == 200, out
    assert sorted(i["pin_id"] for i in out["items"]) == [3, 5, 9] and out["duplicates_dropped"] == 3


@pytest.mark.parametrize("raw, field", [
    (b'{"user_id": 501, "candidates": [1, 2], "blend": {"repin": NaN}}', "blend"),
    (b'{"user_id": 501, "candidates": [1, 2], "blend": {"repin": Infinity}}', "blend"),
    (b'{"user_id": 501, "candidates": [1, 2], "blend": {"repin": 1e308}}', "blend"),
    (b'{"user_id": 501, "candidates": [1, 2], "request_time_ms": 9223372036854775808}', "request_time_ms"),
    (b'{"user_id": 501, "candidates": [1, 2], "request_time_ms": 1700000000}', "request_time_ms"),
])
def test_unbounded_numbers_are_refused_naming_the_field(service, raw, field):
    status, text = http("POST", service["url"] + "/rank", raw=raw)
    assert status == 400, text
    assert field in text


def test_chunked_body_over_the_limit_is_refused(service):
    """The limit counts bytes received: a chunked body (no Content-Length) cannot get past it."""
    from homefeed.bench.faults import post_chunked_rank

    status = post_chunked_rank(service["url"], megabytes=2)
    assert status == 413
    status, out = rank(service, user_id=USER, candidates=PINS[:3])  # and the service is fine
    assert status == 200, out


def test_client_errors_are_logged_at_info_without_traceback(service):
    marker = 424_242
    status, _ = http("POST", service["url"] + "/rank", {"user_id": USER, "candidates": [1], "k": 0,
                                                        "request_time_ms": None, "blend": None,
                                                        "x": marker})
    assert status == 400
    time.sleep(0.5)
    text = service["log"].read_text(errors="replace")
    rejected = [line for line in text.splitlines() if "rejected" in line and "/rank" in line]
    assert rejected and all("INFO" in line for line in rejected), text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def test_metrics_used_by_the_dashboard_and_alerts_are_served(service):
    """Every ranker-side metric that monitoring/ queries is on the live /metrics (BentoML's HTTP
    histogram included); test_monitoring.py checks the rest against the code."""
    from test_monitoring import used_metric_names

    rank(service, user_id=USER, candidates=PINS[:5])
    status, text = http("GET", service["url"] + "/metrics")
    assert status == 200
    served = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", text, flags=re.M))
    wanted = {m for m in used_metric_names() if not m.startswith("homefeed_stream_") and m != "up"}
    assert wanted and wanted <= served, sorted(wanted - served)


def test_a_wrong_model_tag_stops_the_server_with_one_line(feature_repo, tmp_path):
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), HOMEFEED_MODEL="homefeed-ranker:nosuchtag",
               BENTOML_DO_NOT_TRACK="true", HOMEFEED_SERVING_WORKERS="1")  # one worker: one line
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "bento.service:Ranking", "--port",
                             str(free_port()), "--host", "127.0.0.1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("bentoml serve kept running (restarting its worker?): " + out.decode()[-2000:])
    text = out.decode(errors="replace")
    assert "cannot serve HOMEFEED_MODEL=homefeed-ranker:nosuchtag" in text, text[-2000:]
    assert text.count("cannot serve HOMEFEED_MODEL") == 1, text[-3000:]  # not restarted
    assert "Traceback" not in text, text[-3000:]
