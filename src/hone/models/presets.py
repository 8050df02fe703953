"""Named model configurations: Hugging Face's config.json of well-known models, to build them
with fresh weights (`--config_name bert-base-uncased`, `hone bench --model_config minilm`)."""

from __future__ import annotations

_BERT_BASE = dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
                  initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0)
_ROBERTA_BASE = {**_BERT_BASE, "model_type": "roberta", "vocab_size": 50265, "max_position_embeddings": 514,
                 "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0,
                 "eos_token_id": 2}
_GPT2 = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
             activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
             layer_norm_epsilon=1e-5, initializer_range=0.02, bos_token_id=50256, eos_token_id=50256)

PRESETS: dict[str, dict] = {
    "bert-base-uncased": _BERT_BASE,
    "bert-large-uncased": {**_BERT_BASE, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                           "intermediate_size": 4096},
    "roberta-base": _ROBERTA_BASE,
    "roberta-large": {**_ROBERTA_BASE, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                      "intermediate_size": 4096},
    "minilm": {**_BERT_BASE, "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536},
    "gpt2": _GPT2,
    "gpt2-medium": {**_GPT2, "n_embd": 1024, "n_layer": 24, "n_head": 16},
}
ALIASES = {"bert-base": "bert-base-uncased", "bert-large": "bert-large-uncased"}


def preset(name: str) -> dict | None:
    """The config.json dict of a named model (a copy), or None when the name is not one."""
    config = PRESETS.get(ALIASES.get(name, name))
    return None if config is None else dict(config)
