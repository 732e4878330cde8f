"""Replay a world through the real stream path: producer -> Kafka -> consumer -> Redis + log.

1. Send the world's pins (record time = their version) and action events (record time = their
   arrival time, so late events reach the consumer late) to the topics of `settings`.
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
                 idle_exit_s: float = 3.0) -> dict:
    """Steps 1-2; returns the counts sent, the consumer's stats and the consume seconds."""
    from homefeed.stream.consumer import build_consumer
    from homefeed.stream.producer import Producer, event_records, load_world_tables, pin_records

    events, pins, start_ms = load_world_tables(world_dir)
    producer = Producer(settings)
    producer.send_all(settings.pins_topic, pin_records(pins, start_ms), total=len(pins), desc="pins")
    producer.send_all(settings.actions_topic, event_records(events, use_arrival_time=True),
                      total=len(events), desc="events")
    producer.close()
    started = time.perf_counter()
    stats = build_consumer(settings, validate=validate).run(idle_exit_s=idle_exit_s)
    return {"events": int(len(events)), "pins": int(len(pins)), "consumer": stats.to_dict(),
            "seconds": round(time.perf_counter() - started, 1)}
