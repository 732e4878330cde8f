"""The BentoML ranking service as a real `bentoml serve` process against a real Redis.

The service gets a Redis of its own (so stopping it does not disturb other tests), a model
exported into a temporary BentoML store, and features written the way the stream consumer and
the profile job write them.
"""

from __future__ import annotations

import json
import os
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
from homefeed.model import ModelConfig, build_model
from homefeed.stack import LocalStack, free_port
from homefeed.stream.online_writer import OnlineWriter
from homefeed.training.data import PinTable, RankingData, dense_feature_spec
from homefeed.training.export import current_fingerprint, export_run
from homefeed.training.train import CONFIG_FILE, RUN_FILE, WEIGHTS_FILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DIM = 32
NOW = int(time.time() * 1000)
USER = 501
PINS = list(range(1, 41))
rng = np.random.default_rng(0)
EMB = {p: (v / np.linalg.norm(v)).astype(np.float32).tolist() for p, v in
       zip(PINS, rng.normal(size=(len(PINS), DIM)))}
SEQ = {  # newest first
    F.SEQ_PIN_IDS: [3, 7, 7, 12, 30],
    F.SEQ_ACTION_TYPES: [1, 2, 1, 3, 1],
    F.SEQ_ACTION_TIMES: [NOW - 60_000 * i for i in (1, 5, 6, 30, 300)],
}
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


def tiny_model(tmp: Path) -> tuple[str, object, Path]:
    torch.manual_seed(0)
    spec = dense_feature_spec(DIM)
    config = ModelConfig(encoder="transact_v11", seq_len=100, emb_dim=DIM, dense_dim=spec["dim"],
                         n_layers=1, mlp_dims=(32,), dcn_layers=1)
    model = build_model(config).eval()
    run = tmp / "run"
    run.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / WEIGHTS_FILE))
    (run / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    (run / RUN_FILE).write_text(json.dumps({"schema_fingerprint": current_fingerprint(),
                                            "dense_features": spec, "validation": {"success": True}}))
    tag = export_run(run, bentoml_home=tmp / "bentoml")
    return tag, model, run


def write_features(store) -> None:
    writer = OnlineWriter(store)
    writer.write_pins([{F.PIN_ID: p, F.PIN_EMBEDDING: EMB[p], F.PIN_TOPIC: p % 5,
                        F.PIN_CREATED_MS: NOW - 86_400_000 * p, F.EVENT_TIMESTAMP: NOW - 1000,
                        F.CREATED: NOW - 1000} for p in PINS])
    writer.write_sequences([{F.USER_ID: USER, F.EVENT_TIMESTAMP: SEQ[F.SEQ_ACTION_TIMES][0],
                             F.CREATED: NOW - 1000, **SEQ, F.SEQ_LENGTH: len(SEQ[F.SEQ_PIN_IDS])}])
    profile = pd.DataFrame([{F.USER_ID: USER, **PROFILE}])
    profile[F.EVENT_TIMESTAMP] = pd.Timestamp(NOW - 3_600_000, unit="ms", tz="UTC")
    profile[F.CREATED] = profile[F.EVENT_TIMESTAMP]
    store.write_to_online_store(F.USER_PROFILE, profile)


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
    try:
        write_features(open_store(feature_repo))
        tag, model, run = tiny_model(tmp)
        env = dict(os.environ, BENTOML_HOME=str(tmp / "bentoml"), HOMEFEED_MODEL=tag,
                   BENTOML_DO_NOT_TRACK="true")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "bento.service:Ranking", "--port", str(port),
             "--host", "127.0.0.1"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read().decode()[-4000:])
            try:
                if http("GET", url + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("service did not become ready")
        yield {"url": url, "model": model, "redis": redis_stack, "tag": tag}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        os.environ["HOMEFEED_REDIS_PORT"] = saved
        redis_stack.down()


def rank(service, **body):
    status, text = http("POST", service["url"] + "/rank", body)
    return status, (json.loads(text) if status == 200 else text)


def offline_scores(model, candidates: list[int], request_ms: int) -> np.ndarray:
    """The training/evaluation path (RankingData -> build_batch -> model) on the same features."""
    requests = pd.DataFrame([{F.REQUEST_ID: 1, F.USER_ID: USER, "request_time_ms": request_ms, **SEQ,
                              F.SEQ_LENGTH: len(SEQ[F.SEQ_PIN_IDS]), **PROFILE}])
    impressions = pd.DataFrame({F.REQUEST_ID: 1, F.USER_ID: USER, F.PIN_ID: candidates,
                                F.PIN_EMBEDDING: [EMB[p] for p in candidates],
                                F.PIN_CREATED_MS: [NOW - 86_400_000 * p for p in candidates],
                                "label_repin": 0, "label_click": 0, "label_hide": 0})
    pins = pd.DataFrame({F.PIN_ID: PINS, F.PIN_EMBEDDING: [EMB[p] for p in PINS], F.PIN_TOPIC: 0})
    data = RankingData(requests, impressions, PinTable(pins, DIM), 100, model.heads)
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
    for i, pin in enumerate(candidates):
        for j, head in enumerate(service["model"].heads):
            assert served[pin][head] == pytest.approx(float(expected[i, j]), abs=1e-5)
    scores = [item["score"] for item in out["items"]]
    assert scores == sorted(scores, reverse=True)  # ranked by the blend
    assert set(out["timings_ms"]) >= {"features", "tensors", "model"}


def test_cold_start_user_and_unknown_pins(service):
    status, out = rank(service, user_id=999_999, candidates=[1, 2, 123_456], k=3)
    assert status == 200, out
    assert out["cold_start"] and out["unknown_pins"] == [123_456]
    assert [i for i in out["items"] if i["pin_id"] == 123_456][0]["unknown_pin"] is True


@pytest.mark.parametrize("body, field", [
    ({"user_id": USER, "candidates": list(range(1, 2002))}, "candidates"),
    ({"user_id": "abc", "candidates": [1]}, "user_id"),
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


def test_metrics_and_openapi(service):
    rank(service, user_id=USER, candidates=PINS[:5])
    status, text = http("GET", service["url"] + "/metrics")
    assert status == 200 and "homefeed_rank_stage_seconds" in text
    status, text = http("GET", service["url"] + "/docs.json")
    assert status == 200 and "/rank" in text


def test_redis_stopped_mid_run_degrades_then_recovers(service):
    rank(service, user_id=USER, candidates=PINS[:10])  # warm the pin cache
    service["redis"].down()
    try:
        status, out = rank(service, user_id=USER, candidates=PINS[:10], k=5)
        assert status == 200, out
        assert out["degraded"] and len(out["items"]) == 5
        assert http("GET", service["url"] + "/readyz")[0] != 200
    finally:
        service["redis"]._up_redis()  # same port and data dir: the AOF brings the features back
    deadline = time.monotonic() + 30
    while http("GET", service["url"] + "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    status, out = rank(service, user_id=USER, candidates=PINS[:10], k=5)
    assert status == 200 and not out["degraded"] and not out["cold_start"]
