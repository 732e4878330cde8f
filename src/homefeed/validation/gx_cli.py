"""`great_expectations ...`: GX 0.x's command shape on the project's GX 1.x file context.

GX 1.x ships no command line (it was removed in 1.0), and GX 0.x's cannot read a 1.x context,
but ``great_expectations checkpoint run NAME`` is what people type. This command, installed
with the project, gives them that shape on ``validation/gx`` and runs the same code as
`homefeed validate` (`homefeed.validation.cli`):

    great_expectations checkpoint run NAME [--data PATH]   exit 0 passed, 1 failed, 2 usage error
    great_expectations checkpoint list                     the checkpoints in the context
    great_expectations suite list                          the expectation suites
    great_expectations docs build                          build Data Docs, print index.html

1. Parse GX 0.x's global options (``-c/--config``: the project, its ``gx/`` folder or its
   ``great_expectations.yml``; ``-v``; ``--v3-api`` and ``-y`` are accepted and ignored).
2. ``list`` commands read the context's folders (no GX import: instant).
3. ``checkpoint run`` and ``docs build`` call `homefeed.validation.cli` (``--data`` defaults to
   the offline log's table, as in ``homefeed validate run``).
4. Errors go through `homefeed.cli.run`: one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from homefeed.errors import UserError
from homefeed.validation import cli as vcli
from homefeed.validation import suites as S

PROG = "great_expectations"
DOCS_SITE = "local_site"  # the one Data Docs site in great_expectations.yml


def project_dir(config: Path | None) -> Path:
    """The project root for ``-c``: the project itself, its gx/ folder, or the yml file."""
    if config is None:
        return S.default_project_dir()
    path = Path(config).expanduser().resolve()
    if path.is_file() and path.name == "great_expectations.yml":
        path = path.parent
    if path.name == S.CONTEXT_SUBDIR and (path / "great_expectations.yml").is_file():
        path = path.parent
    if not S.context_exists(path):
        raise UserError(f"no Great Expectations context at {path} (looked for "
                        f"{path / S.CONTEXT_SUBDIR / 'great_expectations.yml'})")
    return path


def _names(project: Path, folder: str) -> list[str]:
    return sorted(p.stem for p in (project / S.CONTEXT_SUBDIR / folder).glob("*.json"))


def _print_names(names: list[str], header: str) -> int:
    print(header)
    for name in names:
        print(f" - {name}")
    return 0


def cmd_checkpoint_list(args) -> int:
    names = _names(project_dir(args.config), "checkpoints")
    return _print_names(names, f"Found {len(names)} Checkpoint{'s' if len(names) != 1 else ''}.")


def cmd_suite_list(args) -> int:
    names = _names(project_dir(args.config), "expectations")
    return _print_names(names, f"{len(names)} Expectation Suite{'s' if len(names) != 1 else ''} found:")


def cmd_checkpoint_run(args) -> int:
    args.project_dir = project_dir(args.config)
    status = vcli.cmd_run(args)
    print("Validation succeeded!" if status == 0 else "Validation failed!",
          file=sys.stderr if args.json else sys.stdout)
    return status


def cmd_docs_build(args) -> int:
    if args.site_name not in (None, DOCS_SITE):
        raise UserError(f"unknown Data Docs site {args.site_name!r}; the context has one: {DOCS_SITE}")
    args.project_dir = project_dir(args.config)
    return vcli.cmd_docs(args)


def build_parser() -> argparse.ArgumentParser:
    from homefeed.cli import add_common_arguments

    parser = argparse.ArgumentParser(
        prog=PROG, description="Great Expectations 0.x commands on homefeed's GX 1.x context "
                               "(same code as `homefeed validate`).")
    add_common_arguments(parser)
    parser.add_argument("-c", "--config", type=Path, default=None,
                        help="the GX project: its folder, its gx/ folder or great_expectations.yml "
                             f"(default: <repo>/validation or ${S.VALIDATION_DIR_ENV})")
    parser.add_argument("--v3-api", "--v2-api", dest="api", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-y", "--assume-yes", action="store_true", help=argparse.SUPPRESS)
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    checkpoint = groups.add_parser("checkpoint", help="run or list checkpoints")
    sub = checkpoint.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run a checkpoint; exit 0 passed, 1 failed, 2 usage error",
                         description="Run checkpoint NAME on the data and print the failed "
                                     "expectations. Exit 0 passed, 1 failed, 2 usage error.")
    vcli.add_run_arguments(run, metavar="NAME")
    run.set_defaults(func=cmd_checkpoint_run)
    lst = sub.add_parser("list", help="list the checkpoints")
    lst.set_defaults(func=cmd_checkpoint_list)

    suite = groups.add_parser("suite", help="list expectation suites")
    sub = suite.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("list", help="list the expectation suites").set_defaults(func=cmd_suite_list)

    docs = groups.add_parser("docs", help="build Data Docs")
    sub = docs.add_subparsers(dest="command", metavar="COMMAND", required=True)
    build = sub.add_parser("build", help="build Data Docs (HTML) and print the index path")
    build.add_argument("--no-view", action="store_true",
                       help="accepted for GX 0.x compatibility; no browser is ever opened")
    build.add_argument("--site-name", default=None,
                       help=f"the Data Docs site (the context has one: {DOCS_SITE})")
    build.set_defaults(func=cmd_docs_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    from homefeed.cli import run, setup_logging

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    return run(args, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
