"""Kafka clients of the stream: what a consumer process subscribes to, and how its clients are made.

1. `consumed_topics`: actions and pins, plus impressions unless a process of their own reads
   them (`impressions_settings`: that process's group and batch window);
2. `make_consumer`: the group's consumer (manual commits, fast joins), logging each rebalance;
3. `make_producer`: a producer (acks=all) for dead letters and producing tools.
"""

from __future__ import annotations

import logging
import time

from homefeed.settings import Settings

log = logging.getLogger(__name__)


def consumed_topics(settings: Settings, impressions_only: bool = False) -> list[str]:
    """The topics a consumer process subscribes to: actions and pins, plus impressions unless
    their own process reads them (`impressions_consumer_group`); or, for that process, only
    impressions."""
    if impressions_only:
        return [settings.impressions_topic]
    own = [] if settings.impressions_consumer_group else [settings.impressions_topic]
    return [settings.actions_topic, settings.pins_topic, *own]


def impressions_settings(settings: Settings) -> Settings:
    """The settings of the impressions-only process: its own group (so its offsets and counters
    are its own) and its own batch window."""
    from homefeed.errors import UserError

    if not settings.impressions_consumer_group:
        raise UserError("impressions are read by the sequence builder's group; set "
                        "HOMEFEED_IMPRESSIONS_CONSUMER_GROUP to read them in a process of their own")
    return settings.replace(consumer_group=settings.impressions_consumer_group,
                            batch_max_ms=settings.impressions_batch_max_ms)


def make_consumer(settings: Settings, impressions_only: bool = False, listener=None, **overrides):
    """The group's KafkaConsumer, subscribed; `listener`: its rebalance listener (a
    `rebalance_log()`, which also says since when the consumer holds no partitions)."""
    from kafka import KafkaConsumer

    config = dict(
        **settings.kafka_client_config(),  # bootstrap servers and security (SASL/SSL)
        group_id=settings.consumer_group,
        client_id="homefeed-sequence-builder",
        enable_auto_commit=False,  # offsets are committed only after the batch is durable
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_events,
        # Fast group joins and failure detection (defaults take ~25 s to join here).
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=300_000,  # a Redis outage may hold one batch this long
        fetch_max_wait_ms=50,
    )
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    consumer.subscribe(consumed_topics(settings, impressions_only), listener=listener or rebalance_log())
    return consumer


def rebalance_log():
    from kafka import ConsumerRebalanceListener

    class RebalanceLog(ConsumerRebalanceListener):
        """Says when this consumer gains or loses partitions (a rebalance), one line each;
        `unassigned_since`: monotonic time since which it waits for an assignment (None once
        the group gave it one, an empty one included)."""

        def __init__(self) -> None:
            self.unassigned_since: float | None = time.monotonic()

        def on_partitions_revoked(self, revoked) -> None:
            self.unassigned_since = time.monotonic()
            if revoked:
                log.info("partitions revoked: %s", _partition_list(revoked))

        def on_partitions_assigned(self, assigned) -> None:
            self.unassigned_since = None
            log.info("partitions assigned: %s", _partition_list(assigned) or "none")

    return RebalanceLog()


def _partition_list(tps) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))


def make_producer(settings: Settings, **overrides):
    from kafka import KafkaProducer

    config = dict(settings.kafka_client_config(), acks="all", linger_ms=5)
    config.update(overrides)
    return KafkaProducer(**config)
