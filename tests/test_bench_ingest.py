"""`homefeed bench ingest` end to end on a tiny world: the benchmark command itself runs (its
private stack, consumer processes, digests and the live phase), so a change cannot break it
unnoticed. Figures are not checked here; docs/benchmarks.md records them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_ingest_runs_one_and_two_consumers_and_a_live_phase():
    done = subprocess.run(
        [sys.executable, "-m", "homefeed.cli", "bench", "ingest", "--users", "20", "--pins", "100",
         "--days", "2", "--partitions", "2", "--consumers", "1,2", "--live-rate", "200",
         "--live-seconds", "2", "--json"],
        capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert [(r["partitions"], r["consumers"]) for r in report["runs"]] == [(2, 1), (2, 2)]
    assert report["lost"] == 0 and report["digests_equal"]
    assert all(r["applied"] == report["events"] for r in report["runs"])
    # the world's impressions went through their own topic and were logged, with their own rate
    assert report["impressions"] > report["events"]
    assert all(r["impressions"] == report["impressions"] and r["impressions_per_s"] > 0
               for r in report["runs"])
    assert report["live_impressions"] > 0 and report["live_impressions_sent_per_s"] > 0
    assert report["dead_lettered"] == report["runs"][0]["bad_events_sent"] > 0
    assert report["freshness_ms"]["samples"] == min(400, report["events"]) and report["live_lost"] == 0
    assert set(report["live_stage_ms"]) >= {"poll", "validate", "log_write", "commit"}
