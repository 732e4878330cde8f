"""`homefeed` command line: one subcommand group per stage.

Each stage module owns its commands through a ``register(subparsers)`` function that adds its
group and sets ``func`` on the parsed namespace; this file only lists the modules. Imports are
lazy so `homefeed stack status` does not pay for torch or Great Expectations.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from homefeed.errors import UserError

# (group name, "module" with register() or "module:function", one-line help)
STAGES = [
    ("stack", "homefeed.stack", "start/stop/inspect the local Redis and Kafka-protocol broker"),
    ("feast", "homefeed.feature_store", "apply the feature repo and read features"),
    ("world", "homefeed.world.cli", "generate or import interaction worlds"),
    ("stream", "homefeed.stream.cli", "Kafka -> validated last-N sequences -> Feast/Redis"),
    ("validate", "homefeed.validation.cli", "run Great Expectations checkpoints"),
    ("dataset", "homefeed.training.cli:register_dataset", "point-in-time training sets from Feast"),
    ("train", "homefeed.training.cli:register_train", "train TransAct and the baselines"),
    ("evaluate", "homefeed.training.cli:register_evaluate", "HIT@3 / AUC comparison with intervals"),
    ("export", "homefeed.training.cli:register_export", "put a trained model in the BentoML store"),
    ("experiment", "homefeed.training.experiment", "offline experiments: retraining decay under drift"),
    ("demo", "homefeed.demo", "run the main job end to end (what `make demo` runs)"),
    ("bench", "homefeed.bench", "benchmarks (JSON output; results go in docs/benchmarks.md)"),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homefeed", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups = parser.add_subparsers(dest="group", metavar="GROUP")
    for name, module, help_text in STAGES:
        group = groups.add_parser(name, help=help_text)
        if only is None or only == name:
            module_name, _, func = module.partition(":")
            getattr(importlib.import_module(module_name), func or "register")(group)
        else:
            group.set_defaults(_lazy_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only import the module of the group being run (fast start-up, no heavy imports).
    first = next((a for a in argv if not a.startswith("-")), None)
    known = {name for name, _, _ in STAGES}
    parser = build_parser(only=first if first in known else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(False)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # library internals, not ours
    # Client libraries log every connection at INFO; keep our own logs readable.
    for noisy in ("kafka", "feast", "great_expectations", "bentoml", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"homefeed: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
