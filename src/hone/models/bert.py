"""BERT and RoBERTa: one post-LayerNorm encoder, switched by config.model_type.

RoBERTa differs only in details: position ids count from pad_token_id + 1 and skip
padding, type_vocab_size is 1, the MLM head always uses exact GELU and is named lm_head,
and sequence classification uses a dense+tanh head on <s> instead of BERT's pooler.

Every forward also takes `cu_seqlens` (S + 1,) for a packed batch (hone.data.packing):
then input_ids (R, L) hold S sequences, per-token outputs keep the (R, L) shape and
pooled outputs / classification logits have one row per sequence (S, ...). With
`set_unpadded(True)` the same varlen path runs one sequence per row of a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from hone.models.outputs import ModelOutput
from hone.models.padding import IGNORE_INDEX, AttentionLayout, VarlenMetadata, attention


@dataclass
class BertConfig(ModelConfig):
    """transformers' BertConfig fields and defaults (bert-base-uncased)."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_type not in ("bert", "roberta"):
            raise ModelConfigError(f"model_type {self.model_type!r} is not an encoder type (bert, roberta)")
        if self.hidden_size % self.num_attention_heads:
            raise ModelConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.position_embedding_type != "absolute":
            raise ModelConfigError(
                f"position_embedding_type {self.position_embedding_type!r} is not supported "
                "(hone implements 'absolute' only)"
            )
        if self.extra.get("is_decoder") or self.extra.get("add_cross_attention"):
            raise ModelConfigError("is_decoder / add_cross_attention BERT models are not supported")

    @property
    def position_offset(self) -> int:
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings - self.position_offset


@dataclass
class RobertaConfig(BertConfig):
    """transformers' RobertaConfig defaults (roberta-base)."""

    model_type: str = "roberta"
    vocab_size: int = 50265
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2


def roberta_position_ids(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Real tokens get pad+1, pad+2, ...; padding keeps pad (transformers'
    create_position_ids_from_input_ids)."""
    real = input_ids.ne(pad_token_id).int()
    return (torch.cumsum(real, dim=1).type_as(real) * real).long() + pad_token_id


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.is_roberta = config.model_type == "roberta"
        self.pad_token_id = config.pad_token_id
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, h, padding_idx=config.pad_token_id if self.is_roberta else None
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def default_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) input_ids -> positions (T,) for BERT, (B, T) for RoBERTa."""
        T = input_ids.shape[1]
        check_length(T, self.config)
        if self.is_roberta:
            return roberta_position_ids(input_ids, self.pad_token_id)
        return torch.arange(T, device=input_ids.device)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None, position_ids: torch.Tensor
    ) -> torch.Tensor:
        # every input (*tokens)
        x = self.word_embeddings(input_ids)  # (*tokens, C)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]  # every token is segment 0
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.norm(x))


class BertLayer(nn.Module):
    """Post-LayerNorm block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        h = config.hidden_size
        self.n_head = config.num_attention_heads
        self.attn_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(h, 3 * h)  # transformers' query, key, value in one matmul
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(h, config.intermediate_size)
        self.act = get_activation(config.hidden_act)
        self.ffn_out = nn.Linear(config.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        # x: (*tokens, C)
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_head, -1)).unbind(-3)  # (*tokens, H, D)
        a = attention(q, k, v, layout, dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.attn_norm(x + self.dropout(self.attn_out(a.flatten(-2))))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


class BertPooler(nn.Module):
    """dense + tanh on the first token ([CLS] / <s>): (S, C) -> (S, C)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, first_tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(first_tokens))


