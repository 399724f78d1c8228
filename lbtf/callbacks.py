"""Sharpness during a user's own `model.fit`: a Keras callback that measures the model every N
epochs (any measure, either BN mode, as `lbtf.measurement.measure_model` does) and puts each value
into the epoch's `logs` (so History, CSVLogger, a TensorBoard callback after it and early stopping
see it) and, with `log_dir`, into TensorBoard itself.

    model.fit(x, y, epochs=20, callbacks=[SharpnessCallback(x, y, every=5, log_dir="tb")])
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from lbtf.measurement import MeasureSettings, measure_model
from lbtf.summaries import measurement_tag

DEFAULT = MeasureSettings()


class SharpnessCallback(keras.callbacks.Callback):
    """Measures `settings.measures` on (x, y) after every `every`-th epoch; the training weights,
    BN statistics and optimiser state are left as they were. Steps in TensorBoard are Keras' epoch
    indices (0-based), as its own TensorBoard callback writes them; the scalars go to
    <log_dir>/sharpness."""

    def __init__(self, x, y=None, *, every: int = 1, settings: MeasureSettings = DEFAULT,
                 log_dir: str | Path | None = None, from_logits: bool | None = None,
                 reestimate_bn: bool = True, bn_examples: int = 10000, log=None):
        super().__init__()
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every takes a whole number of epochs >= 1, not {every!r}")
        if not isinstance(settings, MeasureSettings):
            raise ValueError("settings takes an lbtf.measurement.MeasureSettings, e.g. "
                             "MeasureSettings(measures=('keskar',), bn_modes=('moving',))")
        self.x, self.y, self.every, self.settings = x, y, every, settings
        self.from_logits, self.reestimate_bn, self.bn_examples = (
            from_logits, reestimate_bn, bn_examples)
        self.log = log or (lambda line: None)   # measure_model's lines, quiet by default
        self.log_dir = None if log_dir is None else Path(log_dir) / "sharpness"
        self._writer = None
        self.measured: dict[int, dict[str, float]] = {}   # epoch -> {tag: value}

    def _values(self) -> dict[str, float]:
        table = measure_model(self.model, self.x, self.y, self.settings,
                              from_logits=self.from_logits, reestimate_bn=self.reestimate_bn,
                              bn_examples=self.bn_examples, log=self.log)
        rows = table.to_dict(orient="records")
        return {tag: float(r["value"]) for r in rows if (tag := measurement_tag(r)) is not None}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every:
            return
        values = self._values()
        self.measured[epoch] = values
        if logs is not None:
            logs.update(values)
        if self.log_dir is not None:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(self.log_dir))
            with self._writer.as_default(step=epoch):
                for tag, value in values.items():
                    tf.summary.scalar(tag, value)
            self._writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
