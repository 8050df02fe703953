"""Hugging Face checkpoint folders -> hone models, with errors that say what to fix.

A folder holds config.json and model.safetensors (or pytorch_model.bin, or sharded
either way with an *.index.json), saved by transformers or by hone's save_pretrained,
with or without the base-model prefix (bert. / roberta. / transformer.) and with any
task head. Weights of other heads are dropped; a head the checkpoint lacks is
initialised and named in one log line on the "hone" logger.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from hone.errors import CheckpointError
from hone.models.base import HF_NAMES, ModelConfig, ModelConfigError, PreTrainedModule
from hone.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
)
from hone.models.gpt2 import (
    GPT2Config,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from hone.models.presets import PRESETS, preset

logger = logging.getLogger("hone")

TASKS = (None, "qa", "classification", "mlm", "pretraining", "clm")

CONFIG_CLASSES: dict[str, type[ModelConfig]] = {"bert": BertConfig, "roberta": RobertaConfig, "gpt2": GPT2Config}

_ENCODER_TASKS = {
    None: BertModel,
    "qa": BertForQuestionAnswering,
    "classification": BertForSequenceClassification,
    "mlm": BertForMaskedLM,
}
MODEL_CLASSES: dict[str, dict[str | None, type[PreTrainedModule]]] = {
    "bert": {**_ENCODER_TASKS, "pretraining": BertForPreTraining},
    "roberta": _ENCODER_TASKS,
    "gpt2": {
        None: GPT2Model,
        "qa": GPT2ForQuestionAnswering,
        "classification": GPT2ForSequenceClassification,
        "clm": GPT2LMHeadModel,
    },
}

WEIGHT_FILES = (  # in order of preference
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def load_config(path: str | Path) -> ModelConfig:
    """Read a config.json (or the one in a folder), or a preset's (models/presets.py) by name,
    into hone's config dataclass."""
    named = preset(str(path))
    if named is not None and not Path(path).exists():
        return config_from_dict(named, source=f"preset {path}")
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    if not file.is_file():
        raise CheckpointError(
            f"{file}: no such file. A checkpoint folder needs the config.json that "
            f"save_pretrained writes next to the weights (or name a preset: {', '.join(PRESETS)})."
        )
    try:
        d = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}); re-save or re-copy it.") from None
    return config_from_dict(d, source=str(file))


