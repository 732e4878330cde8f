"""The BentoML model store, read side: load an exported model safely for serving.

    model, config, meta = load_exported("homefeed-ranker:latest")

Serving imports this (never `homefeed.training`); `homefeed.training.export` writes the models.
A model here is a directory of plain files, no pickle anywhere:

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
from pathlib import Path

from homefeed.errors import UserError
from homefeed.model import ModelConfig, Ranker, build_model
from homefeed.model.dense import dense_feature_spec

# The files of a trained run and of an exported model.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METADATA_FILE = "metadata.json"


def _model_store(bentoml_home: Path | str | None):
    """The BentoML model store: $BENTOML_HOME's (default ~/bentoml) unless a home is given."""
    if bentoml_home is None:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return BentoMLContainer.model_store.get()
    from bentoml._internal.models import ModelStore

    path = Path(bentoml_home) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(str(path))


class ModelSchemaMismatch(UserError):
    """The exported model was trained on a different feature schema than the one running."""


def current_fingerprint(settings=None) -> str:
    """The feature-schema fingerprint of the running feature repo (from settings)."""
    from homefeed.features import schema_fingerprint
    from homefeed.settings import load_settings

    s = settings or load_settings()
    return schema_fingerprint(s.embedding_dim, s.sequence_length)


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
