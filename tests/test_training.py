"""Training: point-in-time datasets from Feast, the data path, training, evaluation, export.

The pipeline tests run the real thing against a private redis-server (so no other test's users
share sequence state), the session's broker (own topics) and a private, applied copy of the
feature repo whose sources read a private offline log. The training tests use a small planted
dataset written in the same on-disk format `homefeed dataset build` writes.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import planted_dataset, replay

from homefeed import features as F
from homefeed import offline_log
from homefeed.errors import UserError
from homefeed.events import ActionEvent, ActionType
from homefeed.training.data import PinTable, RankingData, dense_feature_spec
from homefeed.training.dataset import (
    IMPRESSION_SEQUENCE_FEATURES,
    SEQUENCE_FEATURES,
    audit_shown,
    historical,
    impression_audit_part,
    load_dataset,
    sequence_audit,
)
from homefeed.training.train import TrainConfig, run_training

HEADS = ("repin", "click", "hide")


# -- point in time ----------------------------------------------------------------------------------

@pytest.mark.integration
def test_late_event_absent_before_it_arrived_and_present_after(pipeline):
    from homefeed.feature_store import open_store

    user, t0 = 7_000_001, 1_767_355_200_000  # 2026-01-02 12:00 UTC, before the tiny world below
    on_a = ActionEvent("pit-a", user, 11, ActionType.REPIN, t0)
    on_b = ActionEvent("pit-b", user, 12, ActionType.CLICK, t0 + 60_000)
    late = ActionEvent("pit-late", user, 13, ActionType.HIDE, t0 + 30_000)  # reaches us 2 h later
    # impressions the same way: pins 21 and 22 shown on time, 23 shown at +40 s but logged 2 h later
    shown = pd.DataFrame({"event_id": ["pit-i1", "pit-i2", "pit-ilate"], F.USER_ID: [user] * 3,
                          F.PIN_ID: [21, 22, 23], "event_time": [t0 + 10_000, t0 + 70_000, t0 + 40_000],
                          "arrival_time": [t0 + 10_200, t0 + 70_200, t0 + 2 * 3_600_000],
                          "surface": "homefeed", F.REQUEST_ID: [1, 2, 2]})
    replay(pipeline, [(on_a, t0 + 200), (on_b, t0 + 60_200), (late, t0 + 2 * 3_600_000)], impressions=shown)

    requests = pd.DataFrame({
        F.REQUEST_ID: [1, 2, 3],
        F.USER_ID: [user] * 3,
        # between a and b; after the late event happened but before it arrived; after it arrived
        "request_time_ms": [t0 + 50_000, t0 + 3_600_000, t0 + 3 * 3_600_000],
    })
    store = open_store(pipeline.feature_repo)
    got = historical(store, requests, SEQUENCE_FEATURES, [F.REQUEST_ID, F.USER_ID])
    assert [list(p) for p in got[F.SEQ_PIN_IDS]] == [[11], [12, 11], [12, 13, 11]]
    assert list(got[F.SEQ_ACTION_TYPES][2]) == [2, 3, 1]
    # the impression sequence too: as servable at each request, the late impression only once it arrived
    imps = historical(store, requests, IMPRESSION_SEQUENCE_FEATURES, [F.REQUEST_ID, F.USER_ID])
    assert [list(p) for p in imps[F.IMP_PIN_IDS]] == [[21], [22, 21], [22, 23, 21]]
    assert list(imps[F.IMP_TIMES][2]) == [t0 + 70_000, t0 + 40_000, t0 + 10_000]

    # Without the created-timestamp filter the late hide would leak into request 2.
    entity = requests[[F.USER_ID]].assign(
        event_timestamp=pd.to_datetime(requests["request_time_ms"], unit="ms", utc=True).astype("datetime64[us, UTC]"))
    naive = store.get_historical_features(entity, SEQUENCE_FEATURES).to_df()
    naive = naive.sort_values(F.EVENT_TIMESTAMP)
    assert 13 in list(naive[F.SEQ_PIN_IDS].iloc[1])

    logged = pd.DataFrame({F.USER_ID: [user] * 3, F.PIN_ID: [11, 12, 13],
                           "action_type": ["repin", "click", "hide"],
                           "event_time": [t0, t0 + 60_000, t0 + 30_000],
                           "arrival_time": [t0 + 200, t0 + 60_200, t0 + 2 * 3_600_000]})
    audit = sequence_audit(requests.merge(got, on=[F.REQUEST_ID, F.USER_ID]), logged)
    assert audit["leaked_actions"] == 0 and audit["stale_requests"] == 0
    rows = requests.merge(imps, on=[F.REQUEST_ID, F.USER_ID])
    audit = impression_audit_part(rows, audit_shown(shown))
    assert audit == {"sequence_impressions": 6, "leaked_impressions": 0, "unmatched_impressions": 0}
    # read at the late one's arrival, request 2 would hold an impression that arrived after it
    rows.loc[1, [F.IMP_PIN_IDS, F.IMP_TIMES, F.IMP_LENGTH]] = rows.loc[2, [F.IMP_PIN_IDS, F.IMP_TIMES, F.IMP_LENGTH]]
    assert impression_audit_part(rows, audit_shown(shown))["leaked_impressions"] == 1


@pytest.mark.integration
@pytest.mark.slow
def test_dataset_build_end_to_end_on_a_tiny_world(pipeline, tmp_path):
    """world -> Kafka -> consumer -> offline log -> profile job -> Feast historical -> parquet."""
    from homefeed.feature_store import open_store
    from homefeed.training.dataset import build_dataset, compact_table
    from homefeed.training.profiles_job import run_profile_job
    from homefeed.world import WorldParams, generate_world, load_world

    # few new users: their first day has no profile yet, and the suite allows 5% null profiles
    generate_world(WorldParams(users=25, pins=150, days=4, seed=5, n_topics=6, non_core_share=0.2, min_candidates=6,
                               max_candidates=8), tmp_path / "world", progress=False)
    world = load_world(tmp_path / "world")
    # user ids far from the other test's
    events = [(ActionEvent(r.event_id, int(r.user_id), int(r.pin_id), ActionType.parse(r.action_type),
                           int(r.event_time)), int(r.arrival_time)) for r in world.events.itertuples()]
    replay(pipeline, events, world.pins, world.start_ms, batch_max_events=10)
    for table in (F.USER_ACTION_SEQUENCE, F.PIN_FEATURES, "action_events"):
        done = compact_table(pipeline.offline_dir, table)  # one file per partition
        assert done["files_after"] == len(offline_log.partitions(pipeline.offline_dir / table)) < done["files_before"]

    summary = run_profile_job(pipeline)
    assert summary["rows_appended"] > 0 and summary["users_online"] > 0
    assert run_profile_job(pipeline)["rows_appended"] == 0  # idempotent
    store = open_store(pipeline.feature_repo)
    online = store.get_online_features(features=[f"{F.USER_PROFILE}:{F.PROFILE_ACTIONS_28D}"],
                                       entity_rows=[{F.USER_ID: int(world.events[F.USER_ID].iloc[0])}]).to_dict()
    assert online[F.PROFILE_ACTIONS_28D][0] > 0

    meta = build_dataset(tmp_path / "world", tmp_path / "ds", pipeline, store=store, warmup_days=1,
                         valid_days=1, test_days=1, progress=False)
    ds = load_dataset(tmp_path / "ds")
    kept = world.requests[world.requests["day"] >= 1]
    assert len(ds.impressions) == len(kept) and len(ds.requests) == kept[F.REQUEST_ID].nunique()
    assert meta["audit"]["leaked_actions"] == 0 and meta["audit"]["unmatched_actions"] == 0
    assert meta["validation"]["success"], json.dumps(meta["validation"]["failures"])
    assert meta["splits"] == {"train": [1], "valid": [2], "test": [3]}
    # every sequence action strictly before its request, newest first
    for times, rt in zip(ds.requests[F.SEQ_ACTION_TIMES], ds.requests["request_time_ms"]):
        assert all(t < rt for t in times) and list(times) == sorted(times, reverse=True)
    assert ds.requests[F.SEQ_LENGTH].gt(0).mean() > 0.8
    assert ds.impressions[F.PIN_EMBEDDING].map(len).eq(pipeline.embedding_dim).all()
    # labels are the world's, row for row
    merged = ds.impressions.merge(kept, on=[F.REQUEST_ID, F.PIN_ID], suffixes=("", "_w"))
    for col in F.LABEL_COLUMNS:
        assert (merged[col] == merged[f"{col}_w"]).all()


# Planted sequences are minutes old: a random time window of hours would hide all but the newest action.
SMALL = dict(action_emb_dim=8, ff_dim=16, top_k=4, hidden_dim=16, mlp_dims=(32,), dcn_layers=1,
             time_window_ms=0)
FAST = TrainConfig(epochs=4, batch_size=128, lr=3e-3, seed=0)


@pytest.fixture(scope="module")
def planted_runs(pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    planted_dataset(root / "ds")
    settings = pipeline.replace(embedding_dim=8, sequence_length=16)
    run_training(root / "ds", ["none", "transact_v11"], root / "runs", FAST, settings=settings,
                 model_overrides=SMALL, progress=False)
    return root


def test_dense_features_are_the_same_for_one_user_serving_and_batch_training(tmp_path):
    from homefeed.model.dense import dense_from_inputs, user_inputs
    from homefeed.serving.online_features import PinFeatures
    from homefeed.serving.ranking import dense_candidates

    ds = planted_dataset(tmp_path / "ds", n_requests=20)
    data = RankingData(ds.requests, ds.impressions, PinTable(ds.pins, 8), 16, HEADS)
    assert data.dense.shape == (len(ds.impressions), dense_feature_spec(8)["dim"])
    # serving: one user's online features (Feast to_dict shape) and its candidates
    row = ds.requests.iloc[3]
    cands = ds.impressions[ds.impressions[F.REQUEST_ID] == row[F.REQUEST_ID]]
    user = {k: [row[k]] for k in (F.SEQ_ACTION_TIMES, *F.PROFILE_FEATURE_NAMES)}
    # the candidates as the online reader returns them (an unknown duration is -1 there, null in
    # the training set), turned into the dense inputs by serving's own helper
    duration = cands[F.PIN_DURATION_MS]
    assert duration.isna().any() and duration.notna().any()  # both kinds of candidate
    pins = PinFeatures(cands[F.PIN_ID].to_numpy(np.int64), np.stack(cands[F.PIN_EMBEDDING]),
                       cands[F.PIN_TOPIC].to_numpy(np.int64), cands[F.PIN_CREATED_MS].to_numpy(np.int64),
                       np.ones(len(cands), dtype=bool),
                       duration_ms=duration.fillna(-1).to_numpy(np.int64))
    cand = dense_candidates(pins)
    served = dense_from_inputs(user_inputs(user, 8), cand, int(row["request_time_ms"]))
    np.testing.assert_allclose(served, data.dense[cands.index.to_numpy()], rtol=1e-6)
    names = list(dense_feature_spec(8)["names"])
    has = data.dense[cands.index.to_numpy(), names.index("has_pin_duration")]
    assert has.tolist() == duration.notna().astype(float).tolist()
    assert np.allclose(data.dense[cands.index.to_numpy(), names.index("log_pin_duration_s")],
                       np.log1p(duration.fillna(0).to_numpy(np.float64) / 1000))
    # a user without a profile or sequence still gets finite features
    empty = dense_from_inputs(user_inputs({F.SEQ_ACTION_TIMES: [[]], **{k: [None] for k in F.PROFILE_FEATURE_NAMES}},
                                          8), cand, int(row["request_time_ms"]))
    assert np.isfinite(empty).all() and (empty[:, 1] == 0).all()  # has_profile = 0


@pytest.mark.integration
def test_small_training_run_learns_the_planted_signal_and_beats_the_no_sequence_model(planted_runs):
    from homefeed.training.evaluate import evaluate_runs, write_comparison

    run = json.loads((planted_runs / "runs" / "transact_v11" / "run.json").read_text())
    assert run["validation"]["success"] and run["examples_per_s"] > 0
    assert len(run["history"]) == FAST.epochs and (planted_runs / "runs" / "transact_v11" / "curves.png").is_file()
    result = evaluate_runs(planted_runs / "runs", n_boot=200)
    ours, base = result["models"]["transact_v11"], result["models"]["none"]
    # random ordering finds ~1/3 of them; the sequence tells which topic the user wants now
    assert ours["repin"]["hit_at_3"] > 0.6 > base["repin"]["hit_at_3"] + 0.1
    assert ours["repin"]["interval"][0] > 0 and ours["repin"]["auc"] > 0.75
    assert result["primary_vs"]["none"]["repin"]["interval"][0] > 0
    # user-level GAUC (users resampled for its interval) and HIT@3 by the world's segment column
    assert 0.5 < ours["repin"]["gauc"] <= 1 and ours["repin"]["gauc_users"] > 0
    assert ours["repin"]["gauc_lift_vs_no_sequence"] > 0 and base["repin"]["gauc_interval"] is None
    assert sum(e["requests"] for e in result["by_segment"].values()) == result["requests"]["all"]
    assert "gauc_click" in result["primary_vs"]["none"]
    with pytest.raises(UserError, match="no test request has"):
        evaluate_runs(planted_runs / "runs", n_boot=10, min_candidates=10**6)
    paths = write_comparison(result, planted_runs / "report")
    assert set(paths) == {"md", "csv", "png", "json"}
    assert "transact_v11" in paths["md"].read_text() and "GAUC" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["models"]["transact_v11"]["repin"]["lift_vs_no_sequence"] > 0


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread (OpenMP barriers cost more than these ops)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_planted(tmp_path_factory):
    """(dataset, {split: RankingData}) of 600 planted requests (200 per split), no Feast."""
    ds = planted_dataset(tmp_path_factory.mktemp("small") / "ds", n_requests=600)
    pins = PinTable(ds.pins, 8)
    return ds, {s: RankingData(*ds.split(s), pins, 16, HEADS) for s in ("train", "valid", "test")}


def test_early_stopping_watches_the_recipes_head_and_keeps_the_best_weights(small_planted, one_thread):
    from homefeed.model import ModelConfig
    from homefeed.training.train import evaluate_data, train

    _, data = small_planted
    mc = ModelConfig(encoder="avg_pool", seq_len=16, emb_dim=8, dense_dim=dense_feature_spec(8)["dim"], **SMALL)
    # a cap of 40 epochs of 3 steps, validated every 2 steps: stops long before the cap
    cfg = TrainConfig(epochs=40, batch_size=64, lr=3e-2, max_steps_per_epoch=3, patience=2,
                      early_stop="click", early_stop_metric="gauc", eval_every=2)
    result = train(mc, data["train"], data["valid"], cfg, progress=False)
    steps = [e["step"] for e in result.evals]
    assert steps == list(range(2, 2 * len(steps) + 1, 2)) and len(result.history) < cfg.epochs
    scores = [e["score"] for e in result.evals]
    assert all(e["score"] == e["valid"]["gauc_click"] for e in result.evals)
    best = int(np.argmax(scores))
    assert len(scores) - 1 - best == cfg.patience  # stopped after `patience` validations without a new best
    assert max(scores) > scores[-1] + 0.01  # (so the check below tells the best weights from the last)
    assert result.best_step == steps[best] and result.valid_metrics["gauc_click"] == max(scores)
    # the weights kept are the best validation's, not the last step's
    assert evaluate_data(result.model, data["valid"])["gauc_click"] == pytest.approx(max(scores), abs=1e-12)
    with pytest.raises(UserError, match="early_stop head 'like'"):
        train(mc, data["train"], data["valid"], TrainConfig(early_stop="like"), progress=False)
    with pytest.raises(UserError, match="early_stop_metric"):
        TrainConfig(early_stop_metric="ndcg")


def test_by_user_batches_keep_each_users_rows_together_and_pairwise_training_runs(small_planted, one_thread):
    from homefeed.model import ModelConfig
    from homefeed.training.train import train

    _, data = small_planted
    d = data["train"]
    users = d.user_ids
    batches = list(d.loader(64, shuffle=True, seed=3, by_user=True).batch_sampler)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(d)))  # every row once
    # users come in blocks: a user's rows are contiguous in the epoch's order
    order = users[rows]
    changes = np.flatnonzero(order[1:] != order[:-1])
    assert len(changes) + 1 == len(np.unique(users))
    again = list(d.loader(64, shuffle=True, seed=3, by_user=True).batch_sampler)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # seeded
    batch = d.collate(batches[0])
    assert batch.groups.tolist() == users[batches[0]].tolist()
    mc = ModelConfig(encoder="none", seq_len=16, emb_dim=8, dense_dim=dense_feature_spec(8)["dim"], **SMALL)
    result = train(mc, d, data["valid"], TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=3,
                                                     pair_weight=1.0), progress=False)
    assert np.isfinite(result.history[0]["train_loss"]) and result.train_config.pair_weight == 1.0
    with pytest.raises(UserError, match="pair_weight"):
        TrainConfig(pair_weight=-1.0)


def test_every_model_trains_exports_and_serves_on_a_tiny_dataset(small_planted, tmp_path, one_thread):
    """`--models all` (DIN included) on a tiny planted set: train, save, the comparison table
    (with parameter counts), export to a BentoML store and load back for serving."""
    from homefeed.model import ENCODER_KINDS, count_parameters
    from homefeed.serving.fast_model import ServedRanker, UserTensors
    from homefeed.training.evaluate import evaluate_runs
    from homefeed.training.export import export_run, load_exported
    from homefeed.training.report import comparison_markdown
    from homefeed.training.train import configs_for, save_run, train

    ds, data = small_planted
    req, imp = ds.split("valid")
    first = req[F.REQUEST_ID].iloc[:50]  # a small validation set: 50 requests
    valid = RankingData(req[req[F.REQUEST_ID].isin(first)], imp[imp[F.REQUEST_ID].isin(first)],
                        data["valid"].pins, 16, HEADS)
    spec = dense_feature_spec(8)
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=3, patience=1, early_stop="click",
                      early_stop_metric="auc")
    tiny = {**SMALL, "n_layers": 1, "din_hidden": [8], "dcn_rank": 4, "mlp_dims": [16]}
    per_model = {"din": {"model": {"din_hidden": [6, 4]}, "train": {"lr": 2e-3}}}
    home = tmp_path / "bentoml"
    sizes = {}
    for kind in ENCODER_KINDS:
        mc, tc = configs_for(kind, 16, 8, spec["dim"], cfg, tiny, per_model)
        result = train(mc, data["train"], valid, tc, progress=False)
        save_run(tmp_path / "runs" / kind, result, ds, {"success": True}, spec, data["test"])
        sizes[kind] = count_parameters(result.model)
        tag = export_run(tmp_path / "runs" / kind, name=f"tiny-{kind.replace('_', '-')}", bentoml_home=home)
        model, config, meta = load_exported(tag, F.schema_fingerprint(8, 16), bentoml_home=home)
        assert config.encoder == kind and meta["parameters"] == sizes[kind]
        batch = data["train"].collate(np.arange(12))  # one request: its 12 candidates
        expected = result.model.predict(batch).numpy()
        assert 0.01 < expected.mean() < 0.99  # not saturated: the comparison below means something
        served = ServedRanker(model).score(UserTensors.from_batch(batch), batch.cand_emb, batch.dense)
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    # The model setting: impressions in the sequence (the planted set has impression sequences).
    # Trained on the merged input, exported with the setting, served on the same tensors.
    imp_data = {s: RankingData(*ds.split(s), data[s].pins, 16, HEADS, sequence_impressions=True)
                for s in ("train", "test")}
    imp_valid = RankingData(req[req[F.REQUEST_ID].isin(first)], imp[imp[F.REQUEST_ID].isin(first)],
                            data["valid"].pins, 16, HEADS, sequence_impressions=True)
    mc, tc = configs_for("transact_v11", 16, 8, spec["dim"], cfg, {**tiny, "sequence_impressions": True})
    result = train(mc, imp_data["train"], imp_valid, tc, progress=False)
    save_run(tmp_path / "imp_runs" / "transact_v11", result, ds, {"success": True}, spec, imp_data["test"])
    tag = export_run(tmp_path / "imp_runs" / "transact_v11", name="tiny-imp", bentoml_home=home)
    model, config, meta = load_exported(tag, F.schema_fingerprint(8, 16), bentoml_home=home)
    assert config.sequence_impressions and meta["sequence_impressions"] and config.action_vocab_size == 5
    batch = imp_data["train"].collate(np.arange(24))  # two requests
    assert (batch.seq_action == 4).any() and (batch.seq_mask.sum(1) > data["train"].collate(
        np.arange(24)).seq_mask.sum(1)).any()  # impressions are in the sequence
    expected = result.model.predict(batch).numpy()
    served = ServedRanker(model).score(UserTensors.from_batch(batch), batch.cand_emb[:12], batch.dense[:12])
    np.testing.assert_allclose(served, expected[:12], rtol=0, atol=1e-5)

    run = json.loads((tmp_path / "runs" / "din" / "run.json").read_text())
    assert run["train_config"]["lr"] == 2e-3 and run["parameters"] == sizes["din"] and run["evals"]
    result = evaluate_runs(tmp_path / "runs", n_boot=20)
    assert list(result["models"]) == list(ENCODER_KINDS)
    table = comparison_markdown(result)
    assert f"| `din` | {sizes['din']:,} |" in table and f"| `none` | {sizes['none']:,} |" in table


@pytest.mark.integration
def test_training_refuses_a_failing_training_set_unless_forced(pipeline, tmp_path):
    planted_dataset(tmp_path / "ds", n_requests=120, leak=True)
    settings = pipeline.replace(embedding_dim=8, sequence_length=16)
    cfg = TrainConfig(epochs=1, batch_size=256, max_steps_per_epoch=1)
    with pytest.raises(UserError, match="leakage"):
        run_training(tmp_path / "ds", ["none"], tmp_path / "runs", cfg, settings=settings, progress=False)
    assert not (tmp_path / "runs").exists()
    run_training(tmp_path / "ds", ["none"], tmp_path / "runs", cfg, settings=settings, force=True,
                 progress=False)
    stored = json.loads((tmp_path / "runs" / "none" / "run.json").read_text())["validation"]
    assert stored["success"] is False and "leakage" in [f["check"] for f in stored["failures"]]


@pytest.mark.integration
def test_export_load_round_trip_and_refusal_on_a_fingerprint_mismatch(planted_runs, tmp_path):
    from homefeed.training.export import ModelSchemaMismatch, export_run, load_exported
    from homefeed.training.train import load_run

    home = tmp_path / "bentoml"
    run_dir = planted_runs / "runs" / "transact_v11"
    tag = export_run(run_dir, name="test-ranker", bentoml_home=home)
    fingerprint = F.schema_fingerprint(8, 16)
    model, config, meta = load_exported("test-ranker", fingerprint, bentoml_home=home)  # latest
    assert meta["tag"] == tag and config.encoder == "transact_v11" and meta["validation"]["success"]

    original, _, _ = load_run(run_dir)
    ds = load_dataset(planted_runs / "ds")
    data = RankingData(*ds.split("test"), PinTable(ds.pins, 8), 16, HEADS)
    batch = data.collate(np.arange(64))
    torch.testing.assert_close(model.predict(batch), original.predict(batch))

    with pytest.raises(ModelSchemaMismatch, match="feature schema"):
        load_exported(tag, F.schema_fingerprint(32, 100), bentoml_home=home)



@pytest.mark.integration
def test_dataset_build_refuses_a_feature_repo_that_reads_another_log(pipeline, tmp_path):
    from homefeed.feature_store import open_store
    from homefeed.training.dataset import check_sources

    store = open_store(pipeline.feature_repo)
    check_sources(store, pipeline)
    with pytest.raises(UserError, match="re-apply the feature repo"):
        check_sources(store, pipeline.replace(home=tmp_path / "elsewhere"))


def test_cli_groups_register_their_commands():
    import argparse

    from homefeed.bench import dataset as bench_dataset
    from homefeed.bench import train as bench
    from homefeed.training import cli

    parser = argparse.ArgumentParser(prog="homefeed")
    groups = parser.add_subparsers(dest="group")
    for name, register in (("dataset", cli.register_dataset), ("train", cli.register_train),
                           ("evaluate", cli.register_evaluate), ("export", cli.register_export)):
        register(groups.add_parser(name))
    bench_sub = groups.add_parser("bench").add_subparsers(dest="command")
    bench.add_bench_train_parser(bench_sub)
    bench_dataset.add_bench_dataset_parser(bench_sub)
    cases = {
        ("dataset", "build", "--world", "w", "--out", "d"): cli.cmd_dataset_build,
        ("dataset", "profiles"): cli.cmd_dataset_profiles,
        ("dataset", "compact"): cli.cmd_dataset_compact,
        ("train", "--dataset", "d", "--models", "all"): cli.cmd_train,
        ("evaluate", "--compare", "--json"): cli.cmd_evaluate,
        ("export", "runs/transact_v11"): cli.cmd_export,
        ("bench", "train", "--json"): bench.cmd_bench_train,
        ("bench", "dataset", "--json"): bench_dataset.cmd_bench_dataset,
    }
    for argv, func in cases.items():
        assert parser.parse_args(list(argv)).func is func
    assert cli.parse_models("all")[-1] == "transact_v11" and cli.parse_models("none, cnn") == ["none", "cnn"]


def test_point_in_time_calls_are_runs_of_rows_in_time_order():
    from homefeed.training.dataset import row_chunks

    times = np.array([50, 10, 40, 10, 30, 20, 60])
    chunks = row_chunks(times, 3)
    assert [c.tolist() for c in chunks] == [[1, 3, 5], [4, 2, 0], [6]]
    assert [len(c) for c in row_chunks(times, 100)] == [7]
    assert row_chunks(np.zeros(0), 10) == []


def test_user_side_calls_are_cut_by_their_join_pairs():
    from homefeed.training.dataset import pair_chunks

    # user 1 has feature rows at 0..9, user 2 at 5; requests of user 1 at 3, 6, 9, user 2 at 7
    feat_keys, feat_times = np.array([1] * 10 + [2]), np.array([*range(10), 5])
    times, keys = np.array([9, 3, 7, 6]), np.array([1, 1, 2, 1])
    # pairs from t0 = 3: row@3 -> 1 + 1 (3), row@6 -> 1 + 4 (3..6), row@7 (user 2) -> 1 + 1, row@9 -> 1 + 7
    whole = pair_chunks(times, keys, feat_keys, feat_times, max_pairs=100, max_rows=100)
    assert [c.tolist() for c in whole] == [[1, 3, 2, 0]]
    cut = pair_chunks(times, keys, feat_keys, feat_times, max_pairs=9, max_rows=100)
    assert [c.tolist() for c in cut] == [[1, 3, 2], [0]]  # 2 + 5 + 2 = 9 <= 9 < 9 + 8
    assert [c.tolist() for c in pair_chunks(times, keys, feat_keys, feat_times, 1, 100)] == [[1], [3], [2], [0]]
    assert [len(c) for c in pair_chunks(times, keys, feat_keys, feat_times, 100, 3)] == [3, 1]
    assert pair_chunks(np.zeros(0), np.zeros(0), feat_keys, feat_times, 10, 10) == []


def test_long_span_bench_world_has_the_movielens_shape(tmp_path):
    from homefeed.bench.dataset import write_long_span_ratings
    from homefeed.world.movielens import read_movielens

    data = read_movielens(write_long_span_ratings(tmp_path, 5_000, users=40, movies=600))
    r = data.ratings
    assert abs(len(r) - 5_000) < 100 and r["user_id"].nunique() == 40
    assert r.groupby("user_id").size().min() >= 20  # GroupLens keeps users with >= 20 ratings
    years = (r["timestamp"].max() - r["timestamp"].min()) / 86_400 / 365.25
    assert 15 < years <= 20


def test_lift_of_a_segment_without_requests_is_empty_not_an_error():
    """A segment (e.g. non-core users of a slice of the most active ones) may have no request
    for a head: no lift and no interval, not a crash of the whole comparison."""
    import pandas as pd

    from homefeed.training.evaluate import _lift

    none = {"lift_vs_no_sequence": None, "interval": None}
    empty, some = pd.Series([], dtype=float), pd.Series([1.0, 0.0], index=[7, 8])
    assert _lift(empty, {"repin": some}, "repin", 10, 0) == none
    assert _lift(some, {"repin": empty}, "repin", 10, 0) == none
    assert _lift(some, {"repin": some}, "repin", 10, 0)["lift_vs_no_sequence"] == 0.0
