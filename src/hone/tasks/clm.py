"""`hone clm`: causal language modelling (GPT-2) on raw text, run_clm.py's command line.

Top to bottom: the run (flags, checks, profile, output folder) -> the block size (run_clm's
rule) -> the texts: --train_file / --validation_file, or a local --dataset_name folder; without
a validation file the first --validation_split_percentage of the training samples is held out,
as run_clm holds it out -> run_clm's blocks (data.text; --max_*_samples count blocks), or
sliding windows over the evaluation text with --eval_stride -> the model -> train / evaluate:
eval_loss is the mean over every predicted token and perplexity its exp (run_clm's keys).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hone.config import arg
from hone.data.text import SAMPLE_BY, default_block_size, lm_blocks, read_texts, sliding_windows
from hone.errors import HoneError
from hone.metrics.lm import lm_metrics, predicted_tokens
from hone.tasks.run import ModelArguments, Recipe, Run

log = logging.getLogger("hone")

RECIPE = Recipe(
    name="clm", description="Train and evaluate a causal language model (GPT-2) on raw text: loss and perplexity.",
    model_task="clm", task_title="Causal Language Modeling", task_type="text-generation",
    data_help="raw text (a sample per line, or per file with --sample_by document) or JSON Lines with a text field",
    index_metrics={"perplexity": "perplexity", "loss": "eval_loss"},
    no_predict="--do_eval scores --validation_file; hone generate continues prompts")
SPLIT_NAMES = {"train_file": ("train",), "validation_file": ("valid", "dev")}  # --dataset_name folders' files


class ClmDataError(HoneError, ValueError):
    """Text, tokenizer and model that do not make causal-LM blocks; the message names the fix."""


@dataclass
class ClmArguments(ModelArguments):
    dataset_name: str | None = arg(None, "A local folder holding the text files (e.g. WikiText's wiki.train.raw, "
                                         "wiki.valid.raw); no dataset hub is reached.")
    dataset_config_name: str | None = arg(None, "A sub-folder of --dataset_name (wikitext-103-raw-v1 reads "
                                                "wikitext-103-raw-v1/ or wikitext-103-raw/).")
    block_size: int | None = arg(None, "Tokens per block (default: the tokenizer's model_max_length, else "
                                       "min(1024, the model's positions): run_clm's rule).", trains=True)
    validation_split_percentage: int = arg(5, "Without --validation_file: the first N% of the training samples "
                                              "are held out for evaluation (never trained on), as run_clm does.",
                                           trains=True)
    sample_by: str = arg("line", "A text file gives a sample per line or per file (document).", choices=SAMPLE_BY,
                         trains=True)
    keep_linebreaks: bool = arg(True, "Keep each line's line break in its sample (run_clm's default).", trains=True)
    text_column_name: str | None = arg(None, "JSON Lines files: the text field (default: 'text', else the first).",
                                       trains=True)
    eval_stride: int | None = arg(None, "Evaluate with sliding windows of block_size tokens every N tokens (each "
                                        "token scored once, with at least block_size - N tokens of context) "
                                        "instead of separate blocks.")
    # the skeleton's sequence length: the block size, set once the tokenizer and the model are known
    max_seq_length: int = dataclasses.field(default=1, init=False)
    validation_from_train: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        local = bool(self.dataset_name) and Path(self.dataset_name).exists()
        if local and not (self.train_file or self.validation_file):
            self._read_dataset_folder()
        elif self.dataset_config_name:
            log.warning("notice: --dataset_config_name %s: ignored; it names a sub-folder of a local --dataset_name "
                        "folder", self.dataset_config_name)
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}")
        if self.train_file and not self.validation_file and self.validation_split_percentage:
            self.validation_file, self.validation_from_train = self.train_file, True

    def _read_dataset_folder(self) -> None:
        """--dataset_name DIR [--dataset_config_name NAME]: the files of DIR (or of its sub-folder
        NAME) whose names say train and valid(ation) / dev; --dataset_name FILE: the training text."""
        path = Path(self.dataset_name)
        if path.is_file():
            self.train_file = str(path)
        else:
            if self.dataset_config_name:
                names = (self.dataset_config_name, re.sub(r"-v\d+$", "", self.dataset_config_name))
                path = next((path / n for n in names if (path / n).is_dir()), path)
            files = [f for f in sorted(path.iterdir()) if f.is_file()]
            for flag, words in SPLIT_NAMES.items():
                found = [f for f in files if any(w in f.name.lower() for w in words)]
                if len(found) > 1:
                    raise ValueError(f"--dataset_name {path}: several {words[0]} files "
                                     f"({', '.join(f.name for f in found)}); pass --{flag}")
                setattr(self, flag, str(found[0]) if found else None)
        log.warning("notice: --dataset_name %s: reading --train_file %s and --validation_file %s", self.dataset_name,
                    self.train_file, self.validation_file)
        self.dataset_name = None  # read: the run's "ignored" notice is not for it


def run(argv: list[str], *, on_evaluate=None) -> dict:
    """`hone clm` from Python: returns the run's metrics; raises HoneError on user errors."""
    with Run.start(RECIPE, argv, ClmArguments, on_evaluate=on_evaluate) as job:
        t, a = job.task_args, job.args
        t.block_size = t.max_seq_length = block_size(job)
        job.output.write_record(settings={**dataclasses.asdict(a), **dataclasses.asdict(t)})
        train_texts, eval_texts = read_splits(t, training=a.do_train, evaluating=a.do_eval)
        model = load_model(job)

        def blocks(texts: list[str], split: str, path: str):
            return lm_blocks(texts, job.tokenizer, t.block_size, max_samples=getattr(a, f"max_{split}_samples"),
                             progress=not a.disable_tqdm, source=path)

        train = blocks(train_texts, "train", t.train_file) if a.do_train else None
        eval_rows = None
        if a.do_eval and t.eval_stride:
            eval_rows = job.limit(sliding_windows(eval_texts, job.tokenizer, t.block_size, t.eval_stride,
                                                  progress=not a.disable_tqdm), "eval")
        elif a.do_eval:
            eval_rows = blocks(eval_texts, "eval", t.validation_file)
        eval_collate = job.collator(training=False)
        return job.execute(model, train_dataset=train, collate_fn=job.collator(training=True),
                           evaluate=lambda m: evaluate(job, m, eval_rows, eval_collate),
                           dataset_names=list(dict.fromkeys(p for p in (t.train_file, t.validation_file) if p)))


