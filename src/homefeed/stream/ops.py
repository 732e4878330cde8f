"""Operations on the stream: status (offsets, lag, dead letters) and backfill (event recovery).

Backfill rebuilds online sequences (actions' and impressions') from the offline log, the
durable record of every valid event: after an outage, a lost Redis, or a bug fix in sequence building. It uses the same
`homefeed.sequence` rules as the consumer and pushes through Feast with a strictly newer
snapshot timestamp, so it is safe to run while the consumer is running: both converge.

1. `stream_status`: each topic's offsets and the groups' committed ones (lag), the dead-letter
   topic's size, and the groups' counters from the state store (homefeed.stream.state);
2. `backfill`: pins and engagement counters back from the log (only for every user), then each
   sequence view rebuilt from its events' table: logged (homefeed.stream.frames), pushed through
   the online writer, and its states written to the state store directly.
"""

from __future__ import annotations

import logging

import pandas as pd

from homefeed import features as F
from homefeed import offline_log
from homefeed.errors import UserError
from homefeed.events import ActionType
from homefeed.sequence import IMPRESSION_TYPE, build, next_snapshot_ms
from homefeed.settings import Settings
from homefeed.stream.frames import SNAPSHOT_GRANULARITY_MS, pin_row, sequence_row, sequence_table
from homefeed.stream.state import COUNTER_FIELDS, StateStore

log = logging.getLogger(__name__)


def committed_offsets(settings: Settings, admin=None) -> dict:
    """{TopicPartition: next offset to consume} committed by the consumer group."""
    from kafka import KafkaAdminClient

    own = admin is None
    admin = admin or KafkaAdminClient(**settings.kafka_client_config(), client_id="homefeed-status")
    try:
        offsets = admin.list_group_offsets(settings.consumer_group).get(settings.consumer_group, {})
        return {tp: o.offset for tp, o in offsets.items() if o.offset is not None and o.offset >= 0}
    finally:
        if own:
            admin.close()


def high_watermarks(consumer, tps: list) -> dict:
    """End offset of each partition, exact on every Kafka-protocol broker.

    Tansu 0.6 answers ListOffsets(latest) with the last record batch's base offset + 1, which
    undercounts when the last batch held several records. The high watermark in a fetch
    response is right everywhere, so read one record at the reported end and take the max.
    """
    import time

    if not tps:
        return {}
    reported = consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(0, reported[tp] - 1))
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in tps):
        consumer.poll(timeout_ms=100, max_records=1)
    return {tp: max(reported[tp], consumer.highwater(tp) or 0) for tp in tps}


def stream_status(settings: Settings) -> dict:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from homefeed.stream.clients import impressions_settings

    admin = KafkaAdminClient(**settings.kafka_client_config(), client_id="homefeed-status")
    consumer = KafkaConsumer(**settings.kafka_client_config(), client_id="homefeed-status",
                             enable_auto_commit=False)  # no group: reads offsets only
    # impressions read by a process of their own: its group's offsets and counters
    separate = impressions_settings(settings) if settings.impressions_consumer_group else None
    try:
        committed = committed_offsets(settings, admin)
        if separate is not None:
            committed.update({tp: o for tp, o in committed_offsets(separate, admin).items()
                              if tp.topic == settings.impressions_topic})
        topics = {}
        for topic in (settings.actions_topic, settings.pins_topic, settings.impressions_topic,
                      settings.dead_letter_topic):
            parts = sorted(consumer.partitions_for_topic(topic) or [])
            tps = [TopicPartition(topic, p) for p in parts]
            ends = high_watermarks(consumer, tps)
            starts = consumer.beginning_offsets(tps) if tps else {}
            rows = []
            for tp in tps:
                done_offset = committed.get(tp)
                rows.append({"partition": tp.partition, "start": starts[tp], "end": ends[tp],
                             "committed": done_offset,
                             "lag": None if topic == settings.dead_letter_topic else
                             ends[tp] - (done_offset if done_offset is not None else starts[tp])})
            topics[topic] = rows
        dead = sum(r["end"] - r["start"] for r in topics[settings.dead_letter_topic])
        counters = consumer_counters(settings)
        out = {"group": settings.consumer_group, "topics": topics, "dead_lettered": dead,
               "consumer": counters}
        counted = None if counters is None else counters["dead_lettered"]
        if separate is not None:
            out["impressions_group"] = separate.consumer_group
            out["impressions_consumer"] = imp = consumer_counters(separate)
            counted = None if counted is None or imp is None else counted + imp["dead_lettered"]
        # the groups' dead-letter count (Redis) and the topic's records must agree; they do not
        # when Redis lost its counters, or another group writes to the topic
        out["dead_letters_agree"] = None if counted is None else counted == dead
        return out
    finally:
        consumer.close()
        admin.close()


