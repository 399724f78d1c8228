"""Whole-split evaluation during training, and the BN statistics it is taken with (--bn_eval).

Before every measurement the BN moving statistics are re-estimated from training data
("recompute"): in one fused pass over the whole training set when its activations fit
(`lbtf.bn.population_pass`, which also gives the training-set loss and accuracy), or else averaged
over chunks of a seeded subset (`lbtf.bn.BatchNormEstimator`). "moving" keeps Keras' moving
averages, which lag the weights when an epoch has few steps (0.99^90 = 40% weight on the initial
values). The re-estimated statistics are kept, so every checkpoint holds them.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from lbtf.bn import BatchNormEstimator, bn_layers, estimation_subset, population_pass
from lbtf.data import Dataset
from lbtf.distribute import local_copy, shared
from lbtf.objective import EvalSet, make_evaluator
from lbtf.objective import default_loss as per_example_loss


class Evaluator:
    """Loss and accuracy of `model` over the training and test splits, inference mode, with the
    BN statistics --bn_eval asks for. `x`, `y`: the training set as placed on the replicas."""

    def __init__(self, model: keras.Model, data: Dataset, *, bn_eval: str, bn_eval_examples: int,
                 eval_batch_size: int, seed: int, strategy: tf.distribute.Strategy, x, y,
                 xla: bool):
        if bn_eval not in ("recompute", "moving"):
            raise ValueError(f"bn_eval must be 'recompute' or 'moving', not {bn_eval!r}")
        self.model, self.eval_batch_size = model, eval_batch_size
        self.evaluate = make_evaluator(model, xla, strategy=strategy)
        # One evaluation copy of each split for every trainer of the process (see `shared`).
        self.eval_sets = {split: shared(xs, ("eval", eval_batch_size),
                                        lambda xs=xs, ys=ys: EvalSet(xs, ys, eval_batch_size))
                          for split, xs, ys in (("train", data.x_train, data.y_train),
                                                ("test", data.x_test, data.y_test))}
        self._population = self._estimator = None
        if bn_eval == "recompute" and bn_layers(model):
            with strategy.scope():
                self._population = population_pass(model, local_copy(strategy, x),
                                                   local_copy(strategy, y), loss=per_example_loss,
                                                   jit_compile=xla)
            if self._population is None:
                self._estimator = BatchNormEstimator(
                    model, estimation_subset(data.x_train, bn_eval_examples, seed),
                    batch_size=eval_batch_size, jit_compile=xla)

    @property
    def source(self) -> str:
        """Where measurements take BN statistics from, in words (in every run's record)."""
        if self._population is not None:
            return "population statistics of the whole training set (one fused pass)"
        if self._estimator is not None:
            return (f"re-estimated from {self._estimator.n} training examples "
                    f"(chunks of {self.eval_batch_size})")
        return "moving averages" if bn_layers(self.model) else "no BN"

    def measure(self) -> dict:
        """Training and test loss and accuracy over the whole splits; with bn_eval='recompute' the
        BN statistics are re-estimated first (and kept). When the training set fits one batch, the
        statistics and the training-set metrics come from the same pass."""
        out = {}
        if self._population is not None:
            out["train_loss"], out["train_acc"] = self._population()
        elif self._estimator is not None:
            self._estimator()
        for split, es in self.eval_sets.items():
            if f"{split}_loss" not in out:
                out[f"{split}_loss"], out[f"{split}_acc"] = self.evaluate(es)
        return out
