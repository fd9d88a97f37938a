"""MGDA-UB: the shared update along the min-norm point of the per-task gradients.

Multi-task learning as multi-objective optimisation (Sener and Koltun, 2018): the direction
that decreases every task's loss is the minimum-norm element of the convex hull of the
per-task gradients of the shared parameters,

    alpha = argmin_{alpha >= 0, sum alpha = 1} || sum_t alpha_t g_t ||^2,

and the shared parameters step along ``sum_t alpha_t g_t`` while each task's own parameters
follow their own gradient (Algorithm 2). MGDA-UB minimises an upper bound instead: the
gradients ``g_t = dL_t / dZ`` at the shared representation Z (one backward pass through the
heads per task, none through the encoder); the encoder's gradient is then
``sum_t alpha_t dL_t / dZ`` carried back through the encoder.

The min-norm problem is solved as in the authors' ``min_norm_solvers.py``: the best pair of
tasks in closed form, then Frank-Wolfe steps (each moves towards the task of least
``<g_t, current>`` with the exact line search) until the change is below 1e-5 (at most
250 steps). Before solving, each gradient may be divided by a normaliser
(``normalization``): ``"l2"`` its norm, ``"loss"`` its loss, ``"loss+"`` both (the authors'
CelebA setting), ``"none"``. The alphas are then applied to the unnormalised gradients.

Differences from the authors' script: their CelebA run calls the projected-gradient
variant of the solver (same minimum, another path to it); here, the paper's Frank-Wolfe.
Their backward pass scales each head's gradient by its alpha too; here the heads get their
own gradient, as the paper's Algorithm 2.

References:
  Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018
  (code: intel-isl/MultiObjectiveOptimization).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import keras
import tensorflow as tf

from tag_tf.core.parts import GradientCombiner, Needs, StepValues, TaskGradients
from tag_tf.core.representation import RepresentationSplit, common_representation

Normalization = Literal["l2", "loss", "loss+", "none"]
NORMALIZATIONS = ("l2", "loss", "loss+", "none")
MAX_ITER = 250  # the authors' MinNormSolver.MAX_ITER
STOP_CRIT = 1e-5  # ... and STOP_CRIT


def _line_search(v1v1, v1v2, v2v2):
    """``argmin_c |c x1 + (1 - c) x2|^2`` from the inner products: (c, cost), with the
    authors' clamps (0.999 / 0.001) at the ends of the segment."""
    denominator = v1v1 + v2v2 - 2.0 * v1v2
    gamma = -(v1v2 - v2v2) / tf.where(denominator != 0, denominator, tf.ones_like(denominator))
    cost = v2v2 + gamma * (v1v2 - v2v2)
    at_1, at_2 = v1v2 >= v1v1, v1v2 >= v2v2
    gamma = tf.where(at_1, tf.constant(0.999, v1v1.dtype), tf.where(at_2, tf.constant(
        0.001, v1v1.dtype), gamma))
    cost = tf.where(at_1, v1v1, tf.where(at_2, v2v2, cost))
    return gamma, cost


def min_norm_weights(gram: tf.Tensor) -> tf.Tensor:
    """The weights alpha of the min-norm point of the convex hull (Frank-Wolfe).

    Args:
      gram: ``[T, T]`` inner products ``<g_i, g_j>`` (float64).

    Returns:
      ``[T]`` alpha >= 0, summing to 1.
    """
    count = int(gram.shape[0])
    if count == 1:
        return tf.ones([1], gram.dtype)
    diag = tf.linalg.diag_part(gram)
    gamma, cost = _line_search(diag[:, None], gram, diag[None, :])  # pair (i, j): x_i, x_j
    upper = tf.linalg.band_part(tf.ones_like(gram), 0, -1) - tf.eye(count, dtype=gram.dtype)
    flat = tf.reshape(tf.where(upper > 0, cost, tf.fill(tf.shape(cost), tf.constant(
        float("inf"), gram.dtype))), [-1])
    best = tf.argmin(flat, output_type=tf.int32)  # the first of equal costs, as the loop
    i, j = best // count, best % count
    c = tf.reshape(gamma, [-1])[best]
    start = c * tf.one_hot(i, count, dtype=gram.dtype) + \
        (1.0 - c) * tf.one_hot(j, count, dtype=gram.dtype)
    if count < 3:
        return start

    def body(step, sol, done):
        products = tf.linalg.matvec(gram, sol)
        t = tf.argmin(products, output_type=tf.int32)
        nc, _ = _line_search(tf.tensordot(sol, products, 1), products[t], gram[t, t])
        new = nc * sol + (1.0 - nc) * tf.one_hot(t, count, dtype=gram.dtype)
        converged = tf.reduce_sum(tf.abs(new - sol)) < STOP_CRIT
        return step + 1, tf.where(converged, sol, new), converged

    _, sol, _ = tf.while_loop(lambda step, sol, done: tf.logical_and(
        step < MAX_ITER, tf.logical_not(done)), body, (tf.constant(0), start, tf.constant(False)))
    return sol


