"""The realtime pipeline against a real broker and a real Redis.

Each test gets its own topics, consumer group, offline log and range of user ids, so tests do
not see each other's records or sequences.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import dead_letters

from homefeed import events as E
from homefeed import features as F
from homefeed import offline_log
from homefeed.feature_store import copy_registry, open_store
from homefeed.sequence import IMPRESSION_TYPE, build
from homefeed.settings import load_settings
from homefeed.stack import LocalStack, ensure_topics, free_port
from homefeed.stream.consumer import build_consumer
from homefeed.stream.producer import ProduceFailed, Producer, bad_event_samples

pytestmark = [pytest.mark.integration]

_user_ranges = itertools.count(1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def pipeline(feature_repo, stack, tmp_path):
    tag = uuid.uuid4().hex[:8]
    settings = load_settings().replace(
        home=tmp_path / "home", actions_topic=f"actions-{tag}", pins_topic=f"pins-{tag}",
        impressions_topic=f"impressions-{tag}",
        dead_letter_topic=f"dlq-{tag}", consumer_group=f"group-{tag}", topic_partitions=2,
        batch_max_events=500, batch_max_ms=100)
    copy_registry(load_settings(), settings)  # consumer processes open their home's registry
    ensure_topics(settings)
    return settings


def user_block(n: int) -> list[int]:
    base = next(_user_ranges) * 1_000_000
    return [base + i for i in range(n)]


def make_events(users: list[int], per_user: int, start: int, prefix: str) -> list[E.ActionEvent]:
    """Pins are in the users' id block too: each test's pin counters are its own."""
    out = []
    for u in users:
        block = u // 1_000_000 * 1_000_000
        for i in range(per_user):
            out.append(E.ActionEvent(f"{prefix}-{u}-{i}", u, block + 1 + (u * 7 + i) % 5000,
                                     E.ActionType(1 + i % 3), start + 1000 * i))
    return out


def produce(settings, evs: list[E.ActionEvent], bad: bool = False) -> dict[str, str]:
    producer = Producer(settings)
    producer.send_all(settings.actions_topic,
                      ((str(e.user_id).encode(), e.to_json(), None) for e in evs), total=len(evs))
    kinds = producer.send_bad_events() if bad else {}
    producer.close()
    return kinds


def consume(settings, idle_s: float = 3.0, **overrides):
    consumer = build_consumer(settings, **overrides)
    return consumer.run(idle_exit_s=idle_s)


def online_sequences(user_ids: list[int], view: F.SequenceView = F.ACTION_SEQUENCE) -> dict[int, dict]:
    store = open_store()
    got = store.get_online_features(
        features=F.feature_refs(view.name, view.feature_names),
        entity_rows=[{F.USER_ID: u} for u in user_ids]).to_dict()
    return {u: {k: got[k][i] for k in view.feature_names} for i, u in enumerate(user_ids)}


def expected_sequences(evs: list, cap: int = 100) -> dict[int, dict]:
    """Each user's sequence of actions, or (ImpressionEvents) of impressions, built from scratch."""
    view = F.IMPRESSION_SEQUENCE if evs and isinstance(evs[0], E.ImpressionEvent) else F.ACTION_SEQUENCE
    by_user: dict[int, list] = {}
    for e in evs:
        kind = int(e.action_type) if view.action_types else IMPRESSION_TYPE
        by_user.setdefault(e.user_id, []).append((e.event_id, e.pin_id, kind, e.event_time))
    return {u: build(a, cap).feature_row(view) for u, a in by_user.items()}


def assert_counters_match_the_event_log(settings, evs: list[E.ActionEvent], imps=()) -> None:
    """Every user's and pin's engagement counters (in Redis and in Feast's online store) equal
    the counts computed from the logged events (actions, and impressions `imps`), each event
    once: exactly once under at-least-once delivery, whatever was replayed."""
    from homefeed.redis_client import pipeline_client
    from homefeed.stream.engagement import EngagementCounters, reference_counts

    logged = offline_log.read(settings.offline_dir, "action_events").drop_duplicates([F.USER_ID, "event_id"])
    logged = logged[logged["event_id"].isin({e.event_id for e in evs})]
    assert len(logged) == len({(e.user_id, e.event_id) for e in evs})
    if imps:
        shown = offline_log.read(settings.offline_dir, F.IMPRESSION_EVENTS).drop_duplicates([F.USER_ID, "event_id"])
        shown = shown[shown["event_id"].isin({i.event_id for i in imps})].assign(action_type="impression")
        assert len(shown) == len(imps)
        logged = pd.concat([logged, shown[logged.columns.intersection(shown.columns)]], ignore_index=True)
    client = pipeline_client(settings)
    counters = EngagementCounters(client, open_store().project, 1000)
    store = open_store()
    for view, (key, names) in F.ENGAGEMENT_VIEWS.items():
        groups = {int(k): g for k, g in logged.groupby(key)}
        ids = sorted(groups)
        stored = counters.read(view, ids)
        online = store.get_online_features(features=F.feature_refs(view, names),
                                           entity_rows=[{key: i} for i in ids]).to_dict()
        for row, entity in enumerate(ids):
            g = groups[entity]
            decayed, totals, as_of = reference_counts(list(zip(g["action_type"], g["event_time"])))
            got = stored[entity]
            assert got["totals"] == totals and got["as_of"] == as_of, (view, entity)
            assert got["decayed"] == pytest.approx(decayed, rel=1e-12), (view, entity)
            assert [online[n][row] for n in names] == [got["decayed"], got["totals"], got["as_of"]]
    client.close()


