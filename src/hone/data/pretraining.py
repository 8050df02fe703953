"""BERT pre-training data from raw text: `hone prepare-pretraining`, and RoBERTa-style blocks.

Objective "mlm_nsp" builds instances exactly as Google's create_pretraining_data.py:
- documents (lists of sentences, hone.data.documents) are tokenized without special tokens;
  empty sentences and documents are dropped, the documents shuffled;
- `dupe_factor` passes over the documents; each pass over a document picks a target length
  (max_seq_length - 3, or with probability short_seq_prob a random one in [2, max]) and
  gathers sentences into chunks until the target is reached;
- a chunk is split at a random sentence boundary into A and B; with probability 0.5 (always
  when the chunk holds one sentence) B is instead read from a random start in a random other
  document, up to the remaining target length, and the chunk's unused sentences are put back;
- the pair is truncated to max_seq_length - 3 by removing tokens from the longer side
  (B on ties), from the front or the back at random; [CLS] A [SEP] B [SEP] with token types
  0 up to the first [SEP] and 1 after; next_sentence_label 1 when B is random;
- masks are static (hone.data.masking, the "fixed_count" policy by default: Google's),
  drawn anew in every dupe pass; the instances are shuffled.

Unlike Google's single in-memory pass, the input streams through: documents are read lazily
and cut into shards of `documents_per_shard` documents; each shard is processed on its own
(a random B comes from the same shard) with random generators seeded by (seed, shard index),
by several worker processes, and written as soon as it is done. The output therefore depends
on the seed and documents_per_shard, never on the number of workers; with a single shard it
follows Google's procedure step for step (with different random numbers).

Objective "mlm" (RoBERTa's FULL-SENTENCES): sentences packed in order, across documents, into
blocks of at most max_seq_length tokens ([CLS] ... [SEP], an extra [SEP] where a document
ends inside a block; a sentence longer than a block is cut), no NSP and no masks: the
collator masks them afresh each epoch (hone.data.masking.MaskingCollator).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from hone import __version__
from hone.data.documents import FORMATS, SPLITTERS, read_documents
from hone.data.masking import POLICIES, Masker
from hone.data.shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    OBJECTIVES,
    PretrainingDataset,
    Shard,
    token_dtype,
    write_shard,
)
from hone.data.tokenizer import HoneTokenizer, load_tokenizer
from hone.errors import HoneError

__all__ = ["Instance", "PretrainingSettings", "create_instances", "create_instances_from_document", "main",
           "mlm_blocks_from_text", "pack_full_sentences", "prepare_pretraining", "truncate_seq_pair"]

log = logging.getLogger("hone")


class PretrainingDataError(HoneError, ValueError):
    """Preparation settings or inputs that cannot produce pre-training data."""


@dataclass(frozen=True)
class PretrainingSettings:
    """What decides the prepared data (recorded in the manifest)."""

    objective: str = "mlm_nsp"
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    dupe_factor: int = 10
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    whole_word_mask: bool = False
    masking_policy: str = "fixed_count"
    seed: int = 12345
    documents_per_shard: int = 10_000
    input_format: str = "auto"
    text_column: str = "text"
    sentence_splitter: str | None = None

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise PretrainingDataError(f"--objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.max_seq_length < 5:
            raise PretrainingDataError(f"--max_seq_length {self.max_seq_length} leaves no room for two segments "
                                       "and [CLS] [SEP] [SEP]; use at least 5 (128 or 512 as BERT)")
        for flag in ("max_predictions_per_seq", "dupe_factor", "documents_per_shard"):
            if getattr(self, flag) < 1:
                raise PretrainingDataError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        for flag in ("short_seq_prob", "masked_lm_prob"):
            if not 0.0 <= getattr(self, flag) <= 1.0:
                raise PretrainingDataError(f"--{flag} must be in [0, 1], got {getattr(self, flag)}")


class Instance(NamedTuple):
    """One sentence pair before masking; a and b are token id arrays without special tokens."""

    a: np.ndarray
    b: np.ndarray
    is_random_next: bool


# ----------------------------------------------------------------------------- Google's instances

def truncate_seq_pair(a: np.ndarray, b: np.ndarray, max_num_tokens: int,
                      rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Google's truncate_seq_pair: remove one token at a time from the longer segment (B on
    ties), from its front or its back at random, until both fit in max_num_tokens."""
    a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
    while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
        if a_hi - a_lo > b_hi - b_lo:
            if rng.random() < 0.5:
                a_lo += 1
            else:
                a_hi -= 1
        elif rng.random() < 0.5:
            b_lo += 1
        else:
            b_hi -= 1
    return a[a_lo:a_hi], b[b_lo:b_hi]


