"""Running one configuration of a sweep: in this process, or in a child process per run.

Sequential sweeps call the recipe's `run(argv, on_evaluate=...)` in-process. `--parallel K`
starts one child process per run (`python -m hone.sweep.child`), K at a time, each pinned to
its share of the CPU cores (thread count) or to one GPU (CUDA_VISIBLE_DEVICES). A child sends
its intermediate evaluations to the sweep over a pipe and gets back "go" or "prune", so the
pruner sees every run the same way whichever runner executes it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import select
import selectors
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hone.errors import HoneError, RunInterrupted
from hone.sweep import PruneRun, SweepError
from hone.sweep.records import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    PRUNED,
    record_outcome,
)

log = logging.getLogger("hone")

EvaluateHook = Callable[[int, dict], None]
INTERRUPTED_NOTE = "interrupted; the next `hone sweep` on this folder re-runs it"


@dataclass
class RunSpec:
    """One run of a sweep: where it goes and the recipe's full argument list."""

    name: str
    folder: Path
    task: str                      # module with run(argv, on_evaluate=None)
    argv: list[str]
    params: dict[str, Any]
    sweep: dict[str, Any] = field(default_factory=dict)   # stored as run.json's "sweep" entry

    @property
    def command(self) -> str:
        name = self.task.removeprefix("hone.tasks.")
        return shlex.join(["hone", name, *self.argv] if name != self.task else ["python", "-m", self.task, *self.argv])


@dataclass
class Outcome:
    status: str                    # finished | failed | pruned | interrupted
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    pruned_at_step: int | None = None


def import_task(task: str):
    """`qa` -> hone.tasks.qa; any other import path of a module with run(argv) works too."""
    for module_name in (f"hone.tasks.{task}", task):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and not module_name.startswith(e.name):  # the module exists, an import inside fails
                raise
            continue
        if not callable(getattr(module, "run", None)):
            raise SweepError(f"--task {task}: {module_name} has no run(argv, on_evaluate=None) function to call; "
                             "a sweep needs a recipe's Python entry")
        return module
    raise SweepError(f"--task {task}: no recipe hone.tasks.{task} and no module {task} "
                     "(give a task name such as qa, or the import path of a module with run(argv))")


def describe(error: BaseException) -> str:
    if isinstance(error, HoneError):
        return str(error)
    if isinstance(error, SystemExit):
        return f"exited with status {error.code}"
    return f"{type(error).__name__}: {error}"


def prepare_folder(spec: RunSpec) -> None:
    """A re-run (the run was cut) starts from its newest checkpoint when it has one, else afresh."""
    if any(spec.folder.glob("checkpoint-*")) and "--resume_from_checkpoint" not in spec.argv:
        spec.argv += ["--resume_from_checkpoint", "latest"]
    elif spec.folder.is_dir() and any(spec.folder.iterdir()) and "--overwrite_output_dir" not in spec.argv:
        spec.argv += ["--overwrite_output_dir"]


def run_in_process(spec: RunSpec, on_evaluate: EvaluateHook | None) -> Outcome:
    """Call the recipe; every way it can end becomes an Outcome and a run.json status.

    KeyboardInterrupt is recorded as "interrupted" and raised again: the sweep stops, and the
    next `hone sweep` with the same folder re-runs this one.
    """
    pruned: list[PruneRun] = []

    def hook(step: int, metrics: dict) -> None:
        if on_evaluate is None:
            return
        try:
            on_evaluate(step, metrics)
        except PruneRun as e:
            pruned.append(e)
            e.step = step
            raise

    started = time.time()
    try:
        module = import_task(spec.task)
        metrics = module.run(list(spec.argv), on_evaluate=hook)
        outcome = Outcome(FINISHED, dict(metrics or {}))
    except PruneRun as e:
        outcome = Outcome(PRUNED, error=None, pruned_at_step=getattr(e, "step", None))
    except (KeyboardInterrupt, RunInterrupted):  # the trainer turns Ctrl-C into RunInterrupted
        _record(spec, Outcome(INTERRUPTED, error=INTERRUPTED_NOTE), started)
        raise KeyboardInterrupt from None
    except SystemExit as e:  # an argparse error inside the recipe, or a recipe that exits
        outcome = Outcome(FINISHED if e.code in (0, None) else FAILED, error=None if e.code in (0, None) else describe(e))
    except Exception as e:
        if not isinstance(e, HoneError):
            (spec.folder / "traceback.txt").parent.mkdir(parents=True, exist_ok=True)
            (spec.folder / "traceback.txt").write_text(traceback.format_exc())
        outcome = Outcome(FAILED, error=describe(e))
    if pruned and outcome.status == FINISHED:  # a recipe that swallowed PruneRun and returned
        outcome = Outcome(PRUNED, outcome.metrics, pruned_at_step=getattr(pruned[-1], "step", None))
    data = _record(spec, outcome, started)
    outcome.metrics = data.get("metrics") or {}
    return outcome