def test_reconciliation_every_event_accounted_for_and_bad_events_dead_lettered(pipeline):
    users = user_block(6)
    start = now_ms() - 3_600_000
    evs = make_events(users[:3], 130, start, "a") + make_events(users[3:], 20, start, "a")
    kinds = produce(pipeline, evs, bad=True)

    stats = consume(pipeline)

    assert stats.applied == len(evs)
    assert stats.dead_lettered == len(kinds)
    assert stats.applied + stats.dead_lettered == stats.records == len(evs) + len(kinds)
    logged = offline_log.read(pipeline.offline_dir, "action_events")
    assert set(logged["event_id"]) == {e.event_id for e in evs}  # nothing valid lost
    online = online_sequences(users)
    expected = expected_sequences(evs)
    for u in users:
        assert online[u] == expected[u]
        assert online[u][F.SEQ_LENGTH] == min(100, 130 if u in users[:3] else 20)

    letters = dead_letters(pipeline)
    reasons = sorted(h["reason"] for _, h in letters)
    assert reasons == sorted(kinds.values())
    samples = bad_event_samples(now_ms())
    by_reason_bytes = {v: r for v, r in ((s[0], s[1]) for s in samples.values())}
    for value, headers in letters:
        assert headers["detail"] and headers["source"].startswith(pipeline.actions_topic)
        if value in by_reason_bytes:  # byte-identical originals (time-dependent ones differ)
            assert by_reason_bytes[value] == headers["reason"]


def test_pin_durations_go_through_the_stream_into_the_log_and_the_online_store_and_back(pipeline):
    """A pin upsert's optional duration_ms: known, zero, absent (a producer from before the
    field), null, and out of range (dead-lettered `bad_duration`). The log keeps an int64 column
    with nulls, Feast reads what was sent, and restoring pins from the log (Redis lost them)
    brings the same values back."""
    from homefeed.redis_codec import Int64KeyTemplate
    from homefeed.stream.online_writer import OnlineWriter
    from homefeed.stream.ops import restore_pins

    block = user_block(1)[0]
    pins = [block + 1, block + 2, block + 3, block + 4]
    t = now_ms() - 60_000
    emb = tuple([0.25] * pipeline.embedding_dim)

    def upsert(pin, duration=None):
        return E.PinUpsert(pin, 2, emb, t - 86_400_000, t, duration_ms=duration).to_json()

    null = json.loads(upsert(pins[3]))
    null["duration_ms"] = None
    records = [upsert(pins[0], 87_433), upsert(pins[1], 0), upsert(pins[2]), json.dumps(null).encode(),
               upsert(block + 5, 120_000_000_000)]  # microseconds: refused
    producer = Producer(pipeline)
    producer.send_all(pipeline.pins_topic, ((str(i).encode(), r, None) for i, r in enumerate(records)),
                      total=len(records))
    producer.close()
    stats = consume(pipeline)
    assert stats.pin_upserts == 4 and stats.dead_lettered == 1
    assert [h["reason"] for _, h in dead_letters(pipeline)] == [E.REASON_BAD_DURATION]

    want = [87_433, 0, None, None]
    files = offline_log.partition_files(offline_log.table_dir(pipeline.offline_dir, F.PIN_FEATURES))
    assert files and all(pq.read_schema(f).field(F.PIN_DURATION_MS).type == pa.int64() for f in files)
    logged = offline_log.read(pipeline.offline_dir, F.PIN_FEATURES).set_index(F.PIN_ID)
    assert [None if pd.isna(v) else int(v) for v in logged.loc[pins, F.PIN_DURATION_MS]] == want
    store = open_store()

    def online() -> list:
        return store.get_online_features(features=[f"{F.PIN_FEATURES}:{F.PIN_DURATION_MS}"],
                                         entity_rows=[{F.PIN_ID: p} for p in pins]).to_dict()[F.PIN_DURATION_MS]

    assert online() == want

    # Redis loses these pins; the restore from the log writes them back as they were
    from homefeed.redis_client import pipeline_client

    client = pipeline_client(pipeline)
    version = int(getattr(store.config, "entity_key_serialization_version", 3) or 3)
    keys = Int64KeyTemplate(store.config.project, F.PIN_ID, version).keys(pd.Series(pins).to_numpy())
    assert client.delete(*keys) == len(pins)
    client.close()
    assert online() == [None] * 4

    assert restore_pins(pipeline, OnlineWriter(store)) == len(pins)
    assert online() == want


def test_duplicates_and_replays_change_nothing(pipeline):
    users = user_block(4)
    evs = make_events(users, 40, now_ms() - 600_000, "d")
    produce(pipeline, evs + evs[::3])  # producer retries: every third event twice
    first = consume(pipeline)
    assert first.duplicates == len(evs[::3]) and first.applied == len(evs)
    assert first.records == first.applied + first.duplicates
    before = online_sequences(users)
    assert before == {u: s for u, s in expected_sequences(evs).items()}

    # Replay the whole topic with a fresh group (as after an offset reset).
    replay = pipeline.replace(consumer_group=pipeline.consumer_group + "-replay")
    again = consume(replay)
    # Every record of the replay is a duplicate, none is applied twice, and they all add up.
    assert again.applied == 0 and again.duplicates == again.records == len(evs) + len(evs[::3])
    assert online_sequences(users) == before
    assert_counters_match_the_event_log(pipeline, evs)  # the producer's duplicates count once


