"""A training run's checkpoints: the weights of kept epochs, which measurement code loads, and the
latest resume checkpoint, from which an interrupted run continues exactly where it stopped.

A run folder keeps only what is read back: `fit` decides which epochs (the start, the measured
point, the last, and every `checkpoint_every`-th on request), and the experiment removes the
resume checkpoint once the run's record is written (`remove_resume`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
from pathlib import Path

import keras
import tensorflow as tf
from google.protobuf import text_format

from lbtf.errors import WRITE_FAILED_HINT, UsageError
from lbtf.runs import read_path, write_path

KERAS_WEIGHTS = ".weights.h5"  # Keras' own weights format, beside every kept TF checkpoint


class RunState(tf.train.experimental.PythonState):
    """The Python side of a run (history, shuffling RNG, diffusion record, elapsed time), saved
    inside the resume checkpoint so that it can never disagree with the weights beside it."""

    def __init__(self):
        self.value: dict = {}

    def serialize(self) -> str:
        return json.dumps(self.value)

    def deserialize(self, string_value) -> None:
        self.value = json.loads(string_value)


class Checkpoints:
    """A run's checkpoints, of `trackables` (a Trainer's, with its "model").
    weights-<epoch>: the model only, the iterates measurement code loads; written and deleted one
    by one (`save_weights`, `delete_weights`).
    resume/ckpt-<epoch>: the model, Adam's state, RNG states and the RunState; the latest two are
    kept, so that a latest one damaged by a crash or a failing disk leaves the one before. Resuming
    reads `directory`; saves go to `save_dir` (default: the same). In a multi-worker job every
    worker resumes from the chief's folder and only the chief saves there.
    """

    def __init__(self, trackables: dict, directory: str | Path, *,
                 save_dir: str | Path | None = None, log=print):
        self.save_dir = Path(save_dir or directory)
        self.directory = Path(directory)
        self.state = RunState()
        self.model = trackables["model"]
        self._full = tf.train.Checkpoint(**trackables, state=self.state)
        self._model = tf.train.Checkpoint(model=trackables["model"])
        self._resume = self._manager(log)

    def _manager(self, log) -> tf.train.CheckpointManager:
        """The resume checkpoints' manager. It reads the folder's `checkpoint` index file, which a
        failing disk can leave unreadable; restoring never needs it (`_resume_checkpoints` goes
        by the files), so a damaged one is deleted and written afresh by the next save."""
        make = functools.partial(tf.train.CheckpointManager, self._full,
                                 str(self.save_dir / "resume"), max_to_keep=2,
                                 checkpoint_name="ckpt")
        try:
            return make()
        except (UnicodeDecodeError, text_format.ParseError, tf.errors.OpError) as e:
            index = self.save_dir / "resume" / "checkpoint"
            log(f"  {index} is damaged ({str(e).splitlines()[0][:80]}); discarded")
            index.unlink(missing_ok=True)
            return make()

    def restore(self, log=print) -> tuple[str, dict] | None:
        """(checkpoint, run state) of the newest resume checkpoint that restores, newest first;
        None if there is none. Each one that does not restore (truncated, unreadable) is named
        in one log line and deleted. After a failed attempt some variables may hold its values:
        the caller starts afresh from its own start when None comes back after a failure
        (`discarded` lists what was thrown away)."""
        self.discarded: list[str] = []
        for path in _resume_checkpoints(self.directory / "resume"):
            try:
                self._full.restore(path).assert_consumed()
                return path, self.state.value
            except (tf.errors.OpError, ValueError, AssertionError, TypeError, IndexError,
                    OSError) as e:  # truncated files: IndexError from the reader
                log(f"  resume checkpoint {path} is damaged ({str(e).splitlines()[0][:100]}); "
                    "discarded")
                self.discarded.append(path)
                for f in Path(path).parent.glob(f"{Path(path).name}.*"):
                    f.unlink(missing_ok=True)
        return None

    def save_weights(self, epoch: int) -> None:
        """The epoch's weights as a TensorFlow checkpoint (weights-<epoch>) and, for Keras' own
        `model.load_weights`, as weights-<epoch>.weights.h5 beside it (written whole, then
        renamed, so a crash never leaves a partial file under the final name)."""
        _guarded(lambda: self._model.write(str(self.save_dir / f"weights-{epoch}")), self.save_dir)
        partial = self.save_dir / f"weights-{epoch}.partial.weights.h5"
        _guarded(lambda: self.model.save_weights(str(partial)), self.save_dir)
        partial.replace(self.save_dir / f"weights-{epoch}{KERAS_WEIGHTS}")

    def delete_weights(self, epoch: int) -> None:
        for f in self.save_dir.glob(f"weights-{epoch}.*"):
            f.unlink(missing_ok=True)

    def delete_weights_after(self, epoch: int) -> None:
        """Deletes the weights of epochs after `epoch`: left by a run killed before its next
        resume checkpoint, they are written again as the resumed run redoes those epochs."""
        for kept in _weight_epochs(self.save_dir):
            if kept > epoch:
                self.delete_weights(kept)

    def save_state(self, epoch: int, state: dict) -> None:
        self.state.value = state
        _guarded(lambda: self._resume.save(checkpoint_number=epoch), self._resume.directory)


def _guarded(write, directory) -> None:
    try:
        write()
    except (tf.errors.OpError, OSError) as e:  # e.g. a full disk
        first = (getattr(e, "message", None) or str(e)).strip().splitlines()[0][:160]
        raise UsageError(f"cannot write a checkpoint in {directory} ({first}); "
                         f"{WRITE_FAILED_HINT}") from None


def _resume_checkpoints(folder: Path) -> list[str]:
    """The resume checkpoints in `folder`, newest first, by their files (not the `checkpoint`
    index file, which a crash can leave naming a checkpoint that is gone or damaged)."""
    found = (re.fullmatch(r"ckpt-(\d+)\.index", f.name) for f in folder.glob("ckpt-*.index"))
    return [str(folder / f"ckpt-{n}") for n in sorted((int(m.group(1)) for m in found if m),
                                                      reverse=True)]


def _weight_epochs(folder: Path) -> list[int]:
    found = (re.fullmatch(r"weights-(\d+)\.index", f.name) for f in folder.glob("weights-*.index"))
    return sorted(int(m.group(1)) for m in found if m)


def kept_weights(checkpoint_dir: str | Path) -> dict[int, str]:
    """{epoch: weights checkpoint prefix} of every kept epoch of a run, in epoch order."""
    folder = read_path(checkpoint_dir)
    return {e: str(folder / f"weights-{e}") for e in _weight_epochs(folder)}


def remove_resume(checkpoint_dir: str | Path) -> None:
    """Deletes a finished run's resume checkpoint (this process's copy): its record holds the rest."""
    shutil.rmtree(write_path(Path(checkpoint_dir) / "resume"), ignore_errors=True)


def restore_weights(model: keras.Model, checkpoint: str) -> None:
    """Loads a weights checkpoint written by `fit` into a model of the same architecture."""
    # read(), the counterpart of write(): no save counter to match.
    tf.train.Checkpoint(model=model).read(checkpoint).expect_partial().assert_existing_objects_matched()


def load_weights(model: keras.Model, checkpoint: str, network: str) -> None:
    """Loads weights into `model` from an lbtf checkpoint prefix, a `.weights.h5` file, a run's
    checkpoint folder or a run folder with one run (see `locate`); raises a UsageError naming
    the checkpoint and the network."""
    plain = not checkpoint.endswith((KERAS_WEIGHTS, ".keras")) and not Path(checkpoint).is_dir()
    # A plain prefix as given: a worker reads it through read_path (its scratch copy).
    found = Located("tf", checkpoint) if plain else locate(checkpoint)
    if found.kind == "keras":
        raise UsageError(f"{checkpoint} is a whole Keras model; load it with "
                         "keras.models.load_model, or pass its .weights.h5")
    try:
        if found.kind == "h5":
            model.load_weights(found.path)
        else:
            restore_weights(model, str(read_path(found.path)))
    except (tf.errors.OpError, ValueError, AssertionError, OSError,
            KeyError) as e:  # missing, corrupt, other net
        first = str(e).strip().splitlines()[0][:160]
        raise UsageError(f"cannot load checkpoint {checkpoint} into network {network} ({first}); "
                         "pass a weights checkpoint written by lbtf for the same --network, "
                         "--arch_variant and --dataset") from None


def damage(prefix: str) -> str | None:
    """Why the kept weights checkpoint `prefix` cannot be read whole (every tensor read, so a
    truncated or overwritten data file shows), with its .weights.h5 when it has one; None if it
    can. A missing .weights.h5 is not damage: runs before lbtf wrote them have none."""
    import h5py

    try:
        reader = tf.train.load_checkpoint(str(read_path(prefix)))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, OSError, IndexError) as e:
        return str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
    h5 = read_path(prefix + KERAS_WEIGHTS)
    if h5.is_file():
        try:
            with h5py.File(h5, "r") as f:
                f.visititems(lambda _, o: o[()] if isinstance(o, h5py.Dataset) else None)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            return f"{h5.name}: {str(e).splitlines()[0][:80]}"
    return None


def checkpoint_at(checkpoint_dir: str | Path, epoch: int | None = None) -> str | None:
    """The weights checkpoint of `epoch` (None: the last kept one) in a run's checkpoint folder."""
    if epoch is None:
        kept = kept_weights(checkpoint_dir)
        return kept[max(kept)] if kept else None
    # File by file: a worker's scratch copy of the folder may lack what only the chief wrote.
    return str(read_path(Path(checkpoint_dir) / f"weights-{epoch}"))


