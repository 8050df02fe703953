"""The two ways a sweep chooses its runs: every grid combination, or an optuna study.

Both hand RunSpecs to a runner (in-process or child processes) through `drive`, and both
resume: a grid skips the folders whose run.json says finished/failed/pruned and re-runs the
rest; a study counts its trials in the storage and re-queues the ones that were cut (this
sweep's own interruption, a dead process on this host, or a heartbeat gone stale anywhere).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hone.sweep import PruneRun, SweepError
from hone.sweep.execute import (
    EvaluateHook,
    InProcessRunner,
    Outcome,
    RunSpec,
    SubprocessRunner,
    visible_gpus,
    worker_environments,
)
from hone.sweep.records import (
    DONE_STATUSES,
    FAILED,
    FINISHED,
    INTERRUPTED,
    PRUNED,
    RUN_FILE,
    RUNNING,
    SWEEP_FILE,
    as_number,
    read_json,
    write_json_atomic,
)
from hone.sweep.space import Range, expand_grid, format_value, run_names

log = logging.getLogger("hone")

LOCK_FILE = ".sweep.lock"
HEARTBEAT_S = 30        # a running trial's heartbeat in the optuna storage
GRACE_S = 120           # a trial whose heartbeat is older than this was cut: it is re-queued
MAX_RETRIES = 3         # a trial cut more often than this counts as failed


@dataclass
class SweepConfig:
    task: str
    output_dir: Path
    run_args: list[str]            # given to every run (--config FILE and any recipe flag)
    metric: str
    direction: str                 # maximize | minimize
    command: str
    parallel: int = 1
    isolate: bool = False          # child processes even when sequential
    retry_failed: bool = False
    grid: dict[str, list] | None = None
    space: dict[str, Range] | None = None
    space_text: str = ""
    n_trials: int | None = None
    storage: str | None = None
    study_name: str | None = None
    sampler: str = "tpe"
    sampler_seed: int | None = None
    pruner: str = "median"
    pruner_startup_trials: int = 5
    pruner_warmup_steps: int = 0


# ----------------------------------------------------------------------------- shared parts

def make_spec(cfg: SweepConfig, name: str, params: dict[str, Any], sweep: dict) -> RunSpec:
    argv = [*cfg.run_args, "--output_dir", str(cfg.output_dir / name)]
    for key, value in params.items():
        argv += [f"--{key}", format_value(value)]
    return RunSpec(name=name, folder=cfg.output_dir / name, task=cfg.task, argv=argv, params=dict(params),
                   sweep=sweep)


def check_params_not_fixed(names: list[str], run_args: list[str]) -> None:
    for name in names:
        if any(a == f"--{name}" or a.startswith(f"--{name}=") for a in run_args):
            raise SweepError(f"--{name} is both swept and given to every run; drop it from the run arguments "
                             "(or from the sweep's space)")


def make_runner(cfg: SweepConfig):
    if cfg.parallel == 1 and not cfg.isolate:
        return InProcessRunner()
    gpus = visible_gpus()
    return SubprocessRunner(worker_environments(cfg.parallel, gpus=gpus), cfg.output_dir / "logs")


def drive(runner, next_run: Callable[[], tuple[RunSpec, EvaluateHook | None] | None],
          finish: Callable[[RunSpec, Outcome], None]) -> None:
    """Keep the runner's slots full with next_run() until it has nothing more; finish() each ended run.

    On KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one) every running run is recorded as cut.
    """
    try:
        while True:
            started = exhausted = False
            if runner.has_free_slot():
                item = next_run()
                if item is None:
                    exhausted = True
                else:
                    runner.start(*item)
                    started = True
            for spec, outcome in runner.collect(block=not started and runner.busy):
                finish(spec, outcome)
            if exhausted and not runner.busy:
                return
    except BaseException:
        for spec, outcome in runner.interrupt():
            finish(spec, outcome)
        raise
    finally:
        runner.close()


def describe_outcome(outcome: Outcome, metric: str) -> str:
    if outcome.status == FINISHED:
        value = as_number(outcome.metrics.get(metric))
        return f"finished, {metric} = {value:.4f}" if value is not None else f"finished (no {metric} in its results)"
    if outcome.status == PRUNED:
        return f"pruned at step {outcome.pruned_at_step}"
    if outcome.status == INTERRUPTED:
        return "cut; the next `hone sweep` on this folder runs it again"
    return f"{outcome.status}: {outcome.error}"


def check_metric(outcome: Outcome, metric: str) -> None:
    """A metric name that no finished run reports would waste the whole sweep: stop at the first run."""
    if outcome.status == FINISHED and metric not in outcome.metrics:
        names = ", ".join(sorted(k for k in outcome.metrics if as_number(outcome.metrics[k]) is not None))
        raise SweepError(f"--metric {metric}: the finished run reports no such metric; choose one of: {names}")


def _lock(folder: Path):
    """Hold the sweep folder for this process: two grid sweeps on one folder would run the same runs twice."""
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SweepError(f"{folder}: another `hone sweep` is running on this folder; wait for it, or share work "
                         "between processes with --search optuna (they share one --storage)") from None
    return handle


def _check_definition(folder: Path, definition: dict) -> None:
    """Resuming is only sound with the same sweep: refuse a folder made by another one."""
    path = folder / SWEEP_FILE
    if path.exists():
        old = read_json(path)
        keys = [k for k in ("task", "search", "grid", "space", "run_args") if old.get(k) != definition.get(k)]
        if keys:
            raise SweepError(f"{folder} holds another sweep ({', '.join(keys)} differ; it was made by: "
                             f"{old.get('command')}); repeat that command to resume it, or use a new --output_dir")
    write_json_atomic(path, definition)


def _definition(cfg: SweepConfig, search: str, **extra) -> dict:
    return {"task": cfg.task, "search": search, "metric": cfg.metric, "direction": cfg.direction,
            "run_args": cfg.run_args, "command": cfg.command, **extra}


# ----------------------------------------------------------------------------- grid

def run_grid(cfg: SweepConfig) -> None:
    assert cfg.grid is not None
    check_params_not_fixed(list(cfg.grid), cfg.run_args)
    combinations = expand_grid(cfg.grid)
    names = run_names(combinations)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(cfg.output_dir)
    try:
        _check_definition(cfg.output_dir, _definition(
            cfg, "grid", grid={k: [format_value(v) for v in vs] for k, vs in cfg.grid.items()},
            runs=[{"name": n, "params": p} for n, p in zip(names, combinations)]))
        todo: list[RunSpec] = []
        for index, (name, params) in enumerate(zip(names, combinations)):
            status = read_json(cfg.output_dir / name / RUN_FILE).get("status") \
                if (cfg.output_dir / name / RUN_FILE).exists() else None
            if status in DONE_STATUSES and not (cfg.retry_failed and status == FAILED):
                continue
            if status in (RUNNING, INTERRUPTED):
                log.info("%s was cut (%s): running it again", name, status)
            todo.append(make_spec(cfg, name, params, {"index": index}))
        done = len(combinations) - len(todo)
        log.info("hone sweep: %d combinations, %d already done, %d to run, %d at a time",
                 len(combinations), done, len(todo), cfg.parallel)
        pending = list(todo)
        count = iter(range(done + 1, len(combinations) + 1))

        def next_run():
            return (pending.pop(0), None) if pending else None

        def finish(spec: RunSpec, outcome: Outcome) -> None:
            log.info("[%d/%d] %s: %s", next(count, 0), len(combinations), spec.name,
                     describe_outcome(outcome, cfg.metric))
            check_metric(outcome, cfg.metric)

        drive(make_runner(cfg), next_run, finish)
    finally:
        lock.close()


# ----------------------------------------------------------------------------- optuna

def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError("--search optuna needs optuna: pip install 'hone[sweep]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with heartbeats is sound here: _Heartbeat records them as Study.optimize would.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def _open_study(cfg: SweepConfig, optuna, storage_url: str, study_name: str):
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    engine_kwargs = {"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            storage = RDBStorage(storage_url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                 grace_period=GRACE_S, heartbeat_stale_trial_callback=retry)
            break
        except Exception as e:  # a malformed URL, a missing driver, an unreachable server: or, on a new
            if attempt < 2:     # database, another worker creating the same tables at this moment
                time.sleep(1 + attempt)
                continue
            reason = " ".join(f"{type(e).__name__}: {e}".split())
            raise SweepError(f"--storage {storage_url}: cannot open it ({reason}); give a URL such as "
                             "sqlite:///sweep.db or postgresql://user:password@host/database (pip install "
                             "psycopg2-binary for PostgreSQL)") from None
    samplers = {
        "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
        "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda seed: optuna.samplers.GridSampler({name: list(r.args) for name, r in cfg.space.items()},
                                                         seed=seed),
    }
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials,
                                                      n_warmup_steps=cfg.pruner_warmup_steps),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    try:
        study = optuna.create_study(storage=storage, study_name=study_name,
                                    sampler=samplers[cfg.sampler](cfg.sampler_seed),
                                    pruner=pruners[cfg.pruner](), direction=cfg.direction, load_if_exists=True)
    except ValueError as e:  # e.g. the stored study optimises in the other direction
        raise SweepError(f"--study_name {study_name} in {storage_url}: {e}; use another --study_name") from None
    if study.direction.name.lower() != cfg.direction:
        raise SweepError(f"study {study_name} in {storage_url} was made to {study.direction.name.lower()}, not "
                         f"{cfg.direction}; use the same --direction or another --study_name")
    if cfg.sampler_seed is not None and study.trials:  # a resumed seeded search must not draw its first samples again
        study.sampler = samplers[cfg.sampler](cfg.sampler_seed + len(study.trials))
    definition = {"task": cfg.task, "space": cfg.space_text, "metric": cfg.metric}
    stored = study.user_attrs.get("hone_sweep")
    if stored is None:
        study.set_user_attr("hone_sweep", definition)
    elif stored != definition:
        raise SweepError(f"study {study_name} in {storage_url} belongs to another sweep ({stored}); repeat its "
                         "--task/--space/--metric to join it, or use another --study_name")
    return study, storage, retry


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue_dead_local_trials(study, retry, optuna) -> None:
    """Trials left running by a process of this host that no longer exists were cut: re-queue them now.

    (Trials of other machines are caught by their heartbeat once it is GRACE_S old.)
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == host and not _pid_alive(int(worker.get("pid", 0))):
            frozen = study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            retry(study, frozen)
            log.info("trial %d (%s) was cut: queued again", trial.number, trial.user_attrs.get("run_dir"))


