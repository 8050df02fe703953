"""`hone clm` end to end: a tiny GPT-2 trained from a config on a small made-up text with a tiny
byte-level BPE tokenizer must learn; its evaluation is checked against transformers'
GPT2LMHeadModel on the saved weights (token-weighted loss computed by hand, run_clm's blocks
written out here, the transformers docs' sliding-window loop), datasets' percentage split, the
seed 004 command line, and the real GPT-2 tokenizer on WikiText-2."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hone.cli import main as hone
from hone.models.checkpoint import load_model
from hone.tasks import clm
from paths import DATA, REPO
from test_config import seed_command

transformers = pytest.importorskip("transformers")

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a bird"]
VERBS = ["sat on", "looked at", "walked to", "jumped over"]
OBJECTS = ["the mat", "the house", "a tree", "the river"]
NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def sentences(n: int, seed: int) -> list[str]:
    """Lines of a tiny grammar (80 sentences): easy to learn, far from uniform."""
    g = random.Random(seed)
    return [f"{g.choice(SUBJECTS)} {g.choice(VERBS)} {g.choice(OBJECTS)} .\n" for _ in range(n)]


def tiny_gpt2_config(folder: Path, texts: list[str], *, n_positions: int = 64, vocab_size: int = 300) -> Path:
    """`folder` with a byte-level BPE tokenizer.json trained on `texts` (GPT-2's pipeline, its
    <|endoftext|>) and the config.json of a 2-layer GPT-2 32 wide over that vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    config = dict(model_type="gpt2", vocab_size=tok.get_vocab_size(), n_positions=n_positions, n_embd=32, n_layer=2,
                  n_head=2, bos_token_id=eos, eos_token_id=eos, **NO_DROPOUT)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run_clm_blocks(folder: Path, texts: list[str], block_size: int) -> torch.Tensor:
    """run_clm's tokenize_function + group_texts (one datasets map batch: up to 1,000 texts),
    written out with the tokenizers library: (blocks, block_size)."""
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    blocks = []
    for start in range(0, len(texts), 1000):
        ids = [t for e in tok.encode_batch(texts[start:start + 1000]) for t in e.ids]
        whole = len(ids) // block_size * block_size
        blocks += [ids[i:i + block_size] for i in range(0, whole, block_size)]
    return torch.tensor(blocks)


def token_loss_sum(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token cross-entropies, number of predicted tokens) of transformers' model."""
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].double()
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss.item(), int((targets != -100).sum())


def results(folder: Path, split: str = "all") -> dict:
    return json.loads((folder / f"{split}_results.json").read_text())


def common(out: Path) -> list[str]:
    return ["--hardware", "cpu", "--disable_tqdm", "--save_steps", "-1", "--output_dir", str(out)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clm")
    train, valid = sentences(600, 0), sentences(100, 1)
    (root / "train.txt").write_text("".join(train))
    (root / "valid.txt").write_text("".join(valid))
    tiny_gpt2_config(root / "tiny", train)
    return root


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--config_name", str(corpus / "tiny"), "--train_file", str(corpus / "train.txt"), "--validation_file",
            str(corpus / "valid.txt"), "--do_train", "--do_eval", "--learning_rate", "3e-3",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "5", *common(out), *extra]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> tuple[Path, dict]:
    """A tiny GPT-2 trained for 2 epochs (in process): its folder and metrics."""
    out = tmp_path_factory.mktemp("trained") / "run"
    return out, clm.run(train_args(corpus, out, "--num_train_epochs", "2"))


# ----------------------------------------------------------------------------- learning, through the CLI