def test_late_events_land_in_order_and_old_ones_stay_in_the_log(pipeline):
    user = user_block(1)[0]
    start = now_ms() - 7_200_000
    on_time = make_events([user], 100, start + 1_000_000, "on")
    produce(pipeline, on_time)
    consume(pipeline)
    # Two late arrivals: one inside the kept window, one older than the 100th kept action.
    inside = E.ActionEvent("late-in", user, 4242, E.ActionType.HIDE, on_time[50].event_time + 1)
    too_old = E.ActionEvent("late-old", user, 4343, E.ActionType.REPIN, start)
    produce(pipeline, [inside, too_old])
    stats = consume(pipeline)
    assert stats.outside_window == 1

    seq = online_sequences([user])[user]
    assert seq[F.SEQ_LENGTH] == 100
    assert seq[F.SEQ_ACTION_TIMES] == sorted(seq[F.SEQ_ACTION_TIMES], reverse=True)
    assert 4242 in seq[F.SEQ_PIN_IDS] and 4343 not in seq[F.SEQ_PIN_IDS]
    logged = set(offline_log.read(pipeline.offline_dir, "action_events")["event_id"])
    assert {"late-in", "late-old"} <= logged


def test_batch_suite_seam_rejects_rows_to_the_dead_letter_topic(pipeline):
    """The micro-batch validator can reject rows the cheap checks let through; they go to the
    dead-letter topic with reason batch_suite and are not applied."""
    users = user_block(2)
    evs = make_events(users, 5, now_ms() - 60_000, "v")
    produce(pipeline, evs)
    consumer = build_consumer(pipeline, validate=False)
    consumer.builder.validator = lambda frame: {
        i: "planted rejection" for i, u in enumerate(frame[F.USER_ID]) if u == users[1]}
    stats = consumer.run(idle_exit_s=3)
    assert stats.applied == 5 and stats.dead_lettered == 5
    assert {h["reason"] for _, h in dead_letters(pipeline)} == {E.REASON_BATCH_SUITE}
    assert online_sequences([users[1]])[users[1]][F.SEQ_LENGTH] is None


# -- failures: separate consumer processes -------------------------------------------------------

def consumer_env(settings) -> dict:
    return dict(HOMEFEED_HOME=str(settings.home), HOMEFEED_ACTIONS_TOPIC=settings.actions_topic,
                HOMEFEED_PINS_TOPIC=settings.pins_topic,
                HOMEFEED_IMPRESSIONS_TOPIC=settings.impressions_topic,
                HOMEFEED_DEAD_LETTER_TOPIC=settings.dead_letter_topic,
                HOMEFEED_CONSUMER_GROUP=settings.consumer_group,
                HOMEFEED_BATCH_MAX_EVENTS=str(settings.batch_max_events))


def consumer_process(settings, env_extra: dict, stats_path, idle_s: float | None = 4.0, ready=None,
                     log_path=None):
    """A `homefeed stream consume` process; its output goes to a pipe, or to `log_path` for a
    long-running one (a pipe nobody reads fills up and blocks the process)."""
    env = {**os.environ, **consumer_env(settings), **env_extra}
    argv = [sys.executable, "-m", "homefeed.cli", "stream", "consume", "--stats-out", str(stats_path)]
    argv += ["--exit-when-idle", str(idle_s)] if idle_s is not None else []
    argv += ["--ready-file", str(ready)] if ready else []
    out = open(log_path, "wb") if log_path else subprocess.PIPE
    try:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log_path:
            out.close()  # the child holds its own descriptor


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_consumer_killed_mid_batch_loses_nothing_and_duplicates_nothing(pipeline, tmp_path):
    users = user_block(50)
    evs = make_events(users, 120, now_ms() - 3_600_000, "k")
    produce(pipeline, evs)
    settings = pipeline.replace(batch_max_events=200)
    proc = consumer_process(settings, {}, tmp_path / "first.json")
    log_dir = settings.offline_dir / "action_events"
    try:  # the deadline only bounds a hang: process start-up (imports, GX, group join) takes ~10 s
        # on a quiet machine and several times that beside other heavy jobs
        wait_for(lambda: log_dir.exists() and len(list(log_dir.rglob("*.parquet"))) >= 3, 300, "first batches")
    finally:  # killed in any case: a failed wait must not leave a consumer running
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    proc = consumer_process(settings, {}, tmp_path / "second.json")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out.decode()[-2000:]
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["applied"] >= 1  # the restart resumed from committed offsets, not from zero
    assert second["applied"] < len(evs)
    online = online_sequences(users)
    expected = expected_sequences(evs)
    for u in users:
        assert online[u] == expected[u]  # no loss, no duplicate action in any sequence
    assert set(offline_log.read(settings.offline_dir, "action_events")["event_id"]) == {e.event_id for e in evs}
    assert_counters_match_the_event_log(settings, evs)  # the killed batch counted once