def _wants_more(study, n_trials: int, optuna) -> bool:
    """n_trials counts every trial that ran or runs, except the cut ones that were queued again."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    if any(t.state == states.WAITING for t in trials):
        return True
    counted = [t for t in trials if t.state != states.WAITING and not (t.state == states.FAIL and t.number in retried)]
    return len(counted) < n_trials


class _Heartbeat:
    """Records a heartbeat for each running trial of this process every HEARTBEAT_S seconds."""

    def __init__(self, storage, active: dict) -> None:
        self.storage, self.active = storage, active
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="hone-sweep-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            for trial in list(self.active.values()):
                self.storage.record_heartbeat(trial._trial_id)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def run_optuna(cfg: SweepConfig) -> None:
    assert cfg.space is not None
    optuna = _import_optuna()
    check_params_not_fixed(list(cfg.space), cfg.run_args)
    if cfg.sampler == "grid":
        not_choices = [n for n, r in cfg.space.items() if r.kind != "choice"]
        if not_choices:
            raise SweepError(f"--sampler grid needs value lists (choice(...) or a,b,c), not ranges: {', '.join(not_choices)}")
        cfg.n_trials = cfg.n_trials or math.prod(len(r.args) for r in cfg.space.values())
    if not cfg.n_trials or cfg.n_trials < 1:
        raise SweepError("--search optuna needs --n_trials N (how many runs the study makes in all)")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    storage_url = cfg.storage or default_storage(cfg.output_dir)
    study_name = cfg.study_name or cfg.output_dir.resolve().name
    _check_definition(cfg.output_dir, _definition(cfg, "optuna", space=cfg.space_text, storage=storage_url,
                                                  study_name=study_name, n_trials=cfg.n_trials))
    study, storage, retry = _open_study(cfg, optuna, storage_url, study_name)
    states = optuna.trial.TrialState
    distributions = {name: r.distribution() for name, r in cfg.space.items()}
    _requeue_dead_local_trials(study, retry, optuna)
    worker = {"host": socket.gethostname(), "pid": os.getpid()}
    active: dict[str, Any] = {}
    log.info("hone sweep: optuna study '%s' in %s, %s sampler, %s pruner, %d trials, %d at a time",
             study_name, storage_url, cfg.sampler, cfg.pruner, cfg.n_trials, cfg.parallel)

    reported: set[int] = set()  # trials that sent an intermediate evaluation
    warned = False

    def pruning_hook(trial) -> EvaluateHook:
        def on_evaluate(step: int, metrics: dict) -> None:
            value = as_number(metrics.get(cfg.metric))
            if value is None:
                return
            reported.add(trial.number)
            trial.report(value, step)
            if trial.should_prune():
                raise PruneRun(f"the {cfg.pruner} pruner stopped trial {trial.number} at step {step} "
                               f"({cfg.metric} = {value:.4g})")
        return on_evaluate

    def next_run():
        optuna.storages.fail_stale_trials(study)
        if not _wants_more(study, cfg.n_trials, optuna):
            return None
        trial = study.ask(distributions)
        storage.record_heartbeat(trial._trial_id)
        name = trial.user_attrs.get("run_dir") or f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", name)
        trial.set_user_attr("worker", worker)
        active[name] = trial
        return make_spec(cfg, name, trial.params, {"trial": trial.number, "study": study_name}), pruning_hook(trial)

    def finish(spec: RunSpec, outcome: Outcome) -> None:
        trial = active.pop(spec.name)
        log.info("trial %d (%s): %s", trial.number, spec.name, describe_outcome(outcome, cfg.metric))
        value = as_number(outcome.metrics.get(cfg.metric))
        if outcome.status == FINISHED and value is not None:
            study.tell(trial, value)
        elif outcome.status == PRUNED:
            study.tell(trial, state=states.PRUNED)
        elif outcome.status == INTERRUPTED:
            retry(study, study.tell(trial, state=states.FAIL))
        else:
            trial.set_user_attr("error", outcome.error or f"no {cfg.metric} in the results")
            study.tell(trial, state=states.FAIL)
        check_metric(outcome, cfg.metric)
        nonlocal warned
        if outcome.status == FINISHED and cfg.pruner != "none" and not reported and not warned:
            warned = True
            log.warning("warning: trial %d sent no intermediate %s, so the %s pruner cannot stop hopeless runs: "
                        "give the runs --eval_steps N (with --do_eval)", trial.number, cfg.metric, cfg.pruner)

    with _Heartbeat(storage, active):
        drive(make_runner(cfg), next_run, finish)
    try:
        best = study.best_trial
    except ValueError:
        return
    log.info("best trial %d (%s): %s = %.4f with %s", best.number, best.user_attrs.get("run_dir"), cfg.metric,
             best.value, ", ".join(f"{k}={format_value(v)}" for k, v in best.params.items()))