def keep_weights(ckpts: Checkpoints, *, epoch: int, best: int, reason: str | None, every: int,
                 kept_best: int) -> int:
    """After epoch `epoch` (`best`: the lowest training loss so far): writes its weights if they
    are kept (a new lowest training loss, the end of the run, or every `every`-th epoch) and
    deletes the superseded lowest-loss epoch's unless it is kept for another reason; returns the
    lowest-loss epoch on disk."""
    scheduled = lambda e: e == 0 or (every and e % every == 0)  # noqa: E731
    if reason == "diverged":  # non-finite weights are never written
        return kept_best
    if best == epoch or reason is not None or scheduled(epoch):
        ckpts.save_weights(epoch)
    if best != kept_best and not scheduled(kept_best):
        ckpts.delete_weights(kept_best)
    return best


@dataclasses.dataclass(frozen=True)
class Located:
    """What a --checkpoint path names: kind "tf" (an lbtf weights prefix), "h5" (Keras
    weights) or "keras" (a whole Keras model); the run folder and run it belongs to (None for a
    file from elsewhere) and its epoch."""
    kind: str
    path: str
    run_dir: Path | None = None
    run: str | None = None
    epoch: int | None = None


HINT = ("pass a weights prefix such as outputs/<run>/checkpoints/trial0_LB/weights-40, its "
        "folder, a run folder, a .weights.h5 or a .keras file")


