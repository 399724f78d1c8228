"""The training step and the remedies that act inside it, and the compiled multi-step loop.

A per-replica `step_fn` makes one optimizer step on the replica's share of a global batch,
gathered in-graph from its copy of the training set; `run_steps` is the `@tf.function` loop of
many steps (a whole epoch, or `steps_per_loop`), XLA-compiled on one replica. The remedies in the
step: augmentation, label smoothing, FGSM, the conservative proximal subproblem, SAM, clipping and
weight decay (lr scaling and regime adaptation act on the schedule, not here).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from lbtf import augment, remedies
from lbtf.bn import bn_layers
from lbtf.objective import default_loss as per_example_loss
from lbtf.optim import global_gradients
from lbtf.remedies import Remedies


class TrainStep:
    """One step of `optimizer` on `model` at global batch `batch_size`, with `remedy`'s settings.
    Creates its variables (anchors, augmentation seeds) in `strategy`'s scope."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, *,
                 batch_size: int, remedy: Remedies, weight_decay: float, crop_flip_pad: int,
                 seed: int, strategy: tf.distribute.Strategy, xla: bool):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.batch_size, self.remedy, self.weight_decay = batch_size, remedy, weight_decay
        with strategy.scope():
            self._anchors = ([tf.Variable(v, trainable=False) for v in model.trainable_variables]
                             if remedy.conservative_lambda else [])
            # In the scope: each replica advances its own copy of the seeds, in lockstep.
            self.augment = augment.pipeline(keskar=remedy.augment, seed=seed,
                                            crop_flip_pad=crop_flip_pad)
        # BN moving statistics, kept by SAM's second pass.
        self._bn_stats = [v for lay in bn_layers(model) for v in (lay.moving_mean, lay.moving_variance)]
        # Appendix E's image transforms have no XLA kernel: such training runs as a plain graph.
        self.run_steps = tf.function(self._run_steps,
                                     jit_compile=xla and augment.jit_compatible(self.augment))

    def augment_variables(self) -> list:
        return list(self.augment.variables) if self.augment is not None else []

    def loss(self, xb, yb, training: bool = True) -> tf.Tensor:
        # Divide this replica's summed loss by the GLOBAL batch: the optimizer sums gradients over
        # replicas, so the update equals the one-device mean-loss gradient at any replica count.
        probs, smoothing = self.model(xb, training=training), self.remedy.label_smoothing
        per_example = (remedies.smoothed_cross_entropy(yb, probs, smoothing) if smoothing
                       else per_example_loss(yb, probs))
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.batch_size)
        if self.model.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
        return loss

    def gradients(self, xb, yb) -> tuple[list, tf.Tensor]:
        """Gradients of the (replica's share of the) loss; with FGSM, of the mean of the clean and
        adversarial losses (Goodfellow et al.), the adversarial batch built from this pass."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            with tf.GradientTape() as input_tape:
                input_tape.watch(xb)
                loss = self.loss(xb, yb)
            if self.remedy.fgsm_epsilon:
                x_adv = remedies.fgsm_examples(xb, input_tape.gradient(loss, xb),
                                               self.remedy.fgsm_epsilon)
                loss = 0.5 * (loss + self.loss(x_adv, yb))
            if self._anchors:
                loss += tf.nn.scale_regularization_loss(remedies.proximal_term(
                    variables, self._anchors, self.remedy.conservative_lambda))
        return tape.gradient(loss, variables), loss

    def step_fn(self, x: tf.Tensor, y: tf.Tensor, idx: tf.Tensor, i: tf.Tensor) -> tf.Tensor:
        """One optimizer step on this replica's examples idx[i] of its copy of the training set
        (conservative training: one proximal subproblem, `conservative_steps` steps on the same
        batch)."""
        ids = idx[i]
        xb, yb = tf.gather(x, ids), tf.cast(tf.gather(y, ids), tf.int32)  # int64 on replicas
        if self.augment is not None:
            xb = self.augment(xb, training=True)
        variables = self.model.trainable_variables
        if self._anchors:  # x_k of the proximal subproblem
            for a, v in zip(self._anchors, variables, strict=True):
                a.assign(v)
        first = None
        for _ in range(self.remedy.conservative_steps if self._anchors else 1):
            grads, loss = self.gradients(xb, yb)
            if self.remedy.sam_rho:
                grads = remedies.sam_gradients(lambda: self.loss(xb, yb), grads, variables,
                                               self._bn_stats, self.remedy.sam_rho)
            grads = global_gradients(grads, variables, clip_norm=self.remedy.clip_norm,
                                     weight_decay=self.weight_decay)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            first = loss if first is None else first
        return first

    def _run_steps(self, x, y, idx, steps: int) -> tf.Tensor:
        """`steps` steps in-graph; the summed minibatch loss of the global batches."""
        total = tf.constant(0.0)
        for i in tf.range(steps):
            loss = self.strategy.run(self.step_fn, args=(x, y, idx, i))
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        return total
