"""`homefeed feast apply|user`: the feature repo from the command line.

Kept apart from `homefeed.feature_store` so that building the CLI does not import Feast
(several seconds): the commands import it when they run.
"""

from __future__ import annotations

from pathlib import Path

from homefeed.preflight import REDIS


def cmd_apply(args) -> int:
    from homefeed.feature_store import apply_repo

    names = apply_repo(args.repo)
    print("feature views:", ", ".join(names))
    return 0


def cmd_show_user(args) -> int:
    from homefeed import features as F
    from homefeed.feature_store import open_store

    store = open_store(args.repo)
    refs = F.feature_refs(F.USER_ACTION_SEQUENCE, F.SEQUENCE_FEATURE_NAMES) + F.feature_refs(
        F.USER_PROFILE, F.PROFILE_FEATURE_NAMES)
    row = store.get_online_features(features=refs, entity_rows=[{F.USER_ID: args.user_id}]).to_dict()
    for key, values in row.items():
        value = values[0]
        if isinstance(value, list) and len(value) > 8:
            value = f"{value[:8]} ... ({len(value)} items)"
        print(f"{key:>28}: {value}")
    return 0


def register(parser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("apply", help="register the feature repo (same as `feast apply` in feature_repo/)")
    p.add_argument("--repo", type=Path, help="feature repo directory (default: feature_repo/)")
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser("user", help="print one user's online sequence and profile features")
    p.add_argument("user_id", type=int, help="the user's id")
    p.add_argument("--repo", type=Path, help="feature repo directory (default: feature_repo/)")
    p.set_defaults(func=cmd_show_user, needs=(REDIS,))
