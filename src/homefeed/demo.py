"""`homefeed demo` (what `make demo` runs): the main job end to end on embedded defaults.

Each step is a plain call into the same code the stage commands use, printed as it goes. The run
ends with a report (markdown + PNGs, see homefeed.demo_report) in the demo's directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from homefeed.errors import UserError
from homefeed.http_client import get_text, post_json, ready
from homefeed.settings import SOURCE_ROOT, Settings, load_settings
from homefeed.stack import read_pid_file, write_pid_file

log = logging.getLogger(__name__)

DEMO_PROCESSES = ("service", "consumer", "events")


@dataclass(frozen=True)
class Size:
    users: int
    pins: int
    days: int
    models: str = "all"  # `homefeed train --models`
    epochs: int = 2
    # batches of 512 per epoch, at most: the demo trains "briefly" (8 models in minutes on 2
    # cores; TransAct trains at a few hundred examples/s there); 0 = whole epochs
    max_steps: int = 30
    n_boot: int = 1000  # bootstrap resamples of the comparison
    fresh_events: int = 300  # live events for the freshness histogram ...
    fresh_rate: float = 100.0  # ... at this many per second
    burst_requests: int = 50  # /rank requests for the stage latencies ...
    burst_candidates: int = 100  # ... at this many candidates


SIZES = {
    # CI's smoke test (tests/test_demo.py): two models, one epoch; the same steps as the others.
    "smoke": Size(60, 300, 4, models="none,transact_v11", epochs=1, n_boot=200, fresh_events=100,
                  fresh_rate=50.0),
    "tiny": Size(200, 600, 4),
    "small": Size(1000, 3000, 8),
    "default": Size(2000, 5000, 14, max_steps=100),
}
LIVE_TIMEOUT_S = 30.0


class Steps:
    """Prints each step's title and keeps how long each one took."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._title: str | None = None
        self._started = 0.0

    def __call__(self, title: str) -> None:
        self.close()
        print(f"\n== {title} ==", flush=True)
        self._title, self._started = title, time.perf_counter()

    def close(self) -> None:
        if self._title is not None:
            self.seconds[self._title] = round(time.perf_counter() - self._started, 2)
            self._title = None


def stream_world(settings: Settings, world_dir: Path) -> dict:
    """History through the real path: producer -> Kafka -> consumer -> Feast/Redis + log."""
    from homefeed.stream.replay import replay_world

    done = replay_world(settings, world_dir)
    return {**done["consumer"], "seconds": done["seconds"]}


def print_user(settings: Settings, user_id: int) -> None:
    from homefeed import features as F
    from homefeed.feature_store import open_store

    store = open_store(settings.feature_repo)
    row = store.get_online_features(
        features=F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES),
        entity_rows=[{F.USER_ID: user_id}]).to_dict()
    print(f"user {user_id}: {row[F.SEQ_LENGTH][0]} actions online, newest first")
    for pin, action, t in list(zip(row[F.SEQ_PIN_IDS][0] or [], row[F.SEQ_ACTION_TYPES][0] or [],
                                   row[F.SEQ_ACTION_TIMES][0] or []))[:5]:
        print(f"  pin {pin:>6}  action {action}  at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t / 1000))}")


def cli(*argv: str, hint: str = "") -> None:
    """Run one stage exactly as a user would type it (`hint`: appended to the error)."""
    from homefeed.cli import main

    print("$ homefeed " + " ".join(argv), flush=True)
    code = main(list(argv))
    if code != 0:
        raise UserError(f"`homefeed {' '.join(argv)}` exited {code}{hint}")