class BertModel(PreTrainedModule):
    """The bare encoder (transformers' BertModel / RobertaModel): last_hidden_state and,
    with the pooler, pooler_output."""

    hf_optional = ("pooler.",)

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def hf_key_map(self) -> KeyMap:
        layer = "encoder.layer.{i}."
        return KeyMap(
            renames=(
                ("embeddings.norm.", "embeddings.LayerNorm."),
                ("layers.{i}.attn_out.", layer + "attention.output.dense."),
                ("layers.{i}.attn_norm.", layer + "attention.output.LayerNorm."),
                ("layers.{i}.ffn_in.", layer + "intermediate.dense."),
                ("layers.{i}.ffn_out.", layer + "output.dense."),
                ("layers.{i}.ffn_norm.", layer + "output.LayerNorm."),
            ),
            fused=(
                ("layers.{i}.qkv.", tuple(layer + f"attention.self.{p}." for p in ("query", "key", "value"))),
            ),
        )

    def param_depth(self, name: str) -> int:
        root, _, rest = name.partition(".")
        if root == "embeddings":
            return 0
        if root == "layers":
            return int(rest.partition(".")[0]) + 1
        if root == "pooler":
            return self.num_hidden_layers + 1
        raise ValueError(f"{name!r} is not a parameter of {type(self).__name__}")

    def default_position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings.default_position_ids(input_ids)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        varlen: VarlenMetadata | None = None,
    ) -> tuple[torch.Tensor, AttentionLayout]:
        """Last hidden states (*tokens, C) of the tokens the layers ran on, and their layout."""
        layout, input_ids, token_type_ids, position_ids = self.prepare_inputs(
            input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen
        )
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # (*tokens, C)
        return self.run_layers(x, layout), layout

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        varlen: VarlenMetadata | None = None,
    ) -> ModelOutput:
        x, layout = self.encode(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen)
        out = ModelOutput(last_hidden_state=layout.restore_padding(x))  # (B, T, C)
        if self.pooler is not None:
            out.pooler_output = self.pooler(layout.first_tokens(x))  # (S, C)
        return out


class BertForQuestionAnswering(PreTrainedModule):
    """Extractive QA: Linear(h, 2) on every token -> start_logits, end_logits (B, T)."""

    hf_suffix = "ForQuestionAnswering"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.backbone = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
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


class RobertaClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj on <s> (transformers' names): (S, C) -> (S, num_labels)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(_classifier_dropout(config))
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, first_tokens: torch.Tensor) -> torch.Tensor:
        x = self.dropout(first_tokens)
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


def _classifier_dropout(config: BertConfig) -> float:
    return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout


class BertForSequenceClassification(PreTrainedModule):
    """Sequence classification / regression (num_labels == 1) on the first token.

    BERT: pooler (dense + tanh) -> dropout -> classifier. RoBERTa: RobertaClassificationHead.
    """

    hf_suffix = "ForSequenceClassification"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.is_roberta = config.model_type == "roberta"
        self.backbone = BertModel(config, add_pooling_layer=not self.is_roberta)
        if self.is_roberta:
            self.classifier = RobertaClassificationHead(config)
        else:
            self.dropout = Dropout(_classifier_dropout(config))
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights(self.classifier)

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
        first = layout.first_tokens(x)  # (S, C)
        if self.is_roberta:
            logits = self.classifier(first)
        else:
            logits = self.classifier(self.dropout(self.backbone.pooler(first)))
        return sequence_classification_output(logits, labels, self.config)


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder tied to the word embeddings, + bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if not config.tie_word_embeddings:
            # transformers 4 and 5 disagree on an untied decoder's bias; no released BERT or
            # RoBERTa checkpoint unties it
            raise ModelConfigError("tie_word_embeddings=False: untied masked-LM decoders are not supported")
        h = config.hidden_size
        self.dense = nn.Linear(h, h)
        # RoBERTa's lm_head applies exact GELU whatever hidden_act says
        self.act = get_activation("gelu" if config.model_type == "roberta" else config.hidden_act)
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.norm(self.act(self.dense(hidden))), word_embeddings, self.bias)

    def predict(self, hidden: torch.Tensor, word_embeddings: torch.Tensor, layout: AttentionLayout,
                labels: torch.Tensor | None, dense_logits: bool, logits_name: str) -> ModelOutput:
        """Masked-LM logits and loss of the hidden states (*tokens, C).

        With labels (and not `dense_logits`), only the targets (labels != -100, ~15% of the
        tokens) go through the head: `masked_logits` (M, V) and `masked_labels` (M,), targets
        in row-major (B, T) order; the loss is the same mean over targets as the dense one.
        Otherwise every token: `logits_name` (B, T, V), as transformers returns it.
        """
        if labels is None or dense_logits:
            logits = self(hidden, word_embeddings)  # (*tokens, V)
            out = ModelOutput({logits_name: layout.restore_padding(logits)})
            if labels is not None:
                out.loss = token_prediction_loss(logits, layout.remove_padding(labels, fill=IGNORE_INDEX))
            return out
        labels = layout.remove_padding(labels, fill=IGNORE_INDEX).reshape(-1)  # (tokens,)
        targets = (labels != IGNORE_INDEX).nonzero().squeeze(1)  # (M,)
        logits = self(hidden.flatten(0, -2).index_select(0, targets), word_embeddings)  # (M, V)
        masked_labels = labels.index_select(0, targets)
        return ModelOutput(masked_logits=logits, masked_labels=masked_labels,
                           loss=token_prediction_loss(logits, masked_labels))


