"""The `homefeed` command line: lazy help, help text on every flag, and one-line failures
when Redis or Kafka is down (no services are started here: the ports are closed ones)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homefeed import cli, preflight
from homefeed.errors import ServiceUnavailable
from homefeed.settings import Settings
from homefeed.stack import free_port

ROOT = Path(__file__).resolve().parents[1]
# Flags of modules owned by the serving work (serving/*), still without help text.
HELP_PENDING: set = set()


def test_top_level_help_imports_no_stage_module():
    code = ("import sys, contextlib, io\n"
            "from homefeed.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('feast', 'torch', 'great_expectations', 'bentoml', 'kafka', 'redis',\n"
            "         'pandas', 'homefeed.stream.cli', 'homefeed.training.cli') if m in sys.modules]\n"
            "print(heavy, 'stream' in out.getvalue() and 'validate' in out.getvalue())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] True"


def _flags(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, path + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield path + (action.option_strings[0] if action.option_strings else action.dest,), action


def test_every_flag_has_help_text():
    from homefeed.validation import gx_cli

    missing = [" ".join(p) for p, a in _flags(cli.build_parser()) if not a.help and p not in HELP_PENDING]
    missing += ["great_expectations " + " ".join(p) for p, a in _flags(gx_cli.build_parser()) if not a.help]
    assert not missing, f"flags without help: {missing}"


@pytest.fixture
def stack_down(tmp_path):
    """Environment pointing at closed local ports (as after `homefeed stack down`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.update(HOMEFEED_HOME=str(tmp_path / "home"), HOMEFEED_REDIS_PORT=str(free_port()),
               HOMEFEED_KAFKA_PORT=str(free_port()), PYTHONPATH=str(ROOT / "src"))
    return env


def _homefeed(env, *argv):
    return subprocess.run([sys.executable, "-m", "homefeed.cli", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv, service, port_var", [
    (["stream", "status"], "Kafka", "HOMEFEED_KAFKA_PORT"),
    (["stream", "produce", "--world", "nowhere"], "Kafka", "HOMEFEED_KAFKA_PORT"),
    (["stream", "consume"], "Kafka", "HOMEFEED_KAFKA_PORT"),
    (["stream", "load", "--world", "nowhere"], "Redis", "HOMEFEED_REDIS_PORT"),
    (["stream", "backfill", "--since", "0"], "Redis", "HOMEFEED_REDIS_PORT"),
    (["feast", "user", "17"], "Redis", "HOMEFEED_REDIS_PORT"),
])
def test_stack_down_fails_with_one_line(stack_down, argv, service, port_var):
    result = _homefeed(stack_down, *argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    address = f"127.0.0.1:{stack_down[port_var]}"
    assert lines[0].startswith(f"homefeed: error: {service} at {address} does not answer")
    assert "homefeed stack up" in lines[0]
    assert ("KAFKA_BOOTSTRAP_SERVERS" if service == "Kafka" else "REDIS_URL") in lines[0]


def test_verbose_shows_the_traceback(stack_down):
    result = _homefeed(stack_down, "-v", "stream", "status")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("homefeed: error: Kafka at")


def test_external_services_name_their_variable():
    settings = Settings(redis_url=f"redis://:secret@127.0.0.1:{free_port()}/0",
                        kafka_bootstrap_servers=f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}")
    with pytest.raises(ServiceUnavailable) as redis_down:
        preflight.require([preflight.REDIS], settings)
    assert "check REDIS_URL" in str(redis_down.value) and "secret" not in str(redis_down.value)
    with pytest.raises(ServiceUnavailable) as kafka_down:
        preflight.require([preflight.KAFKA], settings)
    assert "check KAFKA_BOOTSTRAP_SERVERS" in str(kafka_down.value)
    assert settings.kafka_bootstrap_servers in str(kafka_down.value)


def test_a_client_connection_error_during_a_command_is_translated(capsys, monkeypatch):
    """A service that goes away after the pre-flight check: the client's own error becomes the
    same one line (here a real redis-py client against a closed port)."""
    import redis

    port = free_port()
    monkeypatch.setenv("HOMEFEED_REDIS_PORT", str(port))
    monkeypatch.delenv("REDIS_URL", raising=False)

    def command(args):
        redis.Redis(port=port, socket_connect_timeout=0.5, retry=None).ping()

    args = argparse.Namespace(func=command, verbose=False)
    assert cli.run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"homefeed: error: Redis at 127.0.0.1:{port} does not answer") and "\n" not in err

    def bug(args):
        raise KeyError("not a service error")

    with pytest.raises(KeyError):
        cli.run(argparse.Namespace(func=bug, verbose=False))


def test_library_deprecation_warnings_stay_out_of_the_log(tmp_path):
    """After Feast's `simplefilter("once", DeprecationWarning)` and GX's captureWarnings, a
    library's DeprecationWarning used to be logged as a WARNING line; other warnings and
    homefeed's own deprecations still are."""
    own = Path(cli.__file__).resolve().parent / "stream" / "consumer.py"
    code = ("import warnings\n"
            "from homefeed.cli import setup_logging\n"
            "setup_logging(False)\n"
            "warnings.simplefilter('once', DeprecationWarning)  # what importing feast does\n"
            "warnings.warn_explicit('sre_parse is deprecated', DeprecationWarning, '/venv/lib/gx/x.py', 6)\n"
            "warnings.warn_explicit('old api', PendingDeprecationWarning, '/venv/lib/kafka/y.py', 1)\n"
            "warnings.warn_explicit('disk almost full', UserWarning, '/venv/lib/lib/z.py', 3)\n"
            f"warnings.warn_explicit('use --since', DeprecationWarning, {str(own)!r}, 9)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    logged = [line.split(" WARNING py.warnings: ")[1] for line in result.stderr.splitlines()
              if " WARNING py.warnings: " in line]  # (a warning's source line follows it)
    assert logged == [
        "/venv/lib/lib/z.py:3: UserWarning: disk almost full",
        f"{own}:9: DeprecationWarning: use --since"], result.stderr
