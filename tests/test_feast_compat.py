"""homefeed/feast_compat.py: importing homefeed's Feast modules leaves prometheus_client in its
in-process mode (Feast's import had switched the whole process to multiprocess mode), unless a
server set the multiprocess variables itself. Each case is a fresh interpreter."""

import json
import os
import subprocess
import sys

CODE = """
import json, os
import homefeed.feature_store, homefeed.stream.online_writer
from prometheus_client import CollectorRegistry, Counter, generate_latest, values
counts = []
for _ in range(2):  # two registries, one metric name: separate values in-process
    registry = CollectorRegistry()
    Counter("probe", "p", registry=registry).inc()
    counts.append([line for line in generate_latest(registry).decode().splitlines()
                   if line.startswith("probe_total")][0])
print(json.dumps({"env": {k: os.environ.get(k) for k in ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")},
                  "in_process": values.ValueClass is values.MutexValue, "counts": counts}))
"""


def run(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_feast_import_leaves_metrics_in_process():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    got = run(env)
    assert got["env"] == {"PROMETHEUS_MULTIPROCESS_DIR": None, "PROMETHEUS_MULTIPROC_DIR": None}
    assert got["in_process"] and got["counts"] == ["probe_total 1.0", "probe_total 1.0"]


def test_a_multiprocess_dir_set_by_a_server_is_kept(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROCESS_DIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    got = run(env)
    assert got["env"] == {"PROMETHEUS_MULTIPROCESS_DIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    assert not got["in_process"]


def test_a_server_setting_only_the_collector_directory_keeps_its_multiprocess_values(tmp_path):
    """BentoML's workers: PROMETHEUS_MULTIPROC_DIR set, Feast adds PROMETHEUS_MULTIPROCESS_DIR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    got = run(env)
    assert got["env"] == {"PROMETHEUS_MULTIPROCESS_DIR": None, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    assert not got["in_process"]
