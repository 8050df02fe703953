"""GPT-2: a pre-LayerNorm causal decoder with learned positions, final ln_f and a tied LM head.

Parameter names are transformers' (as in nanoGPT); its checkpoints store the Conv1D
weights (c_attn, c_proj, c_fc) as (in, out), the transpose of nn.Linear, which the key
map undoes on load and redoes on save.

Packed batches (`cu_seqlens`) and `set_unpadded(True)` work as for BERT (see bert.py):
attention is causal within each sequence, the LM loss never predicts across a sequence
boundary, and classification pools each sequence's last token.

Generation passes a `KVCache` (hone.models.generation) as `past_key_values`: each layer
appends this call's keys and values to it and attends over all of them, so a step feeds
only the new tokens. Cached calls take padded batches (left padding, with the mask of
every position so far).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from hone.errors import ModelConfigError
from hone.models.base import (
    KeyMap,
    ModelConfig,
    PreTrainedModule,
    check_length,
    get_activation,
    question_answering_output,
    sequence_classification_output,
    token_prediction_loss,
)
from hone.models.dropout import Dropout
from hone.models.losses import linear_cross_entropy
from hone.models.outputs import ModelOutput
from hone.models.padding import AttentionLayout, LayoutError, VarlenMetadata, attention

if TYPE_CHECKING:
    from hone.models.generation import KVCache


@dataclass
class GPT2Config(ModelConfig):
    """transformers' GPT2Config fields and defaults (gpt2 small)."""

    model_type: str = "gpt2"
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_type != "gpt2":
            raise ModelConfigError(f"model_type {self.model_type!r} is not gpt2")
        if self.n_embd % self.n_head:
            raise ModelConfigError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.extra.get("add_cross_attention"):
            raise ModelConfigError("add_cross_attention GPT-2 models are not supported")

    # transformers' generic names
    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @property
    def max_positions(self) -> int:
        return self.n_positions


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        h = config.n_embd
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.attn_pdrop = config.attn_pdrop
        self.scale = (h // config.n_head) ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1
        self.c_attn = nn.Linear(h, 3 * h)  # q, k, v
        self.c_proj = nn.Linear(h, h)
        self.resid_dropout = Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, layout: AttentionLayout, cache: KVCache | None = None) -> torch.Tensor:
        q, k, v = self.c_attn(x).unflatten(-1, (3, self.n_head, -1)).unbind(-3)  # (*tokens, H, D)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, past + T, H, D)
        dropout_p = self.attn_pdrop if self.training else 0.0
        a = attention(q, k, v, layout, dropout_p=dropout_p, scale=self.scale).flatten(-2)
        return self.resid_dropout(self.c_proj(a))


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.act = get_activation(config.activation_function)
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.dropout = Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    """Pre-LayerNorm block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, layout: AttentionLayout, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layout, cache)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(PreTrainedModule):
    """The bare decoder (transformers' GPT2Model): last_hidden_state after ln_f."""

    is_causal = True

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.init_weights()

    @property
    def layers(self) -> nn.ModuleList:
        return self.h

    @torch.no_grad()
    def init_weights(self, root: nn.Module | None = None) -> None:
        """transformers' init plus GPT-2's scaled residual projections: std / sqrt(2 n_layer)."""
        super().init_weights(root)
        std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
        for module in (self if root is None else root).modules():
            if isinstance(module, (GPT2Attention, GPT2MLP)):
                module.c_proj.weight.normal_(0.0, std)

    def hf_key_map(self) -> KeyMap:
        return KeyMap(
            transposed=tuple(
                f"h.{{i}}.{name}.weight" for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
            )
        )

    def param_depth(self, name: str) -> int:
        root, _, rest = name.partition(".")
        if root in ("wte", "wpe"):
            return 0
        if root == "h":
            return int(rest.partition(".")[0]) + 1
        if root == "ln_f":
            return self.num_hidden_layers + 1
        raise ValueError(f"{name!r} is not a parameter of {type(self).__name__}")

    def default_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        check_length(input_ids.shape[1], self.config)
        return torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        varlen: VarlenMetadata | None = None,
        past_key_values: KVCache | None = None,
    ) -> tuple[torch.Tensor, AttentionLayout]:
        """Hidden states after ln_f (*tokens, C) of the tokens the layers ran on, and their layout."""
        if past_key_values is None:
            layout, input_ids, token_type_ids, position_ids = self.prepare_inputs(
                input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen
            )
        else:
            layout, position_ids = self.cached_layout(input_ids, attention_mask, position_ids,
                                                      cu_seqlens if varlen is None else varlen.cu_seqlens,
                                                      past_key_values.length)
        x = self.wte(input_ids) + self.wpe(position_ids)  # (*tokens, C)
        if token_type_ids is not None:  # transformers embeds token types with wte
            x = x + self.wte(token_type_ids)
        x = self.drop(x)
        if past_key_values is None:
            x = self.run_layers(x, layout)
        else:
            for layer in self.h:
                x = layer(x, layout, past_key_values)
            past_key_values.advance(input_ids.shape[1])
        return self.ln_f(x), layout

    def cached_layout(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cu_seqlens: torch.Tensor | None,
        past_length: int,
    ) -> tuple[AttentionLayout, torch.Tensor]:
        """Padded layout and positions of (B, T) new tokens after `past_length` cached ones;
        attention_mask (B, past_length + T) covers the cached positions too (None: all real)."""
        if cu_seqlens is not None:
            raise LayoutError("a KV cache takes padded batches (left padding), not packed ones")
        B, T = input_ids.shape
        check_length(past_length + T, self.config)
        if attention_mask is None:
            attention_mask = torch.ones(B, past_length + T, dtype=torch.long, device=input_ids.device)
        elif attention_mask.shape != (B, past_length + T):
            raise LayoutError(
                f"with {past_length} cached positions, attention_mask must be (batch, {past_length + T}) "
                f"covering the cached and the new tokens, got {tuple(attention_mask.shape)}"
            )
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + T, device=input_ids.device)
        layout = AttentionLayout.from_attention_mask(attention_mask, causal=True, past_length=past_length)
        return layout, position_ids.expand_as(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        varlen: VarlenMetadata | None = None,
        past_key_values: KVCache | None = None,
    ) -> ModelOutput:
        x, layout = self.encode(
            input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen, past_key_values
        )
        out = ModelOutput(last_hidden_state=layout.restore_padding(x))  # (B, T, C)
        if past_key_values is not None:
            out.past_key_values = past_key_values
        return out