@pytest.mark.slow
def test_learns_through_the_cli(corpus, tmp_path):
    untrained = clm.run(["--config_name", str(corpus / "tiny"), "--validation_file", str(corpus / "valid.txt"),
                         "--do_eval", *common(tmp_path / "untrained")])
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "hone", "clm", *train_args(corpus, out, "--num_train_epochs", "3")],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "***** eval metrics *****" in proc.stdout and "perplexity" in proc.stdout
    res = results(out)
    assert untrained["perplexity"] > 150  # about the vocabulary's 300: fresh weights know nothing
    assert res["perplexity"] < untrained["perplexity"] / 8, (res, untrained)
    assert res["perplexity"] == pytest.approx(math.exp(res["eval_loss"]))
    assert res["train_samples"] == len(run_clm_blocks(corpus / "tiny", (corpus / "train.txt").read_text()
                                                      .splitlines(keepends=True), 64))
    evaluated = results(out, "eval")  # run_clm's keys (but eval_steps_per_second: hone batches by length)
    assert set(evaluated) == {"eval_loss", "perplexity", "eval_samples", "eval_runtime", "eval_samples_per_second"}
    assert evaluated["eval_samples_per_second"] == pytest.approx(
        evaluated["eval_samples"] / evaluated["eval_runtime"], rel=0.05)  # runtime rounded to 0.1 ms
    card = (out / "README.md").read_text()
    assert "Causal Language Modeling" in card and "perplexity" in card


# ----------------------------------------------------------------------------- against transformers


def test_eval_loss_is_the_token_mean_of_transformers_losses(corpus, trained):
    """19 validation blocks in batches of 5: a mean of batch means would weigh the last 4 blocks
    more; the loss is the mean over every predicted token."""
    out, metrics = trained
    ref = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(ref).__name__ == "GPT2LMHeadModel"
    blocks = run_clm_blocks(out, (corpus / "valid.txt").read_text().splitlines(keepends=True), 64)
    total, count = token_loss_sum(ref, blocks, blocks)
    assert metrics["eval_samples"] == len(blocks) == 19 and count == 19 * 63
    assert metrics["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    with torch.no_grad():  # the folder gives transformers the weights hone trained
        ours = load_model(out, task="clm").eval()(blocks[:3]).logits
        torch.testing.assert_close(ref(blocks[:3]).logits, ours, atol=1e-4, rtol=1e-4)


def test_eval_stride_is_the_transformers_docs_loop(corpus, trained, tmp_path):
    """The "perplexity of fixed-length models" loop of the transformers docs on the same token
    stream (the docs' count `num_valid_tokens - batch_size` is right for the first window only:
    later windows predict every label they hold; the loss here counts the tokens predicted)."""
    folder, _ = trained
    stride, max_length = 24, 64
    metrics = clm.run(["--model_name_or_path", str(folder), "--validation_file", str(corpus / "valid.txt"),
                       "--do_eval", "--eval_stride", str(stride), "--per_device_eval_batch_size", "3",
                       *common(tmp_path / "stride")])
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    stream = torch.tensor([t for line in (corpus / "valid.txt").read_text().splitlines(keepends=True)
                           for t in tok.encode(line).ids])[None]
    seq_len, nll_sum, n_tokens, prev_end_loc, windows = stream.size(1), 0.0, 0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = stream[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        loss, count = token_loss_sum(ref, input_ids, target_ids)
        nll_sum, n_tokens, windows = nll_sum + loss, n_tokens + count, windows + 1
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    assert n_tokens == seq_len - 1 and metrics["eval_samples"] == windows
    assert metrics["eval_loss"] == pytest.approx(nll_sum / n_tokens, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll_sum / n_tokens), rel=1e-5)


def test_max_samples_count_blocks_and_the_held_out_share_is_datasets_split(corpus, tmp_path):
    """Without --validation_file the first 10% of the samples (datasets' `train[:10%]`) are
    evaluated and the rest trained on; --max_*_samples keep the first blocks of each."""
    datasets = pytest.importorskip("datasets")
    lines = (corpus / "train.txt").read_text().splitlines(keepends=True)[:333]
    (tmp_path / "some.txt").write_text("".join(lines))
    split = {s: datasets.load_dataset("text", data_files=str(tmp_path / "some.txt"), split=s, keep_linebreaks=True,
                                      cache_dir=str(tmp_path / "cache"))["text"] for s in ("train[:10%]", "train[10%:]")}
    held_out, rest = run_clm_blocks(corpus / "tiny", split["train[:10%]"], 32), \
        run_clm_blocks(corpus / "tiny", split["train[10%:]"], 32)
    metrics = clm.run(["--config_name", str(corpus / "tiny"), "--train_file", str(tmp_path / "some.txt"),
                       "--do_train", "--do_eval", "--validation_split_percentage", "10", "--block_size", "32",
                       "--max_steps", "1", "--max_train_samples", "3", "--max_eval_samples", "2",
                       "--per_device_train_batch_size", "3", *common(tmp_path / "run")])
    assert len(split["train[:10%]"]) == 33 and len(held_out) > 2 and len(rest) > 3
    assert metrics["train_samples"] == 3 and metrics["eval_samples"] == 2
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run").eval()
    total, count = token_loss_sum(ref, held_out[:2], held_out[:2])
    assert metrics["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["settings"]["block_size"] == record["settings"]["max_seq_length"] == 32


def test_json_lines_text_column_and_the_default_block_size(corpus, trained, tmp_path):
    """A JSON Lines file's chosen field gives the samples a text file of them gives; a block
    size above the model's positions is capped at them."""
    folder, _ = trained
    lines = (corpus / "valid.txt").read_text().splitlines(keepends=True)
    (tmp_path / "valid.jsonl").write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(lines)))
    base = ["--model_name_or_path", str(folder), "--do_eval", "--block_size", "500"]
    from_json = clm.run([*base, "--validation_file", str(tmp_path / "valid.jsonl"), "--text_column_name", "body",
                         *common(tmp_path / "json")])
    from_text = clm.run([*base, "--validation_file", str(corpus / "valid.txt"), *common(tmp_path / "text")])
    untimed = [{k: v for k, v in m.items() if k not in ("eval_runtime", "eval_samples_per_second")}
               for m in (from_json, from_text)]
    assert untimed[0] == untimed[1] and from_text["eval_samples"] == 19  # blocks of 64, the model's positions


