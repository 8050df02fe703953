"""hone's BERT / RoBERTa / GPT-2 against transformers (the independent reference).

Tiny random models with every parameter perturbed (so that a swapped bias or LayerNorm
would show), a padded batch of different lengths, fp32, eval mode.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

import hone
from hone.models.checkpoint import build_model
from hone.models.padding import AttentionLayout, attention, causal_attention
from paths import DATA as SHARED_DATA

transformers = pytest.importorskip("transformers")

DATA = SHARED_DATA
MINILM = DATA / "models" / "all-MiniLM-L6-v2"
VOCAB = 99
TOL = 1e-5

AUTO = {
    None: "AutoModel",
    "qa": "AutoModelForQuestionAnswering",
    "classification": "AutoModelForSequenceClassification",
    "mlm": "AutoModelForMaskedLM",
    "pretraining": "AutoModelForPreTraining",
    "clm": "AutoModelForCausalLM",
}
ARCH = {
    ("bert", None): "BertModel",
    ("bert", "qa"): "BertForQuestionAnswering",
    ("bert", "classification"): "BertForSequenceClassification",
    ("bert", "mlm"): "BertForMaskedLM",
    ("bert", "pretraining"): "BertForPreTraining",
    ("roberta", None): "RobertaModel",
    ("roberta", "qa"): "RobertaForQuestionAnswering",
    ("roberta", "classification"): "RobertaForSequenceClassification",
    ("roberta", "mlm"): "RobertaForMaskedLM",
    ("gpt2", None): "GPT2Model",
    ("gpt2", "qa"): "GPT2ForQuestionAnswering",
    ("gpt2", "classification"): "GPT2ForSequenceClassification",
    ("gpt2", "clm"): "GPT2LMHeadModel",
}

# (model_type, task, variant): variant picks labels / config details
CASES = [
    ("bert", None, ""),
    ("bert", None, "relu"),
    ("bert", "qa", ""),
    ("bert", "classification", "single"),
    ("bert", "classification", "regression"),
    ("bert", "classification", "multi"),
    ("bert", "mlm", ""),
    ("bert", "mlm", "gelu_new"),
    ("bert", "pretraining", ""),
    ("roberta", None, ""),
    ("roberta", "qa", ""),
    ("roberta", "classification", "single"),
    ("roberta", "classification", "regression"),
    ("roberta", "mlm", ""),
    ("gpt2", None, ""),
    ("gpt2", "clm", ""),
    ("gpt2", "clm", "untied"),
    ("gpt2", "classification", "single"),
    ("gpt2", "qa", ""),
]


def hf_config(model_type: str, task: str | None = None, variant: str = ""):
    kw = {"tie_word_embeddings": False} if variant == "untied" else {}
    if task == "classification":
        kw["num_labels"] = {"single": 3, "regression": 1, "multi": 4}[variant]
    if model_type == "gpt2":
        return transformers.GPT2Config(
            n_embd=64, n_layer=3, n_head=4, vocab_size=VOCAB, n_positions=40,
            bos_token_id=2, eos_token_id=2, pad_token_id=0, **kw,
        )
    if variant in ("relu", "gelu_new"):
        kw["hidden_act"] = variant
    cls = transformers.BertConfig if model_type == "bert" else transformers.RobertaConfig
    return cls(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        vocab_size=VOCAB, max_position_embeddings=40, type_vocab_size=2 if model_type == "bert" else 1, **kw,
    )


def make_batch(model_type: str, task: str | None, variant: str, pad_token_id: int, seed: int = 0):
    """Padded batch (lengths 9, 6, 3) plus the labels transformers names for this task."""
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 9
    mask = (torch.arange(T) < torch.tensor([[9], [6], [3]])).long()
    ids = torch.randint(3, VOCAB, (B, T), generator=g).masked_fill(mask == 0, pad_token_id)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if model_type == "bert":
        inputs["token_type_ids"] = (torch.arange(T) >= 4).long().expand(B, T) * mask
    labels = {}
    if task == "qa":
        labels = {"start_positions": torch.tensor([1, 4, 30]), "end_positions": torch.tensor([3, 5, 2])}
    elif task == "classification":
        if variant == "single":
            labels = {"labels": torch.tensor([0, 2, 1])}
        elif variant == "regression":
            labels = {"labels": torch.tensor([0.5, -1.0, 2.0])}
        else:
            labels = {"labels": torch.randint(0, 2, (B, 4), generator=g).float()}
    elif task in ("mlm", "pretraining", "clm"):
        keep = (torch.rand(B, T, generator=g) < 0.5) & (mask == 1) if task != "clm" else mask == 1
        labels = {"labels": ids.masked_fill(~keep, -100)}
        if task == "pretraining":
            labels["next_sentence_label"] = torch.tensor([0, 1, 1])
    return inputs, labels


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Random weights everywhere, biases and LayerNorms included."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.05)


def assert_outputs_close(ref, out, mask: torch.Tensor, keys) -> None:
    real = mask.bool()
    for key in keys:
        a, b = ref[key], out[key]
        assert b is not None, key
        assert a.shape == b.shape, (key, a.shape, b.shape)
        if a.dim() >= 2 and a.shape[:2] == real.shape:  # per token: padding positions are undefined
            a, b = a[real], b[real]
        diff = (a.float() - b.float()).abs().max().item()
        assert diff <= TOL, f"{key}: max |diff| {diff}"


def dense(task: str | None) -> dict:
    """Masked-LM heads given labels predict the targets only unless asked for every position."""
    return {"dense_logits": True} if task in ("mlm", "pretraining") else {}


def output_keys(task: str | None, model_type: str) -> list[str]:
    return {
        None: ["last_hidden_state"] + (["pooler_output"] if model_type != "gpt2" else []),
        "qa": ["start_logits", "end_logits"],
        "classification": ["logits"],
        "mlm": ["logits"],
        "clm": ["logits"],
        "pretraining": ["prediction_logits", "seq_relationship_logits"],
    }[task]


@pytest.mark.parametrize("model_type,task,variant", CASES)
def test_transformers_checkpoint_loads_with_same_outputs(tmp_path, model_type, task, variant):
    torch.manual_seed(0)
    config = hf_config(model_type, task, variant)
    config._attn_implementation = "eager"
    ref = getattr(transformers, ARCH[model_type, task])(config)
    perturb(ref)
    ref.eval().save_pretrained(tmp_path)
    model = hone.load_model(tmp_path, task).eval()
    assert model.hf_architecture == ARCH[model_type, task]

    inputs, labels = make_batch(model_type, task, variant, config.pad_token_id)
    with torch.no_grad():
        expected = ref(**inputs, **labels)
        got = model(**inputs, **labels, **dense(task))
    assert_outputs_close(expected, got, inputs["attention_mask"], output_keys(task, model_type))
    if labels:
        assert got.loss is not None and torch.isfinite(got.loss)
        assert abs(got.loss.item() - expected.loss.item()) <= TOL


@pytest.mark.parametrize("model_type,task,variant", CASES)
def test_hone_save_loads_in_transformers_auto_class(tmp_path, model_type, task, variant):
    torch.manual_seed(0)
    model = build_model(hf_config(model_type, task, variant).to_dict(), task)
    perturb(model)
    model.eval().save_pretrained(tmp_path)

    auto = getattr(transformers, AUTO[task])
    ref, info = auto.from_pretrained(tmp_path, attn_implementation="eager", output_loading_info=True)
    assert type(ref).__name__ == ARCH[model_type, task]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    inputs, labels = make_batch(model_type, task, variant, model.config.pad_token_id, seed=3)
    with torch.no_grad():
        expected = ref.eval()(**inputs, **labels)
        got = model(**inputs, **labels, **dense(task))
    assert_outputs_close(expected, got, inputs["attention_mask"], output_keys(task, model_type))
    if labels:
        assert abs(got.loss.item() - expected.loss.item()) <= TOL


@pytest.mark.parametrize("model_type", ["bert", "roberta", "gpt2"])
def test_bare_checkpoint_loads_for_a_head_and_logs_new_weights(tmp_path, caplog, model_type):
    """A checkpoint without the base prefix (bare model) feeds the backbone; the head is new."""
    torch.manual_seed(0)
    config = hf_config(model_type)
    config._attn_implementation = "eager"
    bare = getattr(transformers, ARCH[model_type, None])(config)
    perturb(bare)
    bare.eval().save_pretrained(tmp_path)

    with caplog.at_level(logging.WARNING, logger="hone"):
        model = hone.load_model(tmp_path, "qa").eval()
    records = [r for r in caplog.records if r.name == "hone"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "newly initialized" in message and "qa_outputs.weight" in message and "qa_outputs.bias" in message
    assert ARCH[model_type, "qa"] in message

    inputs, _ = make_batch(model_type, None, "", config.pad_token_id)
    with torch.no_grad():
        expected = bare(**inputs).last_hidden_state
        got = model.backbone(**inputs).last_hidden_state
    assert_outputs_close({"h": expected}, {"h": got}, inputs["attention_mask"], ["h"])


def test_unused_head_weights_are_dropped_silently(tmp_path, caplog):
    config = hf_config("bert")
    transformers.BertForPreTraining(config).save_pretrained(tmp_path)  # has pooler, cls.*
    with caplog.at_level(logging.WARNING, logger="hone"):
        hone.load_model(tmp_path)
        hone.load_model(tmp_path, "mlm")
    assert not [r for r in caplog.records if r.name == "hone"]


def test_too_long_input_is_a_clear_error():
    for model_type, limit in [("bert", 40), ("roberta", 40 - 1 - 1), ("gpt2", 40)]:
        model = build_model(hf_config(model_type).to_dict())
        with pytest.raises(ValueError, match=f"sequence length {limit + 1} is longer than this model's {limit} positions"):
            model(torch.full((1, limit + 1), 5))
        model(torch.full((1, limit), 5))


def test_bf16_autocast_forward_and_backward():
    for model_type, task in [("bert", "qa"), ("roberta", "classification"), ("gpt2", "clm")]:
        model = build_model(hf_config(model_type, task, "single").to_dict(), task).train()
        inputs, labels = make_batch(model_type, task, "single", model.config.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**inputs, **labels).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_untied_masked_lm_is_refused():
    from hone.models.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="untied masked-LM decoders are not supported"):
        build_model(hf_config("bert", variant="untied").to_dict(), "mlm")


def test_tied_lm_heads_share_the_word_embeddings():
    for model_type, task in [("bert", "mlm"), ("roberta", "mlm"), ("bert", "pretraining"), ("gpt2", "clm")]:
        model = build_model(hf_config(model_type).to_dict(), task)
        names = {n for n, _ in model.named_parameters()}
        assert not any("decoder" in n or n == "lm_head.weight" for n in names), names


@pytest.mark.data
def test_minilm_real_weights_match_transformers():
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"{MINILM} is absent")
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello world",
        "Transformers process sequences of tokens in parallel with self-attention.",
        "SQuAD is a reading comprehension dataset.",
        "A short one.",
        "Padding tokens must not change the representation of real tokens in the batch at all.",
        "Paris is the capital of France.",
        "Why?",
    ]
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    inputs = tokenizer(sentences, padding=True, return_tensors="pt")
    ref = transformers.AutoModel.from_pretrained(MINILM, attn_implementation="eager").eval()
    model = hone.load_model(MINILM).eval()
    with torch.no_grad():
        expected = ref(**inputs)
        got = model(**inputs)
    assert inputs["attention_mask"].sum(1).min() < inputs["attention_mask"].shape[1]  # really padded
    assert_outputs_close(expected, got, inputs["attention_mask"], ["last_hidden_state", "pooler_output"])


def test_gpt2_left_padding_stays_finite():
    model = build_model(hf_config("gpt2").to_dict()).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [4, 5, 6, 7, 8]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = model(ids, mask).last_hidden_state
    assert torch.isfinite(out).all()
    # real tokens of the left-padded row see only real tokens
    with torch.no_grad():
        alone = model(ids[:1, 2:], position_ids=torch.arange(2, 5)).last_hidden_state
    assert (out[0, 2:] - alone[0]).abs().max() <= TOL


def test_attention_layout_matches_explicit_softmax():
    """Independent check of the padded layout: masked softmax written out by hand."""
    torch.manual_seed(0)
    B, T, H, D = 2, 5, 3, 4
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    for causal in (False, True):
        out = attention(q, k, v, AttentionLayout.from_attention_mask(mask, causal=causal))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
        allowed = mask.bool()[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
        expected = torch.einsum("bhqk,bkhd->bqhd", scores.masked_fill(~allowed, -1e9).softmax(-1), v)
        real = mask.bool()
        assert (out[real] - expected[real]).abs().max() <= 1e-6


def test_causal_attention_with_dropout_by_query_blocks():
    """The CPU dropout path splits the queries into blocks over the keys they may see: the
    same attention as one causal sdpa call (a dropout that drops nothing shows it), and no
    query sees a later key whatever the dropout draws."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 300, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    blocked = causal_attention(q, k, v, dropout_p=1e-12, scale=None)  # > 0: the blocked path
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (blocked - plain).abs().max() <= 1e-9
    for a, b in zip(torch.autograd.grad(blocked.sum(), (q, k, v)), torch.autograd.grad(plain.sum(), (q, k, v))):
        assert (a - b).abs().max() <= 1e-9
    later = 200
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, later:] += 1.0
    v2[:, :, later:] -= 1.0
    outs = []
    for keys, values in ((k, v), (k2, v2)):
        torch.manual_seed(3)  # the same dropout draws
        outs.append(causal_attention(q, keys, values, dropout_p=0.3, scale=None))
    assert torch.equal(outs[0][:, :, :later], outs[1][:, :, :later])
    assert not torch.equal(outs[0][:, :, later:], outs[1][:, :, later:])


