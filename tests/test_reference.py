"""The logistic-regression reference ranker: it learns the planted sequence signal from its
history summaries, writes a run `homefeed evaluate --compare` scores beside the trained models,
and is refused by `homefeed export` (a reference, not a servable model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import planted_dataset

from homefeed.errors import UserError
from homefeed.training.data import PinTable, RankingData
from homefeed.training.evaluate import evaluate_runs
from homefeed.training.reference import HISTORY_FEATURES, NAME, features, fit_reference


def test_history_summaries_see_only_actions_before_the_serve_time(tmp_path):
    ds = planted_dataset(tmp_path / "ds", n_requests=60, leak=True)  # request 6 has a future action
    data = RankingData(ds.requests, ds.impressions, PinTable(ds.pins, 8), 16, ("repin",))
    x = features(data)
    assert x.shape[1] == data.dense.shape[1] + len(HISTORY_FEATURES) and np.isfinite(x).all()
    share = x[:, data.dense.shape[1] + HISTORY_FEATURES.index("topic_share_recent")]
    assert 0 <= share.min() and share.max() <= 1
    # the future action of request 6 is not counted: its 1 h count equals the past ones only
    row = np.flatnonzero(data.requests["request_id"].to_numpy() == 6)[0]
    times = data.seq_times[row][: data.seq_lengths[row]]
    past_1h = int(((times < data.request_ms[row]) & (data.request_ms[row] - times <= 3_600_000)).sum())
    imp = np.flatnonzero(data.req_index == row)[0]
    assert x[imp, data.dense.shape[1]] == pytest.approx(np.log1p(past_1h))


def test_reference_learns_the_planted_signal_and_is_scored_with_the_models(tmp_path):
    planted_dataset(tmp_path / "ds")
    run = fit_reference(tmp_path / "ds", tmp_path / "runs")
    assert run["fitted_heads"] == {"repin": True, "click": True, "hide": True}
    result = evaluate_runs(tmp_path / "runs", n_boot=50)
    assert NAME in result["models"]
    # the intent topic is in the history summaries: far above a random ranker
    assert result["models"][NAME]["repin"]["auc"] > 0.75
    assert json.loads((tmp_path / "runs" / NAME / "run.json").read_text())["encoder"] == NAME


def test_export_refuses_the_reference_run(tmp_path):
    from homefeed.training.export import export_run

    planted_dataset(tmp_path / "ds", n_requests=60)
    fit_reference(tmp_path / "ds", tmp_path / "runs")
    with pytest.raises(UserError):
        export_run(tmp_path / "runs" / NAME)
