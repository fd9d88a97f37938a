"""Lookahead values of the shared parameters after one step on one task's gradient.

TAG (Fifty et al., 2021, Eq. 1) measures how a step on the shared parameters
taken with task i's gradient changes every task's loss. Two update rules:

* ``"sgd"`` (default, Eq. 1): ``theta - lr * g``, lr = the optimizer's current
  learning rate.
* ``"optimizer"``: the step the model's own optimizer would take from its
  current state (SGD with momentum / Nesterov, Adam / AdamW with their moments
  and bias correction, decoupled weight decay, clipnorm / clipvalue; a subclass
  that changes the gradient in ``update_step`` declares it with a
  ``lookahead_gradient(gradient, value)`` method), computed
  from the optimizer's variables WITHOUT assigning to any of them. An SGD
  optimizer may carry a float ``lookahead_momentum``: the coefficient the
  lookahead applies to its velocity instead of ``momentum`` (0: the step from a
  fresh state, ``theta - lr * g``; 1: the whole stored velocity), for
  reproducing code whose lookahead differed from its optimizer's step. Keras 3's
  ``optimizer.stateless_apply`` is not available on the TensorFlow backend,
  so the supported optimizers' formulas are written out here and tested
  against the real ``optimizer.apply``.

References:
  Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task
  Learning", NeurIPS 2021.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import keras
import tensorflow as tf

LookaheadRule = Literal["sgd", "optimizer"]
LOOKAHEAD_RULES = ("sgd", "optimizer")


def base_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Returns the optimizer that does the update (unwraps LossScaleOptimizer)."""
    inner = getattr(optimizer, "inner_optimizer", None)
    return inner if inner is not None else optimizer


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> tf.Tensor:
    """The learning rate the optimizer would use on its next step (schedules resolved)."""
    return tf.convert_to_tensor(base_optimizer(optimizer).learning_rate)


def check_supported(optimizer: keras.optimizers.Optimizer, rule: LookaheadRule) -> None:
    """Raises a clear error if ``rule`` cannot be computed for ``optimizer``."""
    if rule not in LOOKAHEAD_RULES:
        raise ValueError(f"Unknown lookahead rule. Expected one of {LOOKAHEAD_RULES}. "
                         f"Received: rule={rule!r}")
    if rule == "sgd":
        return
    opt = base_optimizer(optimizer)
    if not isinstance(opt, (keras.optimizers.SGD, keras.optimizers.Adam)):
        raise ValueError(
            "lookahead rule 'optimizer' supports SGD (with or without momentum / Nesterov), "
            f"Adam and AdamW. Received: optimizer={type(opt).__name__}. Use rule='sgd'.")
    known = (keras.optimizers.SGD.update_step, keras.optimizers.Adam.update_step)
    if type(opt).update_step not in known and not hasattr(opt, "lookahead_gradient"):
        raise ValueError(
            f"{type(opt).__name__} overrides update_step, so its step is unknown to the "
            "'optimizer' lookahead rule. Give it a method lookahead_gradient(gradient, value) "
            "returning the gradient its update_step feeds to the parent's rule, or use "
            "rule='sgd'.")
    if getattr(opt, "amsgrad", False):
        raise ValueError("lookahead rule 'optimizer' does not support Adam(amsgrad=True).")
    if opt.global_clipnorm:
        raise ValueError("lookahead rule 'optimizer' does not support global_clipnorm "
                         "(the global norm spans tasks); use clipnorm or clipvalue.")
    if opt.gradient_accumulation_steps:
        raise ValueError("lookahead rule 'optimizer' does not support "
                         "gradient_accumulation_steps.")


def _clip(opt: keras.optimizers.Optimizer, grad: tf.Tensor, stacked: bool = False) -> tf.Tensor:
    if opt.clipnorm and opt.clipnorm > 0:  # stacked: each task's gradient (row) on its own
        axes = list(range(1, grad.shape.rank)) if stacked else None
        return tf.clip_by_norm(grad, opt.clipnorm, axes=axes)
    if opt.clipvalue and opt.clipvalue > 0:
        return tf.clip_by_value(grad, -opt.clipvalue, opt.clipvalue)
    return grad


