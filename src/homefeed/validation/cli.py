"""`homefeed validate ...`: run GX checkpoints from the command line (GX 1.x has no CLI).

    homefeed validate run CHECKPOINT [--data PATH] exit 0 passed, 1 failed, 2 usage error
                                                   (no --data: the offline log's table)
    homefeed validate list                         checkpoints, their checks and parameters
    homefeed validate init [--check]               write validation/ from code (or check drift)
    homefeed validate docs                         build GX Data Docs, print index.html
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from homefeed import features as F
from homefeed.errors import UserError
from homefeed.validation import suites as S


def register(parser: argparse.ArgumentParser) -> None:
    """Add the `validate` subcommands to the group's parser."""
    sub = parser.add_subparsers(dest="validate_command", metavar="COMMAND")

    def project_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--project-dir", type=Path, default=None,
                       help=f"GX project directory (default: <repo>/validation or ${S.VALIDATION_DIR_ENV})")

    run = sub.add_parser("run", help="run a checkpoint on a parquet or JSONL file",
                         description="Run CHECKPOINT on the data; print failed expectations "
                                     "with counts and examples. Exit 0 passed, 1 failed, 2 usage error.")
    add_run_arguments(run)
    project_dir_arg(run)
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list checkpoints, their checks and run-time parameters")
    lst.add_argument("-a", "--all", dest="list_all", action="store_true",
                     help="also list every expectation")
    project_dir_arg(lst)
    lst.set_defaults(func=cmd_list)

    init = sub.add_parser("init", help="create/refresh the GX context (validation/) from code")
    init.add_argument("--check", action="store_true",
                      help="only compare: exit 1 when validation/ differs from the code")
    project_dir_arg(init)
    init.set_defaults(func=cmd_init)

    docs = sub.add_parser("docs", help="build GX Data Docs (HTML) locally and print the index path")
    project_dir_arg(docs)
    docs.set_defaults(func=cmd_docs)


def add_run_arguments(run: argparse.ArgumentParser, metavar: str | None = None) -> None:
    """The arguments of a checkpoint run (`homefeed validate run`, `great_expectations
    checkpoint run`); `cmd_run` reads them."""
    run.add_argument("checkpoint", metavar=metavar, help=f"one of: {', '.join(S.CHECKPOINT_NAMES)}")
    run.add_argument("--data", type=Path,
                     help="parquet file or directory, or JSON lines (.jsonl/.ndjson/.json); "
                          "default: the offline log's table (not for training_set)")
    run.add_argument("--now-ms", type=int, default=None,
                     help="action_events, impression_events: 'now' in epoch ms for the future-time check "
                          "(default: max arrival_time in the data, else the clock)")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a run-time parameter, e.g. label_click_max_rate=0.9 "
                          "(see `homefeed validate list`)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")


def _parse_params(items: list[str]) -> dict[str, float | int]:
    params: dict[str, float | int] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UserError(f"--param wants NAME=VALUE, got {item!r}")
        try:
            value: float | int = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                raise UserError(f"--param {name}: {raw!r} is not a number") from None
        params[name.strip()] = value
    return params


# Where a checkpoint's data lives when no --data is given: the offline log's tables.
LOG_TABLES = {S.ACTION_EVENTS: "action_events", S.IMPRESSION_EVENTS: F.IMPRESSION_EVENTS,
              S.SEQUENCE_FEATURES: F.USER_ACTION_SEQUENCE, S.PIN_FEATURES: F.PIN_FEATURES}


def default_data(name: str):
    """The offline log's table for checkpoint `name`, as the log's readers see it: replayed
    duplicates resolved (one row per event; the latest `created` per entity and timestamp),
    and for pin_features the latest row per pin (the suite validates a snapshot)."""
    from homefeed import offline_log
    from homefeed.settings import load_settings

    if name not in LOG_TABLES:
        raise UserError(f"{name} has no default data: pass --data with training rows (one per "
                        "request and candidate pin); `homefeed dataset build` runs it on its own rows")
    offline_dir = load_settings().offline_dir
    df = offline_log.read(offline_dir, LOG_TABLES[name])
    if df.empty:
        raise UserError(f"the offline log has no {LOG_TABLES[name]} rows under {offline_dir}; "
                        "run `homefeed stream consume` first, or pass --data")
    if name == S.ACTION_EVENTS:
        return df.drop_duplicates("event_id", keep="last").reset_index(drop=True)
    if name == S.IMPRESSION_EVENTS:  # event ids are unique per user
        return df.drop_duplicates([F.USER_ID, "event_id"], keep="last").reset_index(drop=True)
    key = F.USER_ID if name == S.SEQUENCE_FEATURES else F.PIN_ID
    df = df.sort_values([key, F.EVENT_TIMESTAMP, F.CREATED], kind="stable")
    subset = [key] if name == S.PIN_FEATURES else [key, F.EVENT_TIMESTAMP]
    return df.drop_duplicates(subset, keep="last").reset_index(drop=True)


def _project_dir(args) -> Path:
    return Path(args.project_dir).resolve() if args.project_dir else S.default_project_dir()


def cmd_run(args) -> int:
    from homefeed.validation import runner

    name = args.checkpoint
    if name not in S.CHECKPOINT_NAMES:
        raise UserError(f"unknown checkpoint {name!r}; known: {', '.join(S.CHECKPOINT_NAMES)}")
    params = _parse_params(args.param)
    project_dir = _project_dir(args)
    if not S.context_exists(project_dir):
        raise UserError(f"no GX context at {project_dir / S.CONTEXT_SUBDIR}; run `homefeed validate init`")
    df = runner.load_data(args.data) if args.data is not None else default_data(name)
    drift = S.context_drift(project_dir)
    if drift:
        print(f"homefeed: warning: {project_dir} differs from the code ({drift[0]}...); "
              "run `homefeed validate init`", file=sys.stderr)
    report = runner.run_checkpoint(name, df, now_ms=args.now_ms, project_dir=project_dir, **params)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    return 0 if report.success else 1


def cmd_list(args) -> int:
    project_dir = _project_dir(args)
    drift = S.context_drift(project_dir)
    state = "in sync with the code" if not drift else f"OUT OF DATE: {drift[0]}"
    print(f"context: {project_dir / S.CONTEXT_SUBDIR} ({state})")
    for name, spec in S.suite_specs().items():
        print(f"{name}: {len(spec.checks)} expectations; parameters: {', '.join(spec.parameters)}")
        print(f"    {spec.description}")
        if getattr(args, "list_all", False):
            for check in spec.checks:
                column = f"({check.column})" if check.column else ""
                print(f"    - {check.type}{column} [{check.check}]")
    return 0


def cmd_init(args) -> int:
    project_dir = _project_dir(args)
    if args.check:
        drift = S.context_drift(project_dir)
        for problem in drift:
            print(f"drift: {problem}")
        print(f"{project_dir}: " + ("differs from the code; run `homefeed validate init`"
                                    if drift else "in sync with the code"))
        return 1 if drift else 0
    written = S.init_context(project_dir)
    from homefeed.validation import runner

    runner.clear_cache()
    print(f"GX context: {written['context'][0]}")
    print(f"suites and checkpoints: {', '.join(written['suites'])}")
    return 0


def cmd_docs(args) -> int:
    from homefeed.validation import runner

    index = runner.build_data_docs(_project_dir(args))
    print(index)
    return 0