def config_from_dict(d: dict[str, Any], source: str = "config") -> ModelConfig:
    model_type = d.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is not supported; hone supports {sorted(CONFIG_CLASSES)}."
        )
    try:
        return CONFIG_CLASSES[model_type].from_dict(d)
    except (ModelConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def build_model(
    config: ModelConfig | dict[str, Any] | str | Path, task: str | None = None, **config_overrides: Any
) -> PreTrainedModule:
    """A freshly initialised model from a config (dataclass, config.json dict, or path to a
    config.json or its folder), with config_overrides applied as in load_model."""
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    try:
        config = config.replace(**config_overrides)
    except ModelConfigError as e:
        raise CheckpointError(f"config overrides: {e}") from None
    if task not in TASKS:
        raise CheckpointError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    classes = MODEL_CLASSES[config.model_type]
    if task not in classes:
        raise CheckpointError(
            f"task {task!r} is not available for model_type {config.model_type!r}; "
            f"it supports {list(classes)}"
        )
    try:
        return classes[task](config)
    except ModelConfigError as e:
        raise CheckpointError(str(e)) from None


def read_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a checkpoint folder and the file they came from."""
    for name in WEIGHT_FILES:
        file = folder / name
        if file.is_file():
            break
    else:
        found = sorted(p.name for p in folder.iterdir())
        raise CheckpointError(
            f"{folder}: no weights file; expected one of {list(WEIGHT_FILES)} next to config.json "
            f"(found {found}). Save the model with save_pretrained (safetensors)."
        )
    if name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{file}: not a valid shard index ({e!r}); re-save the checkpoint.") from None
        state = {}
        for shard in shards:
            state.update(_read_weights(folder / shard))
        return state, file
    return _read_weights(file), file


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (the shard index names it); re-copy the checkpoint.")
    try:
        if file.suffix == ".safetensors":
            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and zip errors share no base class
        detail = (str(e).strip().splitlines() or [""])[0][:120]
        raise CheckpointError(
            f"{file}: cannot be read ({type(e).__name__}: {detail}); the file is truncated or corrupt: "
            "re-copy or re-save it."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{file}: not a state dict (name -> tensor); save the model with save_pretrained.")
    return state


def _backbone(model: PreTrainedModule) -> PreTrainedModule:
    return model.backbone if model.hf_prefix else model


def _normalise_keys(state: dict[str, torch.Tensor], model: PreTrainedModule) -> dict[str, torch.Tensor]:
    """Checkpoint keys in the model's convention: base-model prefix present for task models,
    absent for bare ones (then head weights are dropped); TF-era LayerNorm.gamma/beta renamed."""
    prefix = model.hf_prefix  # "" for a bare model
    hf_base = HF_NAMES[model.config.model_type][1] + "."
    roots = {k.split(".")[0] for k in _backbone(model).hf_state_dict()}  # embeddings, encoder, ... / wte, h, ...
    out = {}
    for key, tensor in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith(hf_base):
            key = prefix + key[len(hf_base) :]
        elif key.split(".")[0] in roots:
            key = prefix + key
        elif not prefix:
            continue
        out[key] = tensor
    return out


def load_model(
    path: str | Path,
    task: str | None = None,
    *,
    ignore_mismatched_sizes: bool = False,
    **config_overrides: Any,
) -> PreTrainedModule:
    """Load a Hugging Face checkpoint folder as a hone model.

    task: None (bare encoder/decoder), "qa", "classification", "mlm", "pretraining" (BERT),
    "clm" (GPT-2). config_overrides change config fields first (num_labels=3,
    hidden_dropout_prob=0.0, ...). A head the checkpoint lacks is newly initialised; with
    ignore_mismatched_sizes=True so is a head whose shape differs (e.g. another num_labels).
    """
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise CheckpointError(
            f"{folder}: {what}. Pass a checkpoint folder holding config.json and model.safetensors "
            "(what save_pretrained writes)."
        )
    model = build_model(load_config(folder / "config.json"), task, **config_overrides)
    arch = model.hf_architecture
    state, file = read_state_dict(folder)
    state = _normalise_keys(state, model)
    expected = model.hf_state_dict()

    def may_be_new(key: str) -> bool:  # a task head or the pooler
        if not key.startswith(model.hf_prefix):
            return True
        return key[len(model.hf_prefix) :].startswith(_backbone(model).hf_optional)

    missing = [k for k in expected if k not in state]
    required = [k for k in missing if not may_be_new(k)]
    if required:
        raise CheckpointError(
            f"{file}: {len(required)} weights that {arch} needs are not in the checkpoint, e.g. "
            f"{required[:6]}. The weights do not match {folder / 'config.json'} (another model_type, "
            "num_hidden_layers or architecture?) or the file is incomplete."
        )
    reinit = []
    for key in expected:
        if key in state and state[key].shape != expected[key].shape:
            shapes = (
                f"{key} has shape {tuple(state[key].shape)} in the checkpoint but {arch} expects "
                f"{tuple(expected[key].shape)}"
            )
            if not may_be_new(key):
                raise CheckpointError(f"{file}: {shapes}; the weights do not match {folder / 'config.json'}.")
            if not ignore_mismatched_sizes:
                raise CheckpointError(
                    f"{file}: {shapes}. This is the task head (another num_labels?): pass "
                    "ignore_mismatched_sizes=True to initialise it anew."
                )
            reinit.append(shapes)
            del state[key]
    model.load_hf_state_dict({k: state.get(k, t) for k, t in expected.items()})
    if missing:
        logger.warning(
            "Some weights of %s were not initialized from the checkpoint at %s and are newly "
            "initialized: %s. You should probably train this model on a down-stream task to be able "
            "to use it for predictions and inference.",
            arch,
            folder,
            missing,
        )
    if reinit:
        logger.warning(
            "Some weights of %s were newly initialized because their shapes differ from the checkpoint at %s: %s.",
            arch,
            folder,
            "; ".join(reinit),
        )
    return model
