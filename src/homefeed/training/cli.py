"""`homefeed dataset build|profiles|compact`, `homefeed train`, `homefeed evaluate`, `homefeed export`.

Each `register_*` function gets the argparse parser of its group and sets `func`. Heavy imports
(torch, Feast, GX, BentoML) happen inside the commands, so `homefeed --help` stays fast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from homefeed.errors import UserError

log = logging.getLogger(__name__)


# -- dataset -------------------------------------------------------------------------------------

def cmd_dataset_build(args) -> int:
    from homefeed.settings import load_settings
    from homefeed.training.dataset import build_dataset

    meta = build_dataset(args.world, args.out, load_settings(), warmup_days=args.warmup_days,
                         valid_days=args.valid_days, test_days=args.test_days,
                         validate=not args.no_validate, progress=not args.quiet, chunks=args.chunks)
    counts = ", ".join(f"{s}: {c['requests']:,} requests / {c['impressions']:,} rows"
                       for s, c in meta["counts"].items())
    audit = meta["audit"]
    print(f"dataset written to {args.out} in {meta['build_seconds']} s ({counts})")
    print(f"point-in-time audit: {audit['leaked_actions']} leaked actions; {audit['stale_share']:.1%} of "
          f"requests see a sequence older than the stream (median lag {audit['stale_median_lag_s']} s)")
    if "validation" in meta:
        v = meta["validation"]
        print(f"training_set checkpoint: {'OK' if v['success'] else 'FAILED'} "
              f"({len(v['failures'])} of {v['evaluated']} expectations failed)")
    return 0


def cmd_dataset_profiles(args) -> int:
    from homefeed.settings import load_settings
    from homefeed.training.profiles_job import run_profile_job

    print(json.dumps(run_profile_job(load_settings(), write_online=not args.no_online)))
    return 0


def cmd_dataset_compact(args) -> int:
    from homefeed import features as F
    from homefeed.settings import load_settings
    from homefeed.training.dataset import compact_table

    settings = load_settings()
    tables = args.tables or [F.USER_ACTION_SEQUENCE, F.PIN_FEATURES, F.USER_PROFILE, "action_events"]
    for table in tables:
        print(json.dumps(compact_table(settings.offline_dir, table)))
    return 0


def register_dataset(parser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("build", help="point-in-time training dataset of a replayed world (Feast)")
    p.add_argument("--world", required=True, help="world directory whose events were replayed")
    p.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    p.add_argument("--warmup-days", type=int, default=1, help="first days left out (default 1)")
    p.add_argument("--valid-days", type=int, default=1, help="validation days before the test days")
    p.add_argument("--test-days", type=int, default=2, help="last days, held out for evaluation")
    p.add_argument("--no-validate", action="store_true", help="skip the training_set checkpoint")
    p.add_argument("--chunks", type=int, default=None,
                   help="chunks of users built one at a time (default: one per 200,000 impressions)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_dataset_build)

    p = sub.add_parser("profiles", help="daily user profiles from the action log -> offline log + online")
    p.add_argument("--no-online", action="store_true", help="only append to the offline log")
    p.set_defaults(func=cmd_dataset_profiles)

    p = sub.add_parser("compact", help="merge each date partition of the offline log into one file")
    p.add_argument("tables", nargs="*", help="tables (default: all four)")
    p.set_defaults(func=cmd_dataset_compact)


# -- train -------------------------------------------------------------------------------------------

def parse_models(text: str) -> list[str]:
    from homefeed.model import ENCODER_KINDS

    return list(ENCODER_KINDS) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]


def parse_overrides(items: list[str] | None) -> dict:
    """--set time_window_ms=0 --set mlp_dims=[256,64] -> ModelConfig overrides (JSON values)."""
    from dataclasses import fields

    from homefeed.model import ModelConfig

    known = {f.name for f in fields(ModelConfig)}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in known:
            raise UserError(f"--set {key}: not a ModelConfig field; fields are {', '.join(sorted(known))}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_training_arguments(parser, *, epochs: int) -> None:
    """The `homefeed train` flags every command that trains models shares (see `train_config`)."""
    parser.add_argument("--epochs", type=int, default=epochs,
                        help=f"passes over the training rows (default {epochs})")
    parser.add_argument("--batch-size", type=int, default=512,
                        help="training rows (impressions) per optimizer step (default 512)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for initialisation, shuffling and dropout (default 0)")
    parser.add_argument("--neg-keep", type=float, default=1.0,
                        help="share of no-action impressions kept for training, reweighted (default 1)")
    parser.add_argument("--pair-weight", type=float, default=0.0,
                        help="weight of the within-user pairwise ranking loss added to the BCE "
                             "(0: pointwise only; docs/training.md)")
    parser.add_argument("--max-steps", type=int, default=0, help="cap steps per epoch (0: all the data)")
    parser.add_argument("--seq-len", type=int, help="actions the model reads (default: the feature's length)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="ModelConfig override, repeatable (e.g. --set time_window_ms=86400000)")


def train_config(args, **extra):
    """TrainConfig from the flags of `add_training_arguments` (plus command-specific fields)."""
    from homefeed.training.train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       neg_keep=args.neg_keep, max_steps_per_epoch=args.max_steps, device=args.device,
                       threads=args.threads, pair_weight=args.pair_weight, **extra)


def print_result(result: dict, paths: dict, as_json: bool) -> None:
    """A report command's output: the JSON result, or its markdown and the files written."""
    from homefeed.jsonable import jsonable

    if as_json:
        print(json.dumps(jsonable(result), indent=2))
    else:
        print(paths["md"].read_text())
        print("written:", ", ".join(str(p) for p in paths.values()))


