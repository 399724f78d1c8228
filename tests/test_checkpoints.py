"""lbtf.checkpoints: which weights a run folder keeps, finding them, loading them."""

import keras
import numpy as np
import pytest

from lbtf.checkpoints import Checkpoints, checkpoint_at, kept_weights, load_weights, remove_resume
from lbtf.errors import UsageError


def mlp(width=4, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(width),
                             keras.layers.Dense(2, activation="softmax")])


def test_kept_weights_are_found_in_epoch_order_and_later_ones_deleted(tmp_path):
    model = mlp()
    ckpts = Checkpoints({"model": model}, tmp_path)
    for epoch in (0, 2, 9, 10):  # 10 after 9, not after 1 as text would sort it
        ckpts.save_weights(epoch)
    assert list(kept_weights(tmp_path)) == [0, 2, 9, 10]
    assert checkpoint_at(tmp_path) == str(tmp_path / "weights-10")
    ckpts.delete_weights_after(2)
    assert list(kept_weights(tmp_path)) == [0, 2] and not list(tmp_path.glob("weights-9*"))
    ckpts.save_state(2, {"history": []})
    assert (tmp_path / "resume").is_dir()
    remove_resume(tmp_path)
    assert not (tmp_path / "resume").exists() and checkpoint_at(tmp_path / "none") is None


def test_load_weights_restores_values_and_refuses_another_network(tmp_path):
    source = mlp(seed=1)
    Checkpoints({"model": source}, tmp_path).save_weights(3)
    target = mlp(seed=2)
    load_weights(target, str(tmp_path / "weights-3"), "tiny")
    for a, b in zip(source.weights, target.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(UsageError, match="network wide"):
        load_weights(mlp(width=5), str(tmp_path / "weights-3"), "wide")