def create_instances_from_document(documents: Sequence[Sequence[np.ndarray]], index: int, max_seq_length: int,
                                   short_seq_prob: float, rng: random.Random) -> list[Instance]:
    """Google's create_instances_from_document (without the masking, done per shard afterwards)."""
    document = documents[index]
    max_num_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances = []
    chunk: list[np.ndarray] = []
    length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target_seq_length:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = np.concatenate(chunk[:a_end])
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random_next = True
                target_b_length = target_seq_length - len(a)
                for _ in range(10):  # another document, unless there is none
                    other = rng.randint(0, len(documents) - 1)
                    if other != index:
                        break
                random_document = documents[other]
                b_parts, b_length = [], 0
                for j in range(rng.randint(0, len(random_document) - 1), len(random_document)):
                    b_parts.append(random_document[j])
                    b_length += len(random_document[j])
                    if b_length >= target_b_length:
                        break
                b = np.concatenate(b_parts)
                i -= len(chunk) - a_end  # put the unused sentences back
            else:
                is_random_next = False
                b = np.concatenate(chunk[a_end:])
            a, b = truncate_seq_pair(a, b, max_num_tokens, rng)
            instances.append(Instance(a, b, is_random_next))
            chunk, length = [], 0
        i += 1
    return instances


def create_instances(documents: list[list[np.ndarray]], max_seq_length: int, short_seq_prob: float,
                     dupe_factor: int, rng: random.Random) -> list[Instance]:
    """Google's create_training_instances on tokenized documents: drop empty sentences and
    documents, shuffle the documents, `dupe_factor` passes, shuffle the instances.
    (Masks are drawn afterwards in the shuffled order: one draw per pass, as Google's.)"""
    documents = [doc for doc in ([s for s in doc if len(s)] for doc in documents) if doc]
    rng.shuffle(documents)
    instances = []
    for _ in range(dupe_factor):
        for index in range(len(documents)):
            instances.extend(create_instances_from_document(documents, index, max_seq_length, short_seq_prob, rng))
    rng.shuffle(instances)
    return instances


def assemble(instances: Sequence[Instance], cls_id: int, sep_id: int) -> dict[str, np.ndarray]:
    """[CLS] A [SEP] B [SEP] of every instance as flat tokens + offsets, with len([CLS] A [SEP])
    and the NSP labels."""
    a_lengths = np.array([len(x.a) + 2 for x in instances], dtype=np.int64)
    lengths = a_lengths + [len(x.b) + 1 for x in instances]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.empty(offsets[-1], dtype=np.int64)
    for x, start, a_len, end in zip(instances, offsets, a_lengths, offsets[1:]):
        tokens[start] = cls_id
        tokens[start + 1:start + a_len - 1] = x.a
        tokens[start + a_len - 1] = sep_id
        tokens[start + a_len:end - 1] = x.b
        tokens[end - 1] = sep_id
    return {"tokens": tokens, "offsets": offsets, "segment_a_lengths": a_lengths,
            "next_sentence_label": np.array([x.is_random_next for x in instances], dtype=np.uint8)}


# ----------------------------------------------------------------------------- RoBERTa's blocks

