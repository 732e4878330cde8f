"""`homefeed stack` against real processes, on ports of its own (not the session stack)."""

import os
import socket
import subprocess
import sys

import pytest

from homefeed.stack import free_port, kafka_healthy, redis_healthy

pytestmark = pytest.mark.integration


def run_cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "homefeed.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def private_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.update(HOMEFEED_HOME=str(tmp_path / "home"), HOMEFEED_REDIS_PORT=str(free_port()),
               HOMEFEED_KAFKA_PORT=str(free_port()))
    yield env
    run_cli(["stack", "down"], env)


def test_up_is_healthy_idempotent_and_down_stops_everything(private_env, tmp_path):
    up = run_cli(["stack", "up"], private_env)
    assert up.returncode == 0, up.stderr
    redis_url = f"redis://127.0.0.1:{private_env['HOMEFEED_REDIS_PORT']}/0"
    bootstrap = f"127.0.0.1:{private_env['HOMEFEED_KAFKA_PORT']}"
    assert redis_healthy(redis_url) and kafka_healthy(bootstrap)
    run_dir = tmp_path / "home" / "run"
    pids = {name: (run_dir / f"{name}.pid").read_text().split()[0] for name in ("redis", "kafka")}
    assert (run_dir / "redis.log").exists() and (run_dir / "kafka.log").exists()

    again = run_cli(["stack", "up"], private_env)
    assert again.returncode == 0, again.stderr
    assert {n: (run_dir / f"{n}.pid").read_text().split()[0] for n in pids} == pids  # nothing new

    from kafka import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    assert {"user-actions", "user-actions-dlq", "pin-upserts"} <= set(admin.list_topics())
    admin.close()

    status = run_cli(["stack", "status"], private_env)
    assert status.returncode == 0 and status.stdout.count(" healthy ") == 2
    assert "keeps topics in memory" in status.stdout and "keeps topics in memory" in up.stdout

    assert run_cli(["stack", "down"], private_env).returncode == 0
    assert not redis_healthy(redis_url) and not kafka_healthy(bootstrap)
    status = run_cli(["stack", "status"], private_env)
    assert status.returncode == 1 and "DOWN" in status.stdout


def test_occupied_port_names_the_port_and_how_to_choose_another(private_env):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        env = dict(private_env, HOMEFEED_REDIS_PORT=str(port))
        result = run_cli(["stack", "up"], env)
        assert result.returncode == 2
        assert f"port {port}" in result.stderr and "HOMEFEED_REDIS_PORT" in result.stderr
    finally:
        blocker.close()


def test_missing_redis_binary_says_how_to_install(private_env, tmp_path):
    env = dict(private_env, PATH=str(tmp_path / "empty-bin"))
    result = subprocess.run([sys.executable, "-m", "homefeed.cli", "stack", "up"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "apt-get install -y redis-server" in result.stderr


def test_external_redis_url_is_used_and_nothing_is_started(private_env, stack, tmp_path):
    env = dict(private_env, REDIS_URL=stack.effective_redis_url,
               KAFKA_BOOTSTRAP_SERVERS=stack.effective_kafka_bootstrap)
    result = run_cli(["stack", "up"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("external") == 2
    assert not (tmp_path / "home" / "run" / "redis.pid").exists()


def test_redis_with_a_password_requires_it_and_pid_files_guard_strangers(tmp_path):
    import redis

    from homefeed.settings import load_settings
    from homefeed.stack import LocalStack, masked_url, read_pid_file, write_pid_file

    port = free_port()
    settings = load_settings().replace(home=tmp_path / "home", redis_port=port, redis_password="s3cret")
    local = LocalStack(settings)
    local._up_redis()
    try:
        assert redis.Redis(port=port, password="s3cret").ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert "s3cret" not in (tmp_path / "home" / "run" / "redis.pid").read_text()
        assert masked_url(settings.effective_redis_url) == f"redis://:***@127.0.0.1:{port}/0"
    finally:
        local.down(services=("redis",))
    stranger = subprocess.Popen(["sleep", "30"])
    try:  # a pid file whose pid now belongs to an unrelated program is not ours to signal
        write_pid_file(tmp_path / "x.pid", stranger.pid, ["/usr/bin/redis-server", "--port", "1"])
        assert read_pid_file(tmp_path / "x.pid") is None
        write_pid_file(tmp_path / "y.pid", stranger.pid, ["sleep", "30"])
        assert read_pid_file(tmp_path / "y.pid") == stranger.pid
    finally:
        stranger.kill()
        stranger.wait()


def test_the_kafka_client_checks_record_crcs_in_c():
    """Without the `crc32c` package kafka-python computes every record batch's CRC-32C in pure
    Python (~54 us a 200-byte event, most of the consumer's poll time): it is a dependency."""
    from kafka.record import util

    assert util.crc32c_c is not None
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_connection_urls_are_printed_without_their_password():
    from homefeed.stack import masked_url

    assert masked_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert masked_url("rediss://alice:pw@h:6380/1") == "rediss://alice:***@h:6380/1"
    assert masked_url("redis://token@h:6379") == "redis://***@h:6379"
    assert masked_url("redis://h:6379/0") == "redis://h:6379/0"
