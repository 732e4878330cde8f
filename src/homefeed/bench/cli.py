"""`homefeed bench ...`: benchmark commands (never timed tests), one module of
homefeed.bench each."""

from __future__ import annotations

import importlib

# (module, function that adds its subcommand to the bench group)
BENCHES = [
    ("homefeed.bench.ingest", "add_parser"),
    ("homefeed.bench.validation", "add_bench_validate_parser"),
    ("homefeed.bench.serve", "add_bench_model_parser"),
    ("homefeed.bench.serve", "add_bench_features_parser"),
    ("homefeed.bench.train", "add_bench_train_parser"),
    ("homefeed.bench.dataset", "add_bench_dataset_parser"),
    ("homefeed.bench.serve_http", "add_bench_serve_parser"),
    ("homefeed.bench.events", "add_bench_events_parser"),
    ("homefeed.bench.faults", "add_bench_faults_parser"),
]


def register(parser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="BENCHMARK", required=True)
    for module, func in BENCHES:
        getattr(importlib.import_module(module), func)(sub)
