"""`homefeed bento build`: the self-contained ranking bento (code, feature repo and model).

1. The model: the `model` setting's tag (HOMEFEED_MODEL, default ``homefeed-ranker:latest``) is resolved in the BentoML
   model store to an exact version, packed into the bento (its ``models:``) and set as the bento's
   HOMEFEED_MODEL, so the image serves it with nothing mounted.
2. The python packages: pyproject.toml's ``serving`` extra, the one list of what the service
   imports (no second requirements file), with torch pinned to this environment's version (the
   one the model was exported with; the image takes its CPU build from PyTorch's CPU index).
3. The feature definitions: a Feast registry snapshot, the feature repo applied into a file
   registry under bento/state/ (the bento's HOMEFEED_HOME), so the image opens its feature views
   with only Redis to reach. HOMEFEED_FEAST_REGISTRY (a shared SQL registry) overrides it.
4. Everything else (service, files, environment, docker options) from bento/bentofile.yaml.

Then ``bentoml containerize homefeed-service:latest`` builds the image (docs/serving.md).
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from homefeed.errors import UserError
from homefeed.settings import SOURCE_ROOT, Settings, load_settings

log = logging.getLogger(__name__)

BENTOFILE = Path("bento") / "bentofile.yaml"
STATE = Path("bento") / "state"  # the registry snapshot (git-ignored), the bento's HOMEFEED_HOME
DEFAULT_MODEL = Settings.model  # the `model` setting's default (HOMEFEED_MODEL)


def serving_requirements(root: Path = SOURCE_ROOT) -> list[str]:
    """The `serving` extra of the checkout's pyproject.toml."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise UserError(f"no pyproject.toml in {root}: build the bento from a homefeed checkout")
    data = tomllib.loads(pyproject.read_text())
    try:
        return list(data["project"]["optional-dependencies"]["serving"])
    except KeyError:
        raise UserError(f"{pyproject} has no `serving` extra") from None


def pinned_torch(requirements: list[str]) -> list[str]:
    """`requirements` with torch pinned to the installed version (without its local label)."""
    import re

    import torch

    version = torch.__version__.split("+")[0]
    return [f"torch=={version}" if re.match(r"torch\b(?![-_.\w])", r) else r for r in requirements]


def snapshot_registry(root: Path) -> Path:
    """Apply the checkout's feature repo into a fresh file registry under `STATE` (no Redis or
    Kafka needed: a first apply deletes nothing online)."""
    import shutil

    from homefeed.envscope import scoped_env
    from homefeed.feature_store import apply_repo

    state = root / STATE
    shutil.rmtree(state, ignore_errors=True)
    with scoped_env({"HOMEFEED_HOME": str(state)}, unset=("HOMEFEED_FEAST_REGISTRY",)):
        apply_repo(root / "feature_repo")
    shutil.rmtree(state / "offline", ignore_errors=True)  # schema files of the apply's empty log
    return state / "feast" / "registry.db"


def build(model: str | None = None, version: str | None = None, root: Path = SOURCE_ROOT) -> str:
    """Build the bento into the BentoML store ($BENTOML_HOME); returns its tag."""
    import bentoml
    import yaml
    from bentoml._internal.bento.build_config import BentoEnvSchema  # what build() takes

    tag = model or load_settings().model
    try:
        exact = str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        raise UserError(f"no model {tag!r} in the BentoML model store: `homefeed export` one "
                        "first (or set HOMEFEED_MODEL)") from None
    snapshot_registry(root)
    config = yaml.safe_load((root / BENTOFILE).read_text())
    config["python"] = {**config.get("python", {}), "packages": pinned_torch(serving_requirements(root))}
    config["models"] = [exact]
    config["envs"] = [e for e in config.get("envs", []) if e["name"] != "HOMEFEED_MODEL"]
    config["envs"].append({"name": "HOMEFEED_MODEL", "value": exact})
    config["envs"] = [BentoEnvSchema(**e) for e in config["envs"]]
    bento = bentoml.bentos.build(**config, version=version, build_ctx=str(root))
    log.info("built bento %s with model %s", bento.tag, exact)
    return str(bento.tag)


def cmd_build(args) -> int:
    print(build(args.model, args.version))
    return 0


def register(parser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("build", help="build the ranking bento with its model inside (then "
                       "`bentoml containerize homefeed-service:latest`)")
    p.add_argument("--model", help=f"BentoML model tag (default: $HOMEFEED_MODEL or {DEFAULT_MODEL})")
    p.add_argument("--version", help="bento version (default: generated)")
    p.set_defaults(func=cmd_build)
