"""Training recipes (training/*.toml) for `homefeed train --config`: flags win, keys are checked."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from homefeed.errors import UserError
from homefeed.training.cli import register_train
from homefeed.training.recipe import apply_recipe

RECIPES = Path(__file__).resolve().parents[1] / "training"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_train(parser)
    args = parser.parse_args(["--dataset", "ds", *argv])
    apply_recipe(args)
    return args


def test_recipe_fills_defaults_and_flags_win(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('models = "all"\nepochs = 4\nneg-keep = 0.3\nlr = 1\nforce = true\n'
                      "[set]\ntime_window_ms = 0\nmlp_dims = [64, 32]\n")
    args = parse(["--config", str(recipe)])
    assert (args.models, args.epochs, args.neg_keep, args.lr, args.force) == ("all", 4, 0.3, 1.0, True)
    assert args.set == ["time_window_ms=0", "mlp_dims=[64, 32]"]
    # A flag on the command line wins, even when it equals the built-in default (epochs 3).
    args = parse(["--epochs", "3", "--config", str(recipe), "--set", "time_window_ms=5", "--neg-keep", "1"])
    assert (args.epochs, args.neg_keep, args.models) == (3, 1.0, "all")
    assert args.set == ["mlp_dims=[64, 32]", "time_window_ms=5"]
    # Without --config nothing changes.
    assert parse([]).epochs == 3 and parse([]).models == "transact_v11"


@pytest.mark.parametrize("text, message", [
    ("epochz = 4\n", "unknown key 'epochz'"),
    ("dataset = 'x'\n", "unknown key 'dataset'"),
    ("epochs = 'four'\n", "epochs must be int"),
    ("force = 1\n", "force must be bool"),
    ("epochs = [\n", "not valid TOML"),
    ("set = 3\n", "[set] must be a table"),
])
def test_bad_recipes_are_one_line_user_errors(tmp_path, text, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        parse(["--config", str(recipe)])
    assert str(recipe) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="no such file"):
        parse(["--config", str(tmp_path / "missing.toml")])


@pytest.mark.parametrize("name", ["synthetic", "movielens", "kuairand"])
def test_committed_recipes_load(name):
    args = parse(["--config", str(RECIPES / f"{name}.toml")])
    assert args.models == "all" and args.epochs >= 1


def test_the_demo_trains_with_the_worlds_recipe_and_its_own_budget():
    from homefeed.demo import SIZES, demo_train_args

    for size in SIZES.values():
        ml = parse(demo_train_args("movielens", size))
        synth = parse(demo_train_args("synthetic", size))
        assert ml.force and not synth.force and ml.seq_len == 50
        assert (ml.epochs, ml.max_steps, ml.models) == (size.epochs, size.max_steps, size.models)


def test_per_model_tables_sit_on_top_of_set_and_the_command_line_wins(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('lr = 0.002\nearly_stop = "click"\nearly_stop_metric = "gauc"\n'
                      "[set]\ndcn_rank = 16\nmlp_dims = [64]\n"
                      "[model.transact_v11]\nlr = 5e-4\ndcn_rank = 32\n"
                      "[model.din]\ndin_hidden = [8, 4]\nweight-decay = 0\n")
    args = parse(["--config", str(recipe)])
    assert (args.lr, args.early_stop, args.early_stop_metric) == (0.002, "click", "gauc")
    assert args.set == ["dcn_rank=16", "mlp_dims=[64]"]
    assert args.per_model == {"transact_v11": {"model": {"dcn_rank": 32}, "train": {"lr": 5e-4}},
                              "din": {"model": {"din_hidden": [8, 4]}, "train": {"weight_decay": 0.0}}}
    # --lr and --set KEY on the command line drop the per-model value of that key
    args = parse(["--config", str(recipe), "--lr", "0.01", "--set", "dcn_rank=0"])
    assert args.per_model["transact_v11"] == {"model": {}, "train": {}}
    assert args.set == ["mlp_dims=[64]", "dcn_rank=0"]


@pytest.mark.parametrize("text, message", [
    ("[model.dien]\nlr = 1\n", "[model.dien]: not a model"),
    ("[model.din]\nlearning_rate = 1\n", "unknown key 'learning_rate'"),
    ("[model.din]\nencoder = 'none'\n", "unknown key 'encoder'"),
    ("[model.din]\nlr = 'fast'\n", "lr must be float"),
    ("model = 3\n", "must be tables"),
])
def test_bad_per_model_tables_are_one_line_user_errors(tmp_path, text, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        parse(["--config", str(recipe)])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["synthetic", "movielens", "kuairand"])
def test_committed_recipes_size_the_models_on_purpose(name):
    """No model of a committed recipe is ~100x the no-sequence one by accident (a full-rank DCN
    over TransAct's 1,131-d input made transact_v11 2.8M parameters against `none`'s 30k).
    transact_v10 is big by design: its output is all L tokens flattened (L x 96 inputs)."""
    from homefeed.model import build_model, count_parameters
    from homefeed.model.dense import dense_feature_spec
    from homefeed.training.cli import parse_models, parse_overrides, train_config
    from homefeed.training.train import configs_for

    args = parse(["--config", str(RECIPES / f"{name}.toml")])
    cfg = train_config(args)
    sizes = {}
    for model in parse_models(args.models):
        mc, tc = configs_for(model, args.seq_len or 100, 32, dense_feature_spec(32)["dim"], cfg,
                             parse_overrides(args.set), getattr(args, "per_model", None))
        assert tc.lr > 0 and mc.encoder == model
        sizes[model] = count_parameters(build_model(mc))
    v10 = sizes.pop("transact_v10")
    assert "din" in sizes and max(sizes.values()) < 20 * sizes["none"], sizes
    assert v10 < 100 * sizes["none"], v10
