"""The `hone` command: a table of subcommands, each handed to a recipe.

No logic lives here: every entry names a `module` (whose `main(argv) -> int` runs) or a
`module:function` with that signature. Errors hone
raises on purpose (HoneError) print as one line and exit 2; Ctrl-C prints one line and exits
130; HONE_DEBUG=1 shows the traceback of either.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from hone import __version__
from hone.errors import HoneError, RunInterrupted

# name -> ("module" with main(argv), or "module:function"; one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("hone.tasks.demo", "Train + evaluate QA end to end on built-in data (no download)."),
    "qa": ("hone.tasks.qa", "Fine-tune / evaluate extractive question answering (SQuAD 1.1/2.0)."),
    "glue": ("hone.tasks.glue", "Fine-tune / evaluate text classification and regression (GLUE or your files)."),
    "squad-eval": ("hone.tasks.squad_eval", "Official SQuAD v1.1/v2.0 evaluation of a predictions file."),
    "clm": ("hone.tasks.clm", "Train / evaluate a causal language model (GPT-2) on raw text: loss, perplexity."),
    "generate": ("hone.tasks.generate", "Continue prompts with a causal language model (greedy or sampled)."),
    "pretrain": ("hone.tasks.pretrain", "Pre-train BERT (MLM + NSP) or a masked LM, from scratch or a checkpoint."),
    "prepare-pretraining": ("hone.data.pretraining", "Prepare BERT pre-training data (MLM + NSP) as memory-mapped "
                                                     "shards."),
    "export": ("hone.export.onnx", "Export a model to ONNX (optimised, fp16, int8), validated against PyTorch."),
    "predict": ("hone.export.predict", "Answer questions or classify text with a model folder or an ONNX file."),
    "bench": ("hone.bench", "Benchmark hone against transformers: `bench train`, `bench infer`."),
    "sweep": ("hone.sweep.cli:sweep_main", "Hyperparameter sweeps: a grid or an optuna search over a recipe."),
    "runs": ("hone.sweep.cli:runs_main", "Tables, plots and comparisons of run folders."),
}


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [
        "usage: hone <command> [options]",
        "",
        "Pre-train, fine-tune, evaluate and benchmark Transformer language models.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "options:", "  -h, --help     show this message", "  --version      print the version",
              "", "Run `hone <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `hone` program itself: a run may relaunch it (engine.host_memory)
        from hone.engine.host_memory import mark_program, relaunch_early

        mark_program(sys.argv[1:])
        relaunch_early(sys.argv[1:])
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"hone {__version__}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hone: unknown command '{name}'. Commands: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    try:
        module_name, _, function = SUBCOMMANDS[name][0].partition(":")
        entry = getattr(importlib.import_module(module_name), function or "main")
        return int(entry(rest) or 0)
    except RunInterrupted as e:
        if os.environ.get("HONE_DEBUG"):
            raise
        print(f"\nhone {name}: {e}", file=sys.stderr)
        return 130
    except HoneError as e:
        if os.environ.get("HONE_DEBUG"):
            raise
        print(f"hone {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("HONE_DEBUG"):
            raise
        print(f"\nhone {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hone ... | head`
        sys.stderr.close()
        return 0
