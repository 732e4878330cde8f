"""`homefeed bench ...`: benchmark commands (never timed tests). Each stage adds its own."""

from __future__ import annotations

import importlib

# (module, function that adds its subcommand to the bench group)
BENCHES = [
    ("homefeed.stream.bench", "add_parser"),
    ("homefeed.validation.bench", "add_bench_validate_parser"),
    ("homefeed.serving.bench", "add_bench_model_parser"),
    ("homefeed.serving.bench", "add_bench_features_parser"),
    ("homefeed.training.bench", "add_bench_train_parser"),
    ("homefeed.training.bench_dataset", "add_bench_dataset_parser"),
    ("homefeed.serving.bench_http", "add_bench_serve_parser"),
    ("homefeed.events_api.bench", "add_bench_events_parser"),
    ("homefeed.faults", "add_bench_faults_parser"),
]


def register(parser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="BENCHMARK", required=True)
    for module, func in BENCHES:
        getattr(importlib.import_module(module), func)(sub)