def pack_full_sentences(documents: Iterable[Sequence[np.ndarray]], max_seq_length: int, cls_id: int,
                        sep_id: int) -> tuple[np.ndarray, np.ndarray]:
    """FULL-SENTENCES blocks (see the module docstring) as flat tokens + offsets."""
    capacity = max_seq_length - 2
    blocks: list[np.ndarray] = []
    current: list[np.ndarray] = []
    length = 0
    separator = np.array([sep_id])

    def close() -> None:
        nonlocal current, length
        if current:
            blocks.append(np.concatenate([[cls_id], *current, [sep_id]]))
        current, length = [], 0

    for document in documents:
        new_document = True
        for sentence in document:
            for piece in (sentence[k:k + capacity] for k in range(0, len(sentence), capacity)):
                needs_separator = new_document and bool(current)
                if length + needs_separator + len(piece) > capacity:
                    close()
                    needs_separator = False
                if needs_separator:
                    current.append(separator)
                current.append(piece)
                length += needs_separator + len(piece)
                new_document = False
    close()
    lengths = [len(b) for b in blocks]
    tokens = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
    return tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


# ----------------------------------------------------------------------------- one shard

def tokenize_documents(tokenizer: HoneTokenizer, documents: Sequence[Sequence[str]]) -> list[list[np.ndarray]]:
    """Every sentence's token ids (no special tokens), in one batch call."""
    sentences = [s for doc in documents for s in doc]
    encodings = tokenizer.encode_batch(sentences, add_special_tokens=False) if sentences else []
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    out, k = [], 0
    for doc in documents:
        out.append(ids[k:k + len(doc)])
        k += len(doc)
    return out


def shard_seeds(seed: int, index: int) -> tuple[random.Random, np.random.Generator]:
    """(instance rng, masking rng) of shard `index`: independent streams of (seed, index)."""
    instances, masking = np.random.SeedSequence([seed, index]).spawn(2)
    return random.Random(int.from_bytes(instances.generate_state(4).tobytes(), "little")), np.random.default_rng(masking)


def build_shard(tokenizer: HoneTokenizer, documents: Sequence[Sequence[str]], index: int,
                settings: PretrainingSettings) -> dict[str, np.ndarray]:
    """The arrays of shard `index` (see hone.data.shards) from its raw documents."""
    tokenized = tokenize_documents(tokenizer, documents)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    dtype = token_dtype(tokenizer.vocab_size)
    instance_rng, masking_rng = shard_seeds(settings.seed, index)
    if settings.objective == "mlm":
        tokens, offsets = pack_full_sentences(tokenized, settings.max_seq_length, cls_id, sep_id)
        return {"input_ids": tokens.astype(dtype), "offsets": offsets}
    instances = create_instances(tokenized, settings.max_seq_length, settings.short_seq_prob,
                                 settings.dupe_factor, instance_rng)
    arrays = assemble(instances, cls_id, sep_id)
    tokens, offsets = arrays.pop("tokens"), arrays["offsets"]
    inputs, labels = masker_for(tokenizer, settings).mask(tokens, offsets, masking_rng)
    at = np.flatnonzero(labels != -100)
    instance_of = np.searchsorted(offsets, at, side="right") - 1
    arrays.update(
        input_ids=inputs.astype(dtype),
        segment_a_lengths=arrays["segment_a_lengths"].astype(np.uint16),
        masked_positions=(at - offsets[instance_of]).astype(np.uint16),
        masked_offsets=np.searchsorted(instance_of, np.arange(len(offsets))).astype(np.int64),
        masked_labels=labels[at].astype(dtype),
    )
    return arrays


def masker_for(tokenizer: HoneTokenizer, settings: PretrainingSettings) -> Masker:
    """The static masker of these settings (the cap applies to the fixed_count policy only)."""
    cap = settings.max_predictions_per_seq if settings.masking_policy == "fixed_count" else None
    return Masker.for_tokenizer(tokenizer, whole_word_mask=settings.whole_word_mask, policy=settings.masking_policy,
                                masked_lm_prob=settings.masked_lm_prob, max_predictions_per_seq=cap)


