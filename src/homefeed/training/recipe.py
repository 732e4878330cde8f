"""Training recipes: `homefeed train --config training/NAME.toml`.

A recipe is a TOML file of `homefeed train` flags (the repository keeps one per world in the
top-level training/ folder). Flags given on the command line win over the recipe, which wins
over the built-in defaults:

1. `track_given(parser)` makes every option of the parser note, when the command line sets it,
   its name in the namespace (`_given`), so "given" never has to be guessed from values.
2. `apply_recipe(args)` reads `args.config` (when set), checks every key against the parser's
   options (unknown key, wrong type -> one-line UserError naming the file) and sets each one the
   command line did not give. The `[set]` table holds ModelConfig overrides for every model;
   `--set KEY=VALUE` on the command line replaces the recipe's value of KEY only.
3. `[model.NAME]` tables (NAME an encoder kind, e.g. `[model.transact_v11]`) hold that model's
   own ModelConfig fields and training keys (`lr`, `weight_decay`), on top of the global keys
   and `[set]`. The command line still wins: `--lr` or `--set KEY=...` drops the per-model value
   of that key. They land in `args.per_model` as {NAME: {"model": {...}, "train": {...}}}.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

from homefeed.errors import UserError

GIVEN = "_given"
SKIP = {"help", "config", "func", "dataset", "out", "recipe_actions", "per_model"}
PER_MODEL_TRAIN_KEYS = ("lr", "weight_decay")  # TrainConfig fields a [model.NAME] table may set


def track_given(parser: argparse.ArgumentParser) -> None:
    """Record in namespace._given the dest of every option the command line sets."""
    for action in parser._actions:
        if action.dest in ("help",) or type(action).__name__.startswith("_Given"):
            continue
        base = type(action)

        def call(self, p, namespace, values, option_string=None, _base=base):
            given = set(getattr(namespace, GIVEN, set()))
            given.add(self.dest)
            setattr(namespace, GIVEN, given)
            _base.__call__(self, p, namespace, values, option_string)

        action.__class__ = type(f"_Given{base.__name__}", (base,), {"__call__": call})
    parser.set_defaults(recipe_actions={a.dest: a for a in parser._actions})


def _expected(action: argparse.Action):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return bool
    if action.type in (int, float):
        return action.type
    return str


def load_recipe(path: Path, actions: dict[str, argparse.Action]) -> dict:
    """The recipe's values by dest, type-checked against the parser's options."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--config {path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"--config {path}: not valid TOML: {exc}") from None
    out: dict = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest == "set":
            if not isinstance(value, dict):
                raise UserError(f"{path}: [set] must be a table of ModelConfig overrides")
            out["set"] = [f"{k}={json.dumps(v)}" for k, v in value.items()]
            continue
        if dest == "model":
            out["per_model"] = _per_model(path, value)
            continue
        action = actions.get(dest)
        if action is None or dest in SKIP:
            allowed = sorted(d for d in actions if d not in SKIP and not d.startswith("_")) + ["set", "model"]
            raise UserError(f"{path}: unknown key {key!r}; recipe keys are {', '.join(allowed)}")
        want = _expected(action)
        ok = isinstance(value, bool) if want is bool else (
            isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
            isinstance(value, int) and not isinstance(value, bool) if want is int else isinstance(value, str))
        if not ok:
            raise UserError(f"{path}: {key} must be {want.__name__}, got {value!r}")
        out[dest] = want(value) if want is float else value
    return out


def _per_model(path: Path, tables) -> dict:
    """[model.NAME] tables -> {NAME: {"model": ModelConfig fields, "train": training keys}}."""
    from dataclasses import fields

    from homefeed.model.config import ENCODER_KINDS, ModelConfig

    model_keys = {f.name for f in fields(ModelConfig)} - {"encoder"}
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise UserError(f"{path}: [model.NAME] must be tables, e.g. [model.transact_v11]")
    out = {}
    for name, table in tables.items():
        if name not in ENCODER_KINDS:
            raise UserError(f"{path}: [model.{name}]: not a model; models are {', '.join(ENCODER_KINDS)}")
        entry: dict = {"model": {}, "train": {}}
        for key, value in table.items():
            k = key.replace("-", "_")
            if k in PER_MODEL_TRAIN_KEYS:
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise UserError(f"{path}: [model.{name}] {key} must be float, got {value!r}")
                entry["train"][k] = float(value)
            elif k in model_keys:
                entry["model"][k] = value
            else:
                allowed = sorted(PER_MODEL_TRAIN_KEYS) + sorted(model_keys)
                raise UserError(f"{path}: [model.{name}] unknown key {key!r}; keys are {', '.join(allowed)}")
        out[name] = entry
    return out


def apply_recipe(args: argparse.Namespace) -> dict:
    """Fill args from args.config where the command line gave nothing; returns the recipe."""
    path = getattr(args, "config", None)
    if path is None:
        return {}
    recipe = load_recipe(path, getattr(args, "recipe_actions", {}))
    given: set[str] = getattr(args, GIVEN, set())
    cli_keys = {item.partition("=")[0].strip() for item in (getattr(args, "set", None) or [])}
    for dest, value in recipe.items():
        if dest == "set":
            args.set = [item for item in value if item.partition("=")[0] not in cli_keys] + list(args.set or [])
        elif dest == "per_model":
            args.per_model = {name: {"model": {k: v for k, v in e["model"].items() if k not in cli_keys},
                                     "train": {k: v for k, v in e["train"].items() if k not in given}}
                              for name, e in value.items()}
        elif dest not in given:
            setattr(args, dest, value)
    return recipe
