"""What :class:`tag_tf.MultiTaskModel` asks of a training method: two small protocols.

* A **loss weighting** (:class:`LossWeighting`: uncertainty weighting, GradNorm, DWA) turns
  the per-task losses into per-task training terms (:meth:`~LossWeighting.task_terms`),
  updates its state after each step (:meth:`~LossWeighting.update`) or epoch
  (:meth:`~LossWeighting.end_epoch`) and reports its weights for the logs
  (:meth:`~LossWeighting.weights_by_task`).
* A **gradient combiner** (:class:`GradientCombiner`: the plain sum, PCGrad, MGDA,
  RepresentationGradNorm) combines the per-task gradients at a *site*, the shared
  variables or a representation (one layer's output), into the shared update
  (:meth:`~GradientCombiner.combine`).

What a method needs from the training step it declares in ``needs`` (:class:`Needs`); the
model computes exactly that, and asks nothing else of it::

    class HalfFirstTask(tag_tf.core.parts.LossWeighting):      # a whole loss weighting
        def task_terms(self, losses):
            return [0.5 * losses[0]] + list(losses[1:])

        def weights_by_task(self):
            return {t: 0.5 if k == 0 else 1.0 for k, t in enumerate(self.tasks)}

Both protocols are Keras layers, so a method's variables are the model's: optimizers train
the trainable ones, checkpoints and weight files carry all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import keras
import tensorflow as tf

from tag_tf.core import replicas


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a method needs from each training step.

    Attributes:
      task_gradients: the per-task gradients on every step (a combiner), not only on the
        steps that record affinities.
      representation: take the per-task gradients at the output of this layer (a
        functional network's single-use layer; MGDA-UB, Standley et al.'s GradNorm) instead
        of at the shared variables. The encoder's gradient is then the combined
        representation gradient carried back through the layers before it.
      kernel: a shared variable W: the step measures the global-batch ``||d L_t / d W||``
        of every task (:attr:`StepValues.kernel_norms`; GradNorm).
    """

    task_gradients: bool = False
    representation: Optional[str] = None
    kernel: Optional[Any] = None


@dataclasses.dataclass(frozen=True)
class StepValues:
    """What the step measured, handed to :meth:`GradientCombiner.combine` and
    :meth:`LossWeighting.update` (identical in every replica).

    Attributes:
      losses: ``[T]`` the global batch's task losses L_t (after ``compile``'s
        ``loss_weights``, before the weighting), float32.
      learning_rate: the optimizer's learning rate for this step.
      kernel_norms: ``[T]`` float32 ``||d L_t / d W||`` for ``Needs.kernel``, else None.
    """

    losses: tf.Tensor
    learning_rate: tf.Tensor
    kernel_norms: Optional[tf.Tensor] = None


class TaskGradients:
    """The per-task gradients of one step at the combiners' site.

    Args:
      local: one tensor per site tensor (a shared variable, or the representation),
        ``[T, *shape]``: row k is THIS replica's gradient of task k's loss-scaled training
        term. On one device that is the batch's gradient.
      batch: the step's :class:`tag_tf.core.replicas.GlobalBatch`.
      representation: whether the site is a representation (rows of the batch, split over
        replicas) rather than variables (summed over replicas).
    """

    def __init__(self, local: Sequence[tf.Tensor], batch: replicas.GlobalBatch,
                 representation: bool = False):
        self.local = list(local)
        self.batch = batch
        self.representation = representation
        self._global = None

    @property
    def replicas(self) -> int:
        return self.batch.replicas

    def global_values(self) -> list:
        """The global batch's per-task gradients of the shared variables (all-reduced once,
        identical in every replica). Only for a variable site."""
        if self.representation:
            raise ValueError("A representation's gradient rows belong to the replicas' own "
                             "samples: use local and inner_products().")
        if self._global is None:
            self._global = self.batch.stacked_gradients(self.local)
        return self._global

    def inner_products(self) -> tf.Tensor:
        """``[T, T]`` float64 ``<g_i, g_j>`` of the global batch's per-task gradients.

        At a representation the global gradient is the replicas' rows side by side, so the
        products are the sum of the replicas' own (each with its share of the loss's
        denominator); at the shared variables they are those of the all-reduced gradients.
        """
        def flat(grads, weights=None):
            rows = tf.concat([tf.reshape(tf.cast(g, "float64"), [tf.shape(g)[0], -1])
                              for g in grads], axis=1)
            return rows if weights is None else rows * weights[:, None]

        if not self.representation:
            rows = flat(self.global_values())
            return tf.matmul(rows, rows, transpose_b=True)
        factors = None if self.batch.factors is None else tf.cast(self.batch.factors, "float64")
        rows = flat(self.local, factors)
        return replicas.all_sum(tf.matmul(rows, rows, transpose_b=True))


