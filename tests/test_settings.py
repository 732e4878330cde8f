from pathlib import Path

import pytest

from homefeed.settings import Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "homefeed.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set(tmp_path):
    s = load_settings(env={}, config_file=write(tmp_path, ""))
    assert s.redis_port == Settings.redis_port
    assert s.effective_redis_url == f"redis://127.0.0.1:{Settings.redis_port}/0"
    assert not s.redis_external and not s.kafka_external


def test_file_overrides_defaults_and_env_overrides_file(tmp_path):
    cfg = write(tmp_path, "redis_port = 7000\nkafka_port = 7001\nembedding_dim = 16\n")
    s = load_settings(env={}, config_file=cfg)
    assert (s.redis_port, s.kafka_port, s.embedding_dim) == (7000, 7001, 16)
    s = load_settings(env={"HOMEFEED_REDIS_PORT": "7100"}, config_file=cfg)
    assert (s.redis_port, s.kafka_port) == (7100, 7001)


def test_conventional_urls_mean_external_infrastructure(tmp_path):
    env = {"REDIS_URL": "rediss://:s3cret@cache.internal:6380/2",
           "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"}
    s = load_settings(env=env, config_file=write(tmp_path, "redis_port = 7000\n"))
    assert s.redis_external and s.kafka_external
    assert s.effective_kafka_bootstrap == "k1:9092,k2:9092"
    # Feast wants its own connection-string format, derived from the same single value.
    assert s.feast_redis_connection_string == (
        "cache.internal:6380,db=2,password=s3cret,ssl=true,socket_timeout=5,socket_connect_timeout=2")


def test_paths_in_config_file_are_relative_to_the_file(tmp_path):
    s = load_settings(env={}, config_file=write(tmp_path, 'home = "state"\n'))
    assert s.home == (tmp_path / "state").resolve()
    assert s.offline_dir == s.home / "offline"


def test_unknown_key_and_bad_value_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        load_settings(env={}, config_file=write(tmp_path, "redis_prot = 1\n"))
    with pytest.raises(ValueError, match="HOMEFEED|redis_port"):
        load_settings(env={"HOMEFEED_REDIS_PORT": "not-a-port"}, config_file=write(tmp_path, ""))


SERVING_ENV = {"HOMEFEED_MODEL": "homefeed-ranker:abc", "HOMEFEED_RANK_BLEND": "repin=1,hide=-2",
               "HOMEFEED_PIN_CACHE_S": "2.5", "HOMEFEED_SERVING_DTYPE": "float32",
               "HOMEFEED_SERVING_THREADS": "2", "HOMEFEED_SERVING_WORKERS": "3"}


def test_serving_knobs_keep_their_variables_and_defaults(tmp_path):
    """The service's knobs (bento/service.py, homefeed.serving.resources) are settings under the
    variable names deployments already set."""
    s = load_settings(env={}, config_file=write(tmp_path, ""))
    assert (s.model, s.rank_blend, s.pin_cache_s, s.serving_dtype, s.serving_threads, s.serving_workers) == (
        "homefeed-ranker:latest", "", 60.0, "auto", 1, None)
    s = load_settings(env=SERVING_ENV, config_file=write(tmp_path, ""))
    assert (s.model, s.rank_blend, s.pin_cache_s, s.serving_dtype, s.serving_threads, s.serving_workers) == (
        "homefeed-ranker:abc", "repin=1,hide=-2", 2.5, "float32", 2, 3)
    assert load_settings(env={}, config_file=write(tmp_path, "pin_cache_s = 5\nserving_workers = 2\n")
                         ).serving_workers == 2


@pytest.mark.parametrize("name, bad", [("HOMEFEED_PIN_CACHE_S", "soon"), ("HOMEFEED_SERVING_THREADS", "0"),
                                       ("HOMEFEED_SERVING_WORKERS", "-1"), ("HOMEFEED_SERVING_WORKERS", "1.5")])
def test_bad_serving_knobs_are_one_line_naming_the_variable(tmp_path, name, bad):
    with pytest.raises(ValueError, match=name) as err:
        load_settings(env={name: bad}, config_file=write(tmp_path, ""))
    assert "\n" not in str(err.value)


