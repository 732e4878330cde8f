"""Benchmarks and the fault matrix: the harness that measures the components, kept out of them.

Every `homefeed bench ...` command lives here, so no component package (stream, serving,
training, validation, model, world, events_api, offline_store) imports `homefeed.stack` or
another component's benchmark (tests/test_layering.py checks it). Nothing is imported here:
``python -m homefeed.bench.serve model`` needs only torch and numpy.

1. `cli`: the `homefeed bench` group; lists each module below and the function that adds its
   subcommand.
2. `ingest`: `homefeed bench ingest`: producer -> broker -> consumer -> Redis throughput, the
   raw Kafka and Redis ceilings, and live freshness (the stream stage).
3. `validation`: `homefeed bench validate`: the action_events suite's cost per micro-batch.
4. `serve`: `homefeed bench model` (ServedRanker against the plain ranker's forward) and
   `homefeed bench features` (online feature reads through Feast and OnlineFeatureReader).
5. `serve_http`: `homefeed bench serve`: latency and throughput of a running ranking service
   under concurrent HTTP load (`load_test`), and its overload test (`overload_test`).
6. `train`: `homefeed bench train`: training and inference throughput of a ranker.
7. `dataset`: `homefeed bench dataset`: seconds and peak memory of `homefeed dataset build`.
8. `events`: `homefeed bench events`: events/s through the events API and the restart check.
9. `faults`: `homefeed bench faults`: the fault matrix against a real private stack
   (docs/reliability.md); also the harness scripts/bench_overload.py and
   scripts/bench_serve_cpus.py share with it: `private_stack`, `seeded_ranker` and
   `serve_ranking` (`bentoml serve` on a free port, waited for until /readyz, stopped after).

Shared below this package: `homefeed.envscope.scoped_env` (set/unset environment variables
for a block and restore them) and `homefeed.http_client` (the JSON-over-HTTP client).
"""