class GPT2LMHeadModel(PreTrainedModule):
    """Causal LM: logits (B, T, vocab) from the tied embedding; loss on shifted labels, -100 ignored.

    With labels, the loss comes from `linear_cross_entropy` (no (tokens, vocab) logits in
    either pass) and the logits are deferred: `out.logits` computes them when read, so a
    training or evaluation step that reads only `out.loss` never materialises them.
    `return_logits=True` computes them up front (the loss then comes from them, as in
    transformers), False leaves them out. `logits_to_keep` (transformers' meaning): only the
    last that many positions' logits (0: all), e.g. the next-token logits in generation.
    """

    hf_suffix = "LMHeadModel"

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.backbone = GPT2Model(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if self.lm_head is not None:
            self.init_weights(self.lm_head)

    @property
    def output_weight(self) -> torch.Tensor:
        """(V, C) the vocabulary projection: the tied embedding or lm_head."""
        return self.backbone.wte.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        varlen: VarlenMetadata | None = None,
        past_key_values: KVCache | None = None,
        return_logits: bool | None = None,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        x, layout = self.backbone.encode(
            input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen, past_key_values
        )

        def logits() -> torch.Tensor:  # (B, T or logits_to_keep, V)
            if logits_to_keep and not layout.is_varlen:
                return nn.functional.linear(x[:, -logits_to_keep:], self.output_weight)
            out = layout.restore_padding(nn.functional.linear(x, self.output_weight))
            return out[:, -logits_to_keep:] if logits_to_keep else out

        out = ModelOutput()
        if return_logits or (return_logits is None and labels is None):
            out.logits = logits()
        if labels is not None:  # token t predicts label t + 1
            targets = layout.next_token_labels(labels)
            if out.logits is not None and not logits_to_keep:
                out.loss = token_prediction_loss(layout.remove_padding(out.logits), targets)
            else:
                out.loss = linear_cross_entropy(x, self.output_weight, targets)
            if return_logits is None:
                out.defer("logits", logits)
        if past_key_values is not None:
            out.past_key_values = past_key_values
        return out


class GPT2ForSequenceClassification(PreTrainedModule):
    """Classification / regression on the last token with a bias-free `score` layer.

    Padded layout: the last token that is not pad_token_id, as transformers finds it;
    varlen layout (unpadded or packed): each sequence's last real token (the same token
    unless a sequence ends with real pad_token_id tokens, e.g. pad = eos)."""

    hf_suffix = "ForSequenceClassification"

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.backbone = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.init_weights(self.score)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        varlen: VarlenMetadata | None = None,
    ) -> ModelOutput:
        x, layout = self.backbone.encode(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen)
        if layout.is_varlen:
            logits = self.score(layout.last_tokens(x))  # (S, num_labels)
            return sequence_classification_output(logits, labels, self.config)
        B, T = input_ids.shape
        pad = self.config.pad_token_id
        if pad is None:
            if B != 1:
                raise ModelConfigError(
                    "GPT-2 classification of a padded batch needs pad_token_id in the config: "
                    "load it with e.g. load_model(path, 'classification', pad_token_id=50256)"
                )
            last = torch.full((1,), T - 1, device=input_ids.device)
        else:
            # index of the last token that is not padding (0 if all are)
            positions = torch.arange(T, device=input_ids.device)
            last = (positions * input_ids.ne(pad)).argmax(-1)
        logits = self.score(x[torch.arange(B, device=x.device), last])  # (B, num_labels)
        return sequence_classification_output(logits, labels, self.config)


class GPT2ForQuestionAnswering(PreTrainedModule):
    """Extractive QA: Linear(h, 2) on every token -> start_logits, end_logits (B, T)."""

    hf_suffix = "ForQuestionAnswering"

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.backbone = GPT2Model(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.init_weights(self.qa_outputs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        varlen: VarlenMetadata | None = None,
    ) -> ModelOutput:
        x, layout = self.backbone.encode(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen)
        return question_answering_output(self.qa_outputs(x), layout, start_positions, end_positions)
