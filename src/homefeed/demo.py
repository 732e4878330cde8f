"""`homefeed demo` (what `make demo` runs): the main job end to end on embedded defaults.

Each step is a plain call into the same code the stage commands use, printed as it goes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from homefeed.errors import UserError
from homefeed.settings import Settings, load_settings

log = logging.getLogger(__name__)

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


def run_demo(dataset: str, size: str) -> int:
    from homefeed.feature_store import apply_repo
    from homefeed.stack import LocalStack
    from homefeed.world import generate_world, load_world
    from homefeed.world.generate import WorldParams

    settings = load_settings()
    if dataset != "synthetic":
        raise UserError(f"dataset {dataset!r} is not available yet; use DATASET=synthetic")
    users, pins, days = SIZES[size]
    world_dir = settings.home / "demo" / f"world-{size}"

    step("1. local stack: redis-server + Kafka-protocol broker")
    for status in LocalStack(settings).up():
        print(status.line())

    step("2. feast apply")
    print("feature views:", ", ".join(apply_repo(settings.feature_repo)))

    step(f"3. synthetic world: {users} users, {pins} pins, {days} days")
    if not (world_dir / "world.json").exists():
        generate_world(WorldParams(users=users, pins=pins, days=days, seed=0), world_dir)
    world = load_world(world_dir)
    print(f"{len(world.events)} action events, {len(world.requests)} impressions -> {world_dir}")

    step("4. stream the history: Kafka -> validated sequences -> Feast/Redis + offline log")
    print(json.dumps(stream_world(settings, world_dir)))

    step("5. one user's online features")
    busiest = int(world.events["user_id"].value_counts().idxmax())
    print_user(settings, busiest)

    step("done")
    print(f"Redis:  {settings.effective_redis_url}\nKafka:  {settings.effective_kafka_bootstrap}\n"
          f"offline log: {settings.offline_dir}\nstop the stack with: make down")
    return 0


def cmd_demo(args) -> int:
    return run_demo(args.dataset, args.size)


def register(parser) -> None:
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "movielens"])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.set_defaults(func=cmd_demo)
