"""Masked-LM masking, in one place: static preparation, dynamic masking in a collator, bench.

Two policies choose which tokens become prediction targets, both among non-special tokens only:

- "fixed_count": Google's create_pretraining_data.py. Each sequence gets
  num_to_predict = min(max_predictions_per_seq, max(1, round(masked_lm_prob * len(sequence))))
  targets (len counts [CLS]/[SEP] too, as Google's `len(tokens)`; round() halves to even, as
  Python's): candidate words are visited in a random order and a word is taken when it still
  fits, so with whole-word masking a sequence may end with fewer than num_to_predict.
- "per_token": transformers' DataCollatorForLanguageModeling (run_mlm): every candidate token
  (with whole-word masking: every word) is a target with probability masked_lm_prob, independently;
  no cap, and a sequence may get none.

Each target token is then replaced by the mask token with probability 0.8, by a token drawn
uniformly from the whole vocabulary with probability 0.1, and kept with probability 0.1 (drawn
per token, also inside a whole word, as both references do).

Whole-word masking groups a word's tokens: WordPiece continuations start with "##" (the
model's `continuing_subword_prefix`); in byte-level BPE a word starts at a token that begins
with the space marker "Ġ" (so punctuation glued to a word belongs to it). A word never spans a
special token and a sequence's first token always starts a word (Google's script would join a
"##" token that follows [SEP] to the last word of segment A).

Everything is vectorised over many sequences at once: sequences are a flat token array plus
offsets (sequence s is tokens[offsets[s]:offsets[s + 1]]), and the only loop (fixed_count with
whole words) runs over word ranks, not sequences. Results depend only on the inputs and the
numpy Generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hone.errors import HoneError
from hone.models.padding import IGNORE_INDEX

__all__ = ["POLICIES", "Masker", "MaskingCollator", "MaskingError", "special_token_ids", "word_start_table"]

POLICIES = {
    "fixed_count": "Google's create_pretraining_data: min(cap, max(1, round(p * length))) targets per sequence",
    "per_token": "transformers' DataCollatorForLanguageModeling: each token (or word) a target with probability p",
}
# Tokens that are never masked. [UNK] is an ordinary token here, as in Google's script.
SPECIAL_NAMES = ("cls", "sep", "pad", "bos", "eos", "mask")
BYTE_LEVEL_SPACE = "Ġ"


class MaskingError(HoneError, ValueError):
    """Masking settings that cannot work (a probability out of range, no mask token, ...)."""


def special_token_ids(tokenizer: Any) -> list[int]:
    """Ids that are never masked: the tokenizer's [CLS]/[SEP]/[PAD]/[MASK] (<s>, </s>, ...)."""
    ids = {getattr(tokenizer, f"{name}_token_id") for name in SPECIAL_NAMES}
    return sorted(ids - {None})


def word_start_table(tokenizer: Any) -> np.ndarray:
    """(vocab_size,) bool: True for ids that begin a word, for whole-word masking (see module doc)."""
    from tokenizers.models import WordPiece

    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    added = {token.content for token in tokenizer.backend.get_added_tokens_decoder().values()}
    model = tokenizer.backend.model
    if isinstance(model, WordPiece):
        prefix = model.continuing_subword_prefix
        continues = [i for token, i in vocab.items() if token.startswith(prefix) and token not in added]
    elif tokenizer.flavour in ("roberta", "gpt2"):
        continues = [i for token, i in vocab.items() if not token.startswith(BYTE_LEVEL_SPACE) and token not in added]
    else:
        raise MaskingError(f"whole-word masking needs a WordPiece or byte-level BPE tokenizer, got {tokenizer!r}; "
                           "drop --whole_word_mask")
    table = np.ones(max(tokenizer.vocab_size, max(vocab.values()) + 1), dtype=bool)
    table[continues] = False
    return table


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise MaskingError(f"{name} must be a probability in [0, 1], got {value}")


