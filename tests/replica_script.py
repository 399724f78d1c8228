"""Trains one network under one BN regime for one epoch on 2 logical CPUs and on one device, from
the same weights, and prints both as JSON (run in a fresh process by tests/test_replicas.py:
collectives of two strategies in one process can collide)."""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from lbtf.bn import bn_layers  # noqa: E402
from lbtf.data import load_synthetic  # noqa: E402
from lbtf.layers import norm_layer  # noqa: E402
from lbtf.models import build_model  # noqa: E402
from lbtf.train import TrainConfig, Trainer  # noqa: E402

net, kind, one_device = sys.argv[1:4]
ghost, batch = int(sys.argv[4]), int(sys.argv[5])
shape = (12,) if net == "F1" else (8, 8, 1)
data = load_synthetic(shape=shape, num_classes=3, num_train=3 * batch, num_test=64, seed=3)
mirrored = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
out = []
for strategy, k in ((mirrored, kind), (tf.distribute.get_strategy(), one_device)):
    def build(k=k):
        keras.utils.set_random_seed(5)
        return build_model(net, input_shape=shape, num_classes=3, variant="reference",
                           norm=norm_layer(k, virtual_batch_size=ghost, momentum=0.9))
    config = TrainConfig(batch_size=batch, jit_compile=False, bn_eval="moving")
    trainer = Trainer(build, data, config, strategy=strategy)
    v = trainer.model.trainable_variables
    # Biases feeding BN get zero gradient up to round-off (BN removes the mean), which Adam
    # magnifies into noise-driven steps of size lr: they are left out.
    kept = [x for x in v if "bias" not in x.path or x is v[-1]]
    start = [x.numpy().tolist() for x in kept]
    trainer.train_epoch(np.random.default_rng(0))
    stats = [s for lay in bn_layers(trainer.model) for s in (lay.moving_mean, lay.moving_variance)]
    copies = [[c.numpy().tolist() for c in strategy.experimental_local_results(s.value)] for s in stats]
    out.append({"weights": [x.numpy().tolist() for x in kept], "start": start,
                "moving": copies,
                "outputs": trainer.model(data.x_test, training=False).numpy().tolist()})
print(json.dumps(out))
