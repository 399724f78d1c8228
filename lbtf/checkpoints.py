"""A training run's checkpoints: the weights of kept epochs, which measurement code loads, and the
latest resume checkpoint, from which an interrupted run continues exactly where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from lbtf.errors import WRITE_FAILED_HINT, UsageError
from lbtf.runs import read_path


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
    weights-<epoch>: the model only, the iterates measurement code loads.
    resume/ckpt-<epoch>: the model, Adam's state, RNG states and the RunState; only the latest is
    kept. Resuming reads `directory`; saves go to `save_dir` (default: the same). In a
    multi-worker job every worker resumes from the chief's folder and only the chief saves there.
    """

    def __init__(self, trackables: dict, directory: str | Path, *,
                 save_dir: str | Path | None = None):
        save = Path(save_dir or directory)
        self.directory = Path(directory)
        self.state = RunState()
        self._full = tf.train.Checkpoint(**trackables, state=self.state)
        self._weights = tf.train.CheckpointManager(tf.train.Checkpoint(model=trackables["model"]),
                                                   str(save), max_to_keep=None,
                                                   checkpoint_name="weights")
        self._resume = tf.train.CheckpointManager(self._full, str(save / "resume"), max_to_keep=1,
                                                  checkpoint_name="ckpt")

    def restore(self) -> tuple[str, dict] | None:
        """(checkpoint, run state) of the latest resume checkpoint, restored; None if none."""
        latest = tf.train.latest_checkpoint(str(self.directory / "resume"))
        if latest is None:
            return None
        try:
            self._full.restore(latest).assert_consumed()
        except (tf.errors.OpError, ValueError, AssertionError) as e:
            raise UsageError(f"cannot resume from {latest} ({str(e).splitlines()[0][:120]}); "
                             f"delete {self.directory} to start that run afresh") from None
        return latest, self.state.value

    def save_weights(self, epoch: int) -> None:
        self._save(self._weights, epoch)

    def save_state(self, epoch: int, state: dict) -> None:
        self.state.value = state
        self._save(self._resume, epoch)

    @staticmethod
    def _save(manager: tf.train.CheckpointManager, epoch: int) -> None:
        try:
            manager.save(checkpoint_number=epoch)
        except (tf.errors.OpError, OSError) as e:  # e.g. a full disk
            first = (getattr(e, "message", None) or str(e)).strip().splitlines()[0][:160]
            raise UsageError(f"cannot write a checkpoint in {manager.directory} ({first}); "
                             f"{WRITE_FAILED_HINT}") from None


def restore_weights(model: keras.Model, checkpoint: str) -> None:
    """Loads a weights checkpoint written by `fit` into a model of the same architecture."""
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial().assert_existing_objects_matched()


def checkpoint_at(checkpoint_dir: str | Path, epoch: int | None = None) -> str:
    """The weights checkpoint of `epoch` (None: the last kept one) in a run's checkpoint folder."""
    folder = read_path(checkpoint_dir)
    return (tf.train.latest_checkpoint(str(folder)) if epoch is None
            else str(folder / f"weights-{epoch}"))
