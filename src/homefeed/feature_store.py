"""Feast glue: the settings-driven Redis online store, opening the store, applying the repo.

feature_repo/feature_store.yaml names ``homefeed.feature_store.HomefeedRedisOnlineStore`` as its
online store type. It is Feast's own Redis store; the only difference is that its connection
string defaults to the one in homefeed settings (``REDIS_URL`` or the local stack's port), so
the YAML holds no second copy of it and plain ``feast apply`` works on a fresh clone. The
offline store (point-in-time training data) is homefeed.offline_store: DuckDB over the log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from pydantic import Field, StrictStr

from homefeed.errors import UserError
from homefeed.settings import load_settings

log = logging.getLogger(__name__)

def _connection_from_settings() -> str:
    return load_settings().feast_redis_connection_string


class HomefeedRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    type: Literal["homefeed.feature_store.HomefeedRedisOnlineStore"] = (
        "homefeed.feature_store.HomefeedRedisOnlineStore"
    )
    connection_string: StrictStr = Field(default_factory=_connection_from_settings)


class HomefeedRedisOnlineStore(RedisOnlineStore):
    """Feast's RedisOnlineStore, configured from homefeed settings."""


def feature_repo_path() -> Path:
    return load_settings().feature_repo


def open_store(repo_path: Path | None = None):
    """The FeatureStore every stage uses (pipeline, training, serving)."""
    from feast import FeatureStore

    path = Path(repo_path) if repo_path else feature_repo_path()
    if not (path / "feature_store.yaml").is_file():
        raise UserError(f"no feature_store.yaml in {path}; set HOMEFEED_FEATURE_REPO")
    return FeatureStore(repo_path=str(path))


def apply_repo(repo_path: Path | None = None) -> list[str]:
    """Programmatic `feast apply`: registers every object the repo defines."""
    from feast.repo_operations import apply_total, cli_check_repo

    path = Path(repo_path) if repo_path else feature_repo_path()
    # Feast imports the repo's files as top-level modules ("definitions"); a module cached from an
    # earlier apply in this process would register that apply's settings (paths, Kafka servers).
    for py in path.glob("*.py"):
        sys.modules.pop(py.stem, None)
    store = open_store(path)
    cli_check_repo(path, path / "feature_store.yaml")
    with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress; keep stdout for results
        apply_total(store.config, path, skip_source_validation=False)
    names = sorted(fv.name for fv in open_store(path).list_feature_views())
    log.info("applied feature repo %s: feature views %s", path, names)
    return names


# -- CLI ------------------------------------------------------------------------------------

def cmd_apply(args) -> int:
    names = apply_repo(args.repo)
    print("feature views:", ", ".join(names))
    return 0


def cmd_show_user(args) -> int:
    from homefeed import features as F

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
    p.add_argument("user_id", type=int)
    p.add_argument("--repo", type=Path)
    p.set_defaults(func=cmd_show_user)
