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
    assert s.feast_redis_connection_string == "cache.internal:6380,db=2,password=s3cret,ssl=true"


def test_paths_in_config_file_are_relative_to_the_file(tmp_path):
    s = load_settings(env={}, config_file=write(tmp_path, 'home = "state"\n'))
    assert s.home == (tmp_path / "state").resolve()
    assert s.offline_dir == s.home / "offline"


def test_unknown_key_and_bad_value_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        load_settings(env={}, config_file=write(tmp_path, "redis_prot = 1\n"))
    with pytest.raises(ValueError, match="HOMEFEED|redis_port"):
        load_settings(env={"HOMEFEED_REDIS_PORT": "not-a-port"}, config_file=write(tmp_path, ""))


def test_config_file_is_found_in_parent_directories(tmp_path, monkeypatch):
    write(tmp_path, "kafka_port = 7777\n")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    monkeypatch.delenv("HOMEFEED_CONFIG", raising=False)
    monkeypatch.delenv("HOMEFEED_KAFKA_PORT", raising=False)
    assert load_settings().kafka_port == 7777


def test_offline_store_setting_defaults_to_duckdb_and_names_the_choices(tmp_path):
    assert load_settings(env={}, config_file=write(tmp_path, "")).offline_store == "duckdb"
    with pytest.raises(ValueError, match="offline_store='file' is not one of duckdb"):
        load_settings(env={"HOMEFEED_OFFLINE_STORE": "file"}, config_file=write(tmp_path, ""))
