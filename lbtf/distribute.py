"""tf.distribute helpers: choosing a strategy, who writes, splitting a global batch, placing data
on the replicas once, and the chief's word on what every worker does next.

A run's science does not depend on the replica count: lbtf's BN layers normalise over the batch
the experiment names (synchronized BN, ghosts of the global batch; lbtf.layers), dropout and
augmentation draw for the global batch, and every worker takes the chief's measurements, so
its stopping decision and measured point. `describe` logs what each regime runs.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Sequence

import numpy as np
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


def check_bn_split(strategy: tf.distribute.Strategy, batch: int, *, bn: str,
                   ghost_batch_size: int) -> None:
    """Ghost BN on several replicas needs whole ghosts on every replica (or one ghost holding the
    global batch): a ghost split between two replicas would need statistics of part of each."""
    n = strategy.num_replicas_in_sync
    per = per_replica_batch(strategy, batch)
    if bn == "ghost" and n > 1 and ghost_batch_size < batch and per % ghost_batch_size:
        raise UsageError(f"ghost batches of {ghost_batch_size} do not tile the per-replica batch of "
                         f"{per} (global {batch} on {n} replicas); use a batch size whose share "
                         f"per replica is a multiple of --ghost_batch_size, or fewer replicas")


def bn_statement(bn: str, batch: int, *, replicas: int, ghost_batch_size: int) -> str:
    """What batch normalisation normalises with in a regime of global batch `batch`."""
    per = batch // replicas
    over = "" if replicas == 1 else f" (all-reduced over {replicas} replicas)"
    return {"standard": f"BN statistics over the global batch of {batch}{over}",
            "sync": f"BN statistics over the global batch of {batch}{over}",
            "ghost": (f"ghost BN over ghost batches of {min(ghost_batch_size, batch)}"
                      + (f", {over.strip(' ()')}" if ghost_batch_size >= batch and over else "")),
            "per_replica": f"BN statistics over each replica's {per} examples (--bn_layer=per_replica"
                           f"{'' if replicas > 1 else ': one replica, the whole batch'})",
            "none": "no BN"}.get(bn, bn)


def describe(strategy: tf.distribute.Strategy, batches: dict[str, int], *, bn: str | dict[str, str],
             ghost_batch_size: int) -> list[str]:
    """How each global batch is split over the replicas and what batch normalisation sees; `bn`
    is one layer kind for every regime or one per regime."""
    n = strategy.num_replicas_in_sync
    index, workers = worker(strategy)
    lines = [f"{type(strategy).__name__}: {n} replica(s) on {workers} worker(s), this is worker "
             f"{index}{' (chief: writes the run folder)' if index == 0 else ''}"]
    for regime, b in batches.items():
        kind = bn[regime] if isinstance(bn, dict) else bn
        norm = bn_statement(kind, b, replicas=n, ghost_batch_size=ghost_batch_size)
        lines.append(f"  {regime}: global batch {b} = {n} x {b // n} per replica; {norm}")
    return lines


def memory_statement(*, train_bytes: int, eval_bytes: int, parameters: int, slots: int) -> str:
    """The memory a run holds per device before activations: the training set once (every
    replica), the evaluation copies of both splits (first device), and the weights with their
    optimizer slots (every replica), float32."""
    mb = 2.0**20
    return (f"  memory per device: training set {train_bytes / mb:.0f} MB on each replica, "
            f"evaluation copies {eval_bytes / mb:.0f} MB on the first (and its share on each), "
            f"weights and optimizer "
            f"state {4 * parameters * (1 + slots) / mb:.0f} MB per regime on each; activations "
            "on top")


_SHARED: dict[tuple, tuple] = {}


def shared(array: np.ndarray, key: tuple, make: Callable[[], object], *, owner: object = None):
    """make(), computed once for (array, key, owner) while `array` lives: the trainers of one
    experiment hold one copy of its data, not one each."""
    k = (id(array), *key, id(owner))
    hit = _SHARED.get(k)
    if hit is not None and hit[0] is owner:  # the owner kept alive by the entry: no reused id
        return hit[1]
    _SHARED[k] = (owner, make())
    weakref.finalize(array, _SHARED.pop, k, None)
    return _SHARED[k][1]


def on_each_replica(strategy: tf.distribute.Strategy, value_fn: Callable):
    """Per-replica values, each copied to its own replica's device. TensorFlow calls the value
    function of `experimental_distribute_values_from_function` with no device scope, so without
    this every copy would sit on the first device and each step would read it from there (a
    copy of the data out of GPU:0 per step on a multi-GPU node). `value_fn(ctx)` is computed on
    the host, then copied once to the device. int32 values become int64: TensorFlow keeps int32
    function inputs in host memory, so an int32 copy would be read from the host at every step
    (consumers cast a gathered batch back)."""
    if strategy.num_replicas_in_sync == 1:  # one device: nothing to place (nor any devices list)
        return strategy.experimental_distribute_values_from_function(value_fn)
    devices = strategy.extended.worker_devices

    def placed(ctx: tf.distribute.ValueContext) -> tf.Tensor:
        with tf.device("/cpu:0"):
            value = tf.convert_to_tensor(value_fn(ctx))
            value = tf.cast(value, tf.int64) if value.dtype == tf.int32 else value
        # Replicas are numbered worker by worker, each worker holding len(devices) of them.
        with tf.device(devices[ctx.replica_id_in_sync_group % len(devices)]):
            return tf.identity(value)

    return strategy.experimental_distribute_values_from_function(placed)


def place(strategy: tf.distribute.Strategy, array: np.ndarray):
    """`array` held once on each replica's device: a tensor on one replica, else per-replica
    copies on each replica's device (`on_each_replica`), so no step reads data from another
    device. Shared by every caller with the same array and strategy."""
    def make():
        if strategy.num_replicas_in_sync == 1:
            return tf.constant(array)
        with tf.device("/cpu:0"):
            host = tf.constant(array)
        return on_each_replica(strategy, lambda ctx: host)
    return shared(array, ("placed",), make, owner=strategy)


def local_copy(strategy: tf.distribute.Strategy, placed) -> tf.Tensor:
    """The first local replica's copy of a `place`d array (for work outside `strategy.run`)."""
    return strategy.experimental_local_results(placed)[0]


def from_chief(strategy: tf.distribute.Strategy, values: Sequence[float]) -> list[float]:
    """The chief's `values` on every worker (one all-reduce; unchanged on one worker). Workers
    that measure a little differently (their own rounding) then decide alike when to stop and
    which epoch to measure: a worker deciding alone could wait forever in a collective."""
    if worker(strategy)[1] == 1:
        return [float(v) for v in values]
    mine = tf.constant(np.asarray(values, np.float64))

    def chief_only(ctx: tf.distribute.ValueContext) -> tf.Tensor:
        return mine if ctx.replica_id_in_sync_group == 0 else tf.zeros_like(mine)

    per_replica = on_each_replica(strategy, chief_only)
    return [float(v) for v in strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)]


def split_columns(strategy: tf.distribute.Strategy, idx: tf.Tensor) -> object:
    """Gives replica r the columns [r*b, (r+1)*b) of a [steps, global_batch] index matrix."""
    b = per_replica_batch(strategy, int(idx.shape[1]))

    def columns(ctx: tf.distribute.ValueContext) -> tf.Tensor:
        r = ctx.replica_id_in_sync_group
        return idx[:, r * b:(r + 1) * b]

    return on_each_replica(strategy, columns)

