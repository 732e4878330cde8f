"""`homefeed bench ingest`: a fixed world through producer -> broker -> consumer -> Redis.

Three measurements in one run, so their ratios are comparable on a noisy machine:

* ceilings: the raw Kafka consume rate (no processing) and the raw pipelined Redis write rate
  (one sequence-sized value per user);
* throughput: a backlog of the world's events (and its impressions, on their own topic, unless
  `--no-impressions`) drained by 1..C consumer processes over P partitions, plus one process of
  their own for impressions with `--impressions-process` (events/s = applied action events / the
  time from the first to the last batch of the consumers that applied them; impressions/s the
  same for logged impressions);
* freshness: action events produced live at a fixed rate (with impressions alongside at the
  world's impressions-per-action ratio, from a second producer, unless `--no-impressions`) while
  one consumer runs; freshness = an action visible in the online store minus the record's broker
  timestamp, from the consumer's samples and from its Prometheus histogram (scraped, as a
  monitoring system would); and where each micro-batch's time goes, stage by stage
  (`live_stage_ms`: poll window, parse, GX suites, state read, offline log, Feast write, state
  write, dead letters, commit).

Consumers run until the group has committed every record produced, then stop together: a member
that left mid-run would force a rebalance into the measurement.

Every valid event and impression produced must be in the offline log afterwards: `lost` counts
those that are not.
Each backlog run starts from an empty Redis and ends with `state_digest`, a SHA-256 over every
user's online sequence (pins, action types, times, read back as the service reads them): every
run replays the same events, so every digest must equal the first run's, whatever the number of
consumers, partitions or Redis nodes (`--redis-cluster 3`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from homefeed import offline_log
from homefeed.settings import Settings

log = logging.getLogger(__name__)


def _env(settings: Settings) -> dict:
    return dict(os.environ, HOMEFEED_HOME=str(settings.home),
                HOMEFEED_REDIS_PORT=str(settings.redis_port), HOMEFEED_KAFKA_PORT=str(settings.kafka_port),
                HOMEFEED_ACTIONS_TOPIC=settings.actions_topic, HOMEFEED_PINS_TOPIC=settings.pins_topic,
                HOMEFEED_IMPRESSIONS_TOPIC=settings.impressions_topic,
                HOMEFEED_IMPRESSIONS_CONSUMER_GROUP=settings.impressions_consumer_group,
                HOMEFEED_DEAD_LETTER_TOPIC=settings.dead_letter_topic,
                HOMEFEED_CONSUMER_GROUP=settings.consumer_group,
                HOMEFEED_TOPIC_PARTITIONS=str(settings.topic_partitions),
                HOMEFEED_BATCH_MAX_EVENTS=str(settings.batch_max_events),
                HOMEFEED_BATCH_MAX_MS=str(settings.batch_max_ms),
                HOMEFEED_REDIS_MODE=settings.redis_mode,
                HOMEFEED_REDIS_CLUSTER_SIZE=str(settings.redis_cluster_size))


def _fresh(settings: Settings, root: Path, partitions: int, label: str,
           impressions_process: bool = False) -> Settings:
    from homefeed.feature_store import copy_registry
    from homefeed.stack import ensure_topics

    tag = f"{label}-{uuid.uuid4().hex[:6]}"
    s = settings.replace(home=root / tag, actions_topic=f"bench-actions-{tag}",
                         pins_topic=f"bench-pins-{tag}", dead_letter_topic=f"bench-dlq-{tag}",
                         impressions_topic=f"bench-impressions-{tag}",
                         impressions_consumer_group=f"bench-imp-{tag}" if impressions_process else "",
                         consumer_group=f"bench-{tag}", topic_partitions=partitions)
    copy_registry(settings, s)  # consumer processes open the registry of the home they are given
    ensure_topics(s)
    return s


def _consumers(settings: Settings, n: int, out_dir: Path, metrics_port: int | None = None) -> list[tuple]:
    """Start n consumer processes (and the impressions process, when `impressions_consumer_group`
    names one: last) and wait until each has its partitions. They run until `_drain` stops them
    (no idle exit: a member leaving mid-run would force a rebalance)."""
    procs = []
    for i in range(n + bool(settings.impressions_consumer_group)):
        stats = out_dir / f"{settings.consumer_group}-{i}.json"
        ready = out_dir / f"{settings.consumer_group}-{i}.ready"
        with open(out_dir / f"{settings.consumer_group}-{i}.log", "wb") as log_fh:  # never a full pipe
            argv = [sys.executable, "-m", "homefeed.cli", "stream", "consume",
                    "--stats-out", str(stats), "--ready-file", str(ready)]
            if metrics_port and i == 0:
                argv += ["--metrics-port", str(metrics_port)]
            if i == n:
                argv += ["--impressions"]
            p = subprocess.Popen(argv, env=_env(settings), stdout=subprocess.DEVNULL, stderr=log_fh)
        p.log_path = log_fh.name
        procs.append((p, stats, ready))
    # Generous: on a loaded 2-core machine four processes importing Feast and GX take minutes.
    _wait_until(lambda: all(r.exists() for _, _, r in procs), [p for p, _, _ in procs], 900,
                "every consumer to join the group")
    return [(p, stats) for p, stats, _ in procs]


def _wait_until(predicate, procs: list, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"consumer exited while waiting for {what}: {_log_tail(dead[0])}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)


def committed_total(settings: Settings, topic: str | None = None) -> int:
    """Records of a topic (default: the actions topic) the group has committed (offsets are
    dense from 0)."""
    from homefeed.stream.clients import impressions_settings
    from homefeed.stream.ops import committed_offsets

    topic = topic or settings.actions_topic
    if topic == settings.impressions_topic and settings.impressions_consumer_group:
        settings = impressions_settings(settings)  # read by a process (and group) of its own
    return sum(o for tp, o in committed_offsets(settings).items() if tp.topic == topic)


def _all_committed(settings: Settings, records: int, impressions: int = 0) -> bool:
    return committed_total(settings) >= records and (
        not impressions or committed_total(settings, settings.impressions_topic) >= impressions)


def _drain(settings: Settings, procs, records: int, timeout_s: float = 1800,
           impressions: int = 0) -> list[dict]:
    """Wait until the group has committed all `records` of the actions topic and `impressions`
    of the impressions topic, then stop every consumer at once (SIGTERM: each finishes its
    batch, leaves the group and writes its stats)."""
    _wait_until(lambda: _all_committed(settings, records, impressions), [p for p, _ in procs],
                timeout_s, f"{records} records and {impressions} impressions committed")
    for p, _ in procs:
        p.send_signal(signal.SIGTERM)
    out = []
    for p, stats in procs:
        if p.wait(timeout=120) != 0:
            raise RuntimeError(f"consumer failed: {_log_tail(p)}")
        out.append(json.loads(Path(stats).read_text()))
    return out


def per_second(stats: list[dict], key: str) -> float:
    """Sum of `key` over the consumers that did any of it / the time from their first batch to
    their last."""
    busy = [st for st in stats if st.get(key) and st.get("first_batch_at")]
    if not busy:
        return 0.0
    span = max(st["last_batch_at"] for st in busy) - min(st["first_batch_at"] for st in busy)
    return round(sum(st[key] for st in busy) / max(span, 1e-9), 1)


def stage_summary(stats: list[dict]) -> dict:
    """{stage: {mean, p50, p99}} in ms per micro-batch, over every batch of these consumers."""
    from homefeed.stream.builder import STAGES

    out = {}
    for stage in STAGES:
        per_batch = np.asarray([x for st in stats for x in st.get("stage_s", {}).get(stage, [])]) * 1000
        if per_batch.size:
            out[stage] = {"mean": round(float(per_batch.mean()), 2),
                          "p50": round(float(np.percentile(per_batch, 50)), 2),
                          "p99": round(float(np.percentile(per_batch, 99)), 2)}
    return out


def prometheus_quantiles(url: str, name: str = "homefeed_stream_freshness_seconds",
                         quantiles=(0.5, 0.99)) -> dict:
    """Quantiles (ms) of a Prometheus histogram scraped from `url`, interpolated within buckets
    as PromQL's histogram_quantile does."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    buckets = []
    for family in text_string_to_metric_families(text):
        if family.name == name:
            buckets = sorted((float(sm.labels["le"]), sm.value) for sm in family.samples
                             if sm.name == name + "_bucket")
    total = buckets[-1][1] if buckets else 0
    out: dict = {"samples": int(total)}
    for q in quantiles:
        if not total:
            break
        rank, lower, below = q * total, 0.0, 0.0
        for upper, count in buckets:
            if count >= rank:
                if upper == float("inf"):
                    value = lower
                else:
                    value = lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
                out[f"p{round(q * 100)}"] = round(1000 * value, 1)
                break
            lower, below = upper, count
    return out


