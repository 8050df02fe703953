"""Generation (hone.models.generation): the KV cache against full recomputation, greedy
decoding against transformers' generate on identical weights, sampling filters, stop rules."""

from __future__ import annotations

import pytest
import torch

from hone.data.tokenizer import load_tokenizer
from hone.errors import ModelConfigError
from hone.models.generation import GenerationError, KVCache, generate, next_token_logits
from hone.models.padding import LayoutError
from paths import DATA
from test_lm_loss import gpt2_pair
from test_text_data import word_tokenizer

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


def left_padded(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def transformers_greedy(ref, prompts, max_new_tokens: int, eos: int | None = None) -> list[list[int]]:
    """transformers' new tokens per prompt, cut after eos (finished rows are padded there)."""
    ids, mask = left_padded(prompts)
    out = ref.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                       eos_token_id=eos, pad_token_id=0)[:, ids.shape[1]:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


def test_cached_forward_equals_full_forward(tmp_path):
    model, _ = gpt2_pair(tmp_path)
    ids, mask = left_padded(PROMPTS)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    new = torch.tensor([[20], [21], [22]])
    with torch.no_grad():
        full = model(torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1),
                     position_ids=torch.cat([positions, positions[:, -1:] + 1], 1)).logits[:, -1]
        cache = KVCache(model.config.n_layer, 16)
        model(ids, mask, position_ids=positions, past_key_values=cache)
        assert cache.length == ids.shape[1]
        step = model(new, torch.cat([mask, torch.ones_like(new)], 1), position_ids=positions[:, -1:] + 1,
                     past_key_values=cache).logits[:, -1]
    assert (step - full).abs().max() <= 1e-5


def test_cached_calls_check_positions_and_layout(tmp_path):
    model, _ = gpt2_pair(tmp_path)  # 64 positions
    cache = KVCache(model.config.n_layer, 100)
    with torch.no_grad():
        model(torch.randint(0, 50, (1, 60)), past_key_values=cache)
        with pytest.raises(ModelConfigError, match="64 positions"):
            model(torch.randint(0, 50, (1, 10)), past_key_values=cache)
        with pytest.raises(LayoutError, match="attention_mask must be"):
            model(torch.randint(0, 50, (1, 2)), torch.ones(1, 2, dtype=torch.long), past_key_values=cache)
        with pytest.raises(LayoutError, match="not packed"):
            model(torch.randint(0, 50, (1, 2)), past_key_values=cache, cu_seqlens=torch.tensor([0, 1, 2]),
                  position_ids=torch.tensor([[0, 0]]))


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["single", "batched"])
def test_greedy_equals_transformers_generate_with_and_without_cache(tmp_path, prompts):
    model, ref = gpt2_pair(tmp_path)
    expected = transformers_greedy(ref, prompts, 12)
    cached = generate(model, prompts, max_new_tokens=12, eos_token_id=())
    recomputed = generate(model, prompts, max_new_tokens=12, eos_token_id=(), use_cache=False)
    assert cached.token_ids == recomputed.token_ids == expected
    assert cached.finish_reasons == ["length"] * len(prompts)


def test_eos_stops_a_row_and_the_others_go_on(tmp_path):
    model, ref = gpt2_pair(tmp_path)
    free = generate(model, PROMPTS, max_new_tokens=12, eos_token_id=()).token_ids
    eos = next(t for t in free[1] if t not in free[0])  # ends the second row, never the first
    expected = transformers_greedy(ref, PROMPTS, 12, eos=eos)
    got = generate(model, PROMPTS, max_new_tokens=12, eos_token_id=eos)
    assert got.token_ids == expected
    assert got.token_ids[1] == free[1][: free[1].index(eos) + 1] and got.finish_reasons[1] == "eos"
    assert got.token_ids[0] == free[0] and got.finish_reasons[0] == "length"


def test_generation_restores_training_mode_and_accepts_a_tensor(tmp_path):
    model, _ = gpt2_pair(tmp_path)
    model.train()
    a = generate(model, torch.tensor(PROMPTS[0]), max_new_tokens=5, eos_token_id=())
    assert model.training
    model.eval()
    assert a.token_ids == generate(model, [PROMPTS[0]], max_new_tokens=5, eos_token_id=()).token_ids


def test_sampling_is_reproducible_with_a_seed(tmp_path):
    model, _ = gpt2_pair(tmp_path)
    run = lambda seed, **kw: generate(model, PROMPTS, max_new_tokens=15, do_sample=True, seed=seed,  # noqa: E731
                                      eos_token_id=(), **kw).token_ids
    assert run(1) == run(1)
    assert run(1) != run(2)
    assert run(3, top_k=1) == generate(model, PROMPTS, max_new_tokens=15, eos_token_id=()).token_ids


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15], [0.2, 0.2, 0.2, 0.2, 0.2]]))
    kept = lambda out: [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in out]  # noqa: E731
    assert kept(next_token_logits(logits, top_k=2)) == [{1, 3}, {0, 1, 2, 3, 4}]  # ties stay, as transformers
    # smallest most likely set holding top_p: 0.4 + 0.3 = 0.7 >= 0.6; >= 0.75 needs 0.15 too
    assert kept(next_token_logits(logits, top_p=0.6))[0] == {1, 3}
    assert kept(next_token_logits(logits, top_p=0.75))[0] == {1, 3, 4}
    assert kept(next_token_logits(logits, top_p=0.01))[0] == {1}  # the most likely token always stays
    assert kept(next_token_logits(logits, top_k=3, top_p=0.6))[0] == {1, 3}
    hot = next_token_logits(logits, temperature=2.0)
    assert torch.allclose(hot, logits / 2.0)


