"""`homefeed` command line: one subcommand group per stage.

Each stage module owns its commands through a ``register(subparsers)`` function that adds its
group and sets ``func`` on the parsed namespace; this file only lists the modules. Imports are
lazy so `homefeed stack status` does not pay for torch or Great Expectations.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import logging
import re
import signal
import sys
import traceback
from pathlib import Path

from homefeed.errors import UserError

# (group name, "module" with register() or "module:function", one-line help)
STAGES = [
    ("stack", "homefeed.stack", "start/stop/inspect the local Redis and Kafka-protocol broker"),
    ("feast", "homefeed.feast_cli", "apply the feature repo and read features"),
    ("world", "homefeed.world.cli", "generate or import interaction worlds"),
    ("stream", "homefeed.stream.cli", "Kafka -> validated last-N sequences -> Feast/Redis"),
    ("validate", "homefeed.validation.cli", "run Great Expectations checkpoints"),
    ("dataset", "homefeed.training.cli:register_dataset", "point-in-time training sets from Feast"),
    ("train", "homefeed.training.cli:register_train", "train TransAct and the baselines"),
    ("evaluate", "homefeed.training.cli:register_evaluate", "HIT@3 / AUC comparison with intervals"),
    ("export", "homefeed.training.cli:register_export", "put a trained model in the BentoML store"),
    ("bento", "homefeed.serving.bento_build", "build the self-contained ranking bento"),
    ("events", "homefeed.events_api.cli", "HTTP events API into Kafka, and the live feed page"),
    ("experiment", "homefeed.training.experiment", "offline experiments: retraining decay under drift"),
    ("demo", "homefeed.demo", "run the main job end to end (what `make demo` runs)"),
    ("bench", "homefeed.bench.cli", "benchmarks (JSON output; results go in docs/benchmarks.md)"),
]


def build_parser(groups: set[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the stage modules of `groups` are imported and registered (None: all of
    them, for tools that need the complete parser). Unregistered groups still appear in help."""
    parser = argparse.ArgumentParser(prog="homefeed", description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    subparsers = parser.add_subparsers(dest="group", metavar="GROUP")
    for name, module, help_text in STAGES:
        group = subparsers.add_parser(name, help=help_text, description=help_text)
        if groups is None or name in groups:
            module_name, _, func = module.partition(":")
            getattr(importlib.import_module(module_name), func or "register")(group)
    return parser


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and full tracebacks on errors")


class LibraryDeprecations(logging.Filter):
    """Drops other packages' DeprecationWarnings from the `py.warnings` log.

    Feast's modules call ``warnings.simplefilter("once", DeprecationWarning)`` at import,
    which re-enables every library's deprecation warnings for the whole process, and Great
    Expectations calls ``logging.captureWarnings(True)``, which logs them as WARNING lines
    (``py.warnings: .../file_path_data_connector.py:6: DeprecationWarning: module
    'sre_constants' is deprecated``). They are for those libraries' developers, not for
    users; Python's own default hides them. homefeed's own deprecations still show."""

    PATTERN = re.compile(r"^(?P<file>.*?):\d+: (?:Pending)?DeprecationWarning: ")
    OWN = str(Path(__file__).resolve().parent) + "/"

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.PATTERN.match(record.getMessage())
        return match is None or match["file"].startswith(self.OWN)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Client libraries log every connection at INFO; keep our own logs readable.
    for noisy in ("kafka", "feast", "great_expectations", "bentoml", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Warnings go to the log (as GX would make them anyway), without libraries' deprecations.
    logging.captureWarnings(True)
    warnings_log = logging.getLogger("py.warnings")
    if not verbose and not any(isinstance(f, LibraryDeprecations) for f in warnings_log.filters):
        warnings_log.addFilter(LibraryDeprecations())


def run(args: argparse.Namespace, prog: str = "homefeed") -> int:
    """Run a parsed command: check the services it needs first (`homefeed.preflight`), and
    print a user error (bad input, a service that does not answer) as one line with exit
    status 2; `-v` adds the traceback."""
    from homefeed import preflight

    try:
        preflight.require(getattr(args, "needs", ()))
        return int(args.func(args) or 0)
    except UserError as exc:
        return _user_error(prog, exc, args.verbose)
    except Exception as exc:
        translated = preflight.translate(exc)
        if translated is None:
            raise
        return _user_error(prog, translated, args.verbose, cause=exc)


def _user_error(prog: str, exc: UserError, verbose: bool, cause: BaseException | None = None) -> int:
    if verbose:
        traceback.print_exception(cause or exc, file=sys.stderr)
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only import the module of the group being run: `homefeed --help` imports none of them.
    first = next((a for a in argv if not a.startswith("-")), None)
    known = {name for name, _, _ in STAGES}
    parser = build_parser(groups={first} & known if first else set())
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:  # `kill -USR1 PID`: every thread's stack to stderr (a hung process)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError, OSError):  # no SIGUSR1 (Windows), or stderr is not a file (captured)
        pass
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