def _in_run(prefix: Path, kind: str) -> Located:
    """A checkpoint inside a run folder's checkpoints/<run>/ (or anywhere else)."""
    m = re.fullmatch(r"weights-(\d+)", prefix.name.removesuffix(KERAS_WEIGHTS))
    run_dir = prefix.parent.parent.parent
    inside = prefix.parent.parent.name == "checkpoints" and (run_dir / "flags.txt").is_file()
    return Located(kind, str(prefix), run_dir if inside else None, prefix.parent.name if inside else None,
                   int(m.group(1)) if m else None)


def _measured(run_folder: Path) -> str | None:
    """The checkpoint a finished run measured (results.json's runs), if it is one run's folder."""
    results = run_folder.parent.parent / "results.json"
    try:
        runs = json.loads(results.read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return None
    mine = [r.get("checkpoint") for r in runs if isinstance(r, dict)
            and Path(str(r.get("checkpoint_dir", ""))).name == run_folder.name]
    return mine[0] if mine and mine[0] and Path(mine[0] + ".index").is_file() else None


def locate(path: str | None) -> Located:
    """What `path` names: a prefix, a .weights.h5, a .keras file, a run's checkpoint folder (the
    checkpoint its run measured, else its last kept epoch) or a run folder holding one run."""
    if not path:
        raise UsageError(f"no checkpoint given; {HINT}")
    p = Path(path)
    if p.suffix == ".keras":
        if not p.is_file():
            raise UsageError(f"Keras model {path} not found; {HINT}")
        return Located("keras", str(p))
    if path.endswith(KERAS_WEIGHTS):
        if not p.is_file():
            raise UsageError(f"Keras weights file {path} not found; {HINT}")
        return _in_run(p, "h5")
    if p.is_dir() and (p / "checkpoints").is_dir():  # a run folder
        runs = sorted(d.name for d in (p / "checkpoints").iterdir() if d.is_dir())
        if len(runs) != 1:
            raise UsageError(f"run folder {path} holds {len(runs)} runs ({', '.join(runs)}); pass "
                             f"one of them, e.g. {p / 'checkpoints' / (runs or ['trial0_LB'])[0]}")
        p = p / "checkpoints" / runs[0]
    if p.is_dir():
        chosen = _measured(p) or checkpoint_at(p) or tf.train.latest_checkpoint(str(p))
        if chosen is None:
            raise UsageError(f"no checkpoint in folder {path}; {HINT}")
        return _in_run(Path(chosen), "tf")
    if not Path(path + ".index").is_file():
        raise UsageError(f"checkpoint {path} not found (no {path}.index); {HINT}")
    return _in_run(p, "tf")