@keras.saving.register_keras_serializable(package="tag_tf")
class MGDA(GradientCombiner):
    """MGDA(-UB) gradient combination (``MultiTaskModel(gradient=MGDA())``).

    Args:
      upper_bound: True (MGDA-UB, default): the per-task gradients at the shared
        representation, a functional network's single-use layer; False: at the shared
        variables (exact MGDA; then it can be combined with affinity recording).
      representation: with ``upper_bound``, the layer whose output is Z; None: the layer
        nearest to the outputs through whose output the heads see every shared variable
        (the CelebA network's ``features``).
      normalization: ``"loss+"`` (default, the authors' CelebA setting), ``"l2"``,
        ``"loss"`` or ``"none"``: what each gradient is divided by before solving.
    """

    def __init__(self, *, upper_bound: bool = True, representation: Optional[str] = None,
                 normalization: Normalization = "loss+", name: str = "mgda", **kwargs):
        super().__init__(name=name, **kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}. Received: "
                             f"normalization={normalization!r}")
        if representation is not None and not upper_bound:
            raise ValueError("representation names MGDA-UB's layer: give it with "
                             f"upper_bound=True. Received: representation={representation!r}")
        self.upper_bound, self.representation = bool(upper_bound), representation
        self.normalization = normalization
        self._layer_name = None

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable],
               network: Optional[keras.Model] = None) -> None:
        """Finds the representation (MGDA-UB) and creates the logged weights."""
        self.tasks = list(tasks)
        if self.upper_bound and self.representation is None:
            self._layer_name = common_representation(network, shared_variables, "MGDA")
        elif self.upper_bound:
            self._layer_name = RepresentationSplit(network, shared_variables,
                                                   self.representation, "MGDA").layer.name
        self.alphas = self.add_weight(
            shape=(len(self.tasks),), name="alphas", dtype="float32", trainable=False,
            initializer=keras.initializers.Constant(1.0 / len(self.tasks)),
            aggregation="only_first_replica")
        self.built = True

    @property
    def needs(self) -> Needs:
        return Needs(task_gradients=True, representation=self._layer_name)

    def combine(self, grads: TaskGradients, values: StepValues) -> list:
        """``sum_t alpha_t g_t`` (this replica's share) with alpha the min-norm weights of
        the normalised global-batch gradients."""
        gram = grads.inner_products()
        norms = tf.sqrt(tf.linalg.diag_part(gram))
        losses = tf.cast(values.losses, "float64")
        scale = {"l2": norms, "loss": losses, "loss+": losses * norms,
                 "none": tf.ones_like(norms)}[self.normalization]
        alphas = tf.stop_gradient(min_norm_weights(gram / (scale[:, None] * scale[None, :])))
        self.alphas.assign(tf.cast(alphas, "float32"))
        return [tf.tensordot(tf.cast(alphas, g.dtype), g, axes=1) for g in grads.local]

    def weights_by_task(self) -> dict:
        """The last step's alphas, logged as ``<task>_weight``."""
        w = tf.convert_to_tensor(self.alphas)
        return {task: w[k] for k, task in enumerate(self.tasks)}

    def get_config(self):
        return {**super().get_config(), "upper_bound": self.upper_bound,
                "representation": self.representation, "normalization": self.normalization}
