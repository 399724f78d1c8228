"""Data on each replica's device once, checked by placement, not by time (two logical CPUs share
one memory, so a copy costs nothing measurable here and a great deal on GPUs): every per-replica
copy sits on its replica's device, and the partition graphs of the compiled training loop,
evaluation and sharpness objective send no input from one device to another."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from nets import DATA, mlp
from tensorflow.python.eager import context

from lbtf.distribute import place
from lbtf.objective import EvalSet, Objective, make_evaluator
from lbtf.train import TrainConfig, Trainer, fit


@pytest.fixture(scope="module")
def mirrored():
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(cpus) == 2
    return tf.distribute.MirroredStrategy(cpus)


def devices(strategy, value) -> list[str]:
    return [t.device.rsplit("/", 1)[-1].removeprefix("device:")
            for t in strategy.experimental_local_results(value)]


PASS_THROUGH = {"Identity", "Enter", "Switch", "Merge", "NextIteration"}


def _origin(nodes: dict, name: str):
    """The node a tensor comes from, looking through identities and loop plumbing (a function
    input reaches a while body as Func/.../input/_N identities)."""
    node = nodes.get(name.split(":")[0].lstrip("^"))
    while node is not None and node.op in PASS_THROUGH and node.input:
        node = nodes.get(node.input[0].split(":")[0].lstrip("^"))
    return node


def argument_transfers(run) -> list[str]:
    """Array inputs of the functions `run` executes that are sent to another device: in the
    partition graphs, a _Send whose tensor comes from an _Arg of rank >= 1 (not a variable's
    handle nor a loop counter)."""
    context.enable_graph_collection()
    try:
        run()
        meta = context.export_run_metadata()
    finally:
        context.disable_graph_collection()
    graphs = [g for f in meta.function_graphs for g in f.partition_graphs]
    assert graphs, "no partition graph collected"
    found = []
    for g in graphs:
        nodes = {n.name: n for n in g.node}
        for n in g.node:
            source = _origin(nodes, n.input[0]) if n.op == "_Send" and n.input else None
            if source is None or source.op != "_Arg" or source.attr["T"].type == tf.resource.as_datatype_enum:
                continue
            shapes = source.attr["_output_shapes"].list.shape
            if shapes and len(shapes[0].dim) >= 1:
                found.append(f"{source.attr['_user_specified_name'].s.decode() or source.name} "
                             f"{n.device[-5:]} -> {n.attr['recv_device'].s.decode()[-5:]}")
    return found


def test_placed_copies_are_on_their_replicas_devices(mirrored):
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    placed = place(mirrored, x)
    assert devices(mirrored, placed) == ["CPU:0", "CPU:1"]
    for t in mirrored.experimental_local_results(placed):
        np.testing.assert_array_equal(t.numpy(), x)


def test_the_training_loop_reads_no_data_from_another_device(mirrored):
    config = TrainConfig(batch_size=64, max_epochs=1, patience=10, jit_compile=False)
    trainer = Trainer(lambda: mlp(7), DATA, config, strategy=mirrored)
    assert devices(mirrored, trainer._x) == ["CPU:0", "CPU:1"]
    assert argument_transfers(lambda: fit(trainer, seed=0, log=lambda s: None)) == []


def test_evaluation_and_the_objective_read_no_data_from_another_device(mirrored):
    with mirrored.scope():
        model = mlp(7)
    x, y = DATA.x_train[:256], DATA.y_train[:256]
    evaluate = make_evaluator(model, False, strategy=mirrored)
    split = EvalSet(x, y, 32)
    assert argument_transfers(lambda: evaluate(split)) == []
    objective = Objective(model, x, y, batch_size=32, jit_compile=False, strategy=mirrored)
    for xs, ys in objective._chunks:
        assert devices(mirrored, xs) == devices(mirrored, ys) == ["CPU:0", "CPU:1"]
    w = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    assert argument_transfers(lambda: objective.value_and_gradient(w)) == []
    # The direction v is an input of the call like w, sent to every replica once per call.
    sent = argument_transfers(lambda: objective.hessian_vector_product(w, w))
    assert {s.split()[0] for s in sent} <= {"v"}, sent
