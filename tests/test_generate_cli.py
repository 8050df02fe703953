"""`hone generate` on a folder `hone clm` trained: greedy continuations equal to transformers'
`generate` on the same weights (one prompt and a left-padded batch), prompts files, stop
strings, seeded sampling, the JSON Lines file, and mistakes as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer

from hone.cli import main as hone
from hone.tasks import clm
from test_clm_task import ENV, common, sentences, tiny_gpt2_config

transformers = pytest.importorskip("transformers")

PROMPTS = ["the cat", "a dog walked to", "my"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny GPT-2 trained by hone clm for 40 steps (it continues "the cat" with " jumped over the
    house ."): its output folder."""
    root = tmp_path_factory.mktemp("generate")
    train = sentences(400, 0)
    (root / "train.txt").write_text("".join(train))
    tiny_gpt2_config(root / "tiny", train)
    clm.run(["--config_name", str(root / "tiny"), "--train_file", str(root / "train.txt"), "--do_train",
             "--max_steps", "40", "--learning_rate", "1e-2", "--per_device_train_batch_size", "8",
             *common(root / "run")])
    return root / "run"


def transformers_greedy(folder, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy new tokens of left-padded prompts, cut after the first eos."""
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    eos = ref.config.eos_token_id
    rows = [tok.encode(p).ids for p in prompts]
    width = max(map(len, rows))
    ids = torch.tensor([[eos] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = ref.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                       pad_token_id=eos, eos_token_id=eos)[:, width:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_greedy_equals_transformers_generate_through_the_cli(model, tmp_path):
    args = ["--model", str(model), *(a for p in PROMPTS for a in ("--prompt", p)), "--max_new_tokens", "12",
            "--batch_size", "2", "--hardware", "cpu", "--output", str(tmp_path / "out.jsonl")]
    proc = subprocess.run([sys.executable, "-m", "hone", "generate", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(tmp_path / "out.jsonl")
    expected = transformers_greedy(model, PROMPTS, 12)  # all three in one batch; hone ran batches of 2 and 1
    assert [r["token_ids"] for r in records] == expected
    assert [r["prompt"] for r in records] == PROMPTS
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert [r["continuation"] for r in records] == [tok.decode(ids) for ids in expected]
    assert proc.stdout == "".join(f"# prompt {i}: {p}\n{r['continuation']}\n"
                                  for i, (p, r) in enumerate(zip(PROMPTS, records), 1))
    single = transformers_greedy(model, PROMPTS[1:2], 12)[0]
    assert single == expected[1]  # left padding changes nothing


def test_prompts_file_stop_string_and_sampling(model, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("the cat\n\na dog walked to\n")
    base = ["generate", "--model", str(model), "--max_new_tokens", "10", "--hardware", "cpu"]
    assert hone([*base, "--prompts_file", str(tmp_path / "prompts.txt"), "--output", str(tmp_path / "f.jsonl")]) == 0
    from_file = read_jsonl(tmp_path / "f.jsonl")
    assert [r["prompt"] for r in from_file] == PROMPTS[:2]  # the blank line is no prompt
    capsys.readouterr()
    assert hone([*base, "--prompt", PROMPTS[0]]) == 0
    assert capsys.readouterr().out == from_file[0]["continuation"] + "\n"  # one prompt: no header

    free = from_file[0]["continuation"]
    stop = free.split()[1]  # the second word of the greedy continuation
    assert hone([*base, "--prompt", PROMPTS[0], "--stop", stop, "--output", str(tmp_path / "s.jsonl")]) == 0
    (stopped,) = read_jsonl(tmp_path / "s.jsonl")
    assert stopped["finish_reason"] == "stop" and stopped["continuation"] == free[: free.index(stop)]

    def sample(seed: str, *extra: str) -> list[dict]:
        assert hone([*base, "--prompt", PROMPTS[0], "--prompt", PROMPTS[2], "--do_sample", "--seed", seed, *extra,
                     "--output", str(tmp_path / "x.jsonl")]) == 0
        return read_jsonl(tmp_path / "x.jsonl")

    assert sample("1", "--temperature", "1.5") == sample("1", "--temperature", "1.5") != sample("2", "--temperature", "1.5")
    greedy = [r["token_ids"] for r in read_jsonl(tmp_path / "f.jsonl")][:1]
    assert [r["token_ids"] for r in sample("3", "--top_k", "1")][:1] == greedy
    assert hone([*base, "--prompt", PROMPTS[0], "--hardware", "cpu-bf16"]) == 0  # the profile's autocast runs


def test_mistakes_are_one_line(model, tmp_path, capsys):
    base = ["generate", "--model", str(model), "--hardware", "cpu"]
    (tmp_path / "empty.txt").write_text("\n\n")
    for argv, message in (
            (["generate", "--prompt", "x"], "required: --model"),
            (base, "give --prompt TEXT"),
            ([*base, "--prompt", "x", "--prompts_file", str(tmp_path / "empty.txt")], "give --prompt TEXT"),
            ([*base, "--prompts_file", str(tmp_path / "empty.txt")], "no prompt in it"),
            ([*base, "--prompts_file", str(tmp_path / "nope.txt")], "no such file"),
            ([*base, "--prompt", "x", "--temperature", "0.5"], "do_sample"),
            ([*base, "--prompt", "x", "--max_new_tokens", "100"], "64 positions"),
            ([*base, "--prompt", "x", "--output", str(tmp_path)], "is a folder"),
            ([*base, "--prompt", "x", "--top_p", "2", "--do_sample"], "top_p"),
            ([*base, "--prompt", "x", "--max_tokens", "5"], "unrecognized arguments"),
            (["generate", "--model", str(tmp_path / "none"), "--prompt", "x"], "does not exist")):
        assert hone(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
