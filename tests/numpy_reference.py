"""An independent NumPy reference for TAG on a linear trunk with closed-form gradients.

Model: h = x @ W (shared), prediction_t = h @ V[t] (task head), loss_t = mean((pred_t - y_t)^2).
Training minimises sum_t w_t * loss_t with SGD (momentum, Nesterov) or Adam(W), written
from the optimizers' published update rules (the Keras conventions for momentum and
bias correction), in float64.
"""

from __future__ import annotations

import numpy as np


def task_losses(W, V, x, y):
    h = x @ W
    return {t: float(np.mean((h @ V[t] - y[t]) ** 2)) for t in V}


def task_gradients(W, V, x, y, weights):
    """Per task: (d w_t*loss_t / dW, d w_t*loss_t / dV_t)."""
    h = x @ W
    batch = x.shape[0]
    out = {}
    for t in V:
        r = h @ V[t] - y[t]  # [B, 1]
        dpred = 2.0 / batch * r * weights[t]
        out[t] = (x.T @ (dpred @ V[t].T), h.T @ dpred)
    return out


class Optimizer:
    """SGD(momentum, nesterov) / Adam(W) over named float64 parameters."""

    def __init__(self, kind, lr, momentum=0.0, nesterov=False, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, weight_decay=None):
        self.kind, self.lr, self.momentum, self.nesterov = kind, lr, momentum, nesterov
        self.beta_1, self.beta_2, self.epsilon, self.weight_decay = beta_1, beta_2, epsilon, \
            weight_decay
        self.slots = {}
        self.iterations = 0

    def current_lr(self):
        return self.lr(self.iterations) if callable(self.lr) else self.lr

    def new_value(self, name, value, grad):
        """The value after one step; returns (value, new slot state), no mutation."""
        lr = self.current_lr()
        if self.weight_decay:
            value = value - value * self.weight_decay * lr
        if self.kind == "sgd":
            if not self.momentum:
                return value - lr * grad, None
            velocity = self.slots.get(name, np.zeros_like(value)) * self.momentum - lr * grad
            if self.nesterov:
                return value + velocity * self.momentum - lr * grad, velocity
            return value + velocity, velocity
        m, v = self.slots.get(name, (np.zeros_like(value), np.zeros_like(value)))
        step = self.iterations + 1
        m = m + (grad - m) * (1 - self.beta_1)
        v = v + (grad ** 2 - v) * (1 - self.beta_2)
        alpha = lr * np.sqrt(1 - self.beta_2 ** step) / (1 - self.beta_1 ** step)
        return value - m * alpha / (np.sqrt(v) + self.epsilon), (m, v)

    def apply(self, params, grads):
        for name in params:
            params[name], slot = self.new_value(name, params[name], grads[name])
            if slot is not None:
                self.slots[name] = slot
        self.iterations += 1


def tag_step(W, V, x, y, weights, opt, rule, *, eval_batch=None, divide_by_lr=False):
    """One TAG recording step: returns Z[source, target] (before the training update)."""
    tasks = list(V)
    grads = task_gradients(W, V, x, y, weights)
    x_e, y_e = eval_batch if eval_batch is not None else (x, y)
    base = task_losses(W, V, x_e, y_e)
    lr = opt.current_lr()
    z = np.zeros((len(tasks), len(tasks)))
    for i, source in enumerate(tasks):
        g = grads[source][0]
        if rule == "sgd":
            W_new = W - lr * g
        else:
            W_new, _ = opt.new_value("W", W, g)
        after = task_losses(W_new, V, x_e, y_e)
        for j, target in enumerate(tasks):
            z[i, j] = 1.0 - after[target] / base[target]
    if divide_by_lr:
        z = z / lr
    return z


def taylor_step(W, V, x, y, weights, opt, rule, *, eval_batch=None, divide_by_lr=False):
    """Eq. 1 to first order in the step: Z[i, j] = <s_i, dL_j/dW> / L_j.

    s_i is the step of source i's weighted training gradient (lr * g_i, or W minus the
    optimizer's new value); dL_j/dW and L_j are task j's UNWEIGHTED gradient and loss on
    the evaluation batch (the training batch by default), so that
    L_j(W - s_i) = L_j(W) - <s_i, dL_j/dW> + O(s^2) and Z matches tag_step to first order.
    """
    tasks = list(V)
    grads = task_gradients(W, V, x, y, weights)
    x_e, y_e = eval_batch if eval_batch is not None else (x, y)
    target_grads = task_gradients(W, V, x_e, y_e, {t: 1.0 for t in tasks})
    base = task_losses(W, V, x_e, y_e)
    lr = opt.current_lr()
    z = np.zeros((len(tasks), len(tasks)))
    for i, source in enumerate(tasks):
        g = grads[source][0]
        step = lr * g if rule == "sgd" else W - opt.new_value("W", W, g)[0]
        for j, target in enumerate(tasks):
            z[i, j] = np.sum(step * target_grads[target][0]) / base[target]
    if divide_by_lr:
        z = z / lr
    return z


def train_update(params, x, y, weights, opt):
    """The training step on sum_t w_t * loss_t (mutates params and opt)."""
    V = {t: params[t] for t in params if t != "W"}
    grads = task_gradients(params["W"], V, x, y, weights)
    total = {"W": sum(g[0] for g in grads.values())}
    total.update({t: grads[t][1] for t in V})
    opt.apply(params, total)
