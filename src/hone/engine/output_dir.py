"""The run's output folder: the one writer of everything a run leaves, and the rules that keep
the user's files safe.

Rules
- A run never deletes or replaces a file it did not write, unless --overwrite_output_dir is
  given. Before any work it lists what it is going to write (`planned`); if one of those
  names is already in the folder, it stops and says how to go on.
- --overwrite_output_dir starts over: what earlier hone runs wrote there is removed first, so
  that nothing stale (an old checkpoint, old predictions) is mixed with the new run. A
  training run removes all of it, checkpoints included; an evaluation-only run removes the
  earlier results and prediction files. Files hone did not write, and this run's inputs (the
  model or data it reads from that folder), are never removed.
- A resumed run continues the run that wrote the checkpoint: its outputs are this run's. So
  does a new attempt after a run that failed or was interrupted: what that run wrote does not
  stand in the way (its checkpoints are resumed or refused by the training rules).
- Every file is written whole: to a temporary name, then renamed (folders too), so a killed
  run leaves complete files or none.

`run.json` records the run (what the Run puts in `record`) and every output it wrote, by
kind, which is how a later --overwrite_output_dir knows what hone wrote. Only rank 0 writes.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hone.errors import HoneError

log = logging.getLogger("hone")

RECORD = "run.json"
KINDS = ("model", "checkpoint", "log", "results", "predictions", "data")
TEMP_PREFIX = ".tmp-"
# Names a training run writes besides its task's files (the model: transformers' file names).
TRAINING_OUTPUTS = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                    "merges.txt", "checkpoint-*", "log.jsonl", "loss_curve.png", "runs",
                    "train_results.json", "README.md")


class OutputDirError(HoneError, ValueError):
    """output_dir cannot be used as asked; the message names the files and the way out."""


def json_default(value: Any) -> Any:
    """json.dumps' `default`: numpy / torch scalars (metrics) -> Python numbers, paths -> strings."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    """Flush a folder's files and the folder itself, so a rename publishes complete data."""
    for path in directory.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(directory)


def _within(path: Path, other: Path) -> bool:
    """True when path is other, or one holds the other."""
    return path == other or path in other.parents or other in path.parents


class OutputDir:
    """One run's view of its output folder. Build it with `open`, which applies the rules above."""

    def __init__(self, path: str | os.PathLike, *, writes: bool = True):
        self.path = Path(path)
        self.writes = writes          # rank 0; other ranks write nothing
        self.outputs: dict[str, str] = {}   # relative name -> kind, in writing order
        self.record: dict[str, Any] = {}    # run.json's other fields, set by the Run

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike, *, planned: Iterable[str], overwrite: bool, continuing: bool,
             training: bool, inputs: Iterable[str | os.PathLike] = (), writes: bool = True) -> OutputDir:
        """Check the folder is usable and apply the rules; create it if missing.

        planned: names (shell patterns allowed, e.g. "checkpoint-*") this run will write.
        continuing: a resumed run; the outputs of the run it continues are its own.
        inputs: paths this run reads, never removed by overwrite.
        """
        out = cls(path, writes=writes)
        out._check_usable()
        previous, finished = out._previous_outputs()
        if continuing or (previous and not finished and not overwrite):
            out.outputs = dict(previous)
        elif overwrite:
            if writes:
                out._clear(previous, training=training, inputs=[Path(p).resolve() for p in inputs])
        else:
            taken = sorted(name for name in os.listdir(out.path) if name not in out.outputs and name != RECORD
                           and any(fnmatch.fnmatchcase(name, pattern) for pattern in planned))
            if taken:
                shown = ", ".join(taken[:6]) + (f" and {len(taken) - 6} more" if len(taken) > 6 else "")
                resume = " --resume_from_checkpoint latest to continue its training," if training and any(
                    fnmatch.fnmatchcase(t, "checkpoint-*") for t in taken) else ""
                raise OutputDirError(
                    f"output_dir '{out.path}' already holds {shown}, which this run would replace. Pass "
                    f"--overwrite_output_dir to start over there (hone removes what its earlier runs wrote; "
                    f"your other files stay),{resume} or choose another --output_dir.")
        return out

    def _check_usable(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise OutputDirError(f"--output_dir '{self.path}' is a file; give a folder (created if missing)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as e:
            raise OutputDirError(f"--output_dir '{self.path}' cannot be written ({e.strerror}); "
                                 "choose a folder you can write to") from None

    def _previous_outputs(self) -> tuple[dict[str, str], bool]:
        """What the earlier hone run wrote here, from run.json, and whether it finished (empty
        and True when there is no record)."""
        try:
            record = json.loads((self.path / RECORD).read_text())
            outputs = record.get("outputs", {})
            outputs = {str(k): str(v) for k, v in outputs.items()} if isinstance(outputs, dict) else {}
            return outputs, record.get("status") == "finished"
        except (OSError, ValueError, AttributeError):
            return {}, True

    def _clear(self, previous: dict[str, str], *, training: bool, inputs: list[Path]) -> None:
        kinds = set(KINDS) if training else {"results", "predictions"}
        names = {name for name, kind in previous.items() if kind in kinds} | {RECORD}
        if training:  # checkpoints of any earlier run, recorded or not (hone's and transformers' layout)
            names |= {p.name for p in self.path.glob("checkpoint-*") if (p / "trainer_state.json").is_file()}
            names |= {p.name for p in self.path.glob(f"{TEMP_PREFIX}*")}
        removed = []
        for name in sorted(names):
            target = self.path / name
            if not target.exists():
                continue
            if any(_within(target.resolve(), p) for p in inputs):
                log.warning("--overwrite_output_dir: kept %s, an input of this run", target)
                continue
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
            removed.append(name)
        if removed:
            log.info("--overwrite_output_dir: removed %d output(s) of an earlier run in %s", len(removed), self.path)

    # ------------------------------------------------------------------ writing

    def file(self, name: str, kind: str) -> Path:
        """Register `name` as written by this run and return its path, for writers that need a
        path (plots, TensorBoard); prefer write_text / write_json, which are atomic."""
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}; one of {KINDS}")
        self.outputs[name] = kind
        return self.path / name

    def write_text(self, name: str, text: str, kind: str) -> Path | None:
        """Write a text file whole (temporary name, then rename)."""
        if not self.writes:
            return None
        path = self.file(name, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path

    def write_json(self, name: str, obj: Any, kind: str, *, indent: int = 4, sort_keys: bool = False,
                   newline: bool = True) -> Path | None:
        text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=json_default)
        return self.write_text(name, text + "\n" if newline else text, kind)

    def write_folder(self, name: str, fill: Callable[[Path], None], kind: str) -> Path | None:
        """Build folder `name` with `fill(tmp)` in a temporary folder, flush it, then rename it into
        place (replacing a folder of the same name written by this run)."""
        if not self.writes:
            return None
        final = self.file(name, kind)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{name}-", dir=self.path))
        try:
            fill(tmp)
            _fsync_tree(tmp)
            if final.exists():  # the same step saved again (a rerun of the same run): swap
                old = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}old-", dir=self.path))
                os.replace(final, old / final.name)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
            _fsync(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def write_files(self, fill: Callable[[Path], None], kind: str) -> None:
        """Write several files at once (a model: config, weights, tokenizer) through `fill(tmp)`,
        then move each into the folder; registered under their names."""
        if not self.writes:
            return
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}files-", dir=self.path))
        try:
            fill(tmp)
            for item in sorted(tmp.iterdir()):
                target = self.file(item.name, kind)
                if target.is_dir() and not item.is_dir():
                    raise OutputDirError(f"{target} is a folder; cannot replace it with the file {item.name}")
                os.replace(item, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, name: str) -> None:
        """Delete an output of this run (checkpoint rotation)."""
        if self.outputs.get(name) is None:
            raise ValueError(f"{name} is not an output of this run; refusing to delete it")
        target = self.path / name
        if self.writes and target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        del self.outputs[name]

    def remove_temp(self) -> None:
        """Delete half-written temporary files and folders a killed run left behind."""
        if self.writes:
            for p in self.path.glob(f"{TEMP_PREFIX}*"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def write_record(self, **fields: Any) -> None:
        """Update run.json: the run's fields and every output so far."""
        self.record.update(fields)
        self.outputs.setdefault(RECORD, "results")
        self.write_json(RECORD, {**self.record, "outputs": self.outputs}, kind="results")
