"""`homefeed experiment retrain`: the schedule (no leakage), the statistics, and the command on a
tiny world replayed through the real pipeline (Kafka -> consumer -> offline log -> Feast).

The pipeline fixture and the replay helper are test_training's: a private redis-server, own topics
on the session's broker, a private applied copy of the feature repo and GX project.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from helpers import planted_dataset, replay

from homefeed import features as F
from homefeed.errors import UserError
from homefeed.training.dataset import save_dataset
from homefeed.training.experiment import REGIMES, _summarise, retrain_schedule, run_retrain_experiment
from homefeed.training.train import TrainConfig

# -- the schedule ---------------------------------------------------------------------------------

def _by(schedule, regime):
    return {a.eval_day: a for a in schedule if a.regime == regime}


def test_schedule_trains_frozen_once_and_refreshes_a_sliding_window():
    schedule = retrain_schedule(range(1, 10), train_days=3, window=3, every=2)
    frozen, retrained = _by(schedule, "frozen"), _by(schedule, "retrained")
    assert sorted(frozen) == sorted(retrained) == [4, 5, 6, 7, 8, 9]
    assert {a.train_days for a in frozen.values()} == {(1, 2, 3)}
    assert {d: (a.trained_at, a.train_days) for d, a in retrained.items()} == {
        4: (4, (1, 2, 3)), 5: (4, (1, 2, 3)),  # the first refresh has the frozen model's days
        6: (6, (3, 4, 5)), 7: (6, (3, 4, 5)),
        8: (8, (5, 6, 7)), 9: (8, (5, 6, 7)),
    }
    assert [frozen[d].age_days for d in range(4, 10)] == [1, 2, 3, 4, 5, 6]
    assert [retrained[d].age_days for d in range(4, 10)] == [1, 2, 1, 2, 1, 2]


@pytest.mark.parametrize("days", [list(range(1, 10)), [1, 2, 3, 5, 6, 8, 9, 10], [3, 4, 5, 6]])
def test_schedule_never_trains_on_the_evaluated_day_or_later(days):
    for k, w, e in itertools.product(range(1, len(days)), range(1, 6), range(1, 5)):
        try:
            schedule = retrain_schedule(days, k, w, e)
        except UserError as exc:  # only a gap wider than the window may make a refresh impossible
            assert "larger --window" in str(exc)
            continue
        evaluated = days[k:]
        for regime in REGIMES:
            assert sorted(_by(schedule, regime)) == evaluated  # every later day, once per regime
        for a in schedule:
            assert a.train_days and max(a.train_days) < a.eval_day, a  # no leakage
            assert a.trained_at <= a.eval_day and max(a.train_days) < a.trained_at, a
            assert set(a.train_days) <= set(days)
            if a.regime == "frozen":
                assert a.train_days == tuple(days[:k])
            else:
                assert all(a.trained_at - w <= d for d in a.train_days)  # the sliding window
                assert a.eval_day - a.trained_at < e  # refreshed at least every e days
    # a refresh that finds no day in its window is refused, not silently trained on nothing
    with pytest.raises(UserError, match="larger --window"):
        retrain_schedule([1, 2, 6], train_days=2, window=2, every=1)


def test_schedule_refuses_bad_parameters():
    with pytest.raises(UserError, match="leaves no day to evaluate"):
        retrain_schedule([1, 2, 3], train_days=3, window=3, every=1)
    with pytest.raises(UserError, match="--window must be >= 1.*--every must be >= 1"):
        retrain_schedule(range(1, 6), train_days=2, window=0, every=0)


# -- the statistics -----------------------------------------------------------------------------------

def test_summary_finds_a_planted_decay_of_the_sequence_model_only():
    """Per-request HIT@3 planted so that the frozen sequence model loses 0.15 a day while the
    frozen baseline and both retrained models stay flat: the finding must say 'reproduced'."""
    rng = np.random.default_rng(0)
    schedule = retrain_schedule(range(1, 8), train_days=2, window=2, every=1)
    per_day, ids = {}, iter(range(10**6))
    for d in range(3, 8):
        req = pd.Index([next(ids) for _ in range(400)])
        for enc in ("transact_v11", "none"):
            for a in (a for a in schedule if a.eval_day == d):
                level = 0.7 if enc == "transact_v11" else 0.5
                if enc == "transact_v11" and a.regime == "frozen":
                    level -= 0.15 * (d - 3)
                hits = pd.Series((rng.random(len(req)) < level).astype(float), index=req)
                per_day[(enc, a.train_days, d)] = {"per_request": {h: hits for h in ("repin", "click", "hide")}}
    out = _summarise(schedule, ["transact_v11", "none"], per_day, [3, 4, 5, 6, 7], 2, "none", 200, 0)
    ours, base = out["summary"]["transact_v11"], out["summary"]["none"]
    assert ours["frozen"]["repin"]["relative_change"]["interval"][1] < -0.5  # ~0.7 -> ~0.18
    assert ours["frozen"]["repin"]["slope_per_day"]["value"] == pytest.approx(-0.15, abs=0.03)
    lo, hi = base["frozen"]["repin"]["relative_change"]["interval"]
    assert lo < 0 < hi
    assert ours["retraining_gain"]["repin"]["days"] == [4, 5, 6, 7]  # day 3: the same model
    assert ours["retraining_gain"]["repin"]["lift"]["interval"][0] > 0.5
    assert out["vs_baseline"]["transact_v11"]["repin"]["gain_difference"]["interval"][0] > 0.5
    assert out["finding"]["verdict"] == "reproduced"
    # deterministic for a seed
    again = _summarise(schedule, ["transact_v11", "none"], per_day, [3, 4, 5, 6, 7], 2, "none", 200, 0)
    assert again["vs_baseline"] == out["vs_baseline"]


# -- the runner on a planted dataset (no services) ------------------------------------------------------

PLANTED_MODEL = dict(action_emb_dim=8, ff_dim=16, top_k=4, hidden_dim=16, mlp_dims=(32,), dcn_layers=1,
                     n_layers=1, time_window_ms=0)


def test_runner_is_deterministic_and_refuses_a_dataset_that_failed_validation(tmp_path):
    ds = planted_dataset(tmp_path / "ds", n_requests=300)  # days 1..3, no stored validation
    cfg = TrainConfig(epochs=1, batch_size=256, seed=3, threads=1)
    kwargs = dict(train_days=1, window=1, every=1, tail_days=1, model_overrides=PLANTED_MODEL, n_boot=20,
                  progress=False)
    first = run_retrain_experiment(ds.path, ["transact_v11", "none"], cfg, **kwargs)
    again = run_retrain_experiment(ds.path, ["transact_v11", "none"], cfg, **kwargs)
    assert first["days"] == {"dataset": [1, 2, 3], "frozen_train": [1], "evaluated": [2, 3], "refreshes": [2, 3]}
    same = lambda key: json.dumps(first[key], sort_keys=True) == json.dumps(again[key], sort_keys=True)
    assert same("daily") and same("summary")  # as JSON: an undefined interval (NaN) equals itself
    assert first["validation_success"] is None

    ds.meta["validation"] = {"success": False, "failures": [{"type": "expect_column_values", "check": "leakage"}]}
    save_dataset(ds)
    with pytest.raises(UserError, match=r"failed the training_set checkpoint .*\[leakage\].*--force"):
        run_retrain_experiment(ds.path, ["none"], cfg, **kwargs)
    forced = run_retrain_experiment(ds.path, ["none"], cfg, force=True, **kwargs)
    assert forced["validation_success"] is False and forced["baseline"] == "none" and forced["vs_baseline"] == {}
    assert forced["finding"]["verdict"] == "not tested"
    with pytest.raises(UserError, match="unknown model"):
        run_retrain_experiment(ds.path, ["gru"], cfg, force=True, **kwargs)


# -- the command on a tiny world --------------------------------------------------------------------

TINY_MODEL = ["--seq-len", "16", "--set", "n_layers=1", "--set", "top_k=4", "--set", "ff_dim=16",
              "--set", "mlp_dims=[32]", "--set", "dcn_layers=1", "--set", "hidden_dim=16"]


@pytest.fixture(scope="module")
def tiny_dataset(pipeline, tmp_path_factory):  # noqa: F811
    """A 6-day world (days 1..5 usable) replayed through Kafka and built through Feast, once."""
    from homefeed.events import ActionEvent, ActionType
    from homefeed.feature_store import open_store
    from homefeed.training.dataset import build_dataset, compact_table
    from homefeed.training.profiles_job import run_profile_job
    from homefeed.world import WorldParams, generate_world, load_world

    root = tmp_path_factory.mktemp("experiment")
    generate_world(WorldParams(users=25, pins=150, days=6, seed=5, n_topics=6, non_core_share=0.2,
                               min_candidates=6, max_candidates=8), root / "world", progress=False)
    world = load_world(root / "world")
    events = [(ActionEvent(r.event_id, int(r.user_id), int(r.pin_id), ActionType.parse(r.action_type),
                           int(r.event_time)), int(r.arrival_time)) for r in world.events.itertuples()]
    replay(pipeline, events, world.pins, world.start_ms, batch_max_events=10)
    for table in (F.USER_ACTION_SEQUENCE, F.PIN_FEATURES, "action_events"):
        compact_table(pipeline.offline_dir, table)
    run_profile_job(pipeline)
    build_dataset(root / "world", root / "ds", pipeline, store=open_store(pipeline.feature_repo),
                  warmup_days=1, valid_days=1, test_days=1, progress=False)
    return root / "ds"


@pytest.mark.integration
@pytest.mark.slow
def test_experiment_retrain_command_on_a_tiny_world(tiny_dataset, tmp_path, capsys):
    from homefeed.cli import main

    out = tmp_path / "exp"
    argv = ["experiment", "retrain", "--dataset", str(tiny_dataset), "--models", "transact_v11,none",
            "--train-days", "2", "--window", "2", "--every", "2", "--epochs", "1", "--batch-size", "256",
            "--n-boot", "50", "--threads", "1", "--out", str(out), "--json", "-q", *TINY_MODEL]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)

    assert result["days"] == {"dataset": [1, 2, 3, 4, 5], "frozen_train": [1, 2], "evaluated": [3, 4, 5],
                              "refreshes": [3, 5]}
    assert result["models"] == ["transact_v11", "none"] and result["baseline"] == "none"
    assert result["validation_success"] is True
    for model in result["models"]:
        for regime in REGIMES:
            daily = result["daily"][model][regime]
            assert sorted(daily) == ["3", "4", "5"]
            for day, e in daily.items():
                assert e["requests"] > 0 and max(e["train_days"]) < int(day)  # never its own day
                for head in ("repin", "click", "hide"):
                    assert e[head]["n_requests"] <= e["requests"]
                    assert e[head]["hit_at_3"] is None or 0 <= e[head]["hit_at_3"] <= 1
            assert result["summary"][model][regime]["repin"]["tail_days"] == [4, 5]
        # frozen: days 1-2 for every day; retrained: the frozen model on day 3-4, days 3-4 on day 5
        frozen, retrained = result["daily"][model]["frozen"], result["daily"][model]["retrained"]
        assert {tuple(e["train_days"]) for e in frozen.values()} == {(1, 2)}
        assert [retrained[d]["train_days"] for d in ("3", "4", "5")] == [[1, 2], [1, 2], [3, 4]]
        assert retrained["5"]["train_days"] != frozen["5"]["train_days"]
        assert retrained["3"]["repin"] == frozen["3"]["repin"]  # the same model, scored once
        gain = result["summary"][model]["retraining_gain"]["repin"]
        assert gain["days"] == [5] and set(gain["lift"]) == {"value", "interval"}
    # one training per distinct set of days and model; the shared one serves both regimes
    assert sorted((t["model"], tuple(t["train_days"]), tuple(t["used_by"])) for t in result["trainings"]) == [
        ("none", (1, 2), ("frozen", "retrained")), ("none", (3, 4), ("retrained",)),
        ("transact_v11", (1, 2), ("frozen", "retrained")), ("transact_v11", (3, 4), ("retrained",))]
    assert set(result["vs_baseline"]["transact_v11"]["repin"]) == {"lift_by_day", "gain_difference",
                                                                   "frozen_decay_difference"}
    assert result["finding"]["verdict"] in {"reproduced", "contradicted", "inconclusive"}

    for name in ("retrain.json", "retrain.md", "retrain.csv", "retrain.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "retrain.json").read_text()) == result
    assert len(pd.read_csv(out / "retrain.csv")) == 2 * 2 * 3
    assert "| 5 |" in (out / "retrain.md").read_text()
