"""Prometheus metrics of the stream consumer (served by `homefeed stream consume --metrics-port`)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("homefeed_stream_events_in_total", "Records polled from Kafka", ["topic"])
EVENTS_APPLIED = Counter(
    "homefeed_stream_events_applied_total",
    "Valid action events made durable (offline log) and merged into sequences")
ACTIONS = Counter(
    "homefeed_stream_actions_total", "Valid action events by action type (watch the action mix)",
    ["action_type"])
DUPLICATES = Counter("homefeed_stream_duplicates_total", "Events already applied (redelivery, replay)")
OUTSIDE_WINDOW = Counter(
    "homefeed_stream_outside_window_total",
    "Late events older than the oldest kept action: logged, not in the online sequence")
DEAD_LETTERED = Counter("homefeed_stream_dead_lettered_total", "Records sent to the dead-letter topic",
                        ["reason"])
SEQUENCES_PUSHED = Counter("homefeed_stream_sequences_pushed_total", "User sequences pushed to Feast")
PINS_PUSHED = Counter("homefeed_stream_pins_pushed_total", "Pin feature rows pushed to Feast")
IMPRESSIONS_LOGGED = Counter("homefeed_stream_impressions_logged_total",
                             "Valid impressions appended to the impression_events log")
BATCH_SECONDS = Histogram(
    "homefeed_stream_batch_seconds", "Time to make one micro-batch durable (log + Feast + state)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
BATCH_SIZE = Histogram("homefeed_stream_batch_records", "Records per micro-batch",
                       buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000))
FRESHNESS_SECONDS = Histogram(
    "homefeed_stream_freshness_seconds",
    "Event arrival at the broker (record timestamp) to visible in the online store",
    buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10, 30, 60))
BROKER_ERRORS = Counter("homefeed_stream_broker_errors_total",
                        "Kafka errors survived by retrying (poll, commit)", ["operation"])
FENCED = Counter("homefeed_stream_fenced_batches_total",
                 "Batches abandoned uncommitted: another consumer wrote their users' state (a rebalance)")
DEAD_LETTER_FAILURES = Counter(
    "homefeed_stream_dead_letter_failures_total",
    "Batches held back because their dead letters were not acknowledged in time (the dead-letter "
    "producer is rebuilt and the batch retried, uncommitted)")
REDIS_RESTORES = Counter(
    "homefeed_stream_redis_restores_total",
    "Times Redis was found to have lost its data (generation marker gone) and was restored from "
    "the offline log")
RETRIES = Counter("homefeed_stream_write_retries_total", "Batches retried after a Redis/storage error")
LAG = Gauge("homefeed_stream_consumer_lag", "Records behind the end of the log", ["topic", "partition"])
STAGE_SECONDS = Histogram(
    "homefeed_stream_stage_seconds",
    "Time per micro-batch in each stage: poll (the batch window), parse, validate (the GX suite), "
    "state_read, log_write (offline log, fsync'd), feast_write, state_write, dead_letter, commit",
    ["stage"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