def _prepared_gradient(opt: keras.optimizers.Optimizer, value: tf.Tensor, grad: tf.Tensor,
                       lr: tf.Tensor, stacked: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """``(grad, lr)`` as the optimizer's rule sees them: clipped, in the value's dtype, and
    through ``lookahead_gradient`` (e.g. coupled, PyTorch-style weight decay)."""
    dtype = value.dtype
    grad = tf.cast(_clip(opt, grad, stacked), dtype)
    if hasattr(opt, "lookahead_gradient"):
        grad = opt.lookahead_gradient(grad, value)
    return grad, tf.cast(lr, dtype)


def _decoupled_decay(opt: keras.optimizers.Optimizer, variable: keras.Variable,
                     value: tf.Tensor, lr: tf.Tensor) -> Optional[tf.Tensor]:
    """Keras' decoupled weight-decay decrement ``value * wd * lr``, or None without one."""
    if opt.weight_decay is not None and opt._use_weight_decay(variable):  # pylint: disable=protected-access
        return value * tf.cast(opt.weight_decay, value.dtype) * lr
    return None


def _sgd_velocity(opt: keras.optimizers.SGD, index: int, grad: tf.Tensor,
                  lr: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(momentum, velocity)`` of SGD's momentum rule after this gradient."""
    coefficient = getattr(opt, "lookahead_momentum", None)
    momentum = tf.cast(opt.momentum if coefficient is None else coefficient, grad.dtype)
    return momentum, opt.momentums[index] * momentum - lr * grad


def _adam_decrement(opt: keras.optimizers.Optimizer, index: int, grad: tf.Tensor,
                    lr: tf.Tensor) -> tf.Tensor:
    """Adam's (and AdamW's, after the decay) step ``m_hat * lr / (sqrt(v_hat) + eps)``."""
    dtype = grad.dtype
    count = tf.cast(opt.iterations + 1, dtype)
    beta_1 = tf.cast(opt.beta_1, dtype)
    beta_2 = tf.cast(opt.beta_2, dtype)
    m = opt._momentums[index]  # pylint: disable=protected-access
    v = opt._velocities[index]  # pylint: disable=protected-access
    m = m + (grad - m) * (1 - beta_1)
    v = v + (tf.square(grad) - v) * (1 - beta_2)
    alpha = lr * tf.sqrt(1 - tf.pow(beta_2, count)) / (1 - tf.pow(beta_1, count))
    return m * alpha / (tf.sqrt(v) + tf.cast(opt.epsilon, dtype))


def _optimizer_step(opt: keras.optimizers.Optimizer, variable: keras.Variable,
                    value: tf.Tensor, grad: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
    """The value ``variable`` would have after ``opt.apply`` with ``grad`` (no state change)."""
    grad, lr = _prepared_gradient(opt, value, grad, lr)
    decay = _decoupled_decay(opt, variable, value, lr)
    if decay is not None:
        value = value - decay
    index = opt._get_variable_index(variable)  # pylint: disable=protected-access
    if isinstance(opt, keras.optimizers.SGD):
        if not opt.momentum:
            return value - lr * grad
        momentum, velocity = _sgd_velocity(opt, index, grad, lr)
        if opt.nesterov:
            return value + velocity * momentum - lr * grad
        return value + velocity
    return value - _adam_decrement(opt, index, grad, lr)  # Adam / AdamW


def _optimizer_decrement(opt: keras.optimizers.Optimizer, variable: keras.Variable,
                         value: tf.Tensor, grad: tf.Tensor, lr: tf.Tensor,
                         stacked: bool = False) -> tf.Tensor:
    """``value - _optimizer_step(...)`` computed directly (no cancellation against ``value``);
    ``stacked``: ``grad`` holds one gradient per task along its first axis."""
    grad, lr = _prepared_gradient(opt, value, grad, lr, stacked)
    decay = _decoupled_decay(opt, variable, value, lr)
    index = opt._get_variable_index(variable)  # pylint: disable=protected-access
    if isinstance(opt, keras.optimizers.SGD):
        if not opt.momentum:
            step = lr * grad
        else:
            momentum, velocity = _sgd_velocity(opt, index, grad, lr)
            step = lr * grad - velocity * momentum if opt.nesterov else -velocity
    else:  # Adam / AdamW
        step = _adam_decrement(opt, index, grad, lr)
    return step if decay is None else decay + step


def lookahead_steps(rule: LookaheadRule, optimizer: keras.optimizers.Optimizer,
                    variables: Sequence[keras.Variable], grads: Sequence[tf.Tensor],
                    lr: tf.Tensor, *, stacked: bool = False) -> list[tf.Tensor]:
    """``theta - lookahead_values(...)``: the decrement one lookahead step applies.

    Computed directly, not as a difference of two nearly equal tensors, so it keeps full
    relative precision (the first-order ``"taylor"`` measure is ``<step_i, grad L_j>``).
    Same arguments as :func:`lookahead_values`; ``variables`` may repeat a variable.
    ``stacked``: each gradient is ``[T, *variable.shape]``, one task per row, and so is the
    result (the optimizer's state broadcasts over the rows; clipnorm clips each row).
    """
    opt = base_optimizer(optimizer)
    out = []
    for variable, grad in zip(variables, grads):
        value = tf.convert_to_tensor(variable.value)
        if rule == "sgd":
            out.append(tf.cast(lr, value.dtype) * tf.cast(grad, value.dtype))
        else:
            out.append(_optimizer_decrement(opt, variable, value, grad, lr, stacked))
    return out


def lookahead_values(rule: LookaheadRule, optimizer: keras.optimizers.Optimizer,
                     variables: Sequence[keras.Variable], grads: Sequence[tf.Tensor],
                     lr: tf.Tensor) -> list[tf.Tensor]:
    """Values of ``variables`` after one lookahead step with ``grads``.

    Args:
      rule: ``"sgd"`` (theta - lr * g) or ``"optimizer"`` (the optimizer's own step).
      optimizer: the model's optimizer (built on the model's trainable variables).
      variables: the shared variables.
      grads: unscaled gradients of one task's loss, aligned with ``variables``.
      lr: the current learning rate (see :func:`current_learning_rate`).

    Returns:
      One tensor per variable. Nothing is assigned.
    """
    opt = base_optimizer(optimizer)
    out = []
    for variable, grad in zip(variables, grads):
        value = tf.convert_to_tensor(variable.value)
        if rule == "sgd":
            out.append(value - tf.cast(lr, value.dtype) * tf.cast(grad, value.dtype))
        else:
            out.append(_optimizer_step(opt, variable, value, grad, lr))
    return out
