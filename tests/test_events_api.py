"""The events API as a real `homefeed events serve` process against a real broker of its own.

The broker (Tansu, in memory) belongs to this module, so the outage test can stop and restart it
without disturbing the session stack. Every 202 is checked against the topic itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from homefeed import events as E
from homefeed.events_api.app import MAX_BATCH, MAX_BODY_BYTES
from homefeed.events_api.producer import DELIVERY_TIMEOUT_MS
from homefeed.settings import load_settings
from homefeed.stack import LocalStack, free_port
from homefeed.stream.producer import bad_event_samples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
USER = 4242


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def action(i: int, **changes) -> dict:
    ev = E.ActionEvent(f"api-{now_ms()}-{i}", USER, 100 + i, E.ActionType.REPIN, now_ms()).to_dict()
    ev.update(changes)
    return {k: v for k, v in ev.items() if v is not ...}


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("events-api")
    settings = load_settings(env={"HOMEFEED_HOME": str(tmp / "home"), "HOMEFEED_KAFKA_PORT": str(free_port())},
                             config_file=ROOT / "homefeed.toml").local_kafka()
    broker = LocalStack(settings)
    broker._up_kafka()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS",)}
    env.update(HOMEFEED_HOME=str(tmp / "home"), HOMEFEED_KAFKA_PORT=str(settings.kafka_port))
    port = free_port()
    log_path = tmp / "api.log"
    proc = subprocess.Popen([sys.executable, "-m", "homefeed.cli", "events", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    try:
        def ready():
            assert proc.poll() is None, log_path.read_text()
            try:
                return client.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False
        wait_until(ready, 60, "the events API to be ready")
        yield {"url": url, "client": client, "settings": settings, "broker": broker, "log": log_path}
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.down(services=("kafka",))


def topic_values(settings, event_ids: set[str], timeout_s: float = 20, topic: str | None = None) -> dict[str, dict]:
    """The records of a topic (default: actions) whose event_id is in `event_ids` (read from the
    beginning)."""
    from kafka import KafkaConsumer, TopicPartition

    topic = topic or settings.actions_topic
    consumer = KafkaConsumer(**settings.kafka_client_config(), enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        found: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and set(found) != event_ids:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    value = json.loads(r.value)
                    if value.get("event_id") in event_ids:
                        found[value["event_id"]] = {**value, "_key": r.key, "_partition": r.partition}
        return found
    finally:
        consumer.close()


def test_one_event_is_202_after_the_broker_has_it(api):
    ev = action(0)
    resp = api["client"].post("/v1/actions", json=ev)
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert out["accepted"] == 1 and out["rejected"] == 0
    assert out["results"][0]["status"] == "accepted" and out["results"][0]["offset"] >= 0
    on_topic = topic_values(api["settings"], {ev["event_id"]})
    assert on_topic[ev["event_id"]]["pin_id"] == ev["pin_id"]
    assert on_topic[ev["event_id"]]["_key"] == str(USER).encode()  # keyed by user: one user, one partition
    assert on_topic[ev["event_id"]]["_partition"] == out["results"][0]["partition"]


def test_impressions_have_their_own_kind_and_topic_checked_by_the_consumers_parser(api):
    good = E.ImpressionEvent(f"imp-{now_ms()}", USER, 101, now_ms(), request_id=7)
    bad = {**json.loads(good.to_json()), "event_id": f"imp-bad-{now_ms()}", "user_id": True}
    resp = api["client"].post("/v1/impressions", json=[json.loads(good.to_json()), bad])
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert out["accepted"] == 1 and out["rejected"] == 1
    assert out["results"][1]["status"] == "rejected" and out["results"][1]["field"] == "user_id"
    on_topic = topic_values(api["settings"], {good.event_id}, topic=api["settings"].impressions_topic)
    assert on_topic[good.event_id]["request_id"] == 7 and on_topic[good.event_id]["_key"] == str(USER).encode()
    assert not topic_values(api["settings"], {good.event_id}, timeout_s=2)  # not on the actions topic


def test_each_bad_event_is_a_400_with_the_consumers_reason_and_field(api):
    fields = {"missing_field": "pin_id", "wrong_type": "user_id", "unknown_action": "action_type",
              "zero_id": "user_id", "negative_id": "pin_id", "far_future": "event_time",
              "ancient": "event_time", "wrong_schema_version": "schema_version"}
    for name, (raw, reason) in bad_event_samples(now_ms()).items():
        resp = api["client"].post("/v1/actions", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400, (name, resp.text)
        out = resp.json()
        assert out["reason"] == reason, (name, out)
        assert out["error"].startswith(reason + ":"), out
        if name in fields:
            assert out["field"] == fields[name], (name, out)
    log = api["log"].read_text()
    assert "Traceback" not in log
    assert "rejected 400 (not_json:" in log and "missing_field: field 'pin_id' is missing" in log


def test_a_batch_keeps_its_good_events_and_reports_each_one(api):
    good = [action(10), action(11), action(12)]
    batch = [good[0], action(99, pin_id=...), good[1], action(98, action_type="like"), good[2]]
    resp = api["client"].post("/v1/actions", json=batch)
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert (out["accepted"], out["rejected"]) == (3, 2)
    assert [r["status"] for r in out["results"]] == ["accepted", "rejected", "accepted", "rejected", "accepted"]
    assert out["results"][1]["reason"] == E.REASON_MISSING_FIELD and out["results"][1]["field"] == "pin_id"
    assert out["results"][3]["reason"] == E.REASON_UNKNOWN_ACTION and out["results"][3]["field"] == "action_type"
    ids = {g["event_id"] for g in good}
    assert set(topic_values(api["settings"], ids)) == ids

    all_bad = api["client"].post("/v1/actions", json=[action(97, user_id=0), action(96, event_time=5)])
    assert all_bad.status_code == 400
    assert [r["reason"] for r in all_bad.json()["results"]] == [E.REASON_BAD_ID, E.REASON_ANCIENT_TIME]


def test_bodies_and_batches_are_bounded(api):
    client = api["client"]
    too_many = client.post("/v1/actions", json=[action(i) for i in range(MAX_BATCH + 1)])
    assert too_many.status_code == 413 and too_many.json()["reason"] == "batch_too_large"

    def chunks():  # no Content-Length: the limit counts bytes as they arrive
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    huge = client.post("/v1/actions", content=chunks(), headers={"content-type": "application/json"})
    assert huge.status_code == 413
    for body, reason in ((b"", "not_json"), (b"[]", "not_object"), (b"17", "not_object")):
        resp = client.post("/v1/actions", content=body)
        assert resp.status_code == 400 and resp.json()["reason"] == reason, resp.text
    assert client.post("/v1/likes", json=action(0)).status_code == 404  # not a kind of the contract

    metrics = client.get("/metrics").text
    assert 'homefeed_events_rejected_total{kind="actions",reason="body_too_large"} 1.0' in metrics
    assert 'homefeed_events_rejected_total{kind="actions",reason="batch_too_large"} 1.0' in metrics
    assert 'homefeed_events_accepted_total{kind="actions"}' in metrics
    assert 'homefeed_events_produce_seconds_count{kind="actions"}' in metrics


def test_broker_outage_is_a_quick_503_with_retry_after_then_recovers(api):
    client, broker = api["client"], api["broker"]
    assert client.post("/v1/actions", json=action(20)).status_code == 202
    broker.down(services=("kafka",))
    try:
        for i in range(3):  # the first waits out the bounded delivery timeout, the next fail fast
            started = time.monotonic()
            resp = client.post("/v1/actions", json=[action(30 + i), action(40 + i)])
            took = time.monotonic() - started
            assert resp.status_code == 503, resp.text
            assert int(resp.headers["retry-after"]) >= 1 and resp.json()["reason"] == "broker_unavailable"
            assert took < DELIVERY_TIMEOUT_MS / 1000 + 2.0, took
        assert client.get("/readyz").status_code == 503
    finally:
        broker._up_kafka()  # a fresh in-memory broker: ensure_topics recreates the topics
    ev = action(50)

    def accepted():
        return client.post("/v1/actions", json=ev).status_code == 202
    wait_until(accepted, 60, "the API to accept events again after the broker came back")
    assert ev["event_id"] in topic_values(api["settings"], {ev["event_id"]})
    assert 'reason="broker_unavailable"' in client.get("/metrics").text
    assert "Traceback" not in api["log"].read_text()


def test_candidate_source_takes_the_users_recent_topics_first_then_every_topic():
    import pandas as pd

    from homefeed.events_api.candidates import PER_RECENT_TOPIC, CandidateSource

    pins = pd.DataFrame({"pin_id": range(1, 61), "topic_id": [p % 4 for p in range(1, 61)]})
    events = pd.DataFrame({  # user 7 repinned topic 3 lately; pin 8 (topic 0) is the most engaged
        "user_id": [7, 7, 7, 9, 9, 9, 9],
        "pin_id": [3, 7, 11, 8, 8, 8, 12],
        "action_type": ["repin", "click", "repin", "repin", "click", "repin", "hide"],
        "event_time": [1, 2, 3, 4, 5, 6, 7]})
    source = CandidateSource(pins, events)
    assert source.recent_topics(7) == [3] and source.recent_topics(12345) == []
    chosen = source.candidates(7, size=20)
    assert len(chosen) == len(set(chosen)) == 20
    assert {source.topic_of[p] for p in chosen[:PER_RECENT_TOPIC]} == {3}  # recent topic first
    assert chosen[:4] == [3, 7, 11, 15]  # its engaged pins first (pin id breaks ties), then the rest
    assert {source.topic_of[p] for p in chosen[PER_RECENT_TOPIC:]} == {0, 1, 2, 3}  # then every topic
    assert source.candidates(12345, size=20)[0] == 8  # a new user: the most engaged pins of each topic
    assert source.candidates(7, size=20) == chosen  # deterministic
    assert source.users() == [9, 7]
    assert source.new_user_id() > 9
