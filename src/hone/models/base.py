"""What every hone model shares: its config, transformers key names, saving, init, LR depth.

Parameter names inside hone are short (`layers.3.qkv.weight`); a `KeyMap` per model
translates them to and from the names transformers writes (`bert.encoder.layer.3.
attention.self.query.weight`, ...), including fused q/k/v and GPT-2's transposed Conv1D
weights. `save_pretrained` writes a folder that transformers' Auto classes load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from hone.errors import ModelConfigError
from hone.models.outputs import ModelOutput
from hone.models.padding import IGNORE_INDEX, KERNELS, AttentionLayout, LayoutError, VarlenMetadata

# model_type -> (transformers class-name prefix, state-dict prefix of the base model)
HF_NAMES = {"bert": ("Bert", "bert"), "roberta": ("Roberta", "roberta"), "gpt2": ("GPT2", "transformer")}

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


@dataclass
class ModelConfig:
    """Fields every architecture has. Keys of config.json that hone does not use are kept
    in `extra`, so that a loaded-then-saved config.json stays complete."""

    model_type: str = ""
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id2label is None or len(self.id2label) != self.num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.id2label = {int(i): label for i, label in self.id2label.items()}
        if self.label2id is None or len(self.label2id) != self.num_labels:
            self.label2id = {label: i for i, label in self.id2label.items()}
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ModelConfigError(f"problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")

    @property
    def position_offset(self) -> int:
        """Position id of a sequence's first token (RoBERTa counts from pad_token_id + 1)."""
        return 0

    @property
    def max_positions(self) -> int:
        """The longest sequence the position table holds, in tokens."""
        raise NotImplementedError

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Build from a transformers config.json dict."""
        names = set(cls.field_names())
        known = {k: v for k, v in d.items() if k in names}
        if "num_labels" not in known and known.get("id2label"):
            known["num_labels"] = len(known["id2label"])
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The transformers config.json dict (num_labels is implied by id2label, as there)."""
        d = dict(self.extra)
        for name in self.field_names():
            d[name] = getattr(self, name)
        del d["num_labels"]
        d["id2label"] = {str(i): label for i, label in self.id2label.items()}
        return d

    def replace(self, **overrides: Any) -> Self:
        """A copy with some fields changed; unknown names are an error listing the valid ones.

        Changing num_labels resets the label names; giving id2label sets num_labels.
        """
        valid = self.field_names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ModelConfigError(
                f"unknown config field(s) {unknown} for model_type {self.model_type!r}; "
                f"valid fields: {', '.join(valid)}"
            )
        if overrides.get("id2label") is not None:
            overrides.setdefault("num_labels", len(overrides["id2label"]))
            overrides.setdefault("label2id", None)
        elif overrides.get("num_labels", self.num_labels) != self.num_labels:
            overrides.update(id2label=None, label2id=None)
        return dataclasses.replace(self, **overrides)


ACTIVATIONS = {
    "gelu": nn.GELU,  # exact (erf), as BERT
    "gelu_new": functools.partial(nn.GELU, approximate="tanh"),  # GPT-2's tanh approximation
    "gelu_pytorch_tanh": functools.partial(nn.GELU, approximate="tanh"),
    "gelu_fast": functools.partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}


def get_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ModelConfigError(f"activation {name!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)"))


def _swap_prefix(name: str, src: str, dst: str) -> str | None:
    m = _pattern(src).match(name)
    return None if m is None else dst.format(**m.groupdict()) + name[m.end() :]