def test_sampled_tokens_stay_in_the_top_k_and_top_p_sets(tmp_path):
    model, _ = gpt2_pair(tmp_path)
    prompt = PROMPTS[0]
    for options in (dict(top_k=3), dict(top_p=0.5), dict(temperature=0.7, top_k=5, top_p=0.9)):
        for seed in range(3):
            new = generate(model, [prompt], max_new_tokens=6, do_sample=True, seed=seed, eos_token_id=(),
                           **options).token_ids[0]
            with torch.no_grad():
                logits = model(torch.tensor([prompt + new])).logits[0, len(prompt) - 1:-1]  # (6, V)
            allowed = torch.isfinite(next_token_logits(logits, **options))
            assert allowed[torch.arange(len(new)), torch.tensor(new)].all(), (options, seed)


def test_stop_string_cuts_the_text(tmp_path):
    model, _ = gpt2_pair(tmp_path, vocab_size=100)
    tok = word_tokenizer(100)
    free = generate(model, [PROMPTS[0], PROMPTS[2]], tok, max_new_tokens=10, eos_token_id=())
    stop = f"t{free.token_ids[0][4]}"  # the word the first row generates fifth (or a prefix of an earlier one)
    completed = next(i + 1 for i in range(10) if stop in tok.decode(free.token_ids[0][: i + 1]))
    got = generate(model, [PROMPTS[0], PROMPTS[2]], tok, max_new_tokens=10, eos_token_id=(), stop=stop)
    assert got.finish_reasons[0] == "stop" and completed <= 5
    assert got.token_ids[0] == free.token_ids[0][:completed]  # up to the token that completed it
    assert got.texts[0] == free.texts[0][: free.texts[0].index(stop)]
    if stop not in free.texts[1]:  # the other row ran on
        assert got.token_ids[1] == free.token_ids[1] and got.finish_reasons[1] == "length"


def test_text_prompts_and_option_errors(tmp_path):
    model, _ = gpt2_pair(tmp_path, vocab_size=100)
    tok = word_tokenizer(100)
    by_text = generate(model, ["t5 t6 t7", "t12 t13"], tok, max_new_tokens=4, eos_token_id=())
    by_ids = generate(model, [[5, 6, 7], [12, 13]], max_new_tokens=4, eos_token_id=())
    assert by_text.token_ids == by_ids.token_ids and by_ids.texts is None
    assert by_text.texts == [tok.decode(t) for t in by_ids.token_ids]
    for bad, match in [(dict(temperature=0.5), "do_sample=True"), (dict(do_sample=True, top_p=1.5), "top_p"),
                       (dict(do_sample=True, temperature=0.0), "temperature"), (dict(max_new_tokens=0), "max_new"),
                       (dict(max_new_tokens=70), "positions"), (dict(stop=""), "stop string")]:
        with pytest.raises(GenerationError, match=match):
            generate(model, [[5, 6, 7]], tok, **{"max_new_tokens": 3} | bad)
    with pytest.raises(GenerationError, match="need a tokenizer"):
        generate(model, "t5 t6")


@pytest.mark.data
def test_greedy_text_equals_transformers_with_the_gpt2_tokenizer(tmp_path):
    model, ref = gpt2_pair(tmp_path, vocab_size=50257, n_positions=128, bos_token_id=50256, eos_token_id=50256)
    tok = load_tokenizer(DATA / "tokenizers" / "gpt2")
    ref_tok = transformers.GPT2TokenizerFast.from_pretrained(DATA / "tokenizers" / "gpt2", padding_side="left")
    ref_tok.pad_token = ref_tok.eos_token
    prompts = ["The capital of France is", "Hello", "In 1998, the band released their third album ,"]
    inputs = ref_tok(prompts, return_tensors="pt", padding=True)
    out = ref.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=ref_tok.eos_token_id)
    expected = out[:, inputs["input_ids"].shape[1]:].tolist()
    expected = [row[: row.index(50256) + 1] if 50256 in row else row for row in expected]
    got = generate(model, prompts, tok, max_new_tokens=10)
    assert got.token_ids == expected
    assert got.texts == [ref_tok.decode(row, skip_special_tokens=True) for row in expected]
    single = generate(model, prompts[2], tok, max_new_tokens=10)
    assert single.token_ids == expected[2:]