def _mlm_key_map(model_type: str) -> KeyMap:
    if model_type == "roberta":
        return KeyMap(renames=(("lm_head.norm.", "lm_head.layer_norm."),))
    return KeyMap(
        renames=(
            ("lm_head.dense.", "cls.predictions.transform.dense."),
            ("lm_head.norm.", "cls.predictions.transform.LayerNorm."),
            ("lm_head.bias", "cls.predictions.bias"),
            ("seq_relationship.", "cls.seq_relationship."),
        )
    )


class BertForMaskedLM(PreTrainedModule):
    """Masked LM: logits (B, T, vocab); labels -100 are ignored. Given labels, only the
    targets are predicted (masked_logits, masked_labels) unless dense_logits=True
    (MaskedLMHead.predict)."""

    hf_suffix = "ForMaskedLM"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.backbone = BertModel(config, add_pooling_layer=False)
        self.lm_head = MaskedLMHead(config)
        self.init_weights(self.lm_head)

    def head_key_map(self) -> KeyMap:
        return _mlm_key_map(self.config.model_type)

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
        dense_logits: bool = False,
    ) -> ModelOutput:
        x, layout = self.backbone.encode(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen)
        word_embeddings = self.backbone.embeddings.word_embeddings.weight
        return self.lm_head.predict(x, word_embeddings, layout, labels, dense_logits, "logits")


class BertForPreTraining(PreTrainedModule):
    """BERT pre-training: masked LM + next-sentence prediction (cls.seq_relationship).

    loss = MLM loss (labels) + NSP loss (next_sentence_label), -100 ignored in both. Given
    labels, only the targets are predicted unless dense_logits=True (MaskedLMHead.predict).
    """

    hf_suffix = "ForPreTraining"

    def __init__(self, config: BertConfig):
        if config.model_type != "bert":
            raise ModelConfigError(f"{config.model_type} has no next-sentence head; use the 'mlm' task")
        super().__init__(config)
        self.backbone = BertModel(config, add_pooling_layer=True)
        self.lm_head = MaskedLMHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)
        self.init_weights(self.lm_head)
        self.init_weights(self.seq_relationship)

    def head_key_map(self) -> KeyMap:
        return _mlm_key_map(self.config.model_type)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        varlen: VarlenMetadata | None = None,
        dense_logits: bool = False,
    ) -> ModelOutput:
        x, layout = self.backbone.encode(input_ids, attention_mask, token_type_ids, position_ids, cu_seqlens, varlen)
        word_embeddings = self.backbone.embeddings.word_embeddings.weight
        result = self.lm_head.predict(x, word_embeddings, layout, labels, dense_logits, "prediction_logits")
        result.seq_relationship_logits = self.seq_relationship(self.backbone.pooler(layout.first_tokens(x)))  # (S, 2)
        losses = [] if result.loss is None else [result.loss]
        if next_sentence_label is not None:
            losses.append(token_prediction_loss(result.seq_relationship_logits, next_sentence_label))
        if losses:
            result.loss = sum(losses)
        return result
