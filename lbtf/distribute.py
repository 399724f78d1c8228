"""tf.distribute helpers: choosing a strategy, who writes, and splitting a global batch.

Batch normalisation under a multi-replica strategy: Keras' BatchNormalization computes its
statistics over each replica's share of the batch, so an "LB" run of global batch B on R replicas
normalises ghost batches of B / R examples (`describe` says so at the start of every run). Use
`--bn_layer=sync` (`BatchNormalization(synchronized=True)`) for true large-batch statistics.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from lbtf.choices import STRATEGIES  # noqa: F401  (re-exported)
from lbtf.errors import UsageError


def _tf_config() -> dict:
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UsageError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                         "(cluster and task of this worker; see scripts/multi_worker_local.sh)")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        valid = bool(cluster.get("worker")) and 0 <= int(task["index"]) < len(cluster[task["type"]])
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise UsageError("TF_CONFIG is not valid: it needs {\"cluster\": {\"worker\": [\"host:port\", "
                         "...]}, \"task\": {\"type\": \"worker\", \"index\": i}} with i in range")
    return config


def make_strategy(name: str = "auto", *, slurm_port_base: int = 8888) -> tf.distribute.Strategy:
    """auto: MirroredStrategy when several GPUs are visible, else the default (one device);
    mirrored: all local GPUs (or CPUs); multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG;
    slurm: MultiWorkerMirroredStrategy over the tasks of a Slurm job (SlurmClusterResolver).
    A multi-worker strategy must be created before any other TensorFlow op runs."""
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        _tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "slurm":
        if "SLURM_JOB_ID" not in os.environ:
            raise UsageError("--strategy=slurm runs inside a Slurm job (srun from an sbatch "
                             "script, see scripts/slurm_multi_node.sbatch); no SLURM_JOB_ID is set")
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=slurm_port_base)
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def worker(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(index of this worker, number of workers); (0, 1) on one machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec:
        return 0, 1
    kinds = [k for k in ("chief", "worker") if k in spec]
    ordered = [(k, i) for k in kinds for i in range(len(spec[k]))]
    return ordered.index((resolver.task_type, int(resolver.task_id))), len(ordered)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The worker that writes results and checkpoints: the first one (or the 'chief' task)."""
    return worker(strategy)[0] == 0


def per_replica_batch(strategy: tf.distribute.Strategy, global_batch: int) -> int:
    """The per-replica batch; the global batch must split evenly over the replicas."""
    n = strategy.num_replicas_in_sync
    if global_batch % n:
        raise UsageError(f"batch size {global_batch} does not split over {n} replicas; "
                         f"use a multiple of {n}")
    return global_batch // n


def describe(strategy: tf.distribute.Strategy, batches: dict[str, int], *, bn: str,
             ghost_batch_size: int) -> list[str]:
    """How each global batch is split over the replicas and what batch normalisation sees."""
    n = strategy.num_replicas_in_sync
    index, workers = worker(strategy)
    lines = [f"{type(strategy).__name__}: {n} replica(s) on {workers} worker(s), this is worker "
             f"{index}{' (chief: writes the run folder)' if index == 0 else ''}"]
    for regime, b in batches.items():
        per = b // n
        norm = {"sync": f"BN statistics over the whole global batch of {b} (--bn_layer=sync)",
                "ghost": f"ghost BN over {min(ghost_batch_size, per)} examples within each replica",
                "standard": (f"BN statistics per replica: ghost batches of {per} (--bn_layer=sync for "
                             f"statistics over all {b})" if n > 1 else
                             f"BN statistics over the batch of {b}")}[bn]
        lines.append(f"  {regime}: global batch {b} = {n} x {per} per replica; {norm}")
    return lines


def split_columns(strategy: tf.distribute.Strategy, idx: tf.Tensor) -> object:
    """Gives replica r the columns [r*b, (r+1)*b) of a [steps, global_batch] index matrix."""
    b = per_replica_batch(strategy, int(idx.shape[1]))

    def columns(ctx: tf.distribute.ValueContext) -> tf.Tensor:
        r = ctx.replica_id_in_sync_group
        return idx[:, r * b:(r + 1) * b]

    return strategy.experimental_distribute_values_from_function(columns)