@pytest.mark.slow
def test_one_of_two_consumers_killed_mid_batch_the_other_takes_over_and_state_is_exact(pipeline, tmp_path):
    """Two consumer processes share the partitions; one is SIGKILLed while both still have
    records to apply. The broker evicts it (session timeout), the survivor takes its partition
    from the last committed offset and replays the uncommitted batch: every sequence and state
    equals what one consumer builds (at least once + idempotent, fenced writes), the log is
    complete.

    The processes start one after the other and the victim joins second, so the survivor leads
    the group: Tansu 0.6 never re-forms a group whose leader left during a rebalance (see the
    zombie test below). Every wait is on observable state (ready files, committed offsets), never
    on a sleep. The victim is frozen (SIGSTOP) as soon as both have committed, and a second round
    of events is produced before it is killed: its partition has records left whatever the two
    did between the check and the signal (a quiet machine finishes the first round in that time)."""
    from homefeed.stream.ops import stream_status

    users = user_block(60)
    first = make_events(users, 100, now_ms() - 3_600_000, "t")
    second = make_events(users, 20, now_ms() - 1_800_000, "t2")
    evs = first + second
    settings = pipeline.replace(batch_max_events=100)
    ready = [tmp_path / "survivor.ready", tmp_path / "victim.ready"]
    survivor = consumer_process(settings, {}, tmp_path / "survivor.json", idle_s=None, ready=ready[0],
                                log_path=tmp_path / "survivor.log")
    victim = None

    def partitions():
        return stream_status(settings)["topics"][settings.actions_topic]

    def both_committed():  # one partition each: both have committed batches
        return all((r["committed"] or 0) > 0 for r in partitions())

    try:
        wait_for(ready[0].exists, 300, "the survivor to own the partitions")
        victim = consumer_process(settings, {}, tmp_path / "victim.json", idle_s=None, ready=ready[1],
                                  log_path=tmp_path / "victim.log")
        wait_for(ready[1].exists, 300, "the victim to join and take a partition")
        produce(settings, first)
        wait_for(both_committed, 300, "both consumers to commit batches")
        victim.send_signal(signal.SIGSTOP)  # frozen: it applies and commits nothing from here on
        produce(settings, second)  # records for every partition, the victim's included
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        left = sum(r["lag"] for r in partitions())
        wait_for(lambda: _committed(settings) == len(evs), 300, "the survivor to finish")
    finally:
        for proc in (victim, survivor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM if proc is survivor else signal.SIGKILL)
        survivor.wait(60)
        if victim is not None:
            victim.wait(10)
    assert survivor.returncode == 0, (tmp_path / "survivor.log").read_text()[-2000:]
    assert left > 0  # the victim died with records of its partition still to apply
    stats = json.loads((tmp_path / "survivor.json").read_text())
    assert 0 < stats["applied"] < len(evs)  # its share, then the victim's rest
    expected = expected_sequences(evs)
    assert online_sequences(users) == expected  # no loss, no duplicate action in any sequence
    states = build_consumer(settings, validate=False).builder.states.load_states(users)
    assert all(states[u].feature_row() == expected[u] for u in users)
    assert set(offline_log.read(settings.offline_dir, "action_events")["event_id"]) == {e.event_id for e in evs}
    assert_counters_match_the_event_log(settings, evs)  # the victim's replayed batch counted once


@pytest.mark.slow
def test_redis_outage_backs_off_commits_nothing_then_applies_everything(pipeline, tmp_path):
    # A Redis of its own, so stopping it does not disturb other tests.
    private = pipeline.replace(home=tmp_path / "home", redis_port=free_port())
    redis_stack = LocalStack(private)
    redis_stack._up_redis()
    env = {"HOMEFEED_REDIS_PORT": str(private.redis_port)}
    users = user_block(20)
    first = make_events(users, 30, now_ms() - 600_000, "o1")
    produce(private, first)
    proc = consumer_process(private, env, tmp_path / "stats.json", idle_s=30)
    log_dir = private.offline_dir / "action_events"
    try:
        wait_for(lambda: log_dir.exists() and any(log_dir.rglob("*.parquet")), 300, "first batch")
        wait_for(lambda: _committed(private) == len(first), 120, "first offsets committed")
        redis_stack.down()  # outage
        second = make_events(users, 30, now_ms() - 300_000, "o2")
        produce(private, second)
        time.sleep(4)
        assert _committed(private) == len(first)  # nothing committed while Redis is down
        redis_stack._up_redis()  # same port, same data dir (AOF)
        wait_for(lambda: _committed(private) == len(first) + len(second), 300, "catch-up")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        redis_stack.down()
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["retries"] >= 1, out.decode()[-2000:]
    assert stats["applied"] >= len(first) + len(second)
    redis_stack._up_redis()
    try:
        import redis as redis_lib

        from homefeed.sequence import SequenceState
        from homefeed.stream.state import STATE_KEY

        client = redis_lib.Redis(port=private.redis_port)
        expected = expected_sequences(first + second)
        for u in users:
            state = SequenceState.from_bytes(client.get(STATE_KEY.format(project="homefeed", user_id=u)))
            assert state.feature_row() == expected[u]
    finally:
        redis_stack.down()


def _committed(settings) -> int:
    from homefeed.stream.ops import committed_offsets

    return sum(o for tp, o in committed_offsets(settings).items() if tp.topic == settings.actions_topic)