def shard_stats(arrays: dict[str, np.ndarray], documents: int, sentences: int) -> dict:
    stats = {"instances": len(arrays["offsets"]) - 1, "tokens": int(arrays["offsets"][-1]),
             "documents": documents, "sentences": sentences}
    if "masked_labels" in arrays:
        stats.update(masked=len(arrays["masked_labels"]), random_next=int(arrays["next_sentence_label"].sum()))
    return stats


# worker processes: the tokenizer is loaded once per process
_WORKER: dict = {}


def _init_worker(tokenizer_dir: str, output: str, settings: dict, quiet_tokenizer: bool) -> None:
    if quiet_tokenizer:  # one tokenizer thread per worker process: the processes are the parallelism
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tokenizer=load_tokenizer(tokenizer_dir), output=Path(output),
                   settings=PretrainingSettings(**settings))


def _prepare_shard(job: tuple[int, list[list[str]]]) -> dict:
    index, documents = job
    arrays = build_shard(_WORKER["tokenizer"], documents, index, _WORKER["settings"])
    name = f"shard-{index:05d}"
    write_shard(_WORKER["output"], name, arrays)
    return {"name": name, **shard_stats(arrays, len(documents), sum(len(d) for d in documents))}


# ----------------------------------------------------------------------------- the whole corpus

def _shard_jobs(documents: Iterator[tuple[list[str], int]], per_shard: int,
                sizes: dict[int, int]) -> Iterator[tuple[int, list[list[str]]]]:
    """(shard index, its documents), read lazily; sizes[index] = the input bytes it covers."""
    batch: list[list[str]] = []
    index = nbytes = 0
    for document, size in documents:
        batch.append(document)
        nbytes += size
        if len(batch) == per_shard:
            sizes[index] = nbytes
            yield index, batch
            batch, index, nbytes = [], index + 1, 0
    if batch:
        sizes[index] = nbytes
        yield index, batch


def _ordered_map(pool: ProcessPoolExecutor | None, fn, jobs: Iterator, window: int) -> Iterator:
    """fn over jobs, in order, at most `window` jobs in flight (so the input streams)."""
    if pool is None:
        yield from map(fn, jobs)
        return
    pending: deque[Future] = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hone prepare-pretraining", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="Text files (see --input_format).")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="Tokenizer folder (vocab.txt, tokenizer.json, ...).")
    p.add_argument("--output", required=True, metavar="DIR", help="Folder for the shards and manifest.json.")
    p.add_argument("--objective", default="mlm_nsp", choices=OBJECTIVES,
                   help="mlm_nsp: BERT sentence pairs with static masks; mlm: RoBERTa full-sentence blocks, "
                        "masked by the collator.")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--max_predictions_per_seq", type=int, default=20, help="Cap of the fixed_count policy.")
    p.add_argument("--dupe_factor", type=int, default=10, help="Passes over the documents, each with new masks.")
    p.add_argument("--short_seq_prob", type=float, default=0.1)
    p.add_argument("--masked_lm_prob", type=float, default=0.15)
    p.add_argument("--whole_word_mask", action="store_true", help="Mask whole words ('##' continuations grouped).")
    p.add_argument("--masking_policy", choices=list(POLICIES),
                   help="; ".join(f"{k}: {v}" for k, v in POLICIES.items()) + ". Default: fixed_count for "
                        "mlm_nsp (static masks); per_token for mlm, recorded for the collator's dynamic masks.")
    p.add_argument("--seed", type=int, default=12345, help="Google's default random_seed.")
    p.add_argument("--num_workers", type=int, default=1, help="Worker processes (the output does not depend on it).")
    p.add_argument("--documents_per_shard", type=int, default=10_000,
                   help="Documents per shard: the unit of work, of output and of the random-next pool.")
    p.add_argument("--input_format", default="auto", choices=FORMATS,
                   help="blank_lines: a sentence per line, blank lines between documents (Google's); lines: a "
                        "document per line; jsonl: a document per record; wikitext: WikiText raw files.")
    p.add_argument("--text_column", default="text", help="jsonl: the field holding the text.")
    p.add_argument("--sentence_splitter", choices=SPLITTERS,
                   help="Default: none for blank_lines (lines are sentences), simple otherwise.")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing prepared --output folder.")
    return p


