"""`homefeed demo` (what `make demo` runs): the main job end to end on embedded defaults.

Each step is a plain call into the same code the stage commands use, printed as it goes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from homefeed.errors import UserError
from homefeed.settings import SOURCE_ROOT, Settings, load_settings

log = logging.getLogger(__name__)

DEMO_PROCESSES = ("service", "consumer")
SIZES = {  # users, pins, days
    "tiny": (200, 600, 4),
    "small": (1000, 3000, 8),
    "default": (2000, 5000, 14),
}


def step(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def stream_world(settings: Settings, world_dir: Path) -> dict:
    """History through the real path: producer -> Kafka -> consumer -> Feast/Redis + log."""
    from homefeed.stream.consumer import build_consumer
    from homefeed.stream.producer import Producer, event_records, load_world_tables, pin_records

    events, pins, start_ms = load_world_tables(world_dir)
    producer = Producer(settings)
    producer.send_all(settings.pins_topic, pin_records(pins, start_ms), total=len(pins), desc="pins")
    producer.send_all(settings.actions_topic, event_records(events, use_arrival_time=True),
                      total=len(events), desc="events")
    producer.close()
    started = time.perf_counter()
    stats = build_consumer(settings).run(idle_exit_s=3.0)
    out = stats.to_dict()
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


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


def cli(*argv: str) -> None:
    """Run one stage exactly as a user would type it."""
    from homefeed.cli import main

    print("$ homefeed " + " ".join(argv), flush=True)
    code = main(list(argv))
    if code != 0:
        raise UserError(f"`homefeed {' '.join(argv)}` exited {code}")


def start_background(settings: Settings, name: str, argv: list[str], env: dict | None = None) -> int:
    """A long-running process of the demo (consumer, service), with pid and log in the run dir."""
    log_path = settings.run_dir / f"{name}.log"
    proc = subprocess.Popen(argv, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **(env or {})}, cwd=SOURCE_ROOT)
    (settings.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def stop_background(settings: Settings) -> None:
    for name in DEMO_PROCESSES:
        pid_file = settings.run_dir / f"{name}.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
            pid_file.unlink()


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def wait_ready(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UserError(f"the ranking service at {url} did not become ready; see its log in the run dir")


def live_actions(settings: Settings, world, url: str) -> dict:
    """Several repins on one topic and a hide on another, through Kafka; /rank before and after."""
    from homefeed.events import ActionEvent, ActionType
    from homefeed.stream.consumer import make_producer

    pins, events = world.pins, world.events
    user = int(events["user_id"].value_counts().idxmax())
    rng = np.random.default_rng(1)
    topics = pins["topic_id"].value_counts().index[:2]
    liked, disliked = int(topics[0]), int(topics[1])
    by_topic = {t: pins.loc[pins["topic_id"] == t, "pin_id"].to_numpy() for t in (liked, disliked)}
    candidates = sorted(set(rng.choice(pins["pin_id"].to_numpy(), 150, replace=False).tolist())
                        | set(by_topic[liked][:10].tolist()) | set(by_topic[disliked][:10].tolist()))
    topic_of = dict(zip(pins["pin_id"], pins["topic_id"]))

    def top(result):
        return [(i["pin_id"], int(topic_of[i["pin_id"]])) for i in result["items"]]

    before = post_json(url + "/rank", {"user_id": user, "candidates": candidates, "k": 10})
    now = int(time.time() * 1000)
    live = [ActionEvent(f"live-{now}-{i}", user, int(p), ActionType.REPIN, now + i)
            for i, p in enumerate(by_topic[liked][10:16])]
    live.append(ActionEvent(f"live-{now}-hide", user, int(by_topic[disliked][10]), ActionType.HIDE, now + 10))
    producer = make_producer(settings)
    sent = time.perf_counter()
    for ev in live:
        producer.send(settings.actions_topic, key=str(user).encode(), value=ev.to_json())
    producer.flush()
    after, took = before, None
    while time.perf_counter() - sent < 30:
        after = post_json(url + "/rank", {"user_id": user, "candidates": candidates, "k": 10})
        if top(after) != top(before):
            took = time.perf_counter() - sent
            break
        time.sleep(0.05)
    producer.close()
    return {"user": user, "liked_topic": liked, "disliked_topic": disliked, "before": top(before),
            "after": top(after), "seconds_to_change": None if took is None else round(took, 2)}


def run_demo(dataset: str, size: str) -> int:
    from homefeed.feature_store import apply_repo
    from homefeed.stack import LocalStack, free_port
    from homefeed.world import generate_world, load_world
    from homefeed.world.generate import WorldParams

    settings = load_settings()
    users, pins, days = SIZES[size]
    demo_dir = settings.home / "demo" / f"{dataset}-{size}"
    world_dir, dataset_dir, runs_dir = demo_dir / "world", demo_dir / "dataset", demo_dir / "runs"
    stop_background(settings)

    step("1. local stack: redis-server + Kafka-protocol broker")
    for status in LocalStack(settings).up():
        print(status.line())

    step("2. feast apply")
    print("feature views:", ", ".join(apply_repo(settings.feature_repo)))

    if not (world_dir / "world.json").exists():
        if dataset == "movielens":
            step("3. MovieLens-100K as a world")
            cli("world", "import-movielens", "--src", str(movielens_dir()), "--out", str(world_dir))
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
    cli("train", "--dataset", str(dataset_dir), "--models", "all", "--out", str(runs_dir),
        "--epochs", "2", "--neg-keep", "0.2", "--threads", "2")
    cli("evaluate", "--runs", str(runs_dir), "--compare")

    step("8. export TransAct v1.1 to the BentoML model store and serve it")
    cli("export", str(runs_dir / "transact_v11"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start_background(settings, "service", [sys.executable, "-m", "bentoml", "serve",
                                           "bento.service:Ranking", "--port", str(port)])
    ready_file = settings.run_dir / "consumer.ready"
    ready_file.unlink(missing_ok=True)
    metrics_port = free_port()
    start_background(settings, "consumer", [sys.executable, "-m", "homefeed.cli", "stream", "consume",
                                            "--metrics-port", str(metrics_port), "--ready-file", str(ready_file)])
    wait_ready(url)
    deadline = time.monotonic() + 120
    while not ready_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"ranking service ready at {url}; consumer metrics at http://127.0.0.1:{metrics_port}/metrics")

    step("9. live: repins on one topic and a hide on another, through Kafka; /rank before and after")
    live = live_actions(settings, world, url)
    print(f"user {live['user']}: top 10 (pin, topic) before: {live['before']}")
    print(f"user {live['user']}: top 10 (pin, topic) after:  {live['after']}")
    if live["seconds_to_change"] is None:
        print("the ranking did not change within 30 s")
    else:
        print(f"the ranking responded {live['seconds_to_change']} s after the actions were sent "
              f"(liked topic {live['liked_topic']}, hidden topic {live['disliked_topic']})")

    step("done")
    print(f"ranking service: {url}/rank   (OpenAPI at {url}/, metrics at {url}/metrics)\n"
          f"comparison report: {runs_dir}/comparison.md (+ .csv, .png, .json)\n"
          f"Redis: {settings.effective_redis_url}   Kafka: {settings.effective_kafka_bootstrap}\n"
          f"offline log: {settings.offline_dir}\n"
          f"stop everything with: make down")
    return 0


def movielens_dir() -> Path:
    path = Path(os.environ.get("HOMEFEED_MOVIELENS_DIR", SOURCE_ROOT.parent / "shared" / "data" / "ml-100k"))
    if not path.is_dir():
        raise UserError(f"MovieLens files not found at {path}; set HOMEFEED_MOVIELENS_DIR")
    return path


def cmd_demo(args) -> int:
    if args.stop:
        stop_background(load_settings())
        return 0
    return run_demo(args.dataset, args.size)


def register(parser) -> None:
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "movielens"])
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--stop", action="store_true", help="stop the demo's service and consumer")
    parser.set_defaults(func=cmd_demo)
