"""Text generation with a causal LM (GPT2LMHeadModel): greedy, temperature, top-k, top-p,
stop strings, batched prompts, with a key/value cache.

Batched prompts are left-padded with an attention mask and position ids counted over the
real tokens only, as transformers' `generate` does, so greedy decoding gives transformers'
tokens on the same weights. Each step feeds only the new token: the `KVCache` keeps every
layer's keys and values (`use_cache=False` recomputes the whole sequence each step instead;
same tokens).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hone.errors import HoneError

if TYPE_CHECKING:
    from hone.data.tokenizer import HoneTokenizer


class GenerationError(HoneError, ValueError):
    """A generation request that cannot run as asked (the message names the option)."""


class KVCache:
    """Keys and values of every layer for the positions processed so far (transformers'
    `past_key_values`). Buffers (B, max_length, H, D) are allocated at a layer's first
    update, in the dtype of its keys (autocast's); later steps write their positions in
    place instead of concatenating."""

    def __init__(self, num_layers: int, max_length: int):
        self.max_length = max_length
        self.length = 0  # positions cached in every layer
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's (B, T, H, D) keys and values after the cached ones; return all
        of them, (B, length + T, H, D)."""
        end = self.length + k.shape[1]
        if end > self.max_length:
            raise GenerationError(f"the KV cache holds {self.max_length} positions; {end} were asked for")
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(k.shape[0], self.max_length, *k.shape[2:])
            self.values[layer] = v.new_empty(v.shape[0], self.max_length, *v.shape[2:])
        keys, values = self.keys[layer], self.values[layer]
        keys[:, self.length : end] = k
        values[:, self.length : end] = v
        return keys[:, :end], values[:, :end]

    def advance(self, num_positions: int) -> None:
        """Called by the model once every layer has stored this call's positions."""
        self.length += num_positions


@dataclass
class Generation:
    """What `generate` returns, one entry per prompt, in prompt order."""

    token_ids: list[list[int]]  # new tokens: up to and including eos, or the token that completed a stop string
    finish_reasons: list[str]  # "eos", "stop" (a stop string) or "length" (max_new_tokens)
    texts: list[str] | None = None  # decoded new tokens, the stop string and what follows cut (with a tokenizer)


def next_token_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Sampling logits (B, V): divided by temperature, then every token outside the top_k
    and outside the smallest most-likely set holding top_p of the probability set to -inf
    (transformers' order: temperature, top-k, top-p). At least one token always remains."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the more likely tokens
        drop_sorted = mass_before >= top_p
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def generate(
    model: torch.nn.Module,
    prompts: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
    tokenizer: HoneTokenizer | None = None,
    *,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> Generation:
    """Continue each prompt by up to `max_new_tokens` tokens.

    prompts: a text or texts (needs `tokenizer`), or token ids (one list or several).
    Greedy unless `do_sample`; sampling draws from `next_token_logits` with a generator
    seeded by `seed` (None: torch's global RNG). A prompt stops at an eos token
    (`eos_token_id`, default the model config's, else the tokenizer's; `()` for none) or
    when its decoded continuation contains a `stop` string (needs `tokenizer`); the others
    go on. Runs in eval mode without gradients, under the caller's autocast.
    """
    check_options(max_new_tokens, do_sample, temperature, top_k, top_p, stop, tokenizer)
    rows = prompt_ids(prompts, tokenizer, model.config.bos_token_id)
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    eos = eos_ids(eos_token_id, model.config.eos_token_id, tokenizer)
    device = next(model.parameters()).device
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)

    B, P = len(rows), max(map(len, rows))
    check_fits(P + max_new_tokens, model.config.n_positions)
    ids = torch.zeros(B, P, dtype=torch.long, device=device)
    mask = torch.zeros(B, P, dtype=torch.long, device=device)
    for i, row in enumerate(rows):  # left padding
        ids[i, P - len(row) :] = torch.tensor(row, device=device)
        mask[i, P - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # transformers: real tokens count from 0
    padded = bool((mask == 0).any())

    new = [[] for _ in rows]
    reasons: list[str | None] = [None] * B
    cache = KVCache(model.config.n_layer, P + max_new_tokens) if use_cache else None
    step_ids, step_positions = ids, positions
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                logits = model(
                    step_ids, attention_mask=mask if padded else None, position_ids=step_positions,
                    past_key_values=cache, logits_to_keep=1,
                ).logits[:, -1]  # (B, V)
                if do_sample:
                    probs = next_token_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(-1)
                    chosen = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                else:
                    chosen = logits.argmax(-1)
                for i, token in enumerate(chosen.tolist()):
                    if reasons[i] is None:
                        new[i].append(token)
                        reasons[i] = finish_reason(new[i], eos, stops, tokenizer)
                if all(reasons):
                    break
                next_ids = chosen[:, None]  # finished rows run on; their tokens are dropped
                next_positions = positions[:, -1:] + 1
                ids, positions = torch.cat([ids, next_ids], 1), torch.cat([positions, next_positions], 1)
                mask = torch.cat([mask, torch.ones_like(next_ids)], 1)
                step_ids, step_positions = (next_ids, next_positions) if use_cache else (ids, positions)
    finally:
        model.train(was_training)
    texts = None if tokenizer is None else [cut_at_stop(tokenizer.decode(t), stops) for t in new]
    return Generation(new, [r or "length" for r in reasons], texts)


def check_options(max_new_tokens: int, do_sample: bool, temperature: float, top_k: int | None,
                  top_p: float | None, stop: str | Sequence[str] | None, tokenizer: HoneTokenizer | None) -> None:
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not do_sample and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise GenerationError("temperature, top_k and top_p shape sampling: pass do_sample=True "
                              "(greedy decoding ignores them)")
    if temperature <= 0:
        raise GenerationError(f"temperature must be > 0, got {temperature}; greedy decoding is do_sample=False")
    if top_k is not None and top_k < 1:
        raise GenerationError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise GenerationError(f"top_p must be in (0, 1], got {top_p}")
    if stop and tokenizer is None:
        raise GenerationError("a stop string needs the tokenizer to decode the continuation; pass tokenizer=")
    if stop is not None and "" in ([stop] if isinstance(stop, str) else list(stop)):
        raise GenerationError("a stop string must not be empty")


def check_fits(length: int, n_positions: int) -> None:
    if length > n_positions:
        raise GenerationError(
            f"the longest prompt plus max_new_tokens is {length} tokens, more than the model's {n_positions} "
            "positions; shorten the prompt or lower max_new_tokens"
        )


def prompt_ids(prompts, tokenizer: HoneTokenizer | None, bos_token_id: int | None) -> list[list[int]]:
    """Token ids of each prompt; an empty prompt starts from bos, as in transformers."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], str)):
        if tokenizer is None:
            raise GenerationError("text prompts need a tokenizer; pass tokenizer= or token ids")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [list(e.ids) for e in tokenizer.encode_batch(texts)]
    elif len(prompts) and isinstance(prompts[0], numbers.Integral):  # one prompt of ids (numpy ints too)
        rows = [[int(t) for t in prompts]]
    else:
        rows = [[int(t) for t in row] for row in prompts]
    if not rows:
        raise GenerationError("no prompts given")
    for i, row in enumerate(rows):
        if not row:
            if bos_token_id is None:
                raise GenerationError(f"prompt {i} is empty and the model has no bos_token_id to start from")
            row.append(bos_token_id)
    return rows


def eos_ids(requested, config_eos, tokenizer: HoneTokenizer | None) -> set[int]:
    value = requested if requested is not None else config_eos
    if value is None and tokenizer is not None:
        value = tokenizer.eos_token_id
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)


def finish_reason(tokens: list[int], eos: set[int], stops: list[str], tokenizer: HoneTokenizer | None) -> str | None:
    if tokens[-1] in eos:
        return "eos"
    if stops and any(s in tokenizer.decode(tokens) for s in stops):
        return "stop"
    return None


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text before the first stop string it contains."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text