class Masker:
    """Chooses masked-LM targets and replaces them (see the module docstring).

    mask_token_id, vocab_size: the replacement tokens. special_ids: never targets.
    word_starts: `word_start_table(tokenizer)` for whole-word masking, None for single tokens.
    Picklable (plain arrays), so a collator holding it works in DataLoader workers.
    """

    def __init__(self, *, mask_token_id: int, vocab_size: int, special_ids: Sequence[int],
                 masked_lm_prob: float = 0.15, policy: str = "fixed_count",
                 max_predictions_per_seq: int | None = None, word_starts: np.ndarray | None = None,
                 mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1):
        if policy not in POLICIES:
            raise MaskingError(f"masking policy {policy!r} is not one of {sorted(POLICIES)}")
        if mask_token_id is None:
            raise MaskingError("masked-LM masking needs a tokenizer with a mask token; this one has none")
        for name, value in (("masked_lm_prob", masked_lm_prob), ("mask_replace_prob", mask_replace_prob),
                            ("random_replace_prob", random_replace_prob),
                            ("mask_replace_prob + random_replace_prob", mask_replace_prob + random_replace_prob)):
            _check_probability(name, value)
        if max_predictions_per_seq is not None:
            if policy != "fixed_count":
                raise MaskingError("max_predictions_per_seq caps the fixed_count policy only; per_token has no cap")
            if max_predictions_per_seq < 1:
                raise MaskingError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
        self.mask_token_id = int(mask_token_id)
        self.vocab_size = int(vocab_size)
        self.masked_lm_prob = float(masked_lm_prob)
        self.policy = policy
        self.max_predictions_per_seq = max_predictions_per_seq
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        self.is_special = np.zeros(max(self.vocab_size, max(special_ids, default=0) + 1), dtype=bool)
        self.is_special[list(special_ids)] = True
        self.word_starts = word_starts

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, *, whole_word_mask: bool = False, **settings: Any) -> Masker:
        """A masker for this tokenizer's mask token, vocabulary, special tokens and words."""
        return cls(mask_token_id=tokenizer.mask_token_id, vocab_size=tokenizer.vocab_size,
                   special_ids=special_token_ids(tokenizer),
                   word_starts=word_start_table(tokenizer) if whole_word_mask else None, **settings)

    @property
    def whole_word_mask(self) -> bool:
        return self.word_starts is not None

    def settings(self) -> dict:
        """The settings that decide the masks (for a manifest or a report);
        `Masker.for_tokenizer(tokenizer, **settings)` builds the same masker again."""
        return {"policy": self.policy, "masked_lm_prob": self.masked_lm_prob,
                "max_predictions_per_seq": self.max_predictions_per_seq, "whole_word_mask": self.whole_word_mask,
                "mask_replace_prob": self.mask_replace_prob, "random_replace_prob": self.random_replace_prob}

    # ------------------------------------------------------------------ choosing targets

    def choose(self, tokens: np.ndarray, offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N,) bool: the targets among the flat `tokens` of the sequences that `offsets` (S + 1,) delimit."""
        tokens = np.asarray(tokens)
        offsets = np.asarray(offsets, dtype=np.int64)
        n, lengths = len(tokens), np.diff(offsets)
        seq_of_token = np.repeat(np.arange(len(lengths)), lengths)  # (N,)
        candidate = ~self.is_special[tokens]
        starts = candidate.copy()
        if self.whole_word_mask:
            first = np.zeros(n, dtype=bool)
            first[offsets[:-1][lengths > 0]] = True
            after_candidate = np.concatenate([[False], candidate[:-1]])
            starts &= self.word_starts[tokens] | first | ~after_candidate
        word_of_token = np.cumsum(starts) - 1  # (N,) valid where candidate
        word_seq = seq_of_token[starts]  # (W,) the sequence of each word
        word_size = np.bincount(word_of_token[candidate], minlength=len(word_seq))  # (W,)
        if self.policy == "per_token":
            chosen_words = rng.random(len(word_seq)) < self.masked_lm_prob
        else:
            chosen_words = self._fixed_count_words(word_seq, word_size, lengths, rng)
        return candidate & chosen_words[np.where(candidate, word_of_token, 0)] if len(word_seq) else candidate

    def num_to_predict(self, lengths: np.ndarray) -> np.ndarray:
        """fixed_count: targets per sequence of these lengths (Google's num_to_predict)."""
        count = np.maximum(1, np.round(self.masked_lm_prob * np.asarray(lengths)).astype(np.int64))
        return count if self.max_predictions_per_seq is None else np.minimum(count, self.max_predictions_per_seq)

    def _fixed_count_words(self, word_seq: np.ndarray, word_size: np.ndarray, lengths: np.ndarray,
                           rng: np.random.Generator) -> np.ndarray:
        """Google's greedy choice: words of each sequence in a random order, each taken while it fits."""
        budget = self.num_to_predict(lengths)  # (S,)
        order = np.lexsort((rng.random(len(word_seq)), word_seq))  # by sequence, then at random
        seq_sorted = word_seq[order]
        seq_start = np.searchsorted(seq_sorted, seq_sorted, side="left")
        rank = np.arange(len(order)) - seq_start  # position in its sequence's random order
        if (word_size == 1).all():  # single tokens: the first `budget` of each sequence
            chosen = np.zeros(len(word_seq), dtype=bool)
            chosen[order] = rank < budget[seq_sorted]
            return chosen
        chosen = np.zeros(len(word_seq), dtype=bool)
        taken = np.zeros(len(budget), dtype=np.int64)  # (S,) targets so far
        words_in_seq = np.bincount(word_seq, minlength=len(budget))
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(rank.max() + 2))
        for r in range(rank.max() + 1):  # each sequence appears at most once per rank
            if not ((taken < budget) & (words_in_seq > r)).any():
                break
            at = order[by_rank[bounds[r]:bounds[r + 1]]]  # word ids of rank r
            seq, size = word_seq[at], word_size[at]
            fits = taken[seq] + size <= budget[seq]
            chosen[at[fits]] = True
            taken[seq[fits]] += size[fits]
        return chosen

    # ------------------------------------------------------------------ replacing them

    def replace(self, tokens: np.ndarray, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A copy of `tokens` with each target -> mask (80%), a random token (10%), itself (10%)."""
        out = np.array(tokens, copy=True)
        at = np.flatnonzero(chosen)
        draw = rng.random(len(at))
        out[at[draw < self.mask_replace_prob]] = self.mask_token_id
        random_at = at[(draw >= self.mask_replace_prob) & (draw < self.mask_replace_prob + self.random_replace_prob)]
        out[random_at] = rng.integers(0, self.vocab_size, len(random_at))
        return out

    def mask(self, tokens: np.ndarray, offsets: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels), both flat like `tokens`: masked inputs, and labels that hold the
        original token at targets and -100 elsewhere."""
        tokens = np.asarray(tokens)
        chosen = self.choose(tokens, offsets, rng)
        labels = np.where(chosen, tokens.astype(np.int64), IGNORE_INDEX)
        return self.replace(tokens, chosen, rng), labels


class MaskingCollator:
    """Dynamic masking (RoBERTa): masks every batch afresh, then hands the rows to `collate`
    (any collate function: hone.data.collate.make_collator's for the execution mode, a
    Collator, a PackCollator). Rows are dicts with an unmasked 1-D `input_ids` (and any other
    fields); they reach `collate` with masked input_ids and per-token `labels` (-100 except
    the targets).

    Masks come from a numpy Generator seeded with (seed, torch.initial_seed()) on the first
    call in each process: DataLoader gives every worker its own torch seed (drawn from the
    loader's generator), so workers draw different masks and a run is repeatable for the same
    seed, loader generator and number of workers. Picklable for DataLoader workers.
    """

    def __init__(self, masker: Masker, collate: Callable[[Sequence[dict]], dict[str, torch.Tensor]], seed: int):
        self.masker = masker
        self.collate = collate
        self.seed = seed
        self._rng: np.random.Generator | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rng": None}  # each process seeds its own

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, torch.initial_seed()])
        ids = [np.asarray(row["input_ids"]) for row in rows]
        offsets = np.concatenate([[0], np.cumsum([len(i) for i in ids])])
        inputs, labels = self.masker.mask(np.concatenate(ids), offsets, self._rng)
        return self.collate([{**row, "input_ids": inputs[a:b], "labels": labels[a:b]}
                             for row, a, b in zip(rows, offsets[:-1], offsets[1:])])
