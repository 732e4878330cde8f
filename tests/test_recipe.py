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