def main(argv: list[str]) -> int:
    run(argv)
    return 0


def block_size(job: Run) -> int:
    """run_clm's block size (data.text.default_block_size), capped at the model's positions."""
    t, tokenizer_limit, positions = job.task_args, job.tokenizer.model_max_length, job.model_config.max_positions
    if t.block_size is None and tokenizer_limit > positions:
        log.warning("WARNING: the tokenizer's model_max_length %d is more than the model's %d positions: using "
                    "block_size=%d (pass --block_size to choose)", tokenizer_limit, positions, min(1024, positions))
    elif t.block_size is not None and t.block_size > tokenizer_limit:
        log.warning("WARNING: --block_size %d is more than the tokenizer's model_max_length %d: using "
                    "block_size=%d", t.block_size, tokenizer_limit, tokenizer_limit)
    size = default_block_size(t.block_size, tokenizer_limit, positions)
    if size > positions:
        log.warning("WARNING: --block_size %d is more than the model's %d positions: using block_size=%d", size,
                    positions, positions)
        size = positions
    if size < 2:
        raise ClmDataError(f"--block_size must be >= 2 (a block of one token predicts nothing), got {size}")
    return size


def read_splits(t: ClmArguments, *, training: bool, evaluating: bool) -> tuple[list[str], list[str]]:
    """(training samples, evaluation samples). Without a validation file, run_clm's split: the
    first validation_split_percentage% of the training samples (datasets' `train[:N%]`, rounded
    to the closest sample) are evaluated, the rest trained on."""
    def read(path: str) -> list[str]:
        return read_texts(path, sample_by=t.sample_by, keep_linebreaks=t.keep_linebreaks,
                          text_column=t.text_column_name)

    if t.validation_from_train:
        texts = read(t.train_file)
        cut = int(round(t.validation_split_percentage * len(texts) / 100))
        log.info("holding out the first %d of the %d samples of %s for evaluation (--validation_split_percentage "
                 "%d)", cut, len(texts), t.train_file, t.validation_split_percentage)
        return texts[cut:], texts[:cut]
    return (read(t.train_file) if training else []), (read(t.validation_file) if evaluating else [])


def load_model(job: Run):
    """The model; fresh weights get an embedding for every token of the tokenizer (run_clm
    resizes it), a checkpoint must already have one."""
    vocab, size = job.tokenizer.vocab_size, job.model_config.vocab_size
    if vocab <= size:
        return job.load_model()
    if job.task_args.model_name_or_path:
        raise ClmDataError(f"the tokenizer has {vocab} tokens but the model's embedding only {size}; give the "
                           "tokenizer the model was trained with (--tokenizer_name)")
    log.warning("notice: the tokenizer has %d tokens: building the model with vocab_size=%d (was %d)", vocab, vocab,
                size)
    return job.load_model(vocab_size=vocab)


def evaluate(job: Run, model, rows, collate) -> dict:
    """eval_loss: the mean over every predicted token (each batch's mean loss weighted by the
    tokens it predicts, so a short last batch or a short window counts for what it holds);
    perplexity = exp(eval_loss), under run_clm's key."""
    counts = np.array([predicted_tokens(rows[i]["labels"]) for i in range(len(rows))])
    size = job.args.per_device_eval_batch_size
    per_batch = np.add.reduceat(counts, np.arange(0, len(counts), size)) if len(counts) else counts
    loss_sum = sum(float(out["loss"]) * int(n) for out, n in zip(job.predict_batches(model, rows, collate), per_batch)
                   if n)
    return {**lm_metrics(loss_sum, int(counts.sum())), "eval_samples": len(rows)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
