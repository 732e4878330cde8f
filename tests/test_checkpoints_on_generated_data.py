"""The GX checkpoints on generated data: a tiny world through the real pipeline, then
`homefeed validate run` on what each stage wrote (what CI checks on every run)."""

import os
import subprocess
import sys
import uuid

import pytest

from homefeed import features as F
from homefeed.settings import load_settings
from homefeed.stack import ensure_topics
from homefeed.stream.consumer import build_consumer
from homefeed.stream.producer import Producer, event_records, pin_records
from homefeed.world import generate_world, load_world
from homefeed.world.generate import WorldParams

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def validate(checkpoint: str, path, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "homefeed.cli", "validate", "run", checkpoint,
                           "--data", str(path)], env=env, capture_output=True, text=True, timeout=300)


def test_checkpoints_pass_on_world_and_pipeline_output(feature_repo, stack, tmp_path):
    world_dir = tmp_path / "world"
    generate_world(WorldParams(users=60, pins=300, days=3, seed=5), world_dir, progress=False)
    world = load_world(world_dir)
    tag = uuid.uuid4().hex[:8]
    settings = load_settings().replace(
        home=tmp_path / "home", actions_topic=f"ck-actions-{tag}", pins_topic=f"ck-pins-{tag}",
        dead_letter_topic=f"ck-dlq-{tag}", impressions_topic=f"ck-impressions-{tag}",
        consumer_group=f"ck-{tag}")
    ensure_topics(settings)
    producer = Producer(settings)
    producer.send_all(settings.pins_topic, pin_records(world.pins, world.start_ms), total=len(world.pins))
    events = world.events.head(3000)
    producer.send_all(settings.actions_topic, event_records(events, use_arrival_time=True), total=len(events))
    producer.close()
    stats = build_consumer(settings).run(idle_exit_s=3)
    assert stats.applied == len(events) and stats.dead_lettered == 0

    env = dict(os.environ)
    for checkpoint, path in [
        ("action_events", world_dir / "events.parquet"),
        ("action_events", settings.offline_dir / "action_events"),
        ("sequence_features", settings.offline_dir / F.USER_ACTION_SEQUENCE),
        ("pin_features", settings.offline_dir / F.PIN_FEATURES),
    ]:
        result = validate(checkpoint, path, env)
        assert result.returncode == 0, f"{checkpoint} on {path}:\n{result.stdout}\n{result.stderr}"
