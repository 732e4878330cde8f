"""Export a trained run to the BentoML model store, and load it back safely for serving.

    tag = export_run("runs/transact_v11")              # -> "homefeed-ranker:<version>"
    model, config, meta = load_exported("homefeed-ranker:latest", expected_fingerprint)

A BentoML model here is a directory of plain files (no pickle anywhere):

    model.safetensors   the state_dict (weights + dense standardisation buffers)
    config.json         ModelConfig.to_dict()
    metadata.json       schema fingerprint, dense-feature spec, metrics, validation result,
                        training config and throughput

`load_exported` refuses a model whose feature-schema fingerprint differs from the running feature
repo's (or whose dense-feature spec differs from this code's `dense_feature_spec`): its inputs
would silently mean something else.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from homefeed.errors import UserError
from homefeed.model import ModelConfig, Ranker, build_model
from homefeed.training.data import dense_feature_spec
from homefeed.training.train import CONFIG_FILE, RUN_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)

DEFAULT_NAME = "homefeed-ranker"
METADATA_FILE = "metadata.json"


class ModelSchemaMismatch(UserError):
    """The exported model was trained on a different feature schema than the one running."""


def _model_store(bentoml_home: Path | str | None):
    """The BentoML model store: $BENTOML_HOME's (default ~/bentoml) unless a home is given."""
    if bentoml_home is None:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return BentoMLContainer.model_store.get()
    from bentoml._internal.models import ModelStore

    path = Path(bentoml_home) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(path))


def current_fingerprint(settings=None) -> str:
    """The feature-schema fingerprint of the running feature repo (from settings)."""
    from homefeed.features import schema_fingerprint
    from homefeed.settings import load_settings

    s = settings or load_settings()
    return schema_fingerprint(s.embedding_dim, s.sequence_length)


def export_run(run_dir: Path | str, name: str = DEFAULT_NAME, metrics: dict | None = None,
               bentoml_home: Path | str | None = None) -> str:
    """Copy a run directory's model into the BentoML model store; returns the tag."""
    import bentoml

    run_dir = Path(run_dir)
    for needed in (WEIGHTS_FILE, CONFIG_FILE, RUN_FILE):
        if not (run_dir / needed).is_file():
            raise UserError(f"{run_dir} is not a trained run (no {needed}); run `homefeed train` first")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    run = json.loads((run_dir / RUN_FILE).read_text())
    metadata = {
        "schema_fingerprint": run["schema_fingerprint"],
        "dense_features": run["dense_features"],
        "encoder": config["encoder"],
        "heads": config["heads"],
        "valid_metrics": run.get("valid_metrics", {}),
        "test_metrics": metrics or {},
        "validation": run.get("validation", {}),
        "train_config": run.get("train_config", {}),
        "examples_per_s": run.get("examples_per_s"),
        "parameters": run.get("parameters"),
        "dataset": run.get("dataset"),
    }
    labels = {"encoder": config["encoder"], "schema_fingerprint": run["schema_fingerprint"],
              "validation": "passed" if run.get("validation", {}).get("success") else "failed"}
    # BentoML metadata values must be simple; the full record lives in metadata.json.
    summary = {"schema_fingerprint": run["schema_fingerprint"], "encoder": config["encoder"],
               "dense_digest": run["dense_features"]["digest"], "torch": str(torch.__version__)}
    with bentoml.models.create(name, labels=labels, metadata=summary, module=__name__,
                               _model_store=_model_store(bentoml_home)) as bento_model:
        target = Path(bento_model.path)
        shutil.copyfile(run_dir / WEIGHTS_FILE, target / WEIGHTS_FILE)
        (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (target / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    tag = str(bento_model.tag)
    log.info("exported %s as %s", run_dir, tag)
    return tag


def export_untrained(out_dir: Path | str, *, emb_dim: int | None = None, seed: int = 0,
                     bentoml_home: Path | str | None = None) -> tuple[str, Ranker]:
    """Export a small randomly initialised TransAct v1.1 (for service and fault tests, which
    need a real model in a real store, not a good one). Returns (tag, model)."""
    from safetensors.torch import save_file

    from homefeed.settings import load_settings

    settings = load_settings()
    dim = emb_dim or settings.embedding_dim
    torch.manual_seed(seed)
    spec = dense_feature_spec(dim)
    config = ModelConfig(encoder="transact_v11", seq_len=settings.sequence_length, emb_dim=dim,
                         dense_dim=spec["dim"], n_layers=1, mlp_dims=(32,), dcn_layers=1)
    model = build_model(config).eval()
    run = Path(out_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / WEIGHTS_FILE))
    (run / CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    (run / RUN_FILE).write_text(json.dumps({"schema_fingerprint": current_fingerprint(settings),
                                            "dense_features": spec, "validation": {"success": True},
                                            "untrained": True}))
    return export_run(run, bentoml_home=bentoml_home), model


def load_exported(tag_or_name: str, expected_fingerprint: str | None = None,
                  bentoml_home: Path | str | None = None) -> tuple[Ranker, ModelConfig, dict]:
    """Load an exported model for serving: (model in eval mode, its config, its metadata).

    `expected_fingerprint` defaults to the current settings' schema fingerprint. Raises
    ModelSchemaMismatch when the model's fingerprint or dense-feature spec differs.
    """
    import bentoml
    from safetensors.torch import load_file

    store = _model_store(bentoml_home)
    try:
        bento_model = bentoml.models.get(tag_or_name, _model_store=store)
    except bentoml.exceptions.NotFound:
        raise UserError(f"no model {tag_or_name!r} in the BentoML model store; export one with "
                        "`homefeed export`") from None
    path = Path(bento_model.path)
    metadata = json.loads((path / METADATA_FILE).read_text())
    expected = expected_fingerprint or current_fingerprint()
    if metadata["schema_fingerprint"] != expected:
        raise ModelSchemaMismatch(
            f"model {bento_model.tag} was trained on feature schema {metadata['schema_fingerprint']}, "
            f"but the running feature repo has {expected}; retrain on the current features or "
            "serve a matching feature repo")
    config = ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    spec = dense_feature_spec(config.emb_dim)
    if metadata["dense_features"]["digest"] != spec["digest"] or config.dense_dim != spec["dim"]:
        raise ModelSchemaMismatch(
            f"model {bento_model.tag} expects dense features {metadata['dense_features']['digest']} "
            f"({config.dense_dim} values), this code computes {spec['digest']} ({spec['dim']})")
    model = build_model(config)
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=True)  # tensors only, no pickle
    metadata["tag"] = str(bento_model.tag)
    return model.eval(), config, metadata
