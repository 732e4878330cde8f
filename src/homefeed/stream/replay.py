"""Replay a world through the real stream path: producer -> Kafka -> consumer -> Redis + log.

1. Send the world's pins (record time = their version), action events (record time = their
   arrival time, so late events reach the consumer late) and impressions (when the world has
   them: shown 1 ms after their request's serve time) to the topics of `settings`.
2. Run the consumer until it has been idle a few seconds: sequences go to Feast/Redis and the
   partitioned offline log, pins too.

Used by `homefeed demo` and `homefeed bench dataset`; `homefeed stream produce` and
`homefeed stream consume` are the same two steps as separate commands.
"""

from __future__ import annotations

import time
from pathlib import Path

from homefeed.settings import Settings


def replay_world(settings: Settings, world_dir: Path, *, validate: bool = True,
                 idle_exit_s: float = 3.0, impressions: bool = True) -> dict:
    """Steps 1-2; returns the counts sent, the consumer's stats and the consume seconds."""
    from homefeed.stream.consumer import build_consumer
    from homefeed.stream.producer import Producer, event_records, impression_records, pin_records
    from homefeed.world import load_world

    world = load_world(world_dir)
    events, pins = world.events, world.pins
    shown = world.impressions() if impressions else world.impressions().iloc[:0]
    producer = Producer(settings)
    producer.send_all(settings.pins_topic, pin_records(pins, world.start_ms), total=len(pins), desc="pins")
    producer.send_all(settings.actions_topic, event_records(events, use_arrival_time=True),
                      total=len(events), desc="events")
    if len(shown):
        producer.send_all(settings.impressions_topic, impression_records(shown, use_arrival_time=True),
                          total=len(shown), desc="impressions")
    producer.close()
    started = time.perf_counter()
    stats = build_consumer(settings, validate=validate).run(idle_exit_s=idle_exit_s)
    return {"events": int(len(events)), "impressions": int(len(shown)), "pins": int(len(pins)),
            "consumer": stats.to_dict(), "seconds": round(time.perf_counter() - started, 1)}