def consumer_counters(settings: Settings, project: str | None = None) -> dict | None:
    """The group's record counters (written by the consumer after every batch), with the check
    that every record is accounted for exactly once; None when Redis has none or cannot be read."""
    import redis

    from homefeed.redis_client import pipeline_client

    if project is None:
        from homefeed.feature_store import repo_project

        project = repo_project(settings.feature_repo)
    client = pipeline_client(settings)
    try:
        counts = StateStore(client, project).read_counters(settings.consumer_group)
    except (redis.RedisError, OSError) as exc:
        log.warning("consumer counters unavailable: %s", exc)
        return None
    finally:
        client.close()
    if counts is None:
        return None
    counts["accounted"] = counts["records"] == sum(counts[n] for n in COUNTER_FIELDS[1:])
    return counts


def parse_time_ms(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise UserError(f"--since {value!r} is neither epoch ms nor an ISO 8601 time") from None
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value // 1_000_000)


def backfill(settings: Settings, since: str, users: list[int] | None = None, store=None,
             redis_client=None) -> dict:
    """Rebuild online sequences, actions' and impressions' (users with events since `since`),
    and re-write every pin's latest logged features: after Redis lost its data, all come back."""
    from homefeed.feature_store import open_store
    from homefeed.redis_client import pipeline_client
    from homefeed.stream.engagement import EngagementCounters
    from homefeed.stream.online_writer import OnlineWriter

    since_ms = parse_time_ms(str(since))
    store = store or open_store(settings.feature_repo)
    client = redis_client or pipeline_client(settings)
    online, states = OnlineWriter(store), StateStore(client, store.project)
    pins = restore_pins(settings, online) if users is None else 0
    counters = (restore_counters(settings, EngagementCounters(client, store.project, SNAPSHOT_GRANULARITY_MS),
                                 online) if users is None else 0)
    rebuilt = {view.name: _rebuild_sequences(settings, states, online, view, table, since_ms, users)
               for view, table in ((F.ACTION_SEQUENCE, F.ACTION_EVENTS),
                                   (F.IMPRESSION_SEQUENCE, F.IMPRESSION_EVENTS))}
    (n_users, n_events), (imp_users, imp_events) = rebuilt.values()
    log.info("backfilled %d users from %d logged events, %d users' impression sequences from %d "
             "impressions, %d pins, %d engagement counters", n_users, n_events, imp_users, imp_events,
             pins, counters)
    return {"users": n_users, "events": n_events, "since_ms": since_ms, "pins": pins,
            "counters": counters, "impression_users": imp_users, "impressions": imp_events}


def _rebuild_sequences(settings: Settings, state_store, online, view: F.SequenceView, table: str,
                       since_ms: int, users: list[int] | None) -> tuple[int, int]:
    """One sequence view rebuilt from its events' log table (the consumer's rules, a strictly
    newer snapshot timestamp): (users rebuilt, events read)."""
    events = offline_log.read(settings.offline_dir, table)
    if events.empty:
        return 0, 0
    events = events.drop_duplicates([F.USER_ID, "event_id"])  # event ids are unique per user
    arrived = events["arrival_time"] >= since_ms
    targets = set(events.loc[arrived, F.USER_ID].astype(int)) if users is None else set(users)
    events = events[events[F.USER_ID].isin(targets)]
    states = state_store.load_states(sorted(targets), view=view)
    action_id = {a.wire_name: int(a) for a in ActionType}
    rows, new_states = [], {}
    now_ms = pd.Timestamp.now(tz="UTC").value // 1_000_000
    for user, group in events.groupby(F.USER_ID):
        types = (group["action_type"].map(action_id) if view.action_types
                 else [IMPRESSION_TYPE] * len(group))
        actions = list(zip(group["event_id"], group[F.PIN_ID].astype(int), types,
                           group["event_time"].astype(int)))
        state = build(actions, settings.sequence_length)
        state.snapshot_ms = states[int(user)].snapshot_ms  # keep Feast's timestamps increasing
        state.snapshot_ms = next_snapshot_ms(state)
        new_states[int(user)] = state
        rows.append(sequence_row(int(user), state, view, max(now_ms, state.snapshot_ms)))
    if rows:
        offline_log.append(settings.offline_dir, view.name, sequence_table(rows, view))
        online.write_sequences(rows, view)
        state_store.save_states(new_states, view=view)
    return len(rows), int(len(events))


def _latest(logged: pd.DataFrame, key: str) -> tuple[pd.DataFrame, dict]:
    """Each key's newest logged row, and its event/created timestamps as epoch ms."""
    latest = (logged.sort_values([key, F.EVENT_TIMESTAMP, F.CREATED], kind="stable")
              .drop_duplicates(key, keep="last"))
    ms = {col: latest[col].astype("datetime64[us, UTC]").astype("int64") // 1000
          for col in (F.EVENT_TIMESTAMP, F.CREATED)}
    return latest, ms


def restore_counters(settings: Settings, counters, online) -> int:
    """Put each user's and pin's newest logged engagement counters back into their Redis hash
    and the online store (homefeed.stream.engagement.EngagementCounters.put). Safe at any
    time only after a data loss: it would roll live counters back to their last logged version."""
    from homefeed.stream.engagement import COLUMNS, VIEW_KEY

    restored = 0
    for view, key in VIEW_KEY.items():
        logged = offline_log.read(settings.offline_dir, view)
        if logged.empty:
            continue
        latest, ms = _latest(logged, key)
        decayed, totals, as_of = COLUMNS[view]
        rows = [{key: int(k), F.EVENT_TIMESTAMP: int(ts), F.CREATED: int(cr), decayed: list(d),
                 totals: list(n), as_of: int(a)}
                for k, ts, cr, d, n, a in zip(latest[key], ms[F.EVENT_TIMESTAMP], ms[F.CREATED],
                                              latest[decayed], latest[totals], latest[as_of])]
        for start in range(0, len(rows), 5000):
            counters.put(view, rows[start: start + 5000])
            online.write_engagement(view, rows[start: start + 5000])
        restored += len(rows)
    return restored


def restore_pins(settings: Settings, online) -> int:
    """Write each pin's newest logged feature row to the online store. Feast's strictly-newer
    rule makes this a no-op for pins Redis still has, so it is safe at any time."""
    logged = offline_log.read(settings.offline_dir, F.PIN_FEATURES)
    if logged.empty:
        return 0
    latest, ms = _latest(logged, F.PIN_ID)
    from homefeed.redis_codec import optional_int

    # a log written before the field existed has no durations: unknown
    durations = latest[F.PIN_DURATION_MS] if F.PIN_DURATION_MS in latest else [None] * len(latest)
    rows = [pin_row(int(pid), [float(v) for v in emb], int(topic), int(created), optional_int(duration),
                    int(ts), int(cr))
            for pid, emb, topic, created, duration, ts, cr in zip(
                latest[F.PIN_ID], latest[F.PIN_EMBEDDING], latest[F.PIN_TOPIC],
                latest[F.PIN_CREATED_MS], durations, ms[F.EVENT_TIMESTAMP], ms[F.CREATED])]
    for start in range(0, len(rows), 5000):
        online.write_pins(rows[start: start + 5000])
    return len(rows)
