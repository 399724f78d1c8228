"""One worker of a two-worker MultiWorkerMirroredStrategy job whose workers measure different
training losses: worker 1's stop at once (flat), the chief's keep falling. Run twice by
tests/test_replicas.py with TF_CONFIG set; prints this worker's history as JSON."""

import json
import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

from lbtf.data import load_synthetic  # noqa: E402
from lbtf.distribute import from_chief, worker  # noqa: E402
from lbtf.train import TrainConfig, Trainer, fit  # noqa: E402

index = worker(strategy)[0]
assert from_chief(strategy, [index + 1.0, -2.5]) == [1.0, -2.5]
data = load_synthetic(shape=(12,), num_classes=3, num_train=64, num_test=16, seed=3)


def build():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((12,)), keras.layers.Dense(3, activation="softmax")])


trainer = Trainer(build, data, TrainConfig(batch_size=32, max_epochs=6, patience=2,
                                           jit_compile=False), strategy=strategy)
epochs = iter(range(1, 100))


def measure():  # the chief's loss falls every epoch; worker 1's never does
    loss = 1.0 / next(epochs) if index == 0 else 1.0
    return {"train_loss": loss, "train_acc": 0.5, "test_loss": loss, "test_acc": 0.5}


trainer.measure = measure
history = fit(trainer, seed=0, log=lambda s: None).history
print(json.dumps([[h["epoch"], h["train_loss"]] for h in history]))
