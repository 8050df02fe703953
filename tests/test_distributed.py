"""Data parallelism: 2 CPU processes (gloo, launched by torchrun) with micro batch b train
the same weights as 1 process with micro batch 2b, and resume a 1-process checkpoint.

Run under torchrun (`torchrun --nproc_per_node 2 tests/test_distributed.py OUT`) it does
the 2-process side of both comparisons.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hone.engine.trainer import StepBatchSampler, Trainer  # noqa: E402
from test_trainer import CPU, collate, make_args, single_thread, train_losses  # noqa: E402,F401

STEPS, MICRO, SAVED_AT = 7, 4, 3


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x, y):
        return {"loss": ((self.net(x).squeeze(-1) - y) ** 2).mean()}


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 40):
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.sin(self.x.sum(1))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def run(output_dir: Path, micro: int, **overrides) -> nn.Module:
    """7 steps of total batch 8 (5 steps per epoch: crosses an epoch)."""
    model = MLP()
    args = make_args(output_dir, max_steps=STEPS, per_device_train_batch_size=micro, gradient_accumulation_steps=1,
                     learning_rate=1e-2, warmup_steps=1, logging_steps=1, **overrides)
    Trainer(model, args, CPU, Data(), collate).train()
    return model


def test_two_processes_match_one_with_twice_the_micro_batch(tmp_path):
    single = run(tmp_path / "single", micro=2 * MICRO, save_steps=SAVED_AT)
    # the 2-process run resumes from this 1-process checkpoint
    shutil.copytree(tmp_path / "single" / f"checkpoint-{SAVED_AT}", tmp_path / "resume" / f"checkpoint-{SAVED_AT}")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    expected = single.state_dict()
    for run_dir in ("ddp", "resume"):
        weights = load_file(tmp_path / run_dir / "model.safetensors")
        assert weights.keys() == expected.keys()
        for name, tensor in expected.items():
            torch.testing.assert_close(weights[name], tensor, atol=1e-6, rtol=0, msg=f"{run_dir}: {name}")
    # rank 0 logged the loss averaged over both ranks: the 1-process loss
    torch.testing.assert_close(torch.tensor(train_losses(tmp_path / "ddp")),
                               torch.tensor(train_losses(tmp_path / "single")), atol=1e-6, rtol=0)
    state = json.loads((tmp_path / "ddp" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["samples_seen"] == STEPS * 2 * MICRO
    # cleanup joined gloo's worker threads: none is left to abort at interpreter shutdown
    for rank in (0, 1):
        threads = json.loads((tmp_path / f"threads-rank{rank}.json").read_text())
        assert threads["after"] == threads["before"], threads


def test_ranks_take_strided_shares_and_pad_a_short_last_step():
    shares = [StepBatchSampler(11, micro_batch_size=2, accumulation_steps=1, seed=0, rank=r, world_size=2)
              for r in range(2)]
    perm = shares[0].permutation(0).tolist()
    plans = [s.set_position(epoch=0, start=0) for s in shares]
    assert [p.micro_batches for p in plans[0]] == [[perm[0:4:2]], [perm[4:8:2]], [perm[8:11:2]]]
    assert [p.micro_batches for p in plans[1]] == [[perm[1:4:2]], [perm[5:8:2]], [[perm[9], perm[0]]]]
    assert [p.samples for p in plans[0]] == [4, 4, 3]  # positions consumed, padding not counted


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _ddp_main(out: Path) -> None:
    from hone.engine import distributed

    before = _threads()
    run(out / "ddp", micro=MICRO)
    run(out / "resume", micro=MICRO, resume_from_checkpoint="latest")
    distributed.cleanup()
    (out / f"threads-rank{os.environ['RANK']}.json").write_text(json.dumps({"before": before, "after": _threads()}))


if __name__ == "__main__":
    _ddp_main(Path(sys.argv[1]))