def prepare_pretraining(argv: list[str]) -> dict:
    """Run `hone prepare-pretraining` with these arguments; returns the manifest it wrote."""
    args = _parser().parse_args(argv)
    settings = PretrainingSettings(
        objective=args.objective, max_seq_length=args.max_seq_length,
        max_predictions_per_seq=args.max_predictions_per_seq, dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob, masked_lm_prob=args.masked_lm_prob, whole_word_mask=args.whole_word_mask,
        masking_policy=args.masking_policy or ("fixed_count" if args.objective == "mlm_nsp" else "per_token"),
        seed=args.seed, documents_per_shard=args.documents_per_shard,
        input_format=args.input_format, text_column=args.text_column, sentence_splitter=args.sentence_splitter)
    settings.check()
    if args.num_workers < 1:
        raise PretrainingDataError(f"--num_workers must be >= 1, got {args.num_workers}")
    tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise PretrainingDataError(f"--tokenizer {args.tokenizer} has no [CLS]/[SEP] (or <s>/</s>) tokens; "
                                   "pre-training data needs an encoder tokenizer (BERT or RoBERTa)")
    if settings.objective == "mlm_nsp":
        masker_for(tokenizer, settings)  # fail now on impossible masking settings, not in a worker
    if settings.max_seq_length > tokenizer.model_max_length:
        log.warning("--max_seq_length %d is longer than the tokenizer's model_max_length %d",
                    settings.max_seq_length, tokenizer.model_max_length)
    output = Path(args.output)
    if (output / MANIFEST).exists() or (output.is_dir() and any(output.glob("shard-*"))):
        if not args.overwrite:
            raise PretrainingDataError(f"--output {output} already holds prepared data; pass --overwrite or "
                                       "choose another folder")
        (output / MANIFEST).unlink(missing_ok=True)
        for old in output.glob("shard-*"):
            shutil.rmtree(old)
    output.mkdir(parents=True, exist_ok=True)

    inputs = [Path(f) for f in args.input]
    missing = [str(f) for f in inputs if not f.is_file()]
    if missing:
        raise PretrainingDataError(f"--input: no such file(s): {', '.join(missing)}")
    started = time.perf_counter()
    documents = read_documents(inputs, settings.input_format, text_column=settings.text_column,
                               sentence_splitter=settings.sentence_splitter)
    init = (str(args.tokenizer), str(output), asdict(settings), args.num_workers > 1)
    shards, sizes = [], {}
    jobs = _shard_jobs(documents, settings.documents_per_shard, sizes)
    with (tqdm(total=sum(f.stat().st_size for f in inputs), unit="B", unit_scale=True, desc="prepare-pretraining",
               dynamic_ncols=True) as progress,
          ProcessPoolExecutor(args.num_workers, initializer=_init_worker, initargs=init)
          if args.num_workers > 1 else nullcontext() as pool):
        if pool is None:
            _init_worker(*init)
        for stats in _ordered_map(pool, _prepare_shard, jobs, 2 * args.num_workers):
            shards.append(stats)
            progress.update(sizes.pop(len(shards) - 1))  # input bytes done
    if not shards or not sum(s["instances"] for s in shards):
        raise PretrainingDataError(f"--input {' '.join(args.input)} produced no instances: no text found "
                                   f"(input format {settings.input_format})")

    tokenizer.save(output / "tokenizer")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "hone_version": __version__,
        "objective": settings.objective, "settings": asdict(settings),
        "masking": masker_for(tokenizer, settings).settings(),
        "tokenizer": {"source": str(args.tokenizer), "saved_to": "tokenizer", "vocab_size": tokenizer.vocab_size,
                      "flavour": tokenizer.flavour, "pad_token_id": tokenizer.pad_token_id,
                      "cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id,
                      "mask_token_id": tokenizer.mask_token_id},
        "inputs": [str(f) for f in inputs], "seed": settings.seed,
        "statistics": corpus_statistics(shards, settings.max_seq_length),
        "shards": shards,
        "preparation": {"num_workers": args.num_workers, "seconds": round(time.perf_counter() - started, 3)},
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def corpus_statistics(shards: Sequence[dict], max_seq_length: int) -> dict:
    """Counts, mean real tokens per instance and the padding share when padded to max_seq_length."""
    total = {key: sum(s.get(key, 0) for s in shards)
             for key in ("instances", "tokens", "documents", "sentences", "masked", "random_next")}
    n = total["instances"]
    stats = {**total, "shards": len(shards), "mean_real_tokens": total["tokens"] / n,
             "padding_share_at_max_seq_length": 1.0 - total["tokens"] / (n * max_seq_length)}
    if "masked" in shards[0]:
        stats.update(mean_masked_per_instance=total["masked"] / n, random_next_share=total["random_next"] / n)
    else:
        del stats["masked"], stats["random_next"]
    return stats