# ----------------------------------------------------------------------------- command lines


def test_user_mistakes_are_one_line(corpus, tmp_path, capsys):
    base = ["clm", "--config_name", str(corpus / "tiny"), "--validation_file", str(corpus / "valid.txt"),
            "--do_eval", "--hardware", "cpu", "--output_dir", str(tmp_path / "out"), "--overwrite_output_dir"]
    (tmp_path / "short.txt").write_text("the cat .\n")
    for extra, message in ((("--block_size", "1"), "--block_size must be >= 2"),
                           (("--eval_stride", "64"), "stride must be between 1 and block_size - 1"),
                           (("--do_predict", "--test_file", str(corpus / "valid.txt")), "no prediction phase"),
                           (("--validation_file", str(tmp_path / "short.txt")), "no block of block_size 64"),
                           (("--validation_split_percentage", "100"), "must be in [0, 100)"),
                           (("--do_train",), "--do_train needs --train_file"),
                           (("--max_seq_length", "8"), "unrecognized argument --max_seq_length")):
        assert hone([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_dataset_name_folder_and_config_name(corpus, tmp_path, caplog):
    """--dataset_name DIR --dataset_config_name wikitext-103-raw-v1 reads DIR/wikitext-103-raw's
    wiki.train.raw and wiki.valid.raw."""
    folder = tmp_path / "wikitext" / "wikitext-103-raw"
    folder.mkdir(parents=True)
    for split, source in (("train", "train.txt"), ("valid", "valid.txt"), ("test", "valid.txt")):
        (folder / f"wiki.{split}.raw").write_text((corpus / source).read_text())
    args = clm.ClmArguments(config_name="x", dataset_name=str(tmp_path / "wikitext"),
                            dataset_config_name="wikitext-103-raw-v1")
    assert (args.train_file, args.validation_file) == (str(folder / "wiki.train.raw"), str(folder / "wiki.valid.raw"))
    assert args.dataset_name is None and not args.validation_from_train


@pytest.mark.slow
def test_seed_004_run_clm_command_line_runs(corpus, trained, tmp_path):
    """run_clm.py's seed line as written but for the paths: the model, a local WikiText-layout
    folder as --dataset_name, the output folder. Total batch 128 (accumulation 128 of 1): 2 steps
    an epoch over 266 blocks, 10 epochs. The output folder loads in transformers."""
    folder, _ = trained
    data = tmp_path / "wikitext" / "wikitext-103-raw"
    data.mkdir(parents=True)
    (data / "wiki.train.raw").write_text("".join(sentences(1400, 3)))
    (data / "wiki.valid.raw").write_text((corpus / "valid.txt").read_text())
    argv = seed_command("004", "run_clm.py", end="Training hyperparameters")
    local = {"--model_name_or_path": str(folder), "--dataset_name": str(tmp_path / "wikitext"),
             "--output_dir": str(tmp_path / "clm_output")}
    argv = [local.get(previous, a) for previous, a in zip(["", *argv], argv)]
    proc = subprocess.run([sys.executable, "-m", "hone", "clm", *argv], capture_output=True, text=True, env=ENV,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for flag in ("--ipu_config_name Graphcore/gpt2-small-ipu: ignored", "--pod_type pod16: ignored",
                 "--loss_scaling 16384", "embedding_serialization_factor", "wiki.train.raw"):
        assert flag in proc.stderr, flag
    out = tmp_path / "clm_output"
    res = results(out)
    record = json.loads((out / "run.json").read_text())
    assert record["total_train_batch_size"] == 128 and record["global_step"] == 20 and res["epoch"] == 10
    assert {"eval_loss", "perplexity", "eval_samples"} <= set(results(out, "eval")) and res["eval_samples"] == 19
    ref = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    blocks = run_clm_blocks(out, (corpus / "valid.txt").read_text().splitlines(keepends=True), 64)
    total, count = token_loss_sum(ref, blocks, blocks)
    assert res["eval_loss"] == pytest.approx(total / count, rel=1e-5)


# ----------------------------------------------------------------------------- real data


@pytest.mark.data
@pytest.mark.slow
def test_wikitext_with_the_gpt2_tokenizer_learns(tmp_path):
    """A tiny GPT-2 from the gpt2 preset (shrunk) with the real tokenizer on the first 120 lines of
    wiki.valid.raw, evaluated on wiki.test.raw's first 50: the loss falls well below ln(50257)."""
    wiki = DATA / "wikitext" / "wikitext-2-raw"
    for name, count in (("wiki.valid.raw", 120), ("wiki.test.raw", 50)):
        lines = (wiki / name).read_text(encoding="utf-8").splitlines(keepends=True)[:count]
        (tmp_path / name).write_text("".join(lines), encoding="utf-8")
    base = ["--config_name", "gpt2", "--config_overrides", "n_embd=32,n_layer=2,n_head=2,n_positions=64",
            "--tokenizer_name", str(DATA / "tokenizers" / "gpt2"), "--validation_file", str(tmp_path / "wiki.test.raw"),
            "--do_eval", "--per_device_eval_batch_size", "8"]
    before = clm.run([*base, *common(tmp_path / "before")])
    after = clm.run([*base, "--train_file", str(tmp_path / "wiki.valid.raw"), "--do_train", "--learning_rate", "1e-2",
                     "--per_device_train_batch_size", "8", "--num_train_epochs", "2", *common(tmp_path / "after")])
    assert before["eval_loss"] == pytest.approx(math.log(50257), abs=0.3)
    assert after["eval_loss"] < before["eval_loss"] - 1.5, (before, after)  # measured: 10.8 -> 8.3
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "after").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "after")
    ids = [t for line in (tmp_path / "wiki.test.raw").read_text(encoding="utf-8").splitlines(keepends=True)
           for t in tok(line)["input_ids"]]
    blocks = torch.tensor(np.array(ids[: len(ids) // 64 * 64]).reshape(-1, 64))
    total, count = token_loss_sum(ref, blocks, blocks)
    assert after["eval_samples"] == len(blocks) and after["eval_loss"] == pytest.approx(total / count, rel=1e-5)