@dataclass(frozen=True)
class KeyMap:
    """hone parameter names <-> transformers' names.

    Templates are name prefixes in which "{i}" stands for a layer index; names that no
    rule matches are the same on both sides.
    renames:    (hone prefix, transformers prefix)
    fused:      (hone prefix, transformers prefixes): one hone tensor is theirs
                concatenated on dim 0 (fused q/k/v)
    transposed: full hone names whose transformers tensor is the transpose (Conv1D)
    """

    renames: tuple[tuple[str, str], ...] = ()
    fused: tuple[tuple[str, tuple[str, ...]], ...] = ()
    transposed: tuple[str, ...] = ()

    def __add__(self, other: KeyMap) -> KeyMap:
        return KeyMap(
            self.renames + other.renames, self.fused + other.fused, self.transposed + other.transposed
        )

    def nested(self, hone_prefix: str, hf_prefix: str) -> KeyMap:
        """The same map for a submodule stored under these prefixes."""
        return KeyMap(
            tuple((hone_prefix + a, hf_prefix + b) for a, b in self.renames) + ((hone_prefix, hf_prefix),),
            tuple((hone_prefix + a, tuple(hf_prefix + p for p in b)) for a, b in self.fused),
            tuple(hone_prefix + t for t in self.transposed),
        )

    def _is_transposed(self, hone_name: str) -> bool:
        return any(_pattern(t).fullmatch(hone_name) for t in self.transposed)

    def _rename(self, name: str, to_hf: bool) -> str:
        for hone, hf in self.renames:
            new = _swap_prefix(name, hone, hf) if to_hf else _swap_prefix(name, hf, hone)
            if new is not None:
                return new
        return name

    def _fused_part(self, hf_name: str) -> tuple[str, int] | None:
        """(hone name, index of the part) when hf_name is one part of a fused tensor."""
        for hone, parts in self.fused:
            for k, part in enumerate(parts):
                new = _swap_prefix(hf_name, part, hone)
                if new is not None:
                    return new, k
        return None

    def to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, tensor in state.items():
            for hone, parts in self.fused:
                if _pattern(hone).match(name):
                    for part, chunk in zip(parts, tensor.chunk(len(parts))):
                        out[_swap_prefix(name, hone, part)] = chunk
                    break
            else:
                out[self._rename(name, to_hf=True)] = tensor.t() if self._is_transposed(name) else tensor
        return out

    def from_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inverse of to_hf; every part of a fused tensor must be present."""
        out: dict[str, torch.Tensor] = {}
        pieces: dict[str, dict[int, torch.Tensor]] = {}
        for name, tensor in state.items():
            if (part := self._fused_part(name)) is not None:
                new, k = part
                pieces.setdefault(new, {})[k] = tensor
            else:
                new = self._rename(name, to_hf=False)
                out[new] = tensor.t() if self._is_transposed(new) else tensor
        for name, parts in pieces.items():
            out[name] = torch.cat([parts[k] for k in sorted(parts)])
        return out


class PreTrainedModule(nn.Module):
    """Base of every hone model: config, transformers-compatible save, init, LR depth.

    Task models hold their encoder/decoder as `self.backbone`; a bare encoder/decoder is
    itself the backbone. A backbone's `encode(...)` returns the hidden states of the tokens
    it ran on, (*tokens, C), with their `AttentionLayout`; task heads compute on those and
    let the layout restore the (B, T) shape, so that they run on real tokens only when
    the layout is varlen (see `set_unpadded` and hone.data.packing).
    """

    hf_suffix: ClassVar[str] = "Model"  # transformers class = HF_NAMES prefix + this
    hf_optional: ClassVar[tuple[str, ...]] = ()  # backbone names that a checkpoint may lack
    is_causal: ClassVar[bool] = False  # decoder backbones: each token sees only earlier ones

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.activation_checkpointing = False
        self.unpadded = False
        self.attention_kernel = "auto"

    @property
    def num_hidden_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hf_architecture(self) -> str:
        """transformers' class name for this model, e.g. "RobertaForSequenceClassification"."""
        return HF_NAMES[self.config.model_type][0] + self.hf_suffix

    @property
    def hf_prefix(self) -> str:
        """Prefix of the base model's weights in transformers' state dict ("" when bare)."""
        return HF_NAMES[self.config.model_type][1] + "." if "backbone" in self._modules else ""

    def hf_key_map(self) -> KeyMap:
        """Backbones describe their own names; task models add their head's."""
        return self.head_key_map() + self.backbone.hf_key_map().nested("backbone.", self.hf_prefix)

    def head_key_map(self) -> KeyMap:
        return KeyMap()

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict in transformers' names and layouts (tied weights left out, as it saves)."""
        return self.hf_key_map().to_hf(self.state_dict())

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a complete state dict in transformers' names (see checkpoint.load_model)."""
        self.load_state_dict(self.hf_key_map().from_hf(state))

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True) -> None:
        """Write config.json + model.safetensors (or pytorch_model.bin) as transformers' save_pretrained does."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config.pop("torch_dtype", None)
        config.update(
            model_type=self.config.model_type,
            architectures=[self.hf_architecture],
            dtype=str(next(self.parameters()).dtype).removeprefix("torch."),
        )
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        # own, contiguous copies: safetensors refuses views that share memory (split q/k/v)
        tensors = {
            name: t.detach().cpu().clone(memory_format=torch.contiguous_format)
            for name, t in self.hf_state_dict().items()
        }
        if safe_serialization:
            save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        else:
            torch.save(tensors, folder / "pytorch_model.bin")

    def param_depth(self, name: str) -> int:
        """Depth for layer-wise LR decay (ELECTRA's definition): 0 embeddings, encoder layer
        i -> i + 1, pooler / final LayerNorm -> L + 1, task head -> L + 2."""
        if name.startswith("backbone."):
            return self.backbone.param_depth(name.removeprefix("backbone."))
        return self.num_hidden_layers + 2

    def enable_activation_checkpointing(self) -> None:
        """Recompute each layer in backward instead of storing its activations."""
        for module in self.modules():
            if isinstance(module, PreTrainedModule):
                module.activation_checkpointing = True

    def set_unpadded(self, enabled: bool = True) -> Self:
        """Drop padding tokens before the embeddings and run every layer and head on real
        tokens only (varlen attention), when a batch comes with an attention_mask.

        Outputs equal the padded path's at real tokens; padding positions of per-token
        outputs are 0 (QA start/end logits: the lowest float). Losses ignore padding
        entirely, where transformers' padded path does not quite: labels at padding
        positions; padding logits in the QA softmax (transformers keeps them, so its QA
        loss depends on how much a batch is padded); with GPT-2 left padding, the padding
        position before the first real token predicting it. GPT-2 classification pools the
        last real token (transformers: the last token that is not pad_token_id). Default
        off; the engine turns it on when the hardware profile says unpad.
        """
        for module in self.modules():
            if isinstance(module, PreTrainedModule):
                module.unpadded = enabled
        return self

    def set_attention(self, kernel: str) -> Self:
        """Choose the attention kernel (hone.models.padding.KERNELS: auto, flash, sdpa, math);
        where it cannot run (flash off CUDA or in fp32) sdpa runs instead (padding.attention_kernel)."""
        if kernel not in KERNELS:
            raise ModelConfigError(f"attention kernel {kernel!r} is not one of {', '.join(KERNELS)}")
        for module in self.modules():
            if isinstance(module, PreTrainedModule):
                module.attention_kernel = kernel
        return self

    def prepare_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
        varlen: VarlenMetadata | None = None,
    ) -> tuple[AttentionLayout, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Choose this batch's layout and gather the (B, T) integer inputs into it.

        Varlen metadata from the collate function (`varlen`): its varlen layout, nothing read
        back from the device. Packed batch (cu_seqlens given) or `unpadded` with an attention
        mask: varlen layout computed here; otherwise the padded layout, inputs stay (B, T).
        Returns (layout, input_ids, token_type_ids, position_ids), all shaped (*tokens).
        """
        if input_ids.dim() != 2:
            raise ModelConfigError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        if cu_seqlens is not None and position_ids is None:
            raise LayoutError(
                "a packed batch (cu_seqlens) needs position_ids that restart at every sequence; "
                "hone.data.packing.pack_collate builds both"
            )
        kernel = self.attention_kernel
        if varlen is not None:
            layout = AttentionLayout.from_metadata(varlen, input_ids.shape, causal=self.is_causal, kernel=kernel)
        elif cu_seqlens is not None:
            layout = AttentionLayout.varlen(
                attention_mask, input_ids.shape, causal=self.is_causal, cu_seqlens=cu_seqlens, kernel=kernel
            )
        elif self.unpadded and attention_mask is not None:
            layout = AttentionLayout.varlen(attention_mask, input_ids.shape, causal=self.is_causal, kernel=kernel)
        else:
            layout = AttentionLayout.from_attention_mask(attention_mask, causal=self.is_causal, kernel=kernel)
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids)
        gather = layout.remove_padding
        return (
            layout,
            gather(input_ids),
            None if token_type_ids is None else gather(token_type_ids.expand_as(input_ids)),
            gather(position_ids.expand_as(input_ids)),
        )

    def default_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) or (T,) positions when the batch gives none (backbones define them)."""
        raise NotImplementedError

    def run_layers(self, hidden: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                hidden = checkpoint(layer, hidden, layout, use_reentrant=False)
            else:
                hidden = layer(hidden, layout)
        return hidden

    @torch.no_grad()
    def init_weights(self, root: nn.Module | None = None) -> None:
        """transformers' _init_weights: N(0, initializer_range) for Linear and Embedding
        (padding row zeroed), zero biases, LayerNorm weight 1 and bias 0."""
        std = self.config.initializer_range
        for module in (self if root is None else root).modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def check_length(seq_len: int, config: ModelConfig) -> None:
    """Positions beyond the learned table would fail deep inside nn.Embedding: say so here."""
    if seq_len > config.max_positions:
        raise ModelConfigError(
            f"sequence length {seq_len} is longer than this model's {config.max_positions} positions; "
            f"truncate the inputs (max_seq_length <= {config.max_positions})"
        )


def question_answering_output(
    span_logits: torch.Tensor,
    layout: AttentionLayout,
    start_positions: torch.Tensor | None,
    end_positions: torch.Tensor | None,
) -> ModelOutput:
    """(*tokens, 2) -> start/end logits (B, T) and the loss: mean of the start and end
    cross-entropy over each sequence's positions; a position outside its sequence is
    ignored (a negative one means 0), as in transformers.

    Padded layout: a sequence is a whole row, padding included (transformers' loss).
    Varlen layout: a sequence is its own real tokens, so padding and the other sequences
    of a packed row take no part in its softmax; padding positions of the returned logits
    hold the lowest float. Positions count from the sequence's first token either way.
    """
    span_logits = span_logits.float()
    lowest = torch.finfo(span_logits.dtype).min
    start_logits, end_logits = layout.restore_padding(span_logits, fill=lowest).unbind(-1)  # (B, T)
    out = ModelOutput(start_logits=start_logits, end_logits=end_logits)
    if start_positions is not None and end_positions is not None:
        per_sequence = layout.to_sequences(span_logits, fill=lowest)  # (S, T', 2)
        lengths = layout.sequence_lengths() if layout.is_varlen else per_sequence.shape[1]
        losses = []
        for logits, positions in zip(per_sequence.unbind(-1), (start_positions, end_positions)):
            positions = positions.reshape(-1).clamp(min=0)
            target = positions.masked_fill(positions >= lengths, IGNORE_INDEX)
            losses.append(F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX))
        out.loss = (losses[0] + losses[1]) / 2
    return out


def sequence_classification_output(
    logits: torch.Tensor, labels: torch.Tensor | None, config: ModelConfig
) -> ModelOutput:
    """Logits (B, num_labels) and transformers' loss: MSE when num_labels == 1 (regression),
    cross-entropy for integer labels, BCE-with-logits for float multi-label targets."""
    out = ModelOutput(logits=logits)
    if labels is None:
        return out
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    logits = logits.float()
    if problem == "regression":
        out.loss = F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
    elif problem == "single_label_classification":
        out.loss = F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1).long())
    else:
        out.loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return out


def token_prediction_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100 (MLM, CLM, NSP);
    logits (*tokens, V), labels (*tokens)."""
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX)