def _record(spec: RunSpec, outcome: Outcome, started: float) -> dict:
    sweep = {**spec.sweep, "name": spec.name, "params": spec.params}
    if outcome.pruned_at_step is not None:
        sweep["pruned_at_step"] = outcome.pruned_at_step
    return record_outcome(spec.folder, status=outcome.status, error=outcome.error, metrics=outcome.metrics,
                          sweep=sweep, task=spec.task, command=spec.command, params=spec.params, started=started)


class InProcessRunner:
    """One run at a time, in this process: start() returns when the run has ended."""

    slots = 1

    def __init__(self) -> None:
        self._done: list[tuple[RunSpec, Outcome]] = []
        self._current: RunSpec | None = None

    @property
    def busy(self) -> bool:
        return False

    def has_free_slot(self) -> bool:
        return True

    def start(self, spec: RunSpec, on_evaluate: EvaluateHook | None) -> None:
        prepare_folder(spec)
        self._current = spec
        self._done.append((spec, run_in_process(spec, on_evaluate)))
        self._current = None

    def collect(self, block: bool) -> list[tuple[RunSpec, Outcome]]:
        done, self._done = self._done, []
        return done

    def interrupt(self) -> list[tuple[RunSpec, Outcome]]:
        """The run that a KeyboardInterrupt cut (run_in_process has recorded it)."""
        cut = [(self._current, Outcome(INTERRUPTED, error=INTERRUPTED_NOTE))] if self._current else []
        self._current = None
        return cut

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- child processes

