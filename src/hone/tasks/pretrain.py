"""`hone pretrain`: BERT pre-training (masked LM + next sentence) or RoBERTa-style masked LM,
run_pretraining.py's (optimum-graphcore) and run_mlm.py's command line.

Top to bottom: the run (flags, checks, profile, output folder) -> the data, whose kind decides
the objective: a folder of `hone prepare-pretraining` (MLM + NSP instances with static masks,
or MLM blocks) or a raw text file (RoBERTa's full-sentence blocks, built in memory); MLM-only
data is masked afresh in every batch -> held-out data (--validation_file, else the last whole
shards / blocks of --train_file, never trained on) -> the model: fresh from --config_name, or a
checkpoint's weights (phase 2 is a NEW run from phase 1's folder, with its own sequence length,
batch and schedule; a checkpoint without an MLM head gets a new one) -> train / evaluate: MLM
and NSP loss and accuracy -> a plot of the per-objective curves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from hone.config import arg
from hone.data.documents import FORMATS
from hone.data.masking import POLICIES, Masker, MaskingCollator
from hone.data.pretraining import mlm_blocks_from_text
from hone.data.shards import PretrainingDataset, train_eval_split
from hone.errors import HoneError
from hone.tasks.run import ModelArguments, Recipe, Run

log = logging.getLogger("hone")

PLOT = "pretraining_losses.png"
RECIPE = Recipe(
    name="pretrain", description="Pre-train BERT (masked LM + next sentence) or masked LM alone (RoBERTa style).",
    model_task="pretraining", task_title="Pre-training (masked LM + next sentence prediction)",
    task_type="fill-mask", data_help="a folder written by hone prepare-pretraining, or a raw text file",
    index_metrics={"mlm_accuracy": "eval_mlm_accuracy", "nsp_accuracy": "eval_nsp_accuracy",
                   "perplexity": "eval_perplexity"}, eval_files=(PLOT,),
    no_predict="--do_eval scores the held-out data")
RECIPES = {"mlm_nsp": RECIPE,
           "mlm": dataclasses.replace(RECIPE, model_task="mlm", task_title="Masked Language Modeling")}
DEFAULT_MASKING = {"policy": "per_token", "masked_lm_prob": 0.15}  # run_mlm's dynamic masking


class PretrainDataError(HoneError, ValueError):
    """Data, tokenizer and model that do not fit together; the message names the fix."""


@dataclass
class PretrainArguments(ModelArguments):
    tokenizer_name: str | None = arg(None, "Tokenizer folder (default: the prepared data's, else the model folder).",
                                     trains=True)
    train_file: str | None = arg(None, "A folder written by hone prepare-pretraining (MLM + NSP, or MLM) or a raw "
                                       "text file (MLM on full-sentence blocks).", trains=True)
    validation_file: str | None = arg(None, "Held-out data of the same kind (default: held out of --train_file).")
    dataset_name: str | None = arg(None, "Seed command lines' name for the data: a local path is --train_file.")
    max_seq_length: int = arg(128, "Tokens per sequence: at least the prepared data's; the block length of raw "
                                   "text.", trains=True)
    validation_split_percentage: float = arg(5.0, "Without --validation_file: the share of --train_file held out "
                                                  "for evaluation (whole shards, or the last blocks of raw text).",
                                             trains=True)
    mlm_probability: float | None = arg(None, "MLM-only data: share of tokens masked afresh in every batch "
                                              "(default: the prepared folder's, else 0.15).", trains=True)
    masking_policy: str | None = arg(None, "MLM-only data: " + "; ".join(f"{k}: {v}" for k, v in POLICIES.items())
                                     + " (default: the prepared folder's, else per_token).", choices=list(POLICIES),
                                     trains=True)
    whole_word_mask: bool | None = arg(None, "MLM-only data: mask whole words (default: the prepared folder's).",
                                       trains=True)
    input_format: str = arg("auto", "Raw text files: blank_lines (Google's), lines, jsonl or wikitext.",
                            choices=FORMATS, trains=True)

    def __post_init__(self) -> None:
        """Seed command lines name their data --dataset_name: a local path there is the training
        data. Evaluation defaults to data held out of it. The tokenizer of prepared data is the one
        it was prepared with (its ids are in the shards), unless --tokenizer_name is a folder (seed
        lines give a hub name there)."""
        if self.dataset_name and not self.train_file and Path(self.dataset_name).exists():
            self.train_file, self.dataset_name = self.dataset_name, None
        if self.train_file and not self.validation_file:
            self.validation_file = self.train_file
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError("--validation_split_percentage must be in (0, 100), got "
                             f"{self.validation_split_percentage}")
        prepared = next((Path(p) / "tokenizer" for p in (self.train_file, self.validation_file)
                         if p and (Path(p) / "tokenizer").is_dir()), None)
        if prepared and not (self.tokenizer_name and Path(self.tokenizer_name).is_dir()):
            if self.tokenizer_name:
                log.warning("notice: --tokenizer_name %s is not a folder: using %s, the data's tokenizer",
                            self.tokenizer_name, prepared)
            self.tokenizer_name = str(prepared)


def run(argv: list[str], *, on_evaluate=None) -> dict:
    """`hone pretrain` from Python: returns the run's metrics; raises HoneError on user errors."""
    with Run.start(RECIPE, argv, PretrainArguments, on_evaluate=on_evaluate) as job:
        t, a = job.task_args, job.args
        hold_out = bool(t.train_file) and Path(t.validation_file or "").resolve() == Path(t.train_file).resolve()
        train = held_out = None
        if t.train_file and (a.do_train or (a.do_eval and hold_out)):
            train = open_data(job, t.train_file)
            if a.do_eval and hold_out:
                train, held_out = split(job, train)
        if a.do_eval and not hold_out:
            held_out = open_data(job, t.validation_file)
        objective = check_objectives(train, held_out)
        job.recipe = RECIPES[objective]  # the model's head and the card follow the data
        model = job.load_model()
        masker = masker_for(job, train if train is not None else held_out) if objective == "mlm" else None

        def collator(training: bool):
            """MLM-only data is masked afresh in every batch; a new collator per evaluation draws the
            same evaluation masks every time."""
            collate = job.collator(training=training)
            return collate if masker is None else MaskingCollator(masker, collate, seed=a.seed)

        eval_data = held_out if held_out is None else job.limit(held_out, "eval")
        nsp_labels = (np.array([row["next_sentence_label"] for row in eval_data])
                      if eval_data is not None and objective == "mlm_nsp" else None)
        metrics = job.execute(
            model, train_dataset=train if train is None else job.limit(train, "train"),
            collate_fn=collator(training=True),
            evaluate=lambda m: evaluate(job, m, eval_data, collator(training=False), nsp_labels),
            dataset_names=list(dict.fromkeys(p for p in (t.train_file, t.validation_file) if p)))
        if a.do_train and a.do_eval and job.output.writes:
            plot_losses(job, metrics)
        return metrics