def cmd_train(args) -> int:
    from homefeed.training.recipe import apply_recipe
    from homefeed.training.train import run_training

    apply_recipe(args)  # --config: the recipe fills what the command line did not give

    cfg = train_config(args, weight_decay=args.weight_decay, patience=args.patience,
                       early_stop=args.early_stop, early_stop_metric=args.early_stop_metric,
                       eval_every=args.eval_every)
    summary = run_training(args.dataset, parse_models(args.models), args.out, cfg, seq_len=args.seq_len,
                           force=args.force, model_overrides=parse_overrides(args.set),
                           per_model=getattr(args, "per_model", None), suffix=args.suffix,
                           progress=not args.quiet)
    for name, s in summary.items():
        valid = ", ".join(f"{k} {v:.4f}" for k, v in s["valid"].items()
                          if k.startswith("hit@") or k == cfg.monitor)
        size = f"{s['parameters']:,} parameters, " if "parameters" in s else ""  # older summaries: none
        print(f"{name}: {size}{s['examples_per_s']:,.0f} examples/s, best epoch {s['best_epoch']}"
              f"{' (step %d)' % s['best_step'] if 'best_step' in s else ''}; validation {valid}; -> {s['run_dir']}")
    if args.reference:
        from homefeed.training.reference import NAME, fit_reference

        ref = fit_reference(args.dataset, args.out, seq_len=args.seq_len)
        print(f"{NAME}: {ref['parameters']:,} parameters, the logistic-regression reference "
              f"(not servable), {ref['train_seconds']} s -> {Path(args.out) / NAME}")
    return 0


def register_train(parser) -> None:
    parser.add_argument("--dataset", required=True, type=Path, help="directory from `homefeed dataset build`")
    parser.add_argument("--models", default="transact_v11",
                        help="comma-separated encoders or 'all' (none, avg_pool, cnn, rnn, lstm, "
                             "transformer, din, transact_v10, transact_v11)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="one run directory per model in here")
    add_training_arguments(parser, epochs=3)
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--patience", type=int, default=0,
                        help="early stopping after N validations without a new best, best weights kept (0: off)")
    parser.add_argument("--early-stop", default="repin", metavar="HEAD",
                        help="the head early stopping watches on validation (default repin)")
    parser.add_argument("--early-stop-metric", default="hit3", choices=("hit3", "auc", "gauc"),
                        help="its metric: hit3 (HIT@3), auc, or gauc (user-level GAUC) (default hit3)")
    parser.add_argument("--eval-every", type=int, default=0, metavar="STEPS",
                        help="validate every N optimizer steps (default 0: at the end of each epoch)")
    parser.add_argument("--suffix", default="", help="appended to each run directory name (ablations)")
    parser.add_argument("--reference", action="store_true",
                        help="also fit the logistic-regression reference (dense features + serve-time "
                             "history summaries) into OUT/logreg, scored by evaluate --compare")
    parser.add_argument("--force", action="store_true", help="train even if the training set fails validation")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--config", type=Path, metavar="TOML",
                        help="training recipe, e.g. training/kuairand.toml; flags given here win")
    parser.set_defaults(func=cmd_train)
    from homefeed.training.recipe import track_given

    track_given(parser)


# -- evaluate ------------------------------------------------------------------------------------

def cmd_evaluate(args) -> int:
    from homefeed.training.evaluate import evaluate_runs, write_comparison

    result = evaluate_runs(args.runs, args.dataset, baseline=args.baseline if args.compare else "",
                           primary=args.primary if args.compare else "", n_boot=args.n_boot,
                           min_candidates=args.min_candidates)
    print_result(result, write_comparison(result, args.out or args.runs), args.json)
    return 0


def register_evaluate(parser) -> None:
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="directory written by `homefeed train`")
    parser.add_argument("--dataset", type=Path, help="dataset (default: the one the runs were trained on)")
    parser.add_argument("--compare", action="store_true",
                        help="lifts vs --baseline and --primary vs every other model, with bootstrap intervals")
    parser.add_argument("--baseline", default="none", help="the no-sequence model (default: none)")
    parser.add_argument("--primary", default="transact_v11",
                        help="the model compared with every other one (default: transact_v11)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--min-candidates", type=int, default=1, metavar="N",
                        help="score only test requests with >= N candidates (default 1: all)")
    parser.add_argument("--out", type=Path, help="where comparison.{md,csv,png,json} go (default: --runs)")
    parser.add_argument("--json", action="store_true", help="print the JSON result instead of markdown")
    parser.set_defaults(func=cmd_evaluate)


# -- export --------------------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from homefeed.training.export import export_run

    test_metrics = None
    comparison = args.run.parent / "comparison.json"
    if comparison.is_file():  # attach the run's test metrics when `homefeed evaluate` produced them
        test_metrics = json.loads(comparison.read_text())["models"].get(args.run.name)
    print(export_run(args.run, args.name, test_metrics))
    return 0


def register_export(parser) -> None:
    parser.add_argument("run", type=Path, help="a run directory, e.g. runs/transact_v11")
    parser.add_argument("--name", default="homefeed-ranker", help="BentoML model name")
    parser.set_defaults(func=cmd_export)


if __name__ == "__main__":  # `python -m homefeed.training.cli train ...` = `homefeed train ...`
    from homefeed.cli import main

    raise SystemExit(main())
