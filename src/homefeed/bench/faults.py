"""`homefeed bench faults`: the fault matrix, run against a real private stack.

Each case injects one fault into running components and checks one guarantee of
docs/reliability.md; the result is a table of case / expected / observed / pass.

1. A private stack: redis-server and the Tansu broker on free ports, a private HOMEFEED_HOME,
   a copy of the feature repo applied, a private GX project, its own topics and consumer group.
2. Consumer cases, against one real `homefeed stream consume` process for the whole run: every
   poison record is followed by a good "sentinel" event, which must become visible (the consumer
   is alive and past the poison); the poison must be in the dead-letter topic with its reason; and
   the group's counters must add up to exactly what was produced (records = applied +
   duplicates + dead-lettered + pin upserts). Then Redis and the broker are paused under it,
   Redis refuses writes and loses its data; last, the broker is SIGKILLed and restarted (its
   topics are in memory: they come back empty) and a poison record follows.
3. Service cases, against a real `bentoml serve` with an untrained model: Redis stopped and
   paused under 8 concurrent clients (every call 200, flagged degraded, p99 bound), recovery,
   overload at 4x the sustainable rate (shed 503s, no other 5xx), Redis wiped (neutral vectors,
   then `stream backfill` restores pins), hostile requests.
4. Operations cases: a stale pid file naming someone else's process; an exposed Redis without
   a password.

    homefeed bench faults --json          # exit 1 when any case fails
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from homefeed import events as E
from homefeed.envscope import scoped_env
from homefeed.http_client import ready, request
from homefeed.settings import SOURCE_ROOT, Settings, load_settings

log = logging.getLogger(__name__)

PIN_IDS = list(range(1, 201))
SERVICE_USER = 7_000_001
P99_BOUND_MS = 250.0  # Redis stopped or paused: p99 at 100 candidates, 8 clients (issue 24's target)


@dataclass
class Case:
    case: str
    expected: str
    observed: str
    passed: bool

    def __post_init__(self) -> None:
        log.info("%s  %s: %s", "PASS" if self.passed else "FAIL", self.case, self.observed)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- 1. the private stack ------------------------------------------------------------------------

@contextlib.contextmanager
def private_stack(workdir: Path):
    """stack.private_stack with the matrix's own feature repo, GX project, BentoML home, topics
    and short timeouts; yields (Settings, LocalStack)."""
    from homefeed import stack as local
    from homefeed.feature_store import apply_repo
    from homefeed.validation import init_context

    tag = uuid.uuid4().hex[:8]
    repo = workdir / "feature_repo"
    shutil.copytree(SOURCE_ROOT / "feature_repo", repo,
                    ignore=shutil.ignore_patterns("data", "__pycache__"), dirs_exist_ok=True)
    env = {
        "HOMEFEED_FEATURE_REPO": str(repo),
        "HOMEFEED_VALIDATION_DIR": str(workdir / "validation"), "BENTOML_HOME": str(workdir / "bentoml"),
        "HOMEFEED_ACTIONS_TOPIC": f"faults-actions-{tag}", "HOMEFEED_PINS_TOPIC": f"faults-pins-{tag}",
        "HOMEFEED_DEAD_LETTER_TOPIC": f"faults-dlq-{tag}", "HOMEFEED_CONSUMER_GROUP": f"faults-{tag}",
        "HOMEFEED_TOPIC_PARTITIONS": "1", "HOMEFEED_REDIS_TIMEOUT_MS": "1000",
        "HOMEFEED_BATCH_MAX_MS": "50", "BENTOML_DO_NOT_TRACK": "true",
    }
    with local.private_stack(workdir / "home", env) as (settings, stack):
        init_context(workdir / "validation")
        apply_repo(repo)
        yield settings, stack


def seeded_ranker(settings: Settings, work: Path, n_pins: int = 2000, n_users: int = 10) -> tuple[str, list[int]]:
    """What the serving benchmarks rank with: `n_pins` pins and `n_users` users with 100-action
    sequences in the online store, and an untrained TransAct v1.1 (ModelConfig defaults: 2
    layers, the demo's shape; seeded) exported to `work`'s BentoML store. (model tag, user ids)."""
    import torch
    from safetensors.torch import save_file

    from homefeed import features as F
    from homefeed.feature_store import open_store
    from homefeed.model import ModelConfig, build_model
    from homefeed.stream.online_writer import OnlineWriter
    from homefeed.training.data import dense_feature_spec
    from homefeed.training.export import current_fingerprint, export_run

    dim, L = settings.embedding_dim, settings.sequence_length
    now = now_ms()
    rng = np.random.default_rng(0)
    pins = list(range(1, n_pins + 1))
    emb = rng.normal(size=(len(pins), dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    w = OnlineWriter(open_store(settings.feature_repo))
    w.write_pins([{F.PIN_ID: p, F.PIN_EMBEDDING: emb[p - 1].astype(np.float32).tolist(), F.PIN_TOPIC: p % 5,
                   F.PIN_CREATED_MS: now - 86_400_000, F.EVENT_TIMESTAMP: now - 1000, F.CREATED: now - 1000}
                  for p in pins])
    users = list(range(1, n_users + 1))
    w.write_sequences([{F.USER_ID: u, F.EVENT_TIMESTAMP: now - 60_000, F.CREATED: now - 1000,
                        F.SEQ_PIN_IDS: rng.choice(pins, 100).tolist(),
                        F.SEQ_ACTION_TYPES: rng.integers(1, 4, 100).tolist(),
                        F.SEQ_ACTION_TIMES: [now - 60_000 * (i + 1) for i in range(100)], F.SEQ_LENGTH: 100}
                       for u in users])
    torch.manual_seed(0)
    spec = dense_feature_spec(dim)
    config = ModelConfig(encoder="transact_v11", seq_len=L, emb_dim=dim, dense_dim=spec["dim"])
    run = work / "run"
    run.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in build_model(config).state_dict().items()}, str(run / "model.safetensors"))
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    (run / "run.json").write_text(json.dumps({"schema_fingerprint": current_fingerprint(settings),
                                              "dense_features": spec, "validation": {"success": True}}))
    return export_run(run, bentoml_home=work / "bentoml"), users


def start_logged(argv: list[str], log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=SOURCE_ROOT, env=dict(os.environ))


def stop_process(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


@contextlib.contextmanager
def serve_ranking(log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 180):
    """`bentoml serve bento.service:Ranking` on a free loopback port, with this process's
    environment and `env` (for the block only), its output in `log_path`; yields (url, process)
    once /readyz answers 200 (RuntimeError if it exits first or is not ready within
    `timeout_s`); stopped on exit."""
    from homefeed.stack import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with scoped_env(env):
        proc = start_logged([sys.executable, "-m", "bentoml", "serve", "bento.service:Ranking", "--port",
                             str(port), "--host", "127.0.0.1"], log_path)
        try:
            started = wait_for(lambda: proc.poll() is not None or ready(url), timeout_s, 0.5)
            if not started or proc.poll() is not None:
                raise RuntimeError(f"service did not start; see {log_path}")
            yield url, proc
        finally:
            stop_process(proc)


@contextlib.contextmanager
def paused(pid: int, seconds: float):
    """SIGSTOP a process (its sockets stay open but nothing answers), SIGCONT after."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
        time.sleep(max(0.0, seconds))
    finally:
        os.kill(pid, signal.SIGCONT)


# -- 2. consumer cases ---------------------------------------------------------------------------

class ConsumerProbe:
    """Produces records for one running consumer and checks what became of them."""

    def __init__(self, settings: Settings):
        from homefeed.feature_store import open_store, repo_project
        from homefeed.redis_client import pipeline_client

        self.settings = settings
        self.project = repo_project(settings.feature_repo)
        # A raw producer with a large request limit: poison records include a ~2 MB value.
        self.producer = self._producer()
        self.redis = pipeline_client(settings)
        self.store = open_store(settings.feature_repo)
        self.produced = 0
        self._sentinels = 0

    def _producer(self):
        from kafka import KafkaProducer

        return KafkaProducer(bootstrap_servers=self.settings.effective_kafka_bootstrap, acks="all",
                             max_request_size=4 * 1024 * 1024)

    def new_producer(self) -> None:
        """A fresh client for the probe's own sends (after a broker restart: the fault is the
        consumer's to survive, not the probe's)."""
        self.producer.close(timeout=5)
        self.producer = self._producer()

    def send(self, topic: str, value: bytes | None, key: bytes | None = b"faults"):
        meta = self.producer.send(topic, key=key, value=value).get(timeout=30)
        self.produced += 1
        return meta

    def action(self, user: int, event_id: str, pin: int = 1, action: str = "repin") -> bytes:
        return E.ActionEvent(event_id, user, pin, E.ActionType.parse(action), now_ms() - 1000).to_json()

    def pin(self, pin_id: int, emb: list[float], event_time: int, topic_id: int = 1) -> bytes:
        return E.PinUpsert(pin_id, topic_id, tuple(emb), now_ms() - 86_400_000, event_time).to_json()

    def user_event_ids(self, user: int) -> list[str]:
        from homefeed.sequence import SequenceState
        from homefeed.stream.state import STATE_KEY

        raw = self.redis.get(STATE_KEY.format(project=self.project, user_id=user))
        return list(SequenceState.from_bytes(raw).event_ids) if raw else []

    def sentinel(self, timeout_s: float = 30) -> bool:
        """A good event after the fault: True once the consumer has applied it."""
        self._sentinels += 1
        user, event_id = 9_000_000 + self._sentinels, f"sentinel-{self._sentinels}"
        self.send(self.settings.actions_topic, self.action(user, event_id), key=str(user).encode())
        return wait_for(lambda: event_id in self.user_event_ids(user), timeout_s)

    def counters(self) -> dict | None:
        from homefeed.stream.ops import consumer_counters

        return consumer_counters(self.settings, self.project)

    def dead_letters(self) -> list[dict]:
        """Every record on the dead-letter topic: headers as text, value length."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.settings.effective_kafka_bootstrap,
                                 enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024)
        try:
            tps = [TopicPartition(self.settings.dead_letter_topic, p)
                   for p in sorted(consumer.partitions_for_topic(self.settings.dead_letter_topic) or [])]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            out: list[dict] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
                for records in consumer.poll(timeout_ms=200).values():
                    for r in records:
                        out.append({**{k: v.decode(errors="replace") for k, v in (r.headers or [])},
                                    "value_bytes": None if r.value is None else len(r.value),
                                    "value": r.value})
            return out
        finally:
            consumer.close()

    def online_pin_embedding(self, pin_id: int) -> list[float] | None:
        from homefeed import features as F

        row = self.store.get_online_features(
            features=[f"{F.PIN_FEATURES}:{F.PIN_EMBEDDING}"], entity_rows=[{F.PIN_ID: pin_id}]).to_dict()
        return row[F.PIN_EMBEDDING][0]

    def close(self) -> None:
        self.producer.close()
        self.redis.close()


def _accounting(probe: ConsumerProbe) -> tuple[bool, str]:
    """Counters add up, and to exactly what was produced (polled: the last batch may be in flight)."""
    state: dict = {}

    def exact() -> bool:
        state["c"] = probe.counters()
        c = state["c"]
        return bool(c) and c["accounted"] and c["records"] == probe.produced

    ok = wait_for(exact, 10, 0.2)
    c = state.get("c") or {}
    return ok, (f"records {c.get('records')}/{probe.produced} = applied {c.get('applied')} + dup "
                f"{c.get('duplicates')} + dead {c.get('dead_lettered')} + pins {c.get('pin_upserts')}")


def poison_cases(settings: Settings) -> list[tuple[str, str, bytes | None, str]]:
    """(case, topic, value, expected dead-letter reason)."""
    t = now_ms()
    a, p = settings.actions_topic, settings.pins_topic
    good = {"schema_version": 1, "event_id": "x", "user_id": 5, "pin_id": 5, "action_type": "repin",
            "event_time": t - 1000}
    emb = [0.1] * settings.embedding_dim

    def pin(**changes) -> bytes:
        obj = {"schema_version": 1, "pin_id": 99, "topic_id": 1, "embedding": emb,
               "created_ms": t - 86_400_000, "event_time": t - 1000, **changes}
        return json.dumps(obj).encode()

    return [
        ("tombstone on the actions topic", a, None, E.REASON_EMPTY),
        ("tombstone on the pins topic", p, None, E.REASON_EMPTY),
        ("empty value", a, b"", E.REASON_EMPTY),
        ("3,000 nested [ (RecursionError in json)", a, b"[" * 3000, E.REASON_NOT_JSON),
        ("2 MB value (over the dead-letter size)", a, b'{"blob": "' + b"x" * 2_000_000 + b'"}',
         E.REASON_TOO_LARGE),
        ("invalid UTF-8", a, b'{"event_id": "\xff\xfe"}', E.REASON_NOT_JSON),
        ("lone surrogate in event_id", a, json.dumps({**good, "event_id": "\ud800"}).encode(), E.REASON_BAD_ID),
        ("pin upsert event_time 10^15", p, pin(event_time=10**15), E.REASON_FUTURE_TIME),
        ("pin upsert dated 2100", p, pin(event_time=4_102_444_800_000), E.REASON_FUTURE_TIME),
        ("pin upsert created_ms in seconds", p, pin(created_ms=1_700_000_000), E.REASON_ANCIENT_TIME),
        ("pin topic_id 2^64", p, pin(topic_id=2**64), E.REASON_BAD_ID),
        ("pin duration_ms in microseconds (a 2-minute video)", p, pin(duration_ms=120_000_000_000),
         E.REASON_BAD_DURATION),
        ("pin embedding value 1e39 (float32 overflow)", p, pin(embedding=[1e39] + emb[1:]),
         E.REASON_WRONG_TYPE),
        ("action event_time 2^63", a, json.dumps({**good, "event_time": 2**63}).encode(), E.REASON_FUTURE_TIME),
    ]


@contextlib.contextmanager
def running_consumer(settings: Settings, workdir: Path):
    """One real `homefeed stream consume` process (output in workdir/consumer.log), once its
    partitions are assigned, and a ConsumerProbe; yields (process, probe); both stopped after."""
    ready = workdir / "consumer.ready"
    proc = start_logged([sys.executable, "-m", "homefeed.cli", "stream", "consume", "--ready-file",
                         str(ready)], workdir / "consumer.log")
    probe = ConsumerProbe(settings)
    try:
        if not wait_for(lambda: ready.exists() or proc.poll() is not None, 120):
            raise RuntimeError("consumer was not assigned its partitions within 120 s")
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited at start; see {workdir / 'consumer.log'}")
        yield proc, probe
    finally:
        probe.close()
        stop_process(proc)


def consumer_matrix(settings: Settings, stack, workdir: Path) -> list[Case]:
    cases: list[Case] = []
    with running_consumer(settings, workdir) as (proc, probe):
        rng = np.random.default_rng(0)
        for pin_id in PIN_IDS:  # features for the service cases, through the real path
            v = rng.normal(size=settings.embedding_dim)
            probe.send(settings.pins_topic, probe.pin(pin_id, (v / np.linalg.norm(v)).tolist(), now_ms() - 5000),
                       key=str(pin_id).encode())
        for i, pin_id in enumerate(PIN_IDS[:20]):
            probe.send(settings.actions_topic, probe.action(SERVICE_USER, f"svc-{i}", pin_id),
                       key=str(SERVICE_USER).encode())
        ok = probe.sentinel(60)
        acc, detail = _accounting(probe)
        cases.append(Case("setup: 200 pins and 20 actions", "applied, counters exact",
                          f"sentinel {'applied' if ok else 'NOT applied'}; {detail}", ok and acc))

        for name, topic, value, reason in poison_cases(settings):
            meta = probe.send(topic, value)
            alive = probe.sentinel()
            source = f"{topic}:{meta.partition}:{meta.offset}"
            letters = [d for d in probe.dead_letters() if d.get("source") == source]
            got = letters[0]["reason"] if letters else "no dead letter"
            acc, detail = _accounting(probe)
            extra = ""
            if letters and letters[0].get("summarized") == "true":
                summary = json.loads(letters[0]["value"])
                extra = f"; summarized (length {summary['length']}, sha256 {summary['sha256'][:12]}...)"
            passed = alive and got == reason and acc and proc.poll() is None
            cases.append(Case(f"consumer: {name}", f"dead-lettered as {reason}, ingestion goes on",
                              f"dead letter: {got}{extra}; next event "
                              f"{'applied' if alive else 'NOT applied'}; {detail}", passed))

        # A later real update of a pin whose 2100-dated upsert was refused is applied (not frozen).
        fresh = [0.5] * settings.embedding_dim
        probe.send(settings.pins_topic, probe.pin(99, fresh, now_ms() - 500), key=b"99")
        updated = wait_for(lambda: (probe.online_pin_embedding(99) or [None])[0] == 0.5, 20)
        cases.append(Case("consumer: pin update after a refused far-future upsert", "applied",
                          "applied" if updated else "not applied (pin frozen)", updated))

        # Same event id for two users in one batch: two events. A redelivered copy: a duplicate.
        before = (probe.counters() or {}).get("duplicates", 0)
        for user in (8_000_001, 8_000_002):
            probe.send(settings.actions_topic, probe.action(user, "shared-id"), key=str(user).encode())
        probe.send(settings.actions_topic, probe.action(8_000_001, "shared-id"), key=b"8000001")
        both = wait_for(lambda: all("shared-id" in probe.user_event_ids(u) for u in (8_000_001, 8_000_002)), 20)
        acc, detail = _accounting(probe)
        dups = (probe.counters() or {}).get("duplicates", 0) - before
        cases.append(Case("consumer: one event_id, two users (+1 redelivery)",
                          "both applied, 1 duplicate", f"both applied: {both}; duplicates +{dups}; {detail}",
                          both and dups == 1 and acc))

        # Dependencies paused under the running consumer (a partition: sockets hang, nothing fails).
        # Redis: events arrive while it is frozen. The broker: the group's session lapses meanwhile.
        for name, pid_name, seconds in (("Redis", "redis", 4.0), ("the broker", "kafka", 8.0)):
            user = 8_100_000 + len(cases)
            with paused(_pid(settings, pid_name), seconds):
                if pid_name == "redis":
                    for i in range(50):
                        probe.send(settings.actions_topic, probe.action(user, f"p-{i}"), key=str(user).encode())
            if pid_name == "kafka":
                for i in range(50):
                    probe.send(settings.actions_topic, probe.action(user, f"p-{i}"), key=str(user).encode())
            got = wait_for(lambda: len(probe.user_event_ids(user)) == 50, 90, 0.25)
            alive = probe.sentinel(60)
            acc, detail = _accounting(probe)
            cases.append(Case(f"consumer: {name} paused {seconds:g} s mid-stream",
                              "consumer survives, all 50 events applied, none lost",
                              f"{len(probe.user_event_ids(user))}/50 applied; alive: {proc.poll() is None}; "
                              f"{detail}", got and alive and acc and proc.poll() is None))
        cases.append(_redis_refuses_writes(probe, proc, workdir / "consumer.log"))
        cases.append(_redis_loses_its_data(probe, proc, workdir / "consumer.log"))
        cases.append(_broker_restarts(probe, proc, stack, workdir / "consumer.log"))  # last: topics reset
    return cases


def _dead_letters_agree(probe: ConsumerProbe, counted_before: int = 0) -> tuple[bool, int]:
    """The group's dead-letter counter (Redis), less `counted_before` (what it counted before the
    topic was emptied, e.g. by a restart of the in-memory broker), equals the dead-letter
    topic's record count."""
    n = len(probe.dead_letters())
    return (probe.counters() or {}).get("dead_lettered", 0) - counted_before == n, n