def start_background(settings: Settings, name: str, argv: list[str], env: dict | None = None) -> int:
    """A long-running process of the demo (consumer, service), with pid and log in the run dir."""
    log_path = settings.run_dir / f"{name}.log"
    proc = subprocess.Popen(argv, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **(env or {})}, cwd=SOURCE_ROOT)
    write_pid_file(settings.run_dir / f"{name}.pid", proc.pid, argv)
    return proc.pid


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process (the demo started it) counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def stop_background(settings: Settings, timeout_s: float = 20.0) -> None:
    """SIGTERM the demo's service and consumer (their process groups), wait for them to exit,
    then SIGKILL whatever is left."""
    pids = []
    for name in DEMO_PROCESSES:
        pid_file = settings.run_dir / f"{name}.pid"
        pid = read_pid_file(pid_file)  # None for a stale file whose pid another program reused
        if pid is not None:
            try:
                # start_new_session: the pid leads its group (bentoml serve forks workers)
                os.killpg(pid, signal.SIGTERM)
                pids.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        pid_file.unlink(missing_ok=True)
    (settings.run_dir / "consumer.ready").unlink(missing_ok=True)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if process_alive(p)]
        time.sleep(0.1)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def reset_if_other_world(settings: Settings, demo_dir: Path) -> None:
    """One world per local stack: user and pin ids of two worlds collide, so when the local
    Redis, broker and offline log hold another demo's world (another size or dataset), they are
    stopped and wiped before this one starts. External services (REDIS_URL, ...) are never
    wiped: the demo refuses instead."""
    from homefeed.stack import LocalStack

    marker = settings.home / "demo" / "loaded-world.txt"
    loaded = marker.read_text().strip() if marker.exists() else None
    has_state = settings.offline_dir.exists() or (settings.run_dir / "redis").exists()
    if loaded == str(demo_dir) or (loaded is None and not has_state):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{demo_dir}\n")
        return
    if settings.redis_external or settings.kafka_external:
        raise UserError(f"the configured Redis/Kafka hold another world ({loaded or 'unknown'}); the demo "
                        "does not wipe external services: point it at empty ones or unset REDIS_URL/"
                        "KAFKA_BOOTSTRAP_SERVERS")
    print(f"the local stack holds another world ({loaded or 'unknown'}): stopping and wiping it "
          f"(Redis data, topics, offline log) for {demo_dir.name}")
    LocalStack(settings).down()
    shutil.rmtree(settings.offline_dir, ignore_errors=True)
    shutil.rmtree(settings.run_dir / "redis", ignore_errors=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{demo_dir}\n")


def wait_ready(url: str, timeout_s: float = 180, what: str = "the ranking service") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready(url):
            return
        time.sleep(0.5)
    raise UserError(f"{what} at {url} did not become ready; see its log in the run dir")


def wait_consumer_ready(ready_file: Path, consumer_pid: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        if not process_alive(consumer_pid):
            raise UserError("the live consumer exited; see consumer.log in the run dir")
        if time.monotonic() > deadline:
            raise UserError(f"the live consumer was not assigned its partitions within {timeout_s:.0f} s")
        time.sleep(0.05)


def live_actions(settings: Settings, world, url: str, metrics_url: str, events_url: str) -> dict:
    """Several repins on one topic and a hide on another, through the events API into Kafka; /rank
    before and after.

    The clock starts when the batch of actions is posted to the events API (which answers 202 once
    the broker acknowledged them; its producer is long-lived and connected beforehand), and stops at the first
    /rank answer whose top k differs. /rank is polled back to back, so detection adds at most one
    call (tens of ms). The consumer's freshness histogram, scraped before and after, says how much
    of that was the pipeline (broker arrival -> visible in Redis)."""
    from homefeed.demo_report import BATCH_METRIC, FRESHNESS_METRIC, parse_histograms
    from homefeed.events import ActionEvent, ActionType

    pins, events = world.pins, world.events
    user = int(events["user_id"].value_counts().idxmax())
    rng = np.random.default_rng(1)
    topics = pins["topic_id"].value_counts().index[:2]
    liked, disliked = int(topics[0]), int(topics[1])
    by_topic = {t: pins.loc[pins["topic_id"] == t, "pin_id"].to_numpy() for t in (liked, disliked)}
    candidates = sorted(set(rng.choice(pins["pin_id"].to_numpy(), min(150, len(pins)), replace=False).tolist())
                        | set(by_topic[liked][:10].tolist()) | set(by_topic[disliked][:10].tolist()))
    topic_of = dict(zip(pins["pin_id"], pins["topic_id"]))

    # Fresh pins each run (the candidates' first 10 of each topic stay out): repeating the same
    # repins on a rerun adds little to a sequence that already holds them.
    pick = np.random.default_rng()
    pool = {t: v[10:] if len(v) > 10 else v for t, v in by_topic.items()}
    repins = pick.choice(pool[liked], min(6, len(pool[liked])), replace=False)
    hidden = int(pick.choice(pool[disliked]))

    def top(result):
        return [(i["pin_id"], int(topic_of[i["pin_id"]])) for i in result["items"]]

    def consumer_histograms():
        """(freshness, batch seconds) from the live consumer's /metrics, or (None, None)."""
        try:
            text = get_text(metrics_url)
        except OSError:
            return None, None
        return (parse_histograms(text, FRESHNESS_METRIC).get(""),
                parse_histograms(text, BATCH_METRIC).get(""))

    body = {"user_id": user, "candidates": candidates, "k": 10}
    for _ in range(3):  # warm the service's pin cache for these candidates
        before = post_json(url + "/rank", body)
    fresh_before, batch_before = consumer_histograms()

    now = int(time.time() * 1000)
    live = [ActionEvent(f"live-{now}-{i}", user, int(p), ActionType.REPIN, now + i) for i, p in enumerate(repins)]
    live.append(ActionEvent(f"live-{now}-hide", user, hidden, ActionType.HIDE, now + 10))
    sent = time.perf_counter()
    accepted = post_json(events_url + "/v1/actions", [ev.to_dict() for ev in live])  # 202: acknowledged
    send_s = time.perf_counter() - sent
    if accepted["accepted"] != len(live):
        raise UserError(f"the events API refused live actions: {accepted['results']}")
    after, took, calls = before, None, []
    while time.perf_counter() - sent < LIVE_TIMEOUT_S:
        t0 = time.perf_counter()
        after = post_json(url + "/rank", body)
        calls.append(time.perf_counter() - t0)
        if top(after) != top(before):
            took = time.perf_counter() - sent
            break

    fresh = batches = None
    deadline = time.monotonic() + 5
    while fresh_before is not None and time.monotonic() < deadline:  # observed after the write
        h, b = consumer_histograms()
        fresh = h.minus(fresh_before) if h is not None else None
        batches = b.minus(batch_before) if b is not None else None
        if fresh is not None and fresh.count >= len(live):
            break
        time.sleep(0.1)
    out = {"user": user, "liked_topic": liked, "disliked_topic": disliked, "actions": len(live),
           "before": top(before), "after": top(after), "changed": took is not None,
           "seconds_to_change": None if took is None else round(took, 3), "send_s": round(send_s, 4),
           "polls": len(calls), "rank_call_ms": round(1000 * float(np.median(calls)), 1) if calls else None}
    if fresh is not None and fresh.count:
        out["fresh_mean_s"] = round(fresh.mean, 4)
        out["fresh_max_s"] = next(b for b, c in zip(fresh.bounds, fresh.cumulative) if c >= fresh.count)
    if batches is not None and batches.count:
        out["batch_mean_s"] = round(batches.mean, 4)  # GX + log + Feast write + state, per batch
        out["batches"] = int(batches.count)
    return out


def live_traffic(settings: Settings, world, metrics_url: str, n: int, rate: float,
                 timeout_s: float = 30.0) -> dict:
    """n live actions of random users at `rate` per second, for the freshness histogram; waits
    until the consumer has applied them (its events-applied counter)."""
    from homefeed.demo_report import APPLIED_METRIC, counter_total
    from homefeed.events import ActionEvent, ActionType
    from homefeed.stream.clients import make_producer

    rng = np.random.default_rng(2)
    users = world.events["user_id"].unique()
    pin_ids = world.pins["pin_id"].to_numpy()
    kinds = [ActionType.REPIN, ActionType.CLICK, ActionType.CLICK, ActionType.HIDE]
    applied_before = counter_total(get_text(metrics_url), APPLIED_METRIC)
    producer = make_producer(settings)
    producer.partitions_for(settings.actions_topic)
    started = time.perf_counter()
    stamp = int(time.time() * 1000)
    for i in range(n):
        due = started + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        user = int(rng.choice(users))
        ev = ActionEvent(f"fresh-{stamp}-{i}", user, int(rng.choice(pin_ids)),
                         kinds[int(rng.integers(len(kinds)))], int(time.time() * 1000))
        producer.send(settings.actions_topic, key=str(user).encode(), value=ev.to_json())
    producer.flush()
    producer.close()
    sent_s = time.perf_counter() - started
    deadline = time.monotonic() + timeout_s
    applied = 0.0
    while time.monotonic() < deadline:
        applied = counter_total(get_text(metrics_url), APPLIED_METRIC) - applied_before
        if applied >= n:
            break
        time.sleep(0.2)
    return {"events": n, "rate": rate, "send_s": round(sent_s, 2), "applied": int(applied)}


def serving_burst(world, url: str, requests: int, n_candidates: int) -> dict:
    """Sequential /rank requests (one at a time: the service has one CPU worker) with the
    service's own per-stage timings; `homefeed bench serve`'s load test."""
    from homefeed.bench.serve_http import load_test

    users = world.events["user_id"].value_counts().index[:10].astype(int).tolist()
    max_pin = int(world.pins["pin_id"].max())
    return load_test(url, min(n_candidates, max_pin), requests, 1, users, max_pin, time_limit_s=120)


def build_report(settings: Settings, demo_dir: Path, runs_dir: Path, title: str, steps: Steps, live: dict,
                 metrics_url: str, service_url: str, burst: dict | None) -> Path:
    from homefeed.demo_report import FRESHNESS_METRIC, STAGE_METRIC, parse_histograms, write_report

    out = demo_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    consumer_text = get_text(metrics_url)
    service_text = get_text(service_url + "/metrics")
    (out / "consumer_metrics.txt").write_text(consumer_text)
    (out / "service_metrics.txt").write_text(service_text)
    curves = {p.parent.name: p for p in sorted(runs_dir.glob("*/curves.png"))}
    ctx = {
        "title": title,
        "settings": {"Redis": settings.effective_redis_url, "Kafka": settings.effective_kafka_bootstrap,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{os.cpu_count()} cores"},
        "steps": steps.seconds,
        "comparison_md": runs_dir / "comparison.md",
        "comparison_png": runs_dir / "comparison.png",
        "curves": curves,
        "live": live,
        "freshness": parse_histograms(consumer_text, FRESHNESS_METRIC).get(""),
        "burst": burst,
        "stage_hist": parse_histograms(service_text, STAGE_METRIC, by="stage"),
    }
    return write_report(out, ctx)


@dataclass(frozen=True)
class RealData:
    fetch_name: str  # `homefeed world fetch NAME`
    importer: str  # `homefeed world IMPORTER`
    title: str
    users_flag: str | None = None  # the importer's option that slices to the size's user count


# The real datasets the demo imports; their files come from --data DIR or `homefeed world fetch`.
REAL_DATA = {
    "movielens": RealData("movielens-100k", "import-movielens", "MovieLens-100K"),
    "kuairand": RealData("kuairand-pure", "import-kuairand", "KuaiRand-Pure", users_flag="--max-users"),
}
DATASETS = ("synthetic", *REAL_DATA)


def real_data_dir(settings: Settings, dataset: str, data: str | None) -> tuple[Path, bool]:
    """(the dataset's files, whether they must be fetched first): --data DIR (`make demo
    KUAIRAND=DIR`), else HOMEFEED_MOVIELENS_DIR for MovieLens, else what `homefeed world fetch`
    writes to HOMEFEED_HOME/data/NAME (fetched on the first run)."""
    from homefeed.world.fetch import MANIFEST

    real = REAL_DATA[dataset]
    explicit = data or (os.environ.get("HOMEFEED_MOVIELENS_DIR") if dataset == "movielens" else None)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_dir():
            raise UserError(f"--data {path}: not a directory (the unpacked {real.title} files, e.g. "
                            f"from `homefeed world fetch {real.fetch_name} --out DIR`)")
        return path, False
    path = settings.home / "data" / real.fetch_name
    return path, not (path / MANIFEST).is_file()


def import_args(real: RealData, preset: Size) -> list[str]:
    """The demo's own import options: KuaiRand is sliced to the size's user count (its most
    active users; the full Pure release has 27k users and 2.6M rows)."""
    return [real.users_flag, str(preset.users)] if real.users_flag else []


def run_demo(dataset: str, size: str, data: str | None = None, serve: bool = True) -> int:
    from homefeed.feature_store import apply_repo
    from homefeed.stack import LocalStack, free_port
    from homefeed.world import generate_world, load_world
    from homefeed.world.generate import WorldParams

    settings = load_settings()
    preset = SIZES[size]
    users, pins, days = preset.users, preset.pins, preset.days
    demo_dir = settings.home / "demo" / f"{dataset}-{size}"
    world_dir, dataset_dir, runs_dir = demo_dir / "world", demo_dir / "dataset", demo_dir / "runs"
    real = REAL_DATA.get(dataset)
    if real is not None:  # checked before anything starts
        src, missing = real_data_dir(settings, dataset, data)
    elif data:
        raise UserError(f"--data is for a real dataset ({', '.join(REAL_DATA)}), not {dataset}")
    stop_background(settings)
    reset_if_other_world(settings, demo_dir)
    step = Steps()
    demo_started = time.perf_counter()

    step("1. local stack: redis-server + Kafka-protocol broker")
    for status in LocalStack(settings).up():
        print(status.line())

    step("2. feast apply")
    print("feature views:", ", ".join(apply_repo(settings.feature_repo)))

    if not (world_dir / "world.json").exists():
        if real is not None:
            step(f"3. {real.title} as a world" + (f" (first fetched into {src})" if missing else ""))
            if missing:
                cli("world", "fetch", real.fetch_name, "--out", str(src),
                    hint=f"; without internet access give the demo the unpacked files: make demo "
                    f"DATASET={dataset} DATA=DIR (homefeed demo --data DIR), or set "
                    "HOMEFEED_DATA_MIRROR")
            cli("world", real.importer, "--src", str(src), "--out", str(world_dir),
                *import_args(real, preset))
        else:
            step(f"3. synthetic world: {users} users, {pins} pins, {days} days")
            generate_world(WorldParams(users=users, pins=pins, days=days, seed=0), world_dir)
    world = load_world(world_dir)
    print(f"{len(world.events)} action events, {len(world.requests)} impressions -> {world_dir}")

    step("4. stream the history: Kafka -> validated sequences -> Feast/Redis + offline log")
    print(json.dumps(stream_world(settings, world_dir)))
    print_user(settings, int(world.events["user_id"].value_counts().idxmax()))

    step("5. validate what the pipeline wrote (Great Expectations checkpoints)")
    cli("validate", "run", "sequence_features", "--data", str(settings.offline_dir / "user_action_sequence"))

    step("6. daily profiles, then a point-in-time training set from Feast")
    cli("dataset", "profiles")
    cli("dataset", "compact")
    test_days = str(int(world.meta.get("eval_days", 0)) or max(1, days // 4))
    cli("dataset", "build", "--world", str(world_dir), "--out", str(dataset_dir), "--test-days", test_days)

    step("7. train TransAct and the baselines briefly, then compare them")
    if dataset == "movielens":
        # MovieLens users rate in bursts: ~3 in 4 requests have no action in the 28 days before,
        # so the 28-day profile is null far more often than the training_set suite's bound (made
        # for a live feed). The checkpoint still runs and its failed result is kept with the model.
        print("MovieLens: training despite the training_set profile null-rate check (force = true "
              "in training/movielens.toml); see docs/movielens.md")
    cli("train", "--dataset", str(dataset_dir), "--out", str(runs_dir), *demo_train_args(dataset, preset))
    cli("evaluate", "--runs", str(runs_dir), "--compare", "--n-boot", str(preset.n_boot))

    if not serve:  # --no-serve: steps 1-7 only (CI's KuaiRand slice)
        step.close()
        print(f"\n== done in {time.perf_counter() - demo_started:.0f} s (steps 1-7; --no-serve) ==\n"
              f"step seconds: {json.dumps(step.seconds)}\n"
              f"comparison report: {runs_dir}/comparison.md (+ .csv, .png, .json)\n"
              f"stop the local stack with: make down")
        return 0

    step("8. export TransAct v1.1 to the BentoML model store and serve it")
    cli("export", str(runs_dir / "transact_v11"))
    port = free_port()
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host  # where to connect
    url = f"http://{local}:{port}"
    start_background(settings, "service", [sys.executable, "-m", "bentoml", "serve",
                                           "bento.service:Ranking", "--port", str(port),
                                           "--host", settings.host])
    ready_file = settings.run_dir / "consumer.ready"
    ready_file.unlink(missing_ok=True)
    metrics_port = free_port()
    metrics_url = f"http://{local}:{metrics_port}/metrics"
    consumer_pid = start_background(settings, "consumer", [
        sys.executable, "-m", "homefeed.cli", "stream", "consume", "--metrics-port", str(metrics_port),
        "--ready-file", str(ready_file)])
    events_port = free_port()
    events_url = f"http://{local}:{events_port}"
    start_background(settings, "events", [sys.executable, "-m", "homefeed.cli", "events", "serve", "--port",
                                          str(events_port), "--host", settings.host, "--world", str(world_dir),
                                          "--ranking-url", url])
    wait_ready(url)
    wait_consumer_ready(ready_file, consumer_pid)
    wait_ready(events_url, what="the events API")  # /readyz: its producer is connected
    print(f"ranking service ready at {url}; consumer metrics at {metrics_url}")
    print(f"live feed page: {events_url}/   (events API: POST {events_url}/v1/actions)")

    step("9. live: repins on one topic and a hide on another, through the events API; /rank before and after")
    live = live_actions(settings, world, url, metrics_url, events_url)
    print(f"user {live['user']}: top 10 (pin, topic) before: {live['before']}")
    print(f"user {live['user']}: top 10 (pin, topic) after:  {live['after']}")
    if live["seconds_to_change"] is None:
        print(f"the ranking did not change within {LIVE_TIMEOUT_S:.0f} s")
    else:
        fresh = (f"; broker -> Redis took {1000 * live['fresh_mean_s']:.0f} ms on average in the consumer"
                 if live.get("fresh_mean_s") is not None else "")
        print(f"the ranking responded {live['seconds_to_change']:.2f} s after the actions were sent "
              f"(liked topic {live['liked_topic']}, hidden topic {live['disliked_topic']}{fresh}; "
              f"{live['polls']} /rank polls of ~{live['rank_call_ms']} ms)")

    step(f"10. measure: {preset.fresh_events} live actions at {preset.fresh_rate:.0f}/s (freshness), "
         f"{preset.burst_requests} /rank requests at {preset.burst_candidates} candidates (latency by stage)")
    traffic = live_traffic(settings, world, metrics_url, preset.fresh_events, preset.fresh_rate)
    print(json.dumps(traffic))
    burst = serving_burst(world, url, preset.burst_requests, preset.burst_candidates)
    print(json.dumps({k: burst[k] for k in ("requests", "errors", "p50_ms", "p99_ms", "stages_ms")}))
    step.close()

    report = build_report(settings, demo_dir, runs_dir, f"homefeed demo: {dataset}, size {size}", step, live,
                          metrics_url, url, burst)
    print(f"\n== done in {time.perf_counter() - demo_started:.0f} s ==")
    print(f"report: {report}\n"
          f"live feed page: {events_url}/   (click save/click/hide and watch the ranking move)\n"
          f"events API: POST {events_url}/v1/actions   (metrics at {events_url}/metrics)\n"
          f"ranking service: {url}/rank   (OpenAPI at {url}/, metrics at {url}/metrics)\n"
          f"comparison report: {runs_dir}/comparison.md (+ .csv, .png, .json)\n"
          f"Redis: {settings.effective_redis_url}   Kafka: {settings.effective_kafka_bootstrap}\n"
          f"offline log: {settings.offline_dir}\n"
          f"stop everything with: make down   (the service and consumer alone: homefeed demo --stop)")
    return 0


def demo_train_args(dataset: str, preset: Size) -> list[str]:
    """`homefeed train` flags of the demo: the world's recipe (training/DATASET.toml), with the
    demo size's short budget on top (flags win over the recipe)."""
    return ["--config", str(SOURCE_ROOT / "training" / f"{dataset}.toml"), "--models", preset.models,
            "--epochs", str(preset.epochs), "--max-steps", str(preset.max_steps), "--neg-keep", "0.2",
            "--threads", "2"]


def cmd_demo(args) -> int:
    if args.stop:
        stop_background(load_settings())
        return 0
    return run_demo(args.dataset, args.size, args.data, serve=not args.no_serve)


def register(parser) -> None:
    parser.add_argument("--dataset", default="synthetic", choices=list(DATASETS),
                        help="synthetic world (default), MovieLens-100K or KuaiRand-Pure (sliced to "
                        "the size's user count)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="the real dataset's unpacked files (default: HOMEFEED_MOVIELENS_DIR for "
                        "MovieLens, else `homefeed world fetch` into HOMEFEED_HOME/data on the first run)")
    parser.add_argument("--size", default="tiny", choices=list(SIZES),
                        help="smoke (CI), tiny (default), small, default")
    parser.add_argument("--no-serve", action="store_true",
                        help="stop after the comparison (steps 1-7): no service, live step or report")
    parser.add_argument("--stop", action="store_true", help="stop the demo's service and consumer")
    parser.set_defaults(func=cmd_demo)