def test_config_file_is_found_in_parent_directories(tmp_path, monkeypatch):
    write(tmp_path, "kafka_port = 7777\n")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    monkeypatch.delenv("HOMEFEED_CONFIG", raising=False)
    monkeypatch.delenv("HOMEFEED_KAFKA_PORT", raising=False)
    assert load_settings().kafka_port == 7777


def test_redis_topology_settings(tmp_path):
    cfg = write(tmp_path, "redis_port = 7000\n")
    local = load_settings(env={"HOMEFEED_REDIS_MODE": "cluster"}, config_file=cfg)
    assert local.redis_node_list == [("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7002)]
    assert local.feast_redis_connection_string.startswith("127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002,")
    assert not local.redis_external  # a local cluster: `homefeed stack up` starts it
    managed = load_settings(env={"HOMEFEED_REDIS_MODE": "sentinel", "HOMEFEED_REDIS_NODES": "s1:26379,s2:26379",
                                 "HOMEFEED_REDIS_SENTINEL_MASTER": "feats"}, config_file=cfg)
    assert managed.redis_external and managed.redis_node_list == [("s1", 26379), ("s2", 26379)]
    with pytest.raises(ValueError, match="only database 0"):
        load_settings(env={"HOMEFEED_REDIS_MODE": "cluster", "REDIS_URL": "redis://c:7000/3"},
                      config_file=cfg).feast_redis_connection_string
    with pytest.raises(ValueError, match="redis_mode"):
        load_settings(env={"HOMEFEED_REDIS_MODE": "clustered"}, config_file=cfg)


def test_redis_password_only_from_the_environment(tmp_path):
    with pytest.raises(ValueError, match="environment"):
        load_settings(env={}, config_file=write(tmp_path, 'redis_password = "x"\n'))
    s = load_settings(env={"REDIS_PASSWORD": "p@ss/word"}, config_file=write(tmp_path, "redis_port = 7000\n"))
    assert s.effective_redis_url == "redis://:p%40ss%2Fword@127.0.0.1:7000/0"
    assert "password=p@ss/word" in s.feast_redis_connection_string
    assert "p@ss" not in repr(s)  # never printed with the settings


# -- Kafka client security ------------------------------------------------------------------------

def test_kafka_client_config_defaults_to_plaintext(tmp_path):
    s = load_settings(env={}, config_file=write(tmp_path, ""))
    assert s.kafka_client_config() == {"bootstrap_servers": f"127.0.0.1:{Settings.kafka_port}",
                                       "security_protocol": "PLAINTEXT"}


def test_kafka_sasl_ssl_from_file_and_environment(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = write(tmp_path, 'kafka_security_protocol = "SASL_SSL"\nkafka_sasl_mechanism = "SCRAM-SHA-512"\n'
                          'kafka_sasl_username = "homefeed"\nkafka_ssl_cafile = "ca.pem"\n')
    env = {"KAFKA_BOOTSTRAP_SERVERS": "b1.cloud:9093,b2.cloud:9093", "HOMEFEED_KAFKA_SASL_PASSWORD": "s3cret"}
    s = load_settings(env=env, config_file=cfg)
    assert s.kafka_client_config() == {
        "bootstrap_servers": "b1.cloud:9093,b2.cloud:9093", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "homefeed",
        "sasl_plain_password": "s3cret", "ssl_cafile": str((tmp_path / "ca.pem").resolve()),
    }
    assert "s3cret" not in repr(s)
    # every kwarg is one that kafka-python's clients accept
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    for client in (KafkaAdminClient, KafkaConsumer, KafkaProducer):
        assert set(s.kafka_client_config()) <= set(client.DEFAULT_CONFIG), client.__name__
    # environment overrides the file, as for every setting
    s = load_settings(env={**env, "HOMEFEED_KAFKA_SASL_MECHANISM": "PLAIN"}, config_file=cfg)
    assert s.kafka_client_config()["sasl_mechanism"] == "PLAIN"


def test_kafka_secrets_only_from_the_environment(tmp_path):
    with pytest.raises(ValueError, match="HOMEFEED_KAFKA_SASL_PASSWORD in the environment"):
        load_settings(env={}, config_file=write(tmp_path, 'kafka_sasl_password = "oops"\n'))
    with pytest.raises(ValueError, match="HOMEFEED_KAFKA_SSL_PASSWORD"):
        load_settings(env={}, config_file=write(tmp_path, 'kafka_ssl_password = "oops"\n'))
    s = load_settings(env={"HOMEFEED_KAFKA_SSL_PASSWORD": "k3y", "HOMEFEED_KAFKA_SECURITY_PROTOCOL": "ssl"},
                      config_file=write(tmp_path, ""))
    assert s.kafka_client_config() == {"bootstrap_servers": s.effective_kafka_bootstrap,
                                       "security_protocol": "SSL", "ssl_password": "k3y"}


@pytest.mark.parametrize("env, message", [
    ({"HOMEFEED_KAFKA_SECURITY_PROTOCOL": "TLS"}, "use one of PLAINTEXT"),
    ({"HOMEFEED_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs kafka_sasl_mechanism"),
    ({"HOMEFEED_KAFKA_SASL_MECHANISM": "PLAIN"}, "takes no SASL mechanism"),
    ({"HOMEFEED_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "HOMEFEED_KAFKA_SASL_MECHANISM": "OAUTHBEARER"},
     "use one of PLAIN"),
    ({"HOMEFEED_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "HOMEFEED_KAFKA_SASL_MECHANISM": "PLAIN",
      "HOMEFEED_KAFKA_SASL_USERNAME": "u"}, "HOMEFEED_KAFKA_SASL_PASSWORD"),
    ({"HOMEFEED_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "security protocol is PLAINTEXT"),
    ({"HOMEFEED_KAFKA_SECURITY_PROTOCOL": "SSL", "HOMEFEED_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
     "is not a file"),
])
def test_inconsistent_kafka_security_is_a_clear_error(tmp_path, env, message):
    from homefeed.errors import UserError

    s = load_settings(env=env, config_file=write(tmp_path, ""))
    with pytest.raises(UserError, match=message):
        s.kafka_client_config()


@pytest.mark.integration
def test_kafka_client_config_reaches_the_local_broker(stack):
    """The same kwargs build a working admin client, producer and consumer (PLAINTEXT: the local
    broker has no SASL/TLS listener)."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    config = stack.kafka_client_config()
    admin = KafkaAdminClient(**config, client_id="homefeed-test")
    try:
        assert stack.actions_topic in admin.list_topics()
    finally:
        admin.close()
    producer = KafkaProducer(**config)
    producer.close()
    consumer = KafkaConsumer(**config)
    try:
        assert consumer.partitions_for_topic(stack.actions_topic)
    finally:
        consumer.close()


def test_local_kafka_drops_external_brokers_and_security(tmp_path):
    env = {"KAFKA_BOOTSTRAP_SERVERS": "b1.cloud:9093", "HOMEFEED_KAFKA_SECURITY_PROTOCOL": "SSL"}
    s = load_settings(env=env, config_file=write(tmp_path, "")).local_kafka(kafka_port=7001)
    assert s.kafka_client_config() == {"bootstrap_servers": "127.0.0.1:7001", "security_protocol": "PLAINTEXT"}

def test_offline_store_setting_defaults_to_duckdb_and_names_the_choices(tmp_path):
    assert load_settings(env={}, config_file=write(tmp_path, "")).offline_store == "duckdb"
    with pytest.raises(ValueError, match="offline_store='file' is not one of duckdb"):
        load_settings(env={"HOMEFEED_OFFLINE_STORE": "file"}, config_file=write(tmp_path, ""))


def test_spark_engine_conf_comes_from_settings(tmp_path):
    s = load_settings(env={"HOMEFEED_OFFLINE_STORE": "spark"}, config_file=write(tmp_path, ""))
    assert s.offline_store == "spark"
    assert s.spark_conf_map["spark.master"] == "local[2]"
    assert s.spark_conf_map["spark.sql.session.timeZone"] == "UTC"
    env = {"HOMEFEED_SPARK_MASTER": "spark://10.0.0.5:7077",
           "HOMEFEED_SPARK_CONF": "spark.executor.memory=4g; spark.sql.shuffle.partitions = 64"}
    conf = load_settings(env=env, config_file=write(tmp_path, "")).spark_conf_map
    assert conf["spark.master"] == "spark://10.0.0.5:7077"
    assert conf["spark.executor.memory"] == "4g" and conf["spark.sql.shuffle.partitions"] == "64"
    with pytest.raises(ValueError, match="spark_conf entry 'spark.executor.memory' is not key=value"):
        load_settings(env={"HOMEFEED_SPARK_CONF": "spark.executor.memory"}, config_file=write(tmp_path, ""))
