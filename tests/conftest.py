"""Shared fixtures: a real redis-server and a real Kafka-protocol broker on free ports.

The session starts one local stack (homefeed.stack.LocalStack) in a temporary HOMEFEED_HOME and
exports its ports through HOMEFEED_* variables, so every load_settings() in the test process and in
subprocesses (CLI calls, `feast`, `bentoml serve`) talks to it. It is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from homefeed.settings import load_settings
from homefeed.stack import LocalStack, private_stack

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory):
    """Environment for a private local stack (homefeed.stack.private_stack: free ports, nothing
    external); services are started by `stack`."""
    with private_stack(tmp_path_factory.mktemp("homefeed-home"), services=()):
        yield {k: os.environ[k] for k in ("HOMEFEED_HOME", "HOMEFEED_REDIS_PORT", "HOMEFEED_KAFKA_PORT")}


@pytest.fixture(scope="session")
def stack(stack_env):
    local = LocalStack(load_settings())
    local.up()
    yield local.settings
    local.down()


@pytest.fixture(scope="session")
def feature_repo(stack, tmp_path_factory):
    """A private copy of feature_repo/, applied against the test stack."""
    from homefeed.feature_store import apply_repo

    repo = tmp_path_factory.mktemp("feature-repo") / "feature_repo"
    shutil.copytree(REPO_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    os.environ["HOMEFEED_FEATURE_REPO"] = str(repo)
    apply_repo(repo)
    yield repo
    os.environ.pop("HOMEFEED_FEATURE_REPO", None)


@pytest.fixture
def redis_client(stack):
    import redis

    client = redis.Redis.from_url(stack.effective_redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def pipeline(stack, tmp_path_factory):
    """Settings of a private pipeline: own home (offline log), redis, feature repo, topics, GX
    project and BentoML home. Exported through the environment (Feast reads the Redis port from
    settings when a store is opened) and restored afterwards."""
    from homefeed.feature_store import apply_repo
    from homefeed.stack import LocalStack, ensure_topics, free_port
    from homefeed.validation import init_context

    root = tmp_path_factory.mktemp("training")
    repo = root / "feature_repo"
    shutil.copytree(REPO_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    env = {"HOMEFEED_HOME": str(root / "home"), "HOMEFEED_REDIS_PORT": str(free_port()),
           "HOMEFEED_FEATURE_REPO": str(repo), "HOMEFEED_VALIDATION_DIR": str(root / "validation"),
           "BENTOML_HOME": str(root / "bentoml")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    redis = LocalStack(load_settings())
    redis._up_redis()
    try:
        init_context(root / "validation")
        apply_repo(repo)
        tag = uuid.uuid4().hex[:8]
        settings = load_settings().replace(
            actions_topic=f"train-actions-{tag}", pins_topic=f"train-pins-{tag}",
            impressions_topic=f"train-impressions-{tag}",
            dead_letter_topic=f"train-dlq-{tag}", consumer_group=f"train-{tag}", topic_partitions=1)
        ensure_topics(settings)
        yield settings
    finally:
        redis.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