def test_causal_attention_with_dropout_draws_hones_masks_in_the_compute_dtype():
    """On a CPU with dropout, causal attention stays in bf16 (sdpa's math path would compute in
    fp32) and draws hone's masks, not torch's element-by-element bernoulli: for one seed, the
    same masks in fp32 and bf16, so the outputs agree to bf16's precision."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 300, 16, generator=g) for _ in range(3))
    torch.manual_seed(7)
    with torch.profiler.profile() as prof:
        exact = causal_attention(q, k, v, dropout_p=0.1, scale=None)
    assert not [e.key for e in prof.key_averages() if "bernoulli" in e.key]
    torch.manual_seed(7)
    half = causal_attention(*(t.bfloat16() for t in (q, k, v)), dropout_p=0.1, scale=None)
    assert half.dtype == torch.bfloat16 and half.shape == exact.shape
    assert (half.float() - exact).abs().max() <= 0.05 * exact.abs().max()
    torch.manual_seed(8)
    assert not torch.equal(causal_attention(q, k, v, dropout_p=0.1, scale=None), exact)  # another draw
    one_sequence = causal_attention(q[0], k[0], v[0], dropout_p=0.1, scale=None)  # (H, T, D), as per sequence
    assert one_sequence.shape == q[0].shape


@pytest.mark.parametrize("model_type", ["bert", "roberta", "gpt2"])
def test_init_statistics_as_transformers(model_type):
    torch.manual_seed(0)
    big = {"bert": dict(hidden_size=256, intermediate_size=512, vocab_size=2000),
           "roberta": dict(hidden_size=256, intermediate_size=512, vocab_size=2000),
           "gpt2": dict(n_embd=256, vocab_size=2000)}[model_type]
    config = hf_config(model_type).to_dict() | big
    task = "clm" if model_type == "gpt2" else "mlm"
    model = build_model(config, task)
    n_layer = model.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            std = 0.02
            if model_type == "gpt2" and name.endswith("c_proj"):
                std = 0.02 / math.sqrt(2 * n_layer)
            assert module.weight.std().item() == pytest.approx(std, rel=0.1), name
            assert module.weight.mean().abs().item() < std / 10, name
            if module.bias is not None:
                assert (module.bias == 0).all(), name
        elif isinstance(module, torch.nn.LayerNorm):
            assert (module.weight == 1).all() and (module.bias == 0).all(), name
        elif isinstance(module, torch.nn.Embedding):
            rows = torch.ones(module.num_embeddings, dtype=torch.bool)
            if module.padding_idx is not None:
                assert (module.weight[module.padding_idx] == 0).all(), name
                rows[module.padding_idx] = False
            assert module.weight[rows].std().item() == pytest.approx(0.02, rel=0.1), name
    pad = config["pad_token_id"]
    if model_type != "gpt2":
        embeddings = model.backbone.embeddings
        assert embeddings.word_embeddings.padding_idx == pad
        assert embeddings.position_embeddings.padding_idx == (pad if model_type == "roberta" else None)
    head_bias = [p for n, p in model.named_parameters() if n == "lm_head.bias"]
    assert all((b == 0).all() for b in head_bias)


def test_param_depth():
    bert = build_model(hf_config("bert").to_dict(), "classification")  # 3 layers, pooler
    L = bert.num_hidden_layers
    assert L == 3
    depths = {n: bert.param_depth(n) for n, _ in bert.named_parameters()}
    assert depths["backbone.embeddings.word_embeddings.weight"] == 0
    assert depths["backbone.embeddings.norm.bias"] == 0
    assert depths["backbone.layers.0.qkv.weight"] == 1
    assert depths["backbone.layers.2.ffn_norm.weight"] == 3
    assert depths["backbone.pooler.dense.weight"] == L + 1
    assert depths["classifier.weight"] == L + 2
    assert set(depths.values()) == set(range(L + 3))

    bare = build_model(hf_config("bert").to_dict())
    assert bare.param_depth("layers.1.attn_out.weight") == 2 and bare.param_depth("pooler.dense.bias") == L + 1

    gpt2 = build_model(hf_config("gpt2").to_dict(), "classification")
    assert gpt2.param_depth("backbone.wte.weight") == 0 and gpt2.param_depth("backbone.wpe.weight") == 0
    assert gpt2.param_depth("backbone.h.2.mlp.c_fc.weight") == 3
    assert gpt2.param_depth("backbone.ln_f.weight") == L + 1
    assert gpt2.param_depth("score.weight") == L + 2
    with pytest.raises(ValueError, match="not a parameter"):
        bert.param_depth("backbone.nonsense.weight")


@pytest.mark.parametrize("model_type,task", [("bert", "qa"), ("gpt2", "clm")])
def test_activation_checkpointing_gives_same_gradients(model_type, task):
    torch.manual_seed(0)
    config = hf_config(model_type).to_dict()
    plain = build_model(config, task).train()
    checkpointed = build_model(config, task).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.enable_activation_checkpointing()
    assert checkpointed.backbone.activation_checkpointing
    inputs, labels = make_batch(model_type, task, "", config["pad_token_id"])
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same dropout masks (recomputation replays the RNG state)
        model(**inputs, **labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


def test_dropout_is_active_in_training_only():
    model = build_model(hf_config("bert").to_dict(), "qa")
    inputs, _ = make_batch("bert", "qa", "", 0)
    model.train()
    a, b = model(**inputs).start_logits, model(**inputs).start_logits
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).start_logits, model(**inputs).start_logits)


def test_roberta_positions_follow_padding_index():
    from hone.models.bert import roberta_position_ids

    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    expected = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(
        ids, padding_idx=1
    )
    assert torch.equal(roberta_position_ids(ids, 1), expected)
    assert roberta_position_ids(ids, 1)[0].tolist() == [2, 3, 4, 5, 1, 1]
