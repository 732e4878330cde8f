"""The online path on a real local Redis Cluster (3 nodes, `homefeed stack up --redis-cluster 3`).

Same components as on one node: the stream consumer (per-user state keys spread over slots; the
counters as one-key scripts), Feast's Redis store as `redis_cluster`, the serving reader, backfill.
"""

from __future__ import annotations

import time
import uuid

import pytest

from homefeed import events as E
from homefeed import features as F
from homefeed.envscope import scoped_env
from homefeed.settings import load_settings
from homefeed.stack import LocalStack, ensure_topics, free_port_block

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(feature_repo, stack, tmp_path_factory):
    """A 3-node cluster of our own; the environment says so while the module runs (Feast's
    store config and every client read the topology from settings)."""
    first = free_port_block(3)
    env = {"HOMEFEED_REDIS_MODE": "cluster", "HOMEFEED_REDIS_CLUSTER_SIZE": "3",
           "HOMEFEED_REDIS_PORT": str(first)}
    with scoped_env(env):
        local = LocalStack(load_settings().replace(home=tmp_path_factory.mktemp("cluster-home")))
        try:
            local._up_redis()
            yield local.settings
        finally:
            local.down(services=("redis",))


def test_stack_starts_a_cluster_that_spreads_keys(cluster):
    from homefeed.redis_client import pipeline_client

    statuses = LocalStack(cluster).status()
    assert statuses[0].healthy and statuses[0].name == "redis (cluster)"
    client = pipeline_client(cluster)
    client.mset_nonatomic({f"spread:{i}": i for i in range(300)})
    per_node = [n.redis_connection.dbsize() for n in client.get_primaries()]
    assert len(per_node) == 3 and min(per_node) > 50
    client.close()


def test_consumer_feast_and_serving_reader_on_a_cluster(cluster, tmp_path):
    from homefeed.feature_store import open_store
    from homefeed.sequence import build
    from homefeed.serving.online_features import OnlineFeatureReader
    from homefeed.stream.consumer import build_consumer
    from homefeed.stream.ops import backfill, consumer_counters
    from homefeed.stream.producer import Producer

    tag = uuid.uuid4().hex[:8]
    settings = cluster.replace(home=tmp_path / "home", actions_topic=f"c-actions-{tag}",
                               pins_topic=f"c-pins-{tag}", dead_letter_topic=f"c-dlq-{tag}",
                               impressions_topic=f"c-impressions-{tag}",
                               consumer_group=f"c-{tag}", topic_partitions=2, batch_max_events=200)
    ensure_topics(settings)
    now = time.time_ns() // 1_000_000
    users = list(range(31_000_000, 31_000_040))
    evs = [E.ActionEvent(f"c-{u}-{i}", u, 1 + (u + i) % 50, E.ActionType(1 + i % 3), now - 600_000 + 1000 * i)
           for u in users for i in range(15)]
    producer = Producer(settings)
    producer.send_all(settings.actions_topic, ((str(e.user_id).encode(), e.to_json(), None) for e in evs))
    producer.send_all(settings.actions_topic, ((b"bad", None, None),))  # a tombstone, dead-lettered
    producer.close()
    stats = build_consumer(settings).run(idle_exit_s=3)
    assert stats.applied == len(evs) and stats.dead_lettered == 1

    counts = consumer_counters(settings)
    assert counts["accounted"] and counts["records"] == len(evs) + 1

    expected = {}
    for u in users:
        expected[u] = build([(e.event_id, e.pin_id, int(e.action_type), e.event_time)
                             for e in evs if e.user_id == u], 100).feature_row()
    store = open_store()
    assert store.config.online_store.redis_type.name == "redis_cluster"
    got = store.get_online_features(features=F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES),
                                    entity_rows=[{F.USER_ID: u} for u in users]).to_dict()
    for i, u in enumerate(users):
        assert {k: got[k][i] for k in F.SEQUENCE_FEATURE_NAMES} == expected[u]

    reader = OnlineFeatureReader(store, settings, max_staleness_s=0)
    for user in reader.users_features(users[:5]):
        assert user.seq_pin_ids.tolist() == expected[user.user_id][F.SEQ_PIN_IDS]
    reader.close()

    # engagement counters on a cluster: one key per entity, the script pipelined per node
    from collections import Counter

    from homefeed.redis_client import pipeline_client
    from homefeed.stream.engagement import EngagementCounters

    counters = EngagementCounters(pipeline_client(settings), store.project, 1000)
    pins = sorted({e.pin_id for e in evs})
    assert {p: sum(c["totals"]) for p, c in counters.read(F.PIN_ENGAGEMENT, pins).items()} == \
        dict(Counter(e.pin_id for e in evs))
    assert all(sum(c["totals"]) == 15 for c in counters.read(F.USER_ENGAGEMENT, users).values())

    summary = backfill(settings, since="0", users=users[:10])
    assert summary["users"] == 10