def worker_environments(parallel: int, cpu_count: int | None = None, gpus: list[str] | None = None) -> list[dict]:
    """Environment edits for each of `parallel` workers: their thread count, and their GPU if any.

    Threads: the cores split evenly (at least one), so K workers never oversubscribe the machine.
    GPUs: worker i gets GPU i mod n; with more workers than GPUs some share one (a warning says so).
    """
    cpu_count = cpu_count or len(os.sched_getaffinity(0))
    threads = str(max(1, cpu_count // parallel))
    envs = []
    for i in range(parallel):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        envs.append(env)
    if gpus and parallel > len(gpus):
        log.warning("warning: --parallel %d with %d GPU(s): some runs share a GPU", parallel, len(gpus))
    return envs


def visible_gpus() -> list[str]:
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES, else every one torch sees)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class _Child:
    spec: RunSpec
    slot: int
    process: subprocess.Popen
    reports: int                   # read end: the child's evaluations and outcome, JSON lines
    replies: int                   # write end: "go" / "prune <reason>" lines
    on_evaluate: EvaluateHook | None
    started: float
    buffer: bytes = b""
    outcome: Outcome | None = None
    eof: bool = False


class SubprocessRunner:
    """Up to len(envs) runs at once, each in `python -m hone.sweep.child` with its own environment."""

    def __init__(self, envs: list[dict], logs_dir: Path) -> None:
        self.envs = envs
        self.slots = len(envs)
        self.logs_dir = logs_dir
        self.children: dict[int, _Child] = {}
        self.selector = selectors.DefaultSelector()

    @property
    def busy(self) -> bool:
        return bool(self.children)

    def has_free_slot(self) -> bool:
        return len(self.children) < self.slots

    def start(self, spec: RunSpec, on_evaluate: EvaluateHook | None) -> None:
        prepare_folder(spec)
        slot = min(set(range(self.slots)) - {c.slot for c in self.children.values()})
        report_read, report_write = os.pipe()
        reply_read, reply_write = os.pipe()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / f"{spec.name}.log", "ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "hone.sweep.child", "--report_fd", str(report_write), "--reply_fd",
                 str(reply_read), "--spec", json.dumps(asdict(spec), default=str)],
                env={**os.environ, **self.envs[slot]}, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, pass_fds=(report_write, reply_read))
        os.close(report_write)
        os.close(reply_read)
        child = _Child(spec, slot, process, report_read, reply_write, on_evaluate, time.time())
        self.children[report_read] = child
        self.selector.register(report_read, selectors.EVENT_READ)
        log.info("[worker %d] %s started (pid %d, %s)", slot, spec.name, process.pid,
                 ", ".join(f"{k}={v}" for k, v in self.envs[slot].items()))

    def _handle(self, child: _Child, message: dict) -> None:
        if "evaluate" in message:
            reply = "go\n"
            if child.on_evaluate is not None:
                try:
                    child.on_evaluate(int(message["evaluate"]["step"]), message["evaluate"]["metrics"])
                except PruneRun as e:
                    reply = "prune " + " ".join(str(e).split()) + "\n"
            try:
                os.write(child.replies, reply.encode())
            except BrokenPipeError:
                pass
        elif "outcome" in message:
            child.outcome = Outcome(**message["outcome"])

    def _read(self, fd: int) -> None:
        child = self.children[fd]
        chunk = os.read(fd, 65536)
        if not chunk:
            child.eof = True
            self.selector.unregister(fd)
            return
        child.buffer += chunk
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(child, json.loads(line))

    def _drain(self, child: _Child) -> None:
        """Read what an ended child left in its pipe. Not until EOF: a process it forked (a data
        loader worker) may still hold the write end, but every message was written before the exit."""
        while not child.eof and select.select([child.reports], [], [], 0)[0]:
            self._read(child.reports)

    def collect(self, block: bool) -> list[tuple[RunSpec, Outcome]]:
        """Serve the children's evaluations; return the runs that ended (waiting for one if block)."""
        while True:
            for key, _ in self.selector.select(timeout=0.5 if block else 0):
                self._read(key.fd)
            done = [c for c in self.children.values() if c.process.poll() is not None]
            if done or not block or not self.children:
                for child in done:
                    self._drain(child)
                return [self._finish(c) for c in done]

    def _release(self, child: _Child) -> None:
        del self.children[child.reports]
        if not child.eof:
            self.selector.unregister(child.reports)
        os.close(child.reports)
        os.close(child.replies)

    def _finish(self, child: _Child) -> tuple[RunSpec, Outcome]:
        self._release(child)
        outcome = child.outcome
        if outcome is None:  # the process died without a word: a crash (signal, out of memory, os._exit)
            code = child.process.returncode
            how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            outcome = Outcome(FAILED, error=f"the run's process {how} (its output: {self.logs_dir / child.spec.name}.log)")
            _record(child.spec, outcome, child.started)
        return child.spec, outcome

    def interrupt(self, grace_s: float = 30.0) -> list[tuple[RunSpec, Outcome]]:
        """Stop every child (SIGINT, then SIGKILL after `grace_s`); runs that had not ended are cut."""
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGINT)
        deadline = time.time() + grace_s
        for child in self.children.values():
            try:
                child.process.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            self._drain(child)
        ended = []
        for child in list(self.children.values()):
            if child.outcome is None or child.outcome.status == INTERRUPTED:
                child.outcome = Outcome(INTERRUPTED, error=INTERRUPTED_NOTE)
                _record(child.spec, child.outcome, child.started)
            self._release(child)
            ended.append((child.spec, child.outcome))
        return ended

    def close(self) -> None:
        self.selector.close()