def _log_tail(proc) -> str:
    return Path(proc.log_path).read_bytes()[-2000:].decode("utf-8", "replace")


def raw_kafka_consume_rate(settings: Settings, expected: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka_client_config(), max_poll_records=5000, fetch_max_wait_ms=50)
    parts = [TopicPartition(settings.actions_topic, p)
             for p in consumer.partitions_for_topic(settings.actions_topic)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    n, start = 0, time.perf_counter()
    while n < expected and time.perf_counter() - start < 120:
        for records in consumer.poll(timeout_ms=500).values():
            n += len(records)
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


def raw_redis_write_rate(settings: Settings, n_keys: int = 20_000, value_bytes: int = 3_000) -> float:
    from homefeed.redis_client import pipeline_client

    client = pipeline_client(settings)
    value = os.urandom(value_bytes)
    start = time.perf_counter()
    for chunk in range(0, n_keys, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(chunk, min(chunk + 1000, n_keys)):
            pipe.set(f"homefeed:bench:{i}", value)
        pipe.execute()
    elapsed = time.perf_counter() - start
    client.delete(*[f"homefeed:bench:{i}" for i in range(n_keys)])
    return n_keys / elapsed


def _logged_ids(settings: Settings, table: str = "action_events") -> set:
    frame = offline_log.read(settings.offline_dir, table, columns=["event_id"])
    return set(frame["event_id"]) if not frame.empty else set()


def state_digest(settings: Settings, user_ids) -> str:
    """SHA-256 over every user's online sequence (sorted by user), read as the service reads it."""
    import hashlib

    from homefeed.feature_store import open_store
    from homefeed.serving.online_features import OnlineFeatureReader

    reader = OnlineFeatureReader(open_store(settings.feature_repo), settings, max_staleness_s=0,
                                 timeout_s=settings.redis_timeout_ms / 1000)
    digest = hashlib.sha256()
    users = sorted(int(u) for u in user_ids)
    try:
        for start in range(0, len(users), 1000):
            for u in reader.users_features(users[start: start + 1000]):
                digest.update(np.int64(u.user_id).tobytes())
                for part in (u.seq_pin_ids, u.seq_action_types, u.seq_action_times):
                    digest.update(np.asarray(part, dtype=np.int64).tobytes())
    finally:
        reader.close()
    return digest.hexdigest()


def run_ingest_bench(world_dir: Path, partitions: list[int], consumers: list[int], live_rate: float,
                     live_seconds: float, redis_cluster: int = 0, impressions: bool = True,
                     impressions_process: bool = False) -> dict:
    from homefeed.feature_store import apply_repo
    from homefeed.stack import private_stack

    # A private stack on free ports: the benchmark never touches your Redis or topics.
    root = Path(tempfile.mkdtemp(prefix="homefeed-bench-"))
    with private_stack(root / "stack", redis_cluster=redis_cluster) as (base, _):
        apply_repo(base.feature_repo)
        return _run(base, root, world_dir, partitions, consumers, live_rate, live_seconds, impressions,
                    impressions_process)


def _run(base: Settings, root: Path, world_dir: Path, partitions: list[int], consumers: list[int],
         live_rate: float, live_seconds: float, with_impressions: bool = True,
         impressions_process: bool = False) -> dict:
    from homefeed.redis_client import pipeline_client
    from homefeed.stream.producer import Producer, event_records, impression_records
    from homefeed.world import load_world

    world = load_world(world_dir)
    events = world.events
    shown = world.impressions() if with_impressions else world.impressions().iloc[:0]
    valid_ids = set(events["event_id"])
    users = events["user_id"].unique()
    report: dict = {"events": len(events), "impressions": len(shown), "world": str(world_dir),
                    "impressions_process": impressions_process,
                    "redis_mode": base.redis_mode, "redis_nodes": len(base.redis_node_list), "runs": []}

    # Throughput: drain a backlog.
    for p in partitions:
        for c in consumers:
            s = _fresh(base, root, p, f"p{p}c{c}", impressions_process)
            client = pipeline_client(s)
            client.flushall()  # every run builds the same sequences from nothing (the digest)
            client.close()
            prefix = f"{s.consumer_group}-"  # new events each run, not replays of the last one
            producer = Producer(s)
            producer.send_all(s.actions_topic, event_records(events, True, id_prefix=prefix),
                              total=len(events), desc=f"backlog p={p}")
            if len(shown):
                producer.send_all(s.impressions_topic, impression_records(shown, True, id_prefix=prefix),
                                  total=len(shown), desc=f"impressions p={p}")
            bad = producer.send_bad_events()
            producer.close()
            if p == partitions[0] and c == consumers[0]:
                report["ceilings"] = {
                    "kafka_consume_per_s": round(raw_kafka_consume_rate(s, len(events)), 1),
                    "redis_pipelined_writes_per_s": round(raw_redis_write_rate(s), 1),
                }
            stats = _drain(s, _consumers(s, c, out_dir=root), len(events) + len(bad),
                           impressions=len(shown))
            applied = sum(st["applied"] for st in stats)
            logged = sum(st.get("impressions", 0) for st in stats)
            lost = len({prefix + i for i in valid_ids} - _logged_ids(s))
            lost += len({prefix + i for i in shown["event_id"]} - _logged_ids(s, "impression_events"))
            run = {"partitions": p, "consumers": c, "applied": applied, "impressions": logged,
                   "events_per_s": per_second(stats, "applied"),
                   "impressions_per_s": per_second(stats, "impressions"),
                   "dead_lettered": sum(st["dead_lettered"] for st in stats),
                   "bad_events_sent": len(bad), "lost": lost,
                   "batches": sum(st["batches"] for st in stats),
                   "stage_ms_mean": {k: v["mean"] for k, v in stage_summary(stats).items()},
                   "state_digest": state_digest(s, users)[:16]}
            report["runs"].append(run)
            log.info("backlog run %s", run)

    # Freshness: live traffic at a fixed rate, one consumer already running.
    from homefeed.stack import free_port

    s = _fresh(base, root, partitions[0], "live", impressions_process)
    metrics_port = free_port()
    procs = _consumers(s, 1, out_dir=root, metrics_port=metrics_port)
    live = events.head(int(live_rate * live_seconds))
    # impressions alongside, at the world's ratio to actions (one producer each, concurrently)
    ratio = len(shown) / max(len(events), 1)
    live_shown = shown.head(int(live_rate * ratio * live_seconds))
    prefix = f"{s.consumer_group}-"
    sent_shown = _produce_in_background(
        s, s.impressions_topic, impression_records(live_shown, False, id_prefix=prefix, live=True),
        live_rate * ratio, len(live_shown)) if len(live_shown) else None
    producer = Producer(s)
    started = time.perf_counter()
    producer.send_all(s.actions_topic, event_records(live, False, id_prefix=prefix, live=True),
                      rate=live_rate, total=len(live), desc="live")
    producer.close()
    report["live_actions_sent_per_s"] = round(len(live) / (time.perf_counter() - started), 1)
    if sent_shown is not None:
        sent_shown.join()
        report["live_impressions_sent_per_s"] = round(sent_shown.rate, 1)
    _wait_until(lambda: _all_committed(s, len(live), len(live_shown)), [p for p, _ in procs], 600,
                "the live events")
    # The consumer's own histogram, scraped as Prometheus would: it must agree with the samples.
    report["freshness_prometheus_ms"] = prometheus_quantiles(f"http://{s.host}:{metrics_port}/metrics")
    every = _drain(s, procs, len(live), impressions=len(live_shown))
    stats = every[0]  # the action consumer (an impressions process comes last)
    report["live_stage_ms"] = stage_summary([stats])
    fresh = np.asarray(stats["freshness_ms"], dtype=float)
    report["freshness_ms"] = {q: round(float(np.percentile(fresh, v)), 1) for q, v in
                              (("p50", 50), ("p95", 95), ("p99", 99))} if fresh.size else {}
    report["freshness_ms"]["samples"] = int(fresh.size)
    report["live_rate_per_s"] = live_rate
    report["live_impressions"] = int(sum(st.get("impressions", 0) for st in every))
    report["live_lost"] = len({prefix + i for i in live["event_id"]} - _logged_ids(s))
    report["live_lost"] += len({prefix + i for i in live_shown["event_id"]}
                               - _logged_ids(s, "impression_events"))
    report["live_events_per_batch"] = round(stats["applied"] / max(stats["batches"], 1), 1)

    best = max(report["runs"], key=lambda r: r["events_per_s"])
    single = report["runs"][0]
    report["events_per_s"] = single["events_per_s"]
    report["impressions_per_s"] = single["impressions_per_s"]
    report["best_events_per_s"] = best["events_per_s"]
    report["dead_lettered"] = single["dead_lettered"]
    report["lost"] = sum(r["lost"] for r in report["runs"]) + report["live_lost"]
    report["digests_equal"] = len({r["state_digest"] for r in report["runs"]}) == 1
    ceilings = report["ceilings"]
    report["efficiency"] = {
        "vs_kafka_consume": round(single["events_per_s"] / ceilings["kafka_consume_per_s"], 3),
        "vs_redis_writes": round(single["events_per_s"] / ceilings["redis_pipelined_writes_per_s"], 3),
    }
    _plot_freshness(fresh, root / "freshness.png")
    report["freshness_plot"] = str(root / "freshness.png")
    return report


def _produce_in_background(settings: Settings, topic: str, records, rate: float, total: int):
    """Send `records` at `rate` from a thread with its own producer; join() it, then read
    `.rate` (records/s achieved). A failed send fails the thread's join with its error."""
    import threading

    from homefeed.stream.producer import Producer

    class Sender(threading.Thread):
        rate = 0.0
        error: BaseException | None = None

        def run(self) -> None:
            producer = Producer(settings)
            started = time.perf_counter()
            try:
                n = producer.send_all(topic, records, rate=rate, total=total, desc="live impressions")
                self.rate = n / (time.perf_counter() - started)
            except BaseException as exc:  # re-raised by join()
                self.error = exc
            finally:
                producer.close()

        def join(self, timeout=None) -> None:
            super().join(timeout)
            if self.error is not None:
                raise self.error

    sender = Sender(daemon=True)
    sender.start()
    return sender


def _plot_freshness(fresh: np.ndarray, path: Path) -> None:
    if not fresh.size:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(fresh, bins=50, color="#3b7dd8")
    for q in (50, 95, 99):
        ax.axvline(np.percentile(fresh, q), color="k", ls="--", lw=0.8)
        ax.text(np.percentile(fresh, q), ax.get_ylim()[1] * 0.9, f"p{q}", fontsize=8)
    ax.set_xlabel("event arrival -> visible in online store (ms)")
    ax.set_ylabel("events")
    ax.set_title("Sequence freshness")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_bench_ingest(args) -> int:
    from homefeed.world.generate import WorldParams, generate_world

    world = Path(args.world) if args.world else None
    if world is None:
        world = Path(tempfile.mkdtemp(prefix="homefeed-bench-world-"))
        generate_world(WorldParams(users=args.users, pins=args.pins, days=args.days, seed=args.seed), world)
    report = run_ingest_bench(world, [int(p) for p in args.partitions.split(",")],
                              [int(c) for c in args.consumers.split(",")], args.live_rate, args.live_seconds,
                              redis_cluster=args.redis_cluster, impressions=not args.no_impressions,
                              impressions_process=args.impressions_process)
    report["machine"] = f"{os.cpu_count()} cores"
    report["date"] = pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser("ingest", help="throughput, freshness and loss of the realtime pipeline")
    p.add_argument("--world", help="use this world directory (default: generate a fixed one)")
    p.add_argument("--users", type=int, default=2000, help="users of the generated world (default 2000)")
    p.add_argument("--pins", type=int, default=5000, help="pins of the generated world (default 5000)")
    p.add_argument("--days", type=int, default=3, help="days of the generated world (default 3)")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated world (default 7)")
    p.add_argument("--partitions", default="4", help="comma-separated partition counts to try")
    p.add_argument("--consumers", default="1,2", help="comma-separated consumer process counts")
    p.add_argument("--live-rate", type=float, default=10_000, help="events/s in the freshness phase")
    p.add_argument("--live-seconds", type=float, default=10,
                   help="length of the freshness phase in seconds (default 10)")
    p.add_argument("--redis-cluster", type=int, default=0, metavar="N",
                   help="run against a local Redis Cluster of N nodes (default: one redis-server)")
    p.add_argument("--no-impressions", action="store_true",
                   help="send no impressions (the action path alone, for comparison)")
    p.add_argument("--impressions-process", action="store_true",
                   help="impressions read by a consumer process (and group) of their own")
    p.add_argument("--json", action="store_true", help="one-line JSON")
    p.set_defaults(func=cmd_bench_ingest)