def _dead_letter_bound_s() -> float:
    """How soon a poison record sent after a broker restart must be dead-lettered: the consumer
    may first wait out a lost group join (UNASSIGNED_REBUILD_S, then a ~3 s join) and then a
    dead-letter producer that the new broker does not know (DEAD_LETTER_TIMEOUT_S), plus 30 s
    for a loaded machine: 90 s today (one run took 63 s with both)."""
    from homefeed.stream.consumer import UNASSIGNED_REBUILD_S
    from homefeed.stream.dead_letters import DEAD_LETTER_TIMEOUT_S

    return UNASSIGNED_REBUILD_S + DEAD_LETTER_TIMEOUT_S + 30.0


def _broker_restarts(probe: ConsumerProbe, proc, stack, log_path: Path) -> Case:
    """The broker SIGKILLed under the idle running consumer and started again on the same port
    (LocalStack.restart). Tansu keeps topics in memory: the restarted broker is empty, the topics
    are created again (as `stack up` does), and the group's committed offsets are gone; the
    consumer's clients (its group membership, fetch positions, the dead-letter producer) must
    find their way back by themselves. Then a valid action, a poison record and another valid
    action: both actions applied, the poison dead-lettered with its reason within
    `_dead_letter_bound_s()`, the consumer alive, the counters exact. The dead-letter topic restarted
    empty, so the counter-topic agreement is checked on what was counted after the restart."""
    settings = probe.settings
    ok_before, _ = _accounting(probe)  # idle: everything so far applied and committed
    counted_before = (probe.counters() or {}).get("dead_lettered", 0)
    mark = log_path.stat().st_size
    old_pid = _pid(settings, "kafka")
    stack.restart("kafka")
    new_pid = _pid(settings, "kafka")
    probe.new_producer()
    emptied = probe.dead_letters() == []
    partitions = len(probe.producer.partitions_for(settings.actions_topic) or ())
    user = 8_400_001
    name, topic, value, reason = poison_cases(settings)[3]  # 3,000 nested [: not_json
    probe.send(settings.actions_topic, probe.action(user, "restart-1"), key=str(user).encode())
    t0 = time.monotonic()
    meta = probe.send(topic, value)
    probe.send(settings.actions_topic, probe.action(user, "restart-2"), key=str(user).encode())
    source = f"{topic}:{meta.partition}:{meta.offset}"
    letters: list[dict] = []

    def lettered() -> bool:
        letters[:] = [d for d in probe.dead_letters() if d.get("source") == source]
        return bool(letters)

    bound_s = _dead_letter_bound_s()
    in_time = wait_for(lettered, bound_s, 0.5)
    dead_s = time.monotonic() - t0
    both = wait_for(lambda: {"restart-1", "restart-2"} <= set(probe.user_event_ids(user)), 60, 0.25)
    got = letters[0]["reason"] if letters else "no dead letter"
    acc, detail = _accounting(probe)
    agree, n_dead = _dead_letters_agree(probe, counted_before)
    text = log_path.read_text(errors="replace")[mark:]
    rebuilt = text.count("dead-letter producer rebuilt")
    consumer_rebuilt = text.count("rebuilding the Kafka consumer")
    broker_errors = text.count("broker error during")
    alive = proc.poll() is None
    passed = (ok_before and old_pid != new_pid and emptied and in_time and got == reason and both
              and acc and agree and n_dead == 1 and alive)
    return Case("consumer: broker SIGKILLed and restarted (in-memory topics lost), then a valid action, "
                f"a poison record ({name}), a valid action",
                f"consumer alive, both actions applied, poison dead-lettered as {reason} within "
                f"{bound_s:g} s, counters exact (old fetch positions past the new topics' "
                "end: read from their start)",
                f"broker pid {old_pid} -> {new_pid}, dead-letter topic empty after: {emptied}; dead letter: "
                f"{got} after {dead_s:.1f} s; both actions applied: {both}; actions topic back with "
                f"{partitions} partitions; Kafka consumer rebuilt {consumer_rebuilt}x, dead-letter "
                f"producer rebuilt {rebuilt}x, {broker_errors} broker-error lines; dead letters since the "
                f"restart: counter "
                f"and topic agree: {agree} ({n_dead}); alive: {alive}; {detail}", passed)


