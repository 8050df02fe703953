"""`hone generate`: continue prompts with a causal language model folder (GPT-2).

  hone generate --model DIR --prompt "Once upon a time" [--prompt ... | --prompts_file FILE]
                [--max_new_tokens 50] [--do_sample --temperature 0.8 --top_k 50 --top_p 0.95 --seed 1]
                [--stop $'\\n'] [--output continuations.jsonl] [--hardware cpu-bf16]

Greedy decoding unless --do_sample, with a key/value cache (hone.models.generation: greedy
output equals transformers' `generate` on the same weights). Prompts run in batches of
--batch_size, left-padded. Each continuation is printed (under a `# prompt N:` line when there
are several); --output writes JSON Lines: prompt, continuation, token ids, finish reason. The
model runs on the hardware profile's device, under its autocast precision.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from hone.data.text import read_texts
from hone.data.tokenizer import load_tokenizer
from hone.engine.output_dir import OutputDir
from hone.engine.precision import autocast
from hone.hardware import resolve_profile
from hone.models.checkpoint import load_model
from hone.models.generation import GenerationError, generate

log = logging.getLogger("hone")


class _Parser(argparse.ArgumentParser):
    """Flag mistakes as a GenerationError: the CLI prints them as one line."""

    def error(self, message: str):
        raise GenerationError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="hone generate", description=__doc__, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="A causal LM checkpoint folder (GPT-2), e.g. hone clm's output.")
    p.add_argument("--tokenizer", help="Tokenizer folder (default: the model folder).")
    p.add_argument("--prompt", action="append", help="A prompt (repeat for several).")
    p.add_argument("--prompts_file", help="Prompts: a text file with one per line (blank lines skipped), or JSON "
                                          "Lines with a 'prompt' field.")
    p.add_argument("--max_new_tokens", type=int, default=50, help="Most tokens added to each prompt.")
    p.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    p.add_argument("--temperature", type=float, default=1.0, help="With --do_sample: divides the logits.")
    p.add_argument("--top_k", type=int, help="With --do_sample: only the k most likely tokens.")
    p.add_argument("--top_p", type=float, help="With --do_sample: only the most likely tokens holding p of the "
                                               "probability.")
    p.add_argument("--seed", type=int, help="With --do_sample: the sampling seed (the same output every time).")
    p.add_argument("--stop", action="append", help="Stop a continuation at this text, left out (repeat for several).")
    p.add_argument("--batch_size", type=int, default=16, help="Prompts decoded together.")
    p.add_argument("--output", help="JSON Lines file of the continuations (replaced if it exists).")
    p.add_argument("--hardware", default="auto", help="Hardware profile: cpu, cpu-bf16, a100, h100, auto or YAML.")
    p.add_argument("--hardware_overrides", help="Edit the profile: 'k=v,k=v'.")
    args = p.parse_args(argv)
    if args.output and Path(args.output).is_dir():
        p.error(f"--output {args.output} is a folder; give a file name (JSON Lines)")
    if (args.prompt is None) == (args.prompts_file is None):
        p.error("give --prompt TEXT (repeatable) or --prompts_file FILE")
    if args.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return args.prompt
    prompts = [p for p in read_texts(args.prompts_file, keep_linebreaks=False, text_column="prompt") if p.strip()]
    if not prompts:
        raise GenerationError(f"--prompts_file {args.prompts_file}: no prompt in it")
    return prompts


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    prompts = read_prompts(args)
    profile = resolve_profile(args.hardware, args.hardware_overrides)
    if profile.cpu_threads:
        torch.set_num_threads(profile.cpu_threads)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    model = load_model(args.model, task="clm").to(profile.device)
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, stop=args.stop, seed=args.seed)
    records = []
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        with autocast(profile):
            out = generate(model, batch, tokenizer, **options)
        records += [{"prompt": p, "continuation": text, "token_ids": ids, "finish_reason": reason}
                    for p, text, ids, reason in zip(batch, out.texts, out.token_ids, out.finish_reasons)]
    for i, record in enumerate(records, 1):
        if len(records) > 1:
            print(f"# prompt {i}: {record['prompt']}")
        print(record["continuation"], flush=True)
    if args.output:
        target = Path(args.output)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        OutputDir(target.parent).write_text(target.name, text, kind="predictions")
        log.info("hone generate: %d continuations written to %s", len(records), target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