def main(argv: list[str]) -> int:
    """`hone prepare-pretraining`: writes the folder, logs a summary, prints the statistics as JSON."""
    manifest = prepare_pretraining(argv)
    stats = manifest["statistics"]
    masks = (f", {stats['mean_masked_per_instance']:.1f} targets per instance, {100 * stats['random_next_share']:.1f}% "
             "random next" if "mean_masked_per_instance" in stats else "")
    log.info("%d instances in %d shard(s) from %d documents: %.1f real tokens per instance, %.1f%% padding at "
             "max_seq_length %d%s; written to %s", stats["instances"], stats["shards"], stats["documents"],
             stats["mean_real_tokens"], 100 * stats["padding_share_at_max_seq_length"],
             manifest["settings"]["max_seq_length"], masks, _parser().parse_args(argv).output)
    print(json.dumps(stats, indent=2))
    return 0


# ----------------------------------------------------------------------------- straight from raw text

def mlm_blocks_from_text(paths: Sequence[str | Path], tokenizer: HoneTokenizer, max_seq_length: int, *,
                         input_format: str = "auto", text_column: str = "text",
                         sentence_splitter: str | None = None) -> PretrainingDataset:
    """RoBERTa full-sentence blocks of raw text files, in memory, for MLM with dynamic masking
    (MaskingCollator): no preparation step, for corpora that fit in memory."""
    if max_seq_length < 3:
        raise PretrainingDataError(f"max_seq_length {max_seq_length} leaves no room for a token between [CLS] [SEP]")
    documents = [doc for doc, _ in read_documents(paths, input_format, text_column=text_column,
                                                   sentence_splitter=sentence_splitter)]
    tokens, offsets = pack_full_sentences(tokenize_documents(tokenizer, documents), max_seq_length,
                                          tokenizer.cls_token_id, tokenizer.sep_token_id)
    if len(offsets) < 2:
        raise PretrainingDataError(f"{', '.join(map(str, paths))}: no text found (input format {input_format})")
    shard = Shard(len(offsets) - 1, arrays={"input_ids": tokens.astype(token_dtype(tokenizer.vocab_size)),
                                            "offsets": offsets})
    manifest = {"objective": "mlm", "settings": {"max_seq_length": max_seq_length},
                "statistics": {"instances": shard.count, "tokens": int(offsets[-1]),
                               "mean_real_tokens": offsets[-1] / shard.count,
                               "padding_share_at_max_seq_length": 1 - offsets[-1] / (shard.count * max_seq_length)}}
    return PretrainingDataset([shard], manifest)

