"""How the service splits its CPUs (homefeed.serving.resources): workers x threads."""

from __future__ import annotations

import os

import pytest

from homefeed.serving.resources import available_cpus, serving_cpus
from homefeed.settings import Settings, load_settings


def test_available_cpus_is_the_affinity_mask_at_most():
    n = available_cpus()
    assert 1 <= n <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def test_workers_times_threads_defaults_to_the_cpus_given():
    assert serving_cpus(Settings(), cpus=8) == (8, 1)  # one process per CPU, one thread each
    assert serving_cpus(Settings(serving_threads=2), cpus=8) == (4, 2)
    assert serving_cpus(Settings(serving_threads=4), cpus=2) == (1, 4)  # never 0 workers
    assert serving_cpus(Settings(serving_workers=3), cpus=8) == (3, 1)
    assert serving_cpus(Settings()) == (available_cpus(), 1)


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
@pytest.mark.parametrize("name", ["HOMEFEED_SERVING_WORKERS", "HOMEFEED_SERVING_THREADS"])
def test_bad_values_are_refused_naming_the_variable(tmp_path, bad, name):
    cfg = tmp_path / "homefeed.toml"
    cfg.write_text("")
    with pytest.raises(ValueError, match=name):
        load_settings(env={name: bad}, config_file=cfg)


@pytest.mark.parametrize("host, expected", [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_the_service_binds_loopback_unless_configured(host, expected):
    """`bentoml serve bento.service:Ranking` as typed must not expose the service; the bento's
    image configures every interface (bento/bentofile.yaml)."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "HOMEFEED_HOST"}
    if host:
        env["HOMEFEED_HOST"] = host
    out = subprocess.run([sys.executable, "-c", "import bento.service as s; print(s.Ranking.config['http']['host'])"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected
    envs = yaml.safe_load((root / "bento" / "bentofile.yaml").read_text())["envs"]
    assert {"name": "HOMEFEED_HOST", "value": "0.0.0.0"} in envs