class LossWeighting(keras.layers.Layer):
    """A loss weighting: per-task training terms whose sum is the training loss.

    Subclasses implement :meth:`task_terms` and :meth:`weights_by_task`; the other methods
    default to doing nothing. ``MultiTaskModel`` calls :meth:`attach` once, then on every
    training step :meth:`task_terms` (inside the gradient tape) and, after the optimizer
    step, :meth:`update`; :meth:`end_epoch` at every epoch end of ``fit()``.
    """

    needs = Needs()

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable],
               network: Optional[keras.Model] = None) -> None:
        """Creates the method's state for these tasks (called by the model, once)."""
        del shared_variables, network
        self.tasks = list(tasks)
        self.built = True

    def task_terms(self, losses: Sequence[tf.Tensor]) -> list:
        """Per-task training terms (their sum is the training loss) from the losses L_t."""
        raise NotImplementedError

    def update(self, values: StepValues) -> None:
        """After the optimizer step: updates the method's state from the step's values."""
        del values

    def end_epoch(self) -> None:
        """At the end of every epoch of ``fit()`` (before checkpoints are written)."""

    def weights_by_task(self) -> dict:
        """The effective multiplier of each task's loss, logged as ``<task>_weight``."""
        raise NotImplementedError


class GradientCombiner(keras.layers.Layer):
    """A gradient combiner: the shared update from the per-task gradients.

    Subclasses implement :meth:`combine`; ``needs`` says where the per-task gradients are
    taken (``Needs.representation``) and that they are needed on every step.
    """

    needs = Needs(task_gradients=True)

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable],
               network: Optional[keras.Model] = None) -> None:
        """Creates the method's state for these tasks (called by the model, once)."""
        del shared_variables, network
        self.tasks = list(tasks)
        self.built = True

    def combine(self, grads: TaskGradients, values: StepValues) -> list:
        """This replica's share of the combined gradient at the site: one tensor per site
        tensor, shaped like it. The optimizer sums the replicas' shares (as Keras' own
        step does), so a combination linear in the gradients may use ``grads.local``."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """At the end of every epoch of ``fit()`` (before checkpoints are written)."""

    def weights_by_task(self) -> dict:
        """Per-task weights for the logs (none by default)."""
        return {}


class Unweighted(LossWeighting):
    """The default weighting: the training terms are the losses themselves."""

    def task_terms(self, losses):
        return list(losses)

    def weights_by_task(self):
        return {}


class SumGradients(GradientCombiner):
    """The default combiner: the sum of the per-task gradients (the gradient Keras takes).

    Needs per-task gradients only on the steps that record affinities; on the others the
    model differentiates the summed loss once.
    """

    needs = Needs()

    def combine(self, grads, values):
        del values
        return [tf.reduce_sum(g, axis=0) for g in grads.local]


@dataclasses.dataclass
class Methods:
    """The weighting and the combiner a model trains with (defaults filled in).

    A plain object, so the defaults stay out of the model's tracked layers (and files)."""

    weighting: LossWeighting
    combiner: GradientCombiner


def resolve(weighting: Optional[LossWeighting], gradient: Optional[GradientCombiner],
            affinity: Any, tasks: Sequence[str], shared_variables: Sequence[keras.Variable],
            network: keras.Model) -> Methods:
    """The weighting and combiner a model trains with (defaults for None), attached and
    checked. A weighting that is also a :class:`GradientCombiner` (RepresentationGradNorm
    weights the encoder's gradient) is the combiner too."""
    if weighting is not None and not isinstance(weighting, LossWeighting):
        raise ValueError("weighting must be a tag_tf.core.parts.LossWeighting (e.g. "
                         "UncertaintyWeighting, GradNorm, RepresentationGradNorm, "
                         f"DynamicWeightAverage) or None. Received: {weighting!r}")
    if gradient is not None and not isinstance(gradient, GradientCombiner):
        raise ValueError("gradient must be a tag_tf.core.parts.GradientCombiner (e.g. PCGrad, "
                         f"MGDA) or None. Received: {gradient!r}")
    if isinstance(weighting, GradientCombiner) and gradient is not None:
        raise ValueError(f"{type(weighting).__name__} combines the per-task gradients itself: "
                         "it cannot be combined with affinity recording or PCGrad "
                         f"(gradient={gradient!r}).")
    weighting = weighting if weighting is not None else Unweighted()
    combiner = weighting if isinstance(weighting, GradientCombiner) else (
        gradient if gradient is not None else SumGradients())
    for part in {id(weighting): weighting, id(combiner): combiner}.values():
        part.attach(tasks, shared_variables, network=network)
    site = combiner.needs.representation
    if site is not None and affinity is not None:
        raise ValueError(
            f"{type(combiner).__name__} takes the per-task gradients at the representation "
            f"{site!r}, affinity recording at the shared variables: it cannot be combined "
            "with affinity recording or PCGrad (use affinity=None).")
    return Methods(weighting, combiner)