@pytest.mark.slow
def test_status_and_backfill_recover_online_sequences_from_the_log(pipeline, tmp_path):
    """Event recovery: Redis loses everything; `stream backfill` rebuilds sequences (actions' and
    impressions') and engagement counters from the offline log."""
    private = pipeline.replace(redis_port=free_port())
    redis_stack = LocalStack(private)
    redis_stack._up_redis()
    env = {"HOMEFEED_REDIS_PORT": str(private.redis_port)}
    users = user_block(5)
    evs = make_events(users, 110, now_ms() - 900_000, "b")
    imps = make_impressions(users, 110, now_ms() - 900_000, "bi")  # more than the cap
    kinds = produce(private, evs, bad=True)
    producer = Producer(private)
    producer.send_all(private.impressions_topic, ((str(i.user_id).encode(), i.to_json(), None) for i in imps))
    producer.close()
    try:
        proc = consumer_process(private, env, tmp_path / "stats.json", idle_s=3)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode()[-2000:]
        cli_env = {**os.environ, **consumer_env(private), **env}
        status = subprocess.run([sys.executable, "-m", "homefeed.cli", "stream", "status", "--json"],
                                env=cli_env, capture_output=True, text=True, timeout=60)
        report = json.loads(status.stdout)
        assert sum(p["lag"] for p in report["topics"][private.actions_topic]) == 0
        assert report["dead_lettered"] == len(kinds)

        import redis as redis_lib
        redis_lib.Redis(port=private.redis_port).flushall()  # everything online is gone
        since = pd.Timestamp(now_ms() - 3_600_000, unit="ms", tz="UTC").isoformat()
        done = subprocess.run([sys.executable, "-m", "homefeed.cli", "stream", "backfill", "--since", since],
                              env=cli_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["users"] == summary["impression_users"] == len(users)

        os.environ["HOMEFEED_REDIS_PORT"], saved = str(private.redis_port), os.environ["HOMEFEED_REDIS_PORT"]
        try:
            assert online_sequences(users) == expected_sequences(evs)
            assert online_sequences(users, F.IMPRESSION_SEQUENCE) == expected_sequences(imps)
            assert_counters_match_the_event_log(private, evs, imps)  # the counters came back too
        finally:
            os.environ["HOMEFEED_REDIS_PORT"] = saved
    finally:
        redis_stack.down()


def test_a_record_that_fails_its_batch_is_isolated_and_dead_lettered(pipeline):
    """A record that passes every check but makes its batch fail (here: a batch validator that
    raises on it, standing in for a bug further down) costs only itself: the batch is bisected,
    the record is dead-lettered as apply_failed, everything around it is applied, and the counters
    add up."""
    users = user_block(5)
    evs = make_events(users, 20, now_ms() - 600_000, "iso")
    poison = evs[37].event_id
    produce(pipeline, evs)

    def validator(frame):
        if poison in set(frame["event_id"]):
            raise ValueError(f"cannot apply {poison}")
        return {}

    consumer = build_consumer(pipeline, validate=False)
    consumer.builder.validator = validator
    stats = consumer.run(idle_exit_s=3)
    assert stats.dead_lettered == 1 and stats.applied == len(evs) - 1
    assert stats.records == stats.applied + stats.duplicates + stats.dead_lettered + stats.pin_upserts
    (value, headers), = dead_letters(pipeline)
    assert headers["reason"] == E.REASON_APPLY_FAILED and poison in headers["detail"]
    assert json.loads(value)["event_id"] == poison
    rest = [e for e in evs if e.event_id != poison]
    assert online_sequences(users) == expected_sequences(rest)


def test_state_writes_are_fenced_against_a_zombie(pipeline):
    """Consumer A loads some users' state; meanwhile B (the partition's new owner after a
    rebalance) applies newer events for them; A's write of its stale state must be refused,
    user by user, and must not touch B's states."""
    from kafka.consumer.fetcher import ConsumerRecord

    from homefeed.redis_client import pipeline_client
    from homefeed.stream.builder import SequenceBuilder
    from homefeed.stream.state import StateFenced

    store = open_store()
    client = pipeline_client(pipeline)
    a, b = (SequenceBuilder(pipeline, store, client) for _ in range(2))
    users = user_block(3)
    first = make_events(users, 5, now_ms() - 600_000, "f1")
    newer = make_events(users[:2], 5, now_ms() - 300_000, "f2")

    def records(evs, offset=0):
        return [ConsumerRecord(topic=pipeline.actions_topic, partition=0, leader_epoch=-1, offset=offset + i,
                               timestamp=e.event_time, timestamp_type=0, key=str(e.user_id).encode(),
                               value=e.to_json(), headers=[], checksum=None, serialized_key_size=-1,
                               serialized_value_size=-1, serialized_header_size=-1)
                for i, e in enumerate(evs)]

    b.apply(records(first))
    loaded: dict = {}
    stale = a.states.load_states(users, raw_out=loaded)  # A loads, then stalls
    b.apply(records(newer, 100))  # B moves users[0] and users[1] on
    for u in users:
        stale[u].snapshot_ms += 1  # A's (stale) new versions
    with pytest.raises(StateFenced) as fenced:
        a.states.save_states(stale, loaded)
    assert sorted(fenced.value.users) == sorted(users[:2])  # users[2] was not touched by B: written
    now = a.states.load_states(users)
    for u in users[:2]:
        assert set(now[u].event_ids) == {e.event_id for e in first + newer if e.user_id == u}
    assert now[users[2]].snapshot_ms == stale[users[2]].snapshot_ms
    client.close()


@pytest.mark.slow
def test_zombie_paused_past_its_poll_interval_loses_and_regresses_nothing(pipeline):
    """A real rebalance. B (the group leader) and A share the partitions. A stalls mid-batch
    (its users' state loaded, not yet written) past max_poll_interval_ms, so its client leaves
    the group; B takes every partition, applies A's batch and newer events for the same users,
    and commits. Then A resumes and finishes its stale batch: its Feast rows are older (dropped)
    and its state writes are refused (fenced), so nothing is lost or regressed: the store equals
    what one consumer builds from all the events.

    B joins first so that it leads the group: Tansu (0.6, the test broker) keeps a departed
    leader as the group's leader when it leaves during a rebalance, and the group never forms
    again (the remaining member's SyncGroup waits for that leader and fails, forever). A real
    Kafka elects a new leader; this test does not depend on that difference."""
    import threading

    from homefeed.stream.ops import committed_offsets

    users = user_block(20)
    first = make_events(users, 10, now_ms() - 900_000, "z1")
    newer = make_events(users, 10, now_ms() - 300_000, "z2")
    b = build_consumer(pipeline, validate=False, max_poll_interval_ms=3000, client_id="owner-b")
    a = build_consumer(pipeline, validate=False, max_poll_interval_ms=3000, client_id="zombie-a")
    stalled, resume = threading.Event(), threading.Event()
    write = a.builder.online.write_sequences

    def stall_then_write(rows, view=F.ACTION_SEQUENCE):  # A's first batch waits here, its users'
        stalled.set()                                    # state already loaded
        resume.wait(600)
        write(rows, view)

    a.builder.online.write_sequences = stall_then_write
    threads = {c: threading.Thread(target=c.run, daemon=True) for c in (b, a)}
    n_parts = 3 * pipeline.topic_partitions  # actions, pins, impressions
    try:
        threads[b].start()
        wait_for(lambda: len(b._assignment()) == n_parts, 120, "B to own every partition")
        threads[a].start()
        wait_for(lambda: a._assignment() and len(a._assignment()) + len(b._assignment()) == n_parts,
                 120, "A and B to share the partitions")
        produce(pipeline, first)
        wait_for(stalled.is_set, 120, "A's first batch")
        # A cannot poll: its client leaves the group after 3 s and B takes A's partitions too.
        wait_for(lambda: b.stats.applied == len(first), 120, "B to take every partition and apply")
        produce(pipeline, newer)
        total = len(first) + len(newer)
        wait_for(lambda: b.stats.applied == total, 120, "B to apply the newer events")
        wait_for(lambda: sum(o for tp, o in committed_offsets(pipeline).items()
                             if tp.topic == pipeline.actions_topic) == total, 120, "B's commits")
        resume.set()  # the zombie wakes up and finishes its stale batch
        wait_for(lambda: a.stats.fenced == 1, 120, "A's stale batch to be fenced")
    finally:
        resume.set()
        for c in (a, b):
            c.stop.set()
        for t in threads.values():
            t.join(60)
    assert a.stats.applied == 0 and b.stats.fenced == 0  # A's batch was never applied or committed
    expected = expected_sequences(first + newer)
    assert online_sequences(users) == expected
    states = b.builder.states.load_states(users)
    assert all(states[u].feature_row() == expected[u] for u in users)
    logged = set(offline_log.read(pipeline.offline_dir, "action_events")["event_id"])
    assert {e.event_id for e in first + newer} <= logged
    assert_counters_match_the_event_log(pipeline, first + newer)  # the zombie's batch counted once


# -- producers check every send ---------------------------------------------------------------

def _produce_records(n: int, t0: int = 1_767_355_200_000):
    for i in range(n):
        yield b"1", E.ActionEvent(f"prod-{i}", 1, 1 + i, E.ActionType.CLICK, t0 + i).to_json(), t0 + i


def test_every_send_is_checked_and_a_refused_record_is_counted(pipeline):
    from homefeed.stream.clients import make_producer

    # A client limit below one record: the broker never gets it (the send fails at once).
    small = Producer(pipeline, make_producer(pipeline, max_request_size=64))
    with pytest.raises(ProduceFailed) as failed:
        small.send_all(pipeline.actions_topic, _produce_records(3), total=3)
    small.close()
    assert failed.value.failed == 3 and failed.value.sent == 3
    assert "3 of 3 records were not acknowledged" in str(failed.value)

    ok = Producer(pipeline)
    assert ok.send_all(pipeline.actions_topic, _produce_records(5), total=5) == 5 and ok.failed == 0
    ok.close()


# -- impressions ------------------------------------------------------------------------------------

def make_impressions(users: list[int], per_user: int, start: int, prefix: str) -> list[E.ImpressionEvent]:
    """Pins in the users' id block, as make_events: each test's pin counters are its own."""
    return [E.ImpressionEvent(f"{prefix}-{u}-{i}", u, u // 1_000_000 * 1_000_000 + 1 + (u * 11 + i) % 5000,
                              start + 1000 * i + 1, request_id=u * 1000 + i // 4)
            for u in users for i in range(per_user)]


def test_impressions_are_logged_apart_dead_lettered_with_reasons_and_counted(pipeline):
    from homefeed.stream.ops import consumer_counters, stream_status
    from homefeed.stream.producer import bad_impression_samples

    users = user_block(5)
    start = now_ms() - 1_800_000
    evs = make_events(users, 30, start, "ia")
    imps = make_impressions(users, 60, start, "ii")
    kinds = produce(pipeline, evs, bad=True)
    producer = Producer(pipeline)
    producer.send_all(pipeline.impressions_topic, ((str(i.user_id).encode(), i.to_json(), None)
                                                   for i in imps + imps[:7]))  # 7 redelivered
    bad_imps = producer.send_bad_events(impressions=True)
    producer.close()

    stats = consume(pipeline)  # the real consumer, both GX suites on

    # Actions exactly as without impressions: applied, sequenced, logged.
    assert stats.applied == len(evs) and stats.impressions == len(imps)
    assert stats.duplicates == 7 and stats.dead_lettered == len(kinds) + len(bad_imps)
    assert stats.records == stats.applied + stats.duplicates + stats.dead_lettered + stats.impressions
    assert online_sequences(users) == expected_sequences(evs)
    actions_logged = offline_log.read(pipeline.offline_dir, "action_events")
    assert set(actions_logged["event_id"]) == {e.event_id for e in evs}
    # Impressions in their own table, nothing lost, one row each.
    shown = offline_log.read(pipeline.offline_dir, F.IMPRESSION_EVENTS)
    assert sorted(shown["event_id"]) == sorted(i.event_id for i in imps)
    assert set(shown.columns) >= {*E.IMPRESSION_COLUMNS, "arrival_time", F.EVENT_TIMESTAMP, F.CREATED}
    assert "action_type" not in shown and (shown["request_id"] >= 0).all()
    first = {i.event_id: i for i in imps}
    assert all(first[e].event_time == t for e, t in zip(shown["event_id"], shown["event_time"]))
    # Each user's latest impressions: online (Feast) as built from scratch, each once; the log's
    # newest version per user is the online one.
    assert online_sequences(users, F.IMPRESSION_SEQUENCE) == expected_sequences(imps)
    versions = offline_log.read(pipeline.offline_dir, F.USER_IMPRESSION_SEQUENCE)
    newest = versions.sort_values(F.EVENT_TIMESTAMP).drop_duplicates(F.USER_ID, keep="last")
    assert {int(u): list(p) for u, p in zip(newest[F.USER_ID], newest[F.IMP_PIN_IDS])} == {
        u: row[F.IMP_PIN_IDS] for u, row in expected_sequences(imps).items()}

    # Every bad impression dead-lettered with its reason and its source topic.
    letters = dead_letters(pipeline)
    from_impressions = sorted(h["reason"] for _, h in letters
                              if h["source"].startswith(pipeline.impressions_topic + ":"))
    assert from_impressions == sorted(bad_imps.values())
    assert set(bad_imps.values()) == {r for _, r in bad_impression_samples(now_ms()).values()}
    assert len(letters) == len(kinds) + len(bad_imps)

    # The group's counters and `stream status` agree with the consumer and the dead-letter topic.
    counters = consumer_counters(pipeline)
    assert counters["accounted"] and counters["impressions"] == len(imps)
    assert counters["records"] == stats.records and counters["duplicates"] == 7
    status = stream_status(pipeline)
    assert status["dead_letters_agree"] and status["dead_lettered"] == len(letters)
    assert sum(p["lag"] for p in status["topics"][pipeline.impressions_topic]) == 0

    # Redelivered in a later batch (the states hold them): the impression sequences do not change
    # and no new version is logged.
    producer = Producer(pipeline)
    producer.send_all(pipeline.impressions_topic, ((str(i.user_id).encode(), i.to_json(), None)
                                                   for i in imps[:20]))
    producer.close()
    again = consume(pipeline)
    assert again.impressions == 20
    assert online_sequences(users, F.IMPRESSION_SEQUENCE) == expected_sequences(imps)
    assert len(offline_log.read(pipeline.offline_dir, F.USER_IMPRESSION_SEQUENCE)) == len(versions)


def test_an_impression_the_suite_rejects_is_dead_lettered_and_the_rest_logged(pipeline):
    users = user_block(2)
    imps = make_impressions(users, 5, now_ms() - 60_000, "is")
    producer = Producer(pipeline)
    producer.send_all(pipeline.impressions_topic,
                      ((str(i.user_id).encode(), i.to_json(), None) for i in imps))
    producer.close()
    rejected = imps[3].event_id

    def impression_suite(frame):
        return {i: "planted: rejected by the batch suite" for i, e in enumerate(frame["event_id"])
                if e == rejected}

    consumer = build_consumer(pipeline)
    consumer.builder.impression_validator = impression_suite
    stats = consumer.run(idle_exit_s=3)
    assert stats.impressions == len(imps) - 1 and stats.dead_lettered == 1 and stats.applied == 0
    logged = set(offline_log.read(pipeline.offline_dir, F.IMPRESSION_EVENTS)["event_id"])
    assert logged == {i.event_id for i in imps} - {rejected}
    [(value, headers)] = dead_letters(pipeline)
    assert headers["reason"] == E.REASON_BATCH_SUITE and json.loads(value)["event_id"] == rejected


def test_a_world_impression_is_invisible_to_the_request_it_belongs_to(pipeline, tmp_path):
    """Through the real path (world -> producer -> broker -> consumer -> log): a point-in-time
    join at a row's served_time (feature time <= served_time, as training reads) never finds an
    impression of that row's own request; it is logged 1 ms after the serve."""
    from homefeed.stream.producer import impression_records
    from homefeed.world import WorldParams, generate_world, load_world

    generate_world(WorldParams(users=8, pins=60, days=2, seed=5, embedding_dim=8, n_topics=4),
                   tmp_path / "w", progress=False)
    world = load_world(tmp_path / "w")
    imps = world.impressions()
    producer = Producer(pipeline)
    producer.send_all(pipeline.impressions_topic, impression_records(imps, use_arrival_time=True))
    producer.close()
    stats = consume(pipeline)
    assert stats.impressions == len(imps) == len(world.requests) and stats.dead_lettered == 0

    logged = offline_log.read(pipeline.offline_dir, F.IMPRESSION_EVENTS)
    rows = world.requests[[F.REQUEST_ID, F.USER_ID, F.PIN_ID, F.SERVED_TIME]]
    own = rows.merge(logged, on=[F.REQUEST_ID, F.PIN_ID, F.USER_ID], validate="one_to_one")
    assert len(own) == len(rows)
    served_ts = offline_log.to_utc_us(own[F.SERVED_TIME])
    assert (own[F.EVENT_TIMESTAMP] > served_ts).all() and (own[F.CREATED] > served_ts).all()
    # the latest impression a point-in-time join sees at each served_time is an earlier request's
    seen = pd.merge_asof(
        rows.assign(t=offline_log.to_utc_us(rows[F.SERVED_TIME])).sort_values("t"),
        logged[[F.USER_ID, F.REQUEST_ID, F.EVENT_TIMESTAMP]].rename(
            columns={F.REQUEST_ID: "seen_request"}).sort_values(F.EVENT_TIMESTAMP),
        left_on="t", right_on=F.EVENT_TIMESTAMP, by=F.USER_ID, allow_exact_matches=True)
    assert seen["seen_request"].notna().any()  # later requests do see earlier impressions
    assert not (seen["seen_request"] == seen[F.REQUEST_ID]).any()


def test_stream_produce_sends_a_worlds_impressions_and_none_for_a_world_without(pipeline, tmp_path):
    from homefeed.stream.ops import stream_status
    from homefeed.world import WorldParams, generate_world, load_world

    world_dir = tmp_path / "w"
    generate_world(WorldParams(users=6, pins=50, days=2, seed=9, embedding_dim=8, n_topics=4), world_dir,
                   progress=False)
    world = load_world(world_dir)
    env = {**os.environ, **consumer_env(pipeline)}

    def produce_cli() -> dict:
        done = subprocess.run([sys.executable, "-m", "homefeed.cli", "stream", "produce", "--world",
                               str(world_dir), "--skip-pins"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    out = produce_cli()
    assert out["events"] == len(world.events) and out["impressions"] == len(world.requests) > 0
    topics = stream_status(pipeline)["topics"]
    assert sum(p["end"] for p in topics[pipeline.impressions_topic]) == out["impressions"]

    meta = json.loads((world_dir / "world.json").read_text())
    (world_dir / "world.json").write_text(json.dumps({**meta, "has_impressions": False}))
    assert produce_cli()["impressions"] == 0  # shown candidates unknown (MovieLens): none sent
    topics = stream_status(pipeline)["topics"]
    assert sum(p["end"] for p in topics[pipeline.impressions_topic]) == out["impressions"]


def test_impressions_in_a_process_of_their_own_leave_the_action_consumer_alone_and_are_counted(pipeline):
    from homefeed.stream.ops import stream_status

    separate = pipeline.replace(impressions_consumer_group=pipeline.consumer_group + "-imp")
    users = user_block(3)
    start = now_ms() - 600_000
    evs = make_events(users, 20, start, "sa")
    imps = make_impressions(users, 40, start, "si")
    produce(separate, evs)
    producer = Producer(separate)
    producer.send_all(separate.impressions_topic, ((str(i.user_id).encode(), i.to_json(), None) for i in imps))
    producer.send_bad_events(["an_action"], impressions=True)
    producer.close()

    actions = consume(separate)
    assert actions.applied == len(evs) and actions.impressions == 0 and actions.records == len(evs)
    shown = build_consumer(separate, impressions_only=True).run(idle_exit_s=3)
    assert shown.impressions == len(imps) and shown.applied == 0 and shown.dead_lettered == 1
    assert shown.records == len(imps) + 1
    assert online_sequences(users) == expected_sequences(evs)
    assert online_sequences(users, F.IMPRESSION_SEQUENCE) == expected_sequences(imps)  # its own process
    logged = offline_log.read(separate.offline_dir, F.IMPRESSION_EVENTS)
    assert sorted(logged["event_id"]) == sorted(i.event_id for i in imps)

    status = stream_status(separate)
    assert status["consumer"]["impressions"] == 0 and status["impressions_consumer"]["impressions"] == len(imps)
    assert status["impressions_consumer"]["accounted"] and status["dead_letters_agree"]
    assert sum(p["lag"] for p in status["topics"][separate.impressions_topic]) == 0
    # both processes counted into the same users' and pins' counters, each record once
    assert_counters_match_the_event_log(separate, evs, imps)
    with pytest.raises(Exception, match="IMPRESSIONS_CONSUMER_GROUP"):
        build_consumer(pipeline, impressions_only=True)
