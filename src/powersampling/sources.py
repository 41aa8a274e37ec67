"""Where a model or dataset ``source`` points: a local path or a Hugging Face hub id, and
for a config's models, where the workflow keeps their weights and what is known of them
before any job runs.

One rule for the config checks, the memory planner, the rules, the model loader and the
dataset reader.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Hub ids ("name", "org/name") start with a letter, digit or underscore; a source starting
# with one of these is written as a path.
PATH_PREFIXES = ("/", "~", ".")


def is_local_path(source: str) -> bool:
    """Whether ``source`` names a local file or folder rather than a hub id.

    - Written as a path (starts with ``/``, ``~`` or ``.``: ``/abs``, ``~/x``, ``./x``,
      ``../x``, ``.``, ``.cache/x``): local, whether or not it exists, so a missing one
      is reported as a missing path instead of being looked up on the hub. No hub id
      starts with these characters.
    - Anything else (``gpt2``, ``org/name``, ``org/name:file.csv``): a hub id, unless a
      file or folder of that name exists relative to the working directory (the same
      precedence ``transformers`` gives a local folder over the hub).
    - The empty string is neither (False).
    """
    if not source:
        return False
    return source.startswith(PATH_PREFIXES) or os.path.exists(source)


# --------------------------------------------------------------------------------------
# Model sources: one resolver for config validation, the memory planner and the rules.

TOY_SOURCE = "toy"  # the toy world's model, trained by rule train_toy_model
REHEARSAL_SOURCE = "rehearsal"  # a random model of a published shape, rule build_rehearsal_model
BUILT_SOURCES = (TOY_SOURCE, REHEARSAL_SOURCE)  # sources the workflow builds itself


@dataclass(frozen=True)
class ModelSource:
    """Where the weights of a config model come from, and the folder a job reads them from.

    ``kind`` is ``toy`` or ``rehearsal`` (built by the workflow under ``results/models``),
    ``local`` (a folder named in the config) or ``hub`` (staged into ``model_cache`` by rule
    download_model). ``model`` is the entry whose weights these are: a truncated model
    reads its base model's.
    """

    model: str
    kind: str
    source: str
    folder: str


def weights_of(config: dict[str, Any], model: str) -> str:
    """The model entry whose weights ``model`` loads: its own, or its base model's."""
    return config["models"][model].get("truncation", {}).get("of", model)


def model_source(config: dict[str, Any], model: str) -> ModelSource:
    """The source of ``model`` in a validated config (a truncation resolves to its base)."""
    base = weights_of(config, model)
    source = config["models"][base]["source"]
    if source in BUILT_SOURCES:
        return ModelSource(base, source, source, f"results/models/{base}")
    if is_local_path(source):
        return ModelSource(base, "local", source, str(Path(source).expanduser()))
    return ModelSource(base, "hub", source, f"{config['model_cache']}/{base}")


def toy_settings(config: dict[str, Any], model: str) -> dict[str, Any]:
    """The toy world's settings for ``model``: global ``toy`` section, then the model's own."""
    settings = copy.deepcopy(config.get("toy", {}))
    for section, values in config["models"][model].get("toy", {}).items():
        settings.setdefault(section, {}).update(values)
    return settings


def read_config_json(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The fields of a model folder's ``config.json``, or None when it cannot be read.

    Multimodal configs keep the language model's settings under ``text_config``: those
    win over the top level's, which fill in what they leave out."""
    try:
        fields = json.loads((Path(folder).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(fields, dict):
        return None
    text = fields.get("text_config")
    return {**fields, **text} if isinstance(text, dict) else fields


def known_fields(config: dict[str, Any], model: str) -> dict[str, Any]:
    """What the ``transformers`` config of ``model`` says, as far as it is known without
    loading anything: the toy model's from its shape, a rehearsal model's from its published
    architecture and settings, a local model's from its ``config.json``, a hub model's when
    it is a published architecture; else ``{}``. Only ``model_type``,
    ``num_hidden_layers`` and ``max_position_embeddings`` are relied on."""
    from powersampling.architectures import PUBLISHED_CONFIGS, architecture_of_hub_id
    from powersampling.toy.shape import ARCHITECTURES, DEFAULT_MODEL_SHAPE

    where = model_source(config, model)
    if where.kind == TOY_SOURCE:
        settings = toy_settings(config, where.model)
        shape = {**DEFAULT_MODEL_SHAPE, **(settings.get("model_shape") or {})}
        return {"model_type": ARCHITECTURES.get(shape["architecture"]), **shape}
    if where.kind == REHEARSAL_SOURCE:
        settings = config["models"][where.model].get("rehearsal") or {}
        fields = dict(PUBLISHED_CONFIGS.get(settings.get("architecture"), {}))
        if settings.get("num_hidden_layers") is not None:
            fields["num_hidden_layers"] = settings["num_hidden_layers"]
        return fields
    if where.kind == "local":
        return read_config_json(where.folder) or {}
    architecture = architecture_of_hub_id(where.source)
    return dict(PUBLISHED_CONFIGS[architecture]) if architecture else {}


def model_context(config: dict[str, Any], model: str) -> int | None:
    """The context length of ``model`` when it is known without loading it (see
    :func:`known_fields`; a hub id of an unpublished architecture: None)."""
    if model_source(config, model).kind == "hub":
        return None  # checked by the job, from the staged config
    context = known_fields(config, model).get("max_position_embeddings")
    return context if isinstance(context, int) else None


def model_depth(config: dict[str, Any], model: str) -> int | None:
    """Decoder blocks of ``model`` when known without loading it; else None (checked when
    the job loads the model)."""
    depth = known_fields(config, model).get("num_hidden_layers")
    return depth if isinstance(depth, int) else None