def _redis_refuses_writes(probe: ConsumerProbe, proc, log_path: Path) -> Case:
    """maxmemory reached under noeviction: every write is refused with OOM. An outage: the batch
    waits uncommitted, nothing is dead-lettered, and all of it lands once memory is freed."""
    settings = probe.settings
    user, dead_before = 8_200_001, len(probe.dead_letters())
    mark = log_path.stat().st_size
    used = int(probe.redis.info("memory")["used_memory"])
    probe.redis.config_set("maxmemory-policy", "noeviction")
    probe.redis.config_set("maxmemory", str(max(1, used // 2)))
    try:
        for i in range(30):
            probe.send(settings.actions_topic, probe.action(user, f"oom-{i}"), key=str(user).encode())
        refused = wait_for(lambda: "OutOfMemoryError" in log_path.read_text(errors="replace")[mark:], 60, 0.2)
    finally:
        probe.redis.config_set("maxmemory", "0")
    got = wait_for(lambda: len(probe.user_event_ids(user)) == 30, 90, 0.25)
    alive = probe.sentinel(60)
    acc, detail = _accounting(probe)
    agree, n_dead = _dead_letters_agree(probe)
    new_dead = n_dead - dead_before
    return Case("consumer: Redis refuses writes (maxmemory, noeviction)",
                "an outage: retried uncommitted, 0 dead-lettered, all 30 applied once memory is free",
                f"OOM seen by the consumer: {refused}; {len(probe.user_event_ids(user))}/30 applied; "
                f"{new_dead} new dead letters; counters and topic agree: {agree}; alive: "
                f"{proc.poll() is None}; {detail}",
                refused and got and alive and acc and agree and new_dead == 0 and proc.poll() is None)


def _redis_loses_its_data(probe: ConsumerProbe, proc, log_path: Path) -> Case:
    """FLUSHALL under the running consumer (a restart without persistence, a failover to an empty
    replica): the next batch finds the generation marker gone and restores every sequence, state
    and pin from the offline log; the new events land on whole sequences."""
    settings = probe.settings
    user = 8_300_001
    for i in range(40):
        probe.send(settings.actions_topic, probe.action(user, f"loss-{i}", pin=1 + i), key=str(user).encode())
    wait_for(lambda: len(probe.user_event_ids(user)) == 40, 60, 0.25)
    _accounting(probe)  # idle: no batch in flight when the data goes
    before = {u: probe.user_event_ids(u) for u in (user, SERVICE_USER)}
    mark = log_path.stat().st_size
    probe.redis.flushall()
    probe.produced = 0  # the counters lived in Redis too: they restart with the next batch
    for i in range(5):
        probe.send(settings.actions_topic, probe.action(user, f"after-{i}"), key=str(user).encode())
    whole = wait_for(lambda: len(probe.user_event_ids(user)) == 45, 90, 0.25)
    service_whole = probe.user_event_ids(SERVICE_USER) == before[SERVICE_USER]
    online = probe.store.get_online_features(
        features=["user_action_sequence:seq_length"], entity_rows=[{"user_id": user}]).to_dict()
    pins_back = probe.online_pin_embedding(PIN_IDS[0]) is not None
    said = "Redis lost its data" in log_path.read_text(errors="replace")[mark:]
    acc, detail = _accounting(probe)
    ok = whole and service_whole and online["seq_length"][0] == 45 and pins_back and said and acc
    return Case("consumer: Redis loses its data (FLUSHALL) mid-run",
                "detected and restored from the log by the consumer: sequences whole, pins back",
                f"user with 40 actions + 5 new: {len(probe.user_event_ids(user))} in state, "
                f"{online['seq_length'][0]} online; another user whole: {service_whole}; pins back: "
                f"{pins_back}; logged: {said}; alive: {proc.poll() is None}; {detail}",
                ok and proc.poll() is None)


def _pid(settings: Settings, name: str) -> int:
    from homefeed.stack import read_pid_file

    pid = read_pid_file(settings.run_dir / f"{name}.pid")
    if pid is None:
        raise RuntimeError(f"no running {name} in {settings.run_dir}")
    return pid


# -- 3. service cases ----------------------------------------------------------------------------

def load(url: str, clients: int = 8, per_client: int = 40, candidates: int = 100) -> dict:
    """`clients` threads, each sending `per_client` /rank calls back to back."""
    from homefeed.bench.serve_http import run_threads

    results: list[tuple[int, bool, float, float]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(per_client):
            body = {"user_id": SERVICE_USER, "candidates": rng.choice(PIN_IDS, candidates, replace=False).tolist(),
                    "k": 10}
            start = time.perf_counter()
            server_ms = float("nan")
            try:
                status, text = request("POST", url + "/rank", body, timeout_s=15)
                out = json.loads(text) if status == 200 else {}
                degraded = bool(out.get("degraded"))
                server_ms = sum(out.get("timings_ms", {}).values()) if out else float("nan")
            except OSError:
                status, degraded = 0, False
            with lock:
                results.append((status, degraded, (time.perf_counter() - start) * 1000, server_ms))

    elapsed = run_threads([functools.partial(client, i) for i in range(clients)])
    ms = np.array([r[2] for r in results])
    engine_ms = np.array([r[3] for r in results])
    return {"calls": len(results), "ok": sum(r[0] == 200 for r in results),
            "degraded": sum(r[1] for r in results), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1),
            "engine_p50_ms": round(float(np.nanpercentile(engine_ms, 50)), 1) if results else None,
            "calls_per_s": round(len(results) / elapsed, 1)}


def degraded_now(url: str) -> bool | None:
    status, text = request("POST", url + "/rank", {"user_id": SERVICE_USER, "candidates": PIN_IDS[:10]})
    return json.loads(text)["degraded"] if status == 200 else None


def service_matrix(settings: Settings, stack, workdir: Path, p99_bound_ms: float = P99_BOUND_MS,
                   overload_s: float = 20.0) -> list[Case]:
    """`p99_bound_ms` is the latency target of a degraded answer under load (the test suite
    passes inf: no timed bound on a shared machine, and the benchmark figure is the one to
    compare; inf also leaves out the overload case's latency and memory bounds)."""
    from homefeed.training.export import export_untrained

    cases: list[Case] = []
    tag, _ = export_untrained(workdir / "model", bentoml_home=workdir / "bentoml")
    log_path = workdir / "service.log"
    with serve_ranking(log_path, {"HOMEFEED_MODEL": tag, "HOMEFEED_PIN_CACHE_S": "2"}) as (url, proc):
        load(url, clients=2, per_client=10)  # warm the pin cache
        for fault in ("stopped", "paused"):
            pid = _pid(settings, "redis")
            if fault == "stopped":
                stack.down(services=("redis",))
            else:
                os.kill(pid, signal.SIGSTOP)
            try:
                r = load(url)
                ready_up = request("GET", url + "/readyz")[0] == 200
            finally:
                if fault == "stopped":
                    stack._up_redis()
                else:
                    os.kill(pid, signal.SIGCONT)
            t0 = time.monotonic()
            back = wait_for(lambda: degraded_now(url) is False, 10, 0.1)
            recovered_s = time.monotonic() - t0
            passed = (r["ok"] == r["calls"] and r["degraded"] == r["calls"] and r["p99_ms"] <= p99_bound_ms
                      and ready_up and back)
            cases.append(Case(
                f"service: Redis {fault}, 8 clients x 40 calls, 100 candidates",
                f"100% 200 degraded, p99 <= {p99_bound_ms:g} ms, /readyz up, recovers",
                f"{r['ok']}/{r['calls']} 200, {r['degraded']} degraded, p50 {r['p50_ms']} ms, p99 "
                f"{r['p99_ms']} ms, max {r['max_ms']} ms ({r['calls_per_s']} calls/s, engine p50 "
                f"{r['engine_p50_ms']} ms); /readyz {'200' if ready_up else 'down'}; "
                + (f"not degraded {recovered_s:.1f} s after Redis was back" if back else "never recovered"),
                passed))

        cases.append(_overload_case(url, proc.pid, timed=p99_bound_ms != float("inf"), seconds=overload_s))
        cases.extend(_request_cases(url))
        cases.append(_wiped_case(settings, url))
        text = log_path.read_text(errors="replace")
        rejected = [line for line in text.splitlines() if "rejected" in line and "/rank" in line]
        quiet = bool(rejected) and all(" INFO " in f" {line} " or "[INFO]" in line for line in rejected)
        cases.append(Case("service: 4xx logging", "one INFO line each, no traceback",
                          f"{len(rejected)} rejected lines, all INFO: {quiet}; tracebacks: "
                          f"{text.count('Traceback')}", quiet and "Traceback" not in text))
    return cases


def _overload_case(url: str, server_pid: int, timed: bool, seconds: float) -> Case:
    """4x the sustainable rate (8 closed-loop clients at 100 candidates measure it), open-loop,
    each client thread on a kept-alive connection (as behind a load balancer):
    the service sheds (503 + Retry-After) instead of queueing; nothing else fails. `timed`: also
    the latency and memory targets (answered p99 <= 2x the baseline's, worker RSS back within
    10% after 10 s idle), which only the benchmark run checks."""
    from homefeed.bench.serve_http import overload_test, service_pids

    r = overload_test(url, 100, clients=8, baseline_requests=160, factor=4.0, seconds=seconds,
                      settle_s=10.0 if timed else 0.0, user_ids=[SERVICE_USER], max_pin_id=len(PIN_IDS),
                      pids=service_pids(server_pid), keepalive=True)
    b, o, rss = r["baseline"], r["overload"], r["rss_mb"]
    t = r["targets"]
    passed = (t["no_other_5xx"] and b["ok"] == b["sent"]
              and (not timed or (t["p99_within_2x"] and t["rss_within_10pct"])))
    return Case(
        "service: overload, 4x the sustainable rate open-loop, 100 candidates",
        "503 + Retry-After past the in-flight limit, no other 5xx"
        + (", answered p99 <= 2x baseline, worker RSS back within 10%" if timed else ""),
        f"baseline {b['ok']}/{b['sent']} 200 at {b['goodput_rps']}/s, p99 {b['answered_p99_ms']} ms; "
        f"at {o['offered_rps']}/s: {o['ok']} 200, {o['shed_503']} shed 503, {o['other_5xx']} other 5xx, "
        f"{o['other']} other; answered p99 {o['answered_p99_ms']} ms ({r['p99_ratio']}x), goodput "
        f"{o['goodput_rps']}/s; RSS MiB {sum(rss['before'].values()):.0f} -> {sum(rss['after'].values()):.0f}"
        f" -> {sum(rss['settled'].values()):.0f}", passed)


def _request_cases(url: str) -> list[Case]:
    cases = []
    bad = [
        ("blend NaN", b'{"user_id": 5, "candidates": [1, 2], "blend": {"repin": NaN}}'),
        ("blend Infinity", b'{"user_id": 5, "candidates": [1, 2], "blend": {"repin": Infinity}}'),
        ("blend 1e308", b'{"user_id": 5, "candidates": [1, 2], "blend": {"repin": 1e308}}'),
        ("request_time_ms 2^63", b'{"user_id": 5, "candidates": [1, 2], "request_time_ms": 9223372036854775808}'),
    ]
    for name, raw in bad:
        status, text = request("POST", url + "/rank", raw=raw)
        cases.append(Case(f"service: {name}", "400 naming the field", f"{status}: {text[:120]}",
                          status == 400))
    status, text = request("POST", url + "/rank", {"user_id": SERVICE_USER, "candidates": [3, 5, 3, 5, 9], "k": 10})
    ids = [i["pin_id"] for i in json.loads(text)["items"]] if status == 200 else []
    cases.append(Case("service: duplicate candidates", "each ranked once", f"{status}: {ids}",
                      status == 200 and sorted(ids) == [3, 5, 9]))
    status, text = request("POST", url + "/rank", {"user_id": 7_999_999, "candidates": [900_001, 900_002]})
    out = json.loads(text) if status == 200 else {}
    cases.append(Case("service: new user, only new pins", "200, neutral vectors flagged unknown",
                      f"{status}; unknown {out.get('unknown_pins')}; cold start {out.get('cold_start')}",
                      status == 200 and len(out.get("unknown_pins", [])) == 2))
    status = post_chunked_rank(url, megabytes=4)
    cases.append(Case("service: 4 MB chunked body (no Content-Length)", "413", str(status), status == 413))
    return cases


def post_chunked_rank(url: str, megabytes: int) -> int:
    """POST a ~`megabytes` MB /rank body with chunked transfer encoding (no Content-Length), in
    10 KB chunks; returns the status (413 also when the server answered and closed while the
    body was still being sent)."""
    import http.client
    from urllib.parse import urlparse

    target = urlparse(url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)

    def chunks():
        yield b'{"user_id": 1, "candidates": ['
        for _ in range(100 * megabytes):
            yield b"1," * 5000
        yield b"1]}"

    try:
        conn.request("POST", "/rank", body=chunks(), encode_chunked=True,
                     headers={"content-type": "application/json"})
        return conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):
        return 413
    finally:
        conn.close()


def _wiped_case(settings: Settings, url: str) -> Case:
    """Redis loses every key: pins turn unknown (neutral vectors, still 200); `stream backfill`
    brings them back from the offline log."""
    from homefeed.redis_client import pipeline_client

    client = pipeline_client(settings)
    client.flushall()
    client.close()
    time.sleep(2.5)  # past the service's pin-cache staleness bound (HOMEFEED_PIN_CACHE_S=2)
    status, text = request("POST", url + "/rank", {"user_id": SERVICE_USER, "candidates": PIN_IDS[:10]})
    unknown = len(json.loads(text)["unknown_pins"]) if status == 200 else None
    done = subprocess.run([sys.executable, "-m", "homefeed.cli", "stream", "backfill", "--since", "0"],
                          capture_output=True, text=True, cwd=SOURCE_ROOT, timeout=300)
    time.sleep(2.5)
    status2, text2 = request("POST", url + "/rank", {"user_id": SERVICE_USER, "candidates": PIN_IDS[:10]})
    out = json.loads(text2) if status2 == 200 else {}
    restored = status2 == 200 and not out["unknown_pins"] and not out["cold_start"]
    return Case("service: Redis wiped, then `stream backfill`",
                "200 with unknown pins, then pins and sequence restored",
                f"after wipe {status} with {unknown}/10 unknown; backfill rc {done.returncode}; after "
                f"backfill {status2} with {len(out.get('unknown_pins', []))} unknown, cold start "
                f"{out.get('cold_start')}", status == 200 and unknown == 10 and restored)


# -- 4. operations -------------------------------------------------------------------------------

def operations_matrix(workdir: Path) -> list[Case]:
    from homefeed.errors import UserError
    from homefeed.stack import LocalStack, free_port, write_pid_file

    cases = []
    settings = load_settings().replace(home=workdir / "ops-home", redis_port=free_port())
    stack = LocalStack(settings)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    stranger = subprocess.Popen(["sleep", "60"])
    try:  # a stale redis.pid whose pid now belongs to an unrelated program
        write_pid_file(settings.run_dir / "redis.pid", stranger.pid, [shutil.which("redis-server") or "redis-server",
                                                                     "--port", str(settings.redis_port)])
        stack.down()
        alive = stranger.poll() is None
        cases.append(Case("stack down with a stale pid file (pid reused)", "the other process is untouched",
                          "untouched" if alive else "KILLED", alive))
    finally:
        stranger.kill()
        stranger.wait()
    exposed = LocalStack(settings.replace(redis_bind="0.0.0.0", redis_password=""))
    try:
        exposed._up_redis()
        observed, ok = "started an open Redis", False
        exposed.down()
    except UserError as exc:
        observed, ok = f"refused: {str(exc)[:80]}...", True
    cases.append(Case("stack up with redis_bind=0.0.0.0 and no REDIS_PASSWORD", "refused", observed, ok))
    return cases


# -- the command ---------------------------------------------------------------------------------

def run_matrix(workdir: Path | None = None, parts: tuple[str, ...] = ("consumer", "service", "operations"),
               p99_bound_ms: float = P99_BOUND_MS, overload_s: float = 20.0) -> list[Case]:
    own = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="homefeed-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    try:
        if "consumer" in parts or "service" in parts:
            with private_stack(workdir) as (settings, stack):
                cases += consumer_matrix(settings, stack, workdir)
                if "service" in parts:
                    cases += service_matrix(settings, stack, workdir, p99_bound_ms, overload_s)
        if "operations" in parts:
            cases += operations_matrix(workdir)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return cases


def cmd_faults(args) -> int:
    cases = run_matrix(Path(args.workdir) if args.workdir else None)
    if args.json:
        print(json.dumps({"cases": [asdict(c) for c in cases], "passed": sum(c.passed for c in cases),
                          "failed": sum(not c.passed for c in cases)}, indent=2))
    else:
        for c in cases:
            print(f"{'PASS' if c.passed else 'FAIL'}  {c.case}\n      expected: {c.expected}\n"
                  f"      observed: {c.observed}")
        print(f"{sum(c.passed for c in cases)} passed, {sum(not c.passed for c in cases)} failed")
    return 0 if all(c.passed for c in cases) else 1


def add_bench_faults_parser(sub) -> None:
    p = sub.add_parser("faults", help="the fault matrix against a private stack (docs/reliability.md)")
    p.add_argument("--json", action="store_true", help="the matrix as JSON (cases, passed, failed)")
    p.add_argument("--workdir", help="keep the run's files (logs) here instead of a temporary directory")
    p.set_defaults(func=cmd_faults)
