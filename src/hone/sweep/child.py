"""One sweep run in its own process (`--parallel`): `python -m hone.sweep.child --spec JSON ...`.

The sweep passes two pipe descriptors: on --report_fd this process writes JSON lines
({"evaluate": {"step", "metrics"}} for each intermediate evaluation, {"outcome": {...}} at the
end); on --reply_fd it reads "go" or "prune <reason>" after each evaluation. Torch is not
imported here: the thread count and GPU arrive through the environment the sweep set.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from hone.engine.output_dir import json_default
from hone.sweep import PruneRun
from hone.sweep.execute import INTERRUPTED_NOTE, Outcome, RunSpec, run_in_process
from hone.sweep.records import INTERRUPTED


def _interrupt_once(signum, frame):
    """SIGINT/SIGTERM -> KeyboardInterrupt once; a second signal must not cut the recording of the first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hone.sweep.child")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--report_fd", type=int, required=True)
    parser.add_argument("--reply_fd", type=int, required=True)
    a = parser.parse_args(argv)
    fields = json.loads(a.spec)
    spec = RunSpec(**{**fields, "folder": Path(fields["folder"])})
    reports = os.fdopen(a.report_fd, "w", buffering=1)
    replies = os.fdopen(a.reply_fd, "r")

    def send(message: dict) -> None:
        reports.write(json.dumps(message, default=json_default) + "\n")

    def on_evaluate(step: int, metrics: dict) -> None:
        send({"evaluate": {"step": step, "metrics": metrics}})
        reply = replies.readline().strip()
        if reply.startswith("prune"):
            raise PruneRun(reply.removeprefix("prune").strip() or f"pruned at step {step}")

    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        outcome = run_in_process(spec, on_evaluate)
    except KeyboardInterrupt:
        send({"outcome": asdict(Outcome(INTERRUPTED, error=INTERRUPTED_NOTE))})
        return 130
    send({"outcome": asdict(outcome)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