def main(argv: list[str]) -> int:
    run(argv)
    return 0


def open_data(job: Run, path: str) -> PretrainingDataset:
    """A prepared folder's instances, or a raw text file's full-sentence blocks (max_seq_length)."""
    t, tokenizer = job.task_args, job.tokenizer
    if not Path(path).is_dir():
        return mlm_blocks_from_text([path], tokenizer, t.max_seq_length, input_format=t.input_format)
    data = PretrainingDataset.open(path)
    prepared, saved = data.manifest["settings"]["max_seq_length"], data.manifest["tokenizer"]
    if prepared > t.max_seq_length:
        raise PretrainDataError(f"{path} was prepared at max_seq_length {prepared}: pass --max_seq_length {prepared} "
                                f"(or prepare it again at {t.max_seq_length})")
    ours = {"vocab_size": tokenizer.vocab_size, "mask_token_id": tokenizer.mask_token_id,
            "cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
    if any(saved[k] != v for k, v in ours.items()):
        raise PretrainDataError(f"{path} was prepared with another tokenizer ({saved['source']}); pass "
                                f"--tokenizer_name {Path(path) / saved['saved_to']}")
    return data


def split(job: Run, data: PretrainingDataset) -> tuple[Subset | PretrainingDataset, Subset | PretrainingDataset]:
    """(train, held out): the fewest last shards holding --validation_split_percentage of a prepared
    folder (whole documents), or the last blocks of raw text."""
    path, share = job.task_args.train_file, job.task_args.validation_split_percentage / 100
    if Path(path).is_dir():
        return train_eval_split(path, eval_fraction=share)
    cut = len(data) - math.ceil(share * len(data))
    if cut < 1:
        raise PretrainDataError(f"{path} gives only {len(data)} block(s), too few to hold some out; pass "
                                "--validation_file")
    return Subset(data, range(cut)), Subset(data, range(cut, len(data)))


def check_objectives(*datasets) -> str:
    """The objective of the data (mlm_nsp or mlm); training and held-out data must agree."""
    found = {_root(d).objective for d in datasets if d is not None}
    if len(found) != 1:
        raise PretrainDataError(f"training and evaluation data have different objectives ({', '.join(sorted(found))}); "
                                "prepare both with the same --objective")
    return found.pop()


def masker_for(job: Run, data) -> Masker:
    """Dynamic masking: the prepared folder's recorded settings (run_mlm's without one), the flags win."""
    t = job.task_args
    flags = {"masked_lm_prob": t.mlm_probability, "policy": t.masking_policy, "whole_word_mask": t.whole_word_mask}
    settings = {**DEFAULT_MASKING, **_root(data).manifest.get("masking", {}),
                **{k: v for k, v in flags.items() if v is not None}}
    if settings["policy"] != "fixed_count":
        settings["max_predictions_per_seq"] = None
    return Masker.for_tokenizer(job.tokenizer, **settings)


def evaluate(job: Run, model, data, collate, nsp_labels: np.ndarray | None) -> dict:
    """MLM loss (mean over the targets), accuracy and perplexity; NSP loss and accuracy; their sum
    as eval_loss, as BertForPreTraining's loss."""
    loss_sum, correct, count, nsp_logits = 0.0, 0, 0, []
    for out in job.predict_batches(model, data, collate):
        logits, labels = torch.from_numpy(out["masked_logits"]), torch.from_numpy(out["masked_labels"])
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == labels).sum())
        count += len(labels)
        nsp_logits.append(out.get("seq_relationship_logits"))
    if count == 0:
        raise PretrainDataError("the evaluation data has no masked token; give more of it (--validation_file)")
    metrics = {"eval_mlm_loss": loss_sum / count, "eval_mlm_accuracy": correct / count}
    metrics["eval_perplexity"] = math.exp(metrics["eval_mlm_loss"])
    if nsp_labels is not None:
        logits, labels = torch.from_numpy(np.concatenate(nsp_logits)), torch.from_numpy(nsp_labels).long()
        metrics["eval_nsp_loss"] = torch.nn.functional.cross_entropy(logits, labels).item()
        metrics["eval_nsp_accuracy"] = (logits.argmax(-1) == labels).float().mean().item()
    metrics["eval_loss"] = metrics["eval_mlm_loss"] + metrics.get("eval_nsp_loss", 0.0)
    return {**metrics, "eval_samples": len(data)}


def plot_losses(job: Run, final: dict) -> None:
    """The training loss and the held-out MLM and NSP losses against the step (from the log)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = job.trainer.state.log_history
    evals = {r["step"]: r for r in history if "eval_mlm_loss" in r} | {job.global_step: final}
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(*zip(*[(r["step"], r["loss"]) for r in history if "loss" in r]), alpha=0.5,
            label="training loss" + (" (MLM + NSP)" if "eval_nsp_loss" in final else ""))
    for key, label in (("eval_mlm_loss", "held-out MLM loss"), ("eval_nsp_loss", "held-out NSP loss")):
        if key in final:
            ax.plot(*zip(*[(step, r[key]) for step, r in sorted(evals.items())]), marker="o", label=label)
    ax.set(xlabel="step", ylabel="loss", title=f"{job.recipe.task_title}: {Path(job.args.output_dir).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(job.output.file(PLOT, kind="log"), dpi=100)
    job.output.write_record()  # run.json lists the plot


def _root(data) -> PretrainingDataset:
    return data.dataset if isinstance(data, Subset) else data


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
