"""`homefeed demo` end to end at its smallest size (`--size smoke`), as CI runs it, and the
report's pure functions (Prometheus text -> numbers, plots, markdown) on their own.

The demo runs as a subprocess with a private home, private ports, a private copy of the feature
repo and a private BentoML store, so it shares nothing with the session stack of the other tests
or with a developer's `make demo`. It starts its own redis-server and broker; whatever it started
is stopped afterwards (`homefeed demo --stop`, `homefeed stack down`), pass or fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from homefeed import demo_report as R
from homefeed.demo import SIZES
from homefeed.demo import process_alive as alive
from homefeed.stack import free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO_TIMEOUT_S = 600  # ~1-3 min on 2 busy cores


def _homefeed(env: dict, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "homefeed.cli", *argv], env=env, cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


@pytest.fixture
def demo_env(tmp_path):
    repo = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HOMEFEED_") and k not in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.update({
        "HOMEFEED_HOME": str(tmp_path / "home"),
        "HOMEFEED_REDIS_PORT": str(free_port()),
        "HOMEFEED_KAFKA_PORT": str(free_port()),
        "HOMEFEED_FEATURE_REPO": str(repo),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    })
    yield env
    run_dir = tmp_path / "home" / "run"
    pids = [int(p.read_text().split()[0]) for p in run_dir.glob("*.pid") if p.read_text().strip()[:1].isdigit()]
    stop = _homefeed(env, "demo", "--stop", timeout=90)
    down = _homefeed(env, "stack", "down", timeout=90)
    assert stop.returncode == 0, stop.stdout
    assert down.returncode == 0, down.stdout
    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)], "demo processes still running after --stop / stack down"


@pytest.mark.slow
@pytest.mark.integration
def test_demo_smoke_end_to_end(demo_env):
    started = time.monotonic()
    done = _homefeed(demo_env, "demo", "--size", "smoke", timeout=DEMO_TIMEOUT_S)
    out = done.stdout
    assert done.returncode == 0, out[-6000:]

    match = re.search(r"^report: (.+\.md)$", out, re.M)
    assert match, out[-3000:]
    report = Path(match.group(1))
    assert report.is_file()
    assert report.parent == Path(demo_env["HOMEFEED_HOME"]) / "demo" / "synthetic-smoke" / "report"
    text = report.read_text()
    for heading in ("## Live step", "## Models: comparison on the test days", "## Training curves",
                    "## Freshness", "## Serving latency by stage", "## Step timings"):
        assert heading in text, heading

    # every image the report links exists and is a PNG: its own plots and the training outputs
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"freshness.png", "serving_latency.png", "../runs/comparison.png"} <= set(images)
    assert "../runs/transact_v11/curves.png" in images and "../runs/none/curves.png" in images
    for rel in images:
        data = (report.parent / rel).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", rel
    assert "| `transact_v11` |" in text and "[" in text  # the comparison table, with intervals

    numbers = json.loads((report.parent / "report.json").read_text())
    live = numbers["live"]
    assert live["changed"] and live["before"] != live["after"], live
    assert live["seconds_to_change"] is not None and live["seconds_to_change"] < 30
    assert re.search(r"the ranking responded [0-9.]+ s after the actions were sent", out)
    assert numbers["freshness"]["count"] >= live["actions"]  # the live consumer's histogram
    assert numbers["burst"]["errors"] == 0 and numbers["burst"]["requests"] >= 1
    assert set(numbers["burst"]["stages_ms"]) >= {"features", "model"}
    print(f"demo smoke: {time.monotonic() - started:.0f} s, live step {live['seconds_to_change']} s")


KUAIRAND = ROOT / ".." / "shared" / "data" / "kuairand-pure"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not KUAIRAND.is_dir(), reason="../shared/data/kuairand-pure is not present")
def test_demo_kuairand_slice_through_the_comparison(demo_env):
    """`make demo DATASET=kuairand KUAIRAND=DIR` at the smoke size, steps 1-7 (the serving steps
    are the synthetic smoke test's): the 60 most active users of the KuaiRand-Pure slice through
    Kafka, Feast, the dataset build, two tiny models and the comparison (~50-90 s)."""
    started = time.monotonic()
    done = _homefeed(demo_env, "demo", "--dataset", "kuairand", "--size", "smoke", "--data", str(KUAIRAND),
                     "--no-serve", timeout=DEMO_TIMEOUT_S)
    out = done.stdout
    assert done.returncode == 0, out[-6000:]
    demo_dir = Path(demo_env["HOMEFEED_HOME"]) / "demo" / "kuairand-smoke"
    assert f"import-kuairand --src {KUAIRAND.resolve()} " in out and "--max-users 60" in out
    meta = json.loads((demo_dir / "world" / "world.json").read_text())
    assert meta["source"] == "kuairand-pure" and meta["kuairand"]["max_users"] == 60
    assert meta["summary"]["users"] == 60 and meta["summary"]["eval"]["judgeable_requests"]["click"] > 50
    assert "training_set checkpoint: OK" in out
    comparison = (demo_dir / "runs" / "comparison.md").read_text()
    assert "| `transact_v11` |" in comparison and "User-level GAUC" in comparison
    assert "full_active" in comparison  # HIT@3 by the activity degree
    assert "steps 1-7; --no-serve" in out and not list((Path(demo_env["HOMEFEED_HOME"]) / "run").glob("service.pid"))
    print(f"demo kuairand slice: {time.monotonic() - started:.0f} s")


# -- the report's pure functions (fast) ----------------------------------------------------------

def _metrics_text() -> str:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    registry = CollectorRegistry()
    fresh = Histogram(R.FRESHNESS_METRIC, "f", registry=registry,
                      buckets=(0.1, 0.2, 0.5, 1))
    for v in (0.05, 0.15, 0.15, 0.3, 3.0):
        fresh.observe(v)
    Counter(R.APPLIED_METRIC.removesuffix("_total"), "a", registry=registry).inc(5)
    stages = Histogram(R.STAGE_METRIC, "s", ["stage"], registry=registry, buckets=(0.001, 0.01, 0.1))
    for stage, v in (("features", 0.0005), ("model", 0.02), ("model", 0.05)):
        stages.labels(stage=stage).observe(v)
    return generate_latest(registry).decode()


def test_parse_histograms_and_quantiles():
    text = _metrics_text()
    fresh = R.parse_histograms(text, R.FRESHNESS_METRIC)[""]
    assert fresh.bounds[-1] == float("inf") and fresh.count == 5
    assert fresh.counts() == [1, 2, 1, 0, 1]
    assert fresh.mean == pytest.approx(3.65 / 5)
    # rank 2.5 falls in (0.1, 0.2] holding ranks 1..3: 0.1 + 0.1 * (2.5 - 1) / 2
    assert fresh.quantile(0.5) == pytest.approx(0.175)
    assert fresh.quantile(0.99) == 1.0  # in the +Inf bucket: the highest finite bound, as Prometheus
    stages = R.parse_histograms(text, R.STAGE_METRIC, by="stage")
    assert set(stages) == {"features", "model"} and stages["model"].count == 2
    assert R.counter_total(text, R.APPLIED_METRIC) == 5
    assert R.parse_histograms(text, "absent_metric") == {} and R.counter_total(text, "absent_total") == 0
    later = R.Histogram(fresh.bounds, [c + 1 for c in fresh.cumulative], fresh.count + 1, fresh.total + 0.05)
    delta = later.minus(fresh)
    assert delta.count == 1 and delta.counts() == [1, 0, 0, 0, 0]


def test_write_report(tmp_path):
    runs = tmp_path / "runs"
    (runs / "transact_v11").mkdir(parents=True)
    (runs / "comparison.md").write_text("| model | repin HIT@3 |\n|---|---|\n| `transact_v11` | 0.5 |\n")
    png = b"\x89PNG\r\n\x1a\n"
    (runs / "comparison.png").write_bytes(png)
    (runs / "transact_v11" / "curves.png").write_bytes(png)
    text = _metrics_text()
    live = {"user": 3, "liked_topic": 1, "disliked_topic": 2, "actions": 7, "seconds_to_change": 0.31,
            "before": [[10, 1], [11, 2]], "after": [[12, 1], [10, 1]], "send_s": 0.003, "polls": 3,
            "rank_call_ms": 70.0, "fresh_mean_s": 0.2, "fresh_max_s": 0.3, "batch_mean_s": 0.12}
    burst = {"candidates": 100, "requests": 50, "errors": 0, "concurrency": 1, "p50_ms": 40.0, "p99_ms": 55.0,
             "throughput_rps": 24.0, "stages_ms": {"model": {"p50": 36.0, "p99": 44.0},
                                                   "features": {"p50": 0.6, "p99": 1.7}}}
    path = R.write_report(tmp_path / "report", {
        "title": "demo", "steps": {"1. stack": 0.4, "2. apply": 0.6}, "live": live,
        "comparison_md": runs / "comparison.md", "comparison_png": runs / "comparison.png",
        "curves": {"transact_v11": runs / "transact_v11" / "curves.png"},
        "freshness": R.parse_histograms(text, R.FRESHNESS_METRIC)[""], "burst": burst,
        "stage_hist": R.parse_histograms(text, R.STAGE_METRIC, by="stage")})
    page = path.read_text()
    assert "**0.31 s**" in page and "| `transact_v11` | 0.5 |" in page
    assert "![lifts with 95% intervals](../runs/comparison.png)" in page
    assert "(../runs/transact_v11/curves.png)" in page
    assert "| features | 0.60 | 1.70 | 1 |" in page and "| total | 1.0 |" in page
    for name in ("freshness.png", "serving_latency.png"):
        assert (path.parent / name).read_bytes()[:8] == png
    numbers = json.loads((path.parent / "report.json").read_text())
    assert numbers["freshness"]["count"] == 5 and numbers["freshness"]["bounds"][-1] is None


def test_sizes():
    assert list(SIZES)[0] == "smoke" and "tiny" in SIZES
    smoke = SIZES["smoke"]
    assert "none" in smoke.models and "transact_v11" in smoke.models  # a baseline and the served model
    assert all(s.burst_candidates <= s.pins for s in SIZES.values())


def test_a_demo_of_another_world_wipes_the_local_state_first(tmp_path, capsys):
    """Two worlds' user ids collide: switching size or dataset wipes the local stack's data
    (nothing is running here, so only the files are involved); the same world keeps it; external
    services are never wiped."""
    from homefeed.demo import reset_if_other_world
    from homefeed.errors import UserError
    from homefeed.settings import Settings

    settings = Settings(home=tmp_path / "home", redis_port=free_port(), kafka_port=free_port())
    tiny, ml = settings.home / "demo" / "synthetic-tiny", settings.home / "demo" / "movielens-tiny"
    reset_if_other_world(settings, tiny)  # fresh home: nothing to wipe
    (settings.offline_dir / "user_action_sequence").mkdir(parents=True)
    (settings.run_dir / "redis").mkdir(parents=True)
    reset_if_other_world(settings, tiny)  # same world: kept
    assert settings.offline_dir.exists() and (settings.run_dir / "redis").exists()
    reset_if_other_world(settings, ml)  # another world: wiped
    assert not settings.offline_dir.exists() and not (settings.run_dir / "redis").exists()
    assert "holds another world" in capsys.readouterr().out
    settings.offline_dir.mkdir(parents=True)
    with pytest.raises(UserError, match="does not wipe external"):
        reset_if_other_world(settings.replace(redis_url="redis://example:6379/0"), tiny)
    assert settings.offline_dir.exists()


def test_real_data_dir_and_its_errors(tmp_path, monkeypatch):
    """Where the demo takes a real dataset's files from: --data DIR, HOMEFEED_MOVIELENS_DIR for
    MovieLens, else `homefeed world fetch` into HOMEFEED_HOME/data (fetched when not there)."""
    from homefeed.demo import real_data_dir, run_demo
    from homefeed.errors import UserError
    from homefeed.settings import Settings

    monkeypatch.delenv("HOMEFEED_MOVIELENS_DIR", raising=False)
    settings = Settings(home=tmp_path / "home")
    assert real_data_dir(settings, "kuairand", str(tmp_path)) == (tmp_path.resolve(), False)
    assert real_data_dir(settings, "kuairand", None) == (tmp_path / "home" / "data" / "kuairand-pure", True)
    fetched = tmp_path / "home" / "data" / "movielens-100k"
    fetched.mkdir(parents=True)
    (fetched / "fetch.json").write_text("{}")
    assert real_data_dir(settings, "movielens", None) == (fetched, False)
    monkeypatch.setenv("HOMEFEED_MOVIELENS_DIR", str(tmp_path))
    assert real_data_dir(settings, "movielens", None) == (tmp_path.resolve(), False)
    with pytest.raises(UserError, match="not a directory"):
        real_data_dir(settings, "kuairand", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="--data is for a real dataset"):
        run_demo("synthetic", "smoke", str(tmp_path))
