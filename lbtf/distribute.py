"""tf.distribute helpers: choosing a strategy and splitting a global batch over replicas.

Batch normalisation under MirroredStrategy: Keras' BatchNormalization computes its statistics over
each replica's share of the batch, so an "LB" run of global batch B on R replicas normalises ghost
batches of B / R examples. Use synchronised BN (`BatchNormalization(synchronized=True)`) for true
large-batch statistics.
"""

from __future__ import annotations

import tensorflow as tf

from lbtf.errors import UsageError

STRATEGIES = ("auto", "default", "mirrored")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """"auto": MirroredStrategy when several GPUs are visible, else the default (one device)."""
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def per_replica_batch(strategy: tf.distribute.Strategy, global_batch: int) -> int:
    """The per-replica batch; the global batch must split evenly over the replicas."""
    n = strategy.num_replicas_in_sync
    if global_batch % n:
        raise UsageError(f"batch size {global_batch} does not split over {n} replicas; "
                         f"use a multiple of {n}")
    return global_batch // n


def split_columns(strategy: tf.distribute.Strategy, idx: tf.Tensor) -> object:
    """Gives replica r the columns [r*b, (r+1)*b) of a [steps, global_batch] index matrix."""
    b = per_replica_batch(strategy, int(idx.shape[1]))

    def columns(ctx: tf.distribute.ValueContext) -> tf.Tensor:
        r = ctx.replica_id_in_sync_group
        return idx[:, r * b:(r + 1) * b]

    return strategy.experimental_distribute_values_from_function(columns)
