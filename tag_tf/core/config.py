"""When and how lookahead affinities are recorded (paper Sec. 3 and Table 2)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional, Tuple, Union

from tag_tf.core.lookahead import LOOKAHEAD_RULES, LookaheadRule

# Named windows of training, as fractions of the total number of steps (paper Table 2).
WINDOWS = {
    "first": (0.0, 0.25),
    "middle": (0.375, 0.625),
    "final": (0.75, 1.0),
}

AffinityBatch = Literal["train", "validation"]
# What a recording step measures: TAG's lookahead affinity (Eq. 1), the cosine similarity
# of the per-task shared gradients (the paper's CS baseline) and/or the first-order Taylor
# expansion of Eq. 1 (no lookahead forward passes; see tag_tf.core.recorder).
MEASURES = ("lookahead", "cosine", "taylor")


@dataclasses.dataclass(frozen=True)
class AffinityConfig:
    """Settings of TAG's lookahead affinity recording.

    Attributes:
      every_n: record on every n-th training step (steps 0, n, 2n, ...). The
        paper's experiments use 10.
      rule: lookahead update, ``"sgd"`` (Eq. 1, default) or ``"optimizer"``
        (the model optimizer's own step: momentum, Adam state; see
        :mod:`tag_tf.core.lookahead`).
      divide_by_lr: divide each Z by the current learning rate, as the original
        code did. Default False: Z is Eq. 1 exactly.
      lookahead_scale: the lookahead step uses ``lr * lookahead_scale`` (``lr`` = the
        optimizer's current learning rate; with ``rule="optimizer"`` the scaled lr
        enters the optimizer's formula). Default 1.0: Eq. 1's step. ``divide_by_lr``
        divides by the scaled lr.
      window: restrict recording to part of training: a name from
        :data:`WINDOWS` ("first", "middle", "final" 25 %), a fraction pair
        ``(start, end)`` in [0, 1], or None for all of training. Fractions are
        resolved against the steps ``fit()`` will run.
      step_range: alternatively an explicit ``(start_step, end_step)`` range
        (end exclusive) of global training steps.
      batch: ``"train"`` measures the loss change on the training batch (paper
        default); ``"validation"`` measures it on a batch drawn cyclically from
        ``validation_data`` (the paper's train-vs-validation ablation). The
        lookahead step always uses the training batch's gradient.
      validation_data: a ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, w)``
        batches; required when ``batch="validation"``.
      measures: what to record, any non-empty subset of :data:`MEASURES`, all from the
        same per-task gradients: ``"lookahead"`` (TAG, Eq. 1, exact), ``"cosine"`` (CS
        baseline) and ``"taylor"``, Eq. 1 to first order in the step:
        ``Z[i, j] = <s_i, grad L_j> / L_j`` with ``s_i = lr * g_i`` (``rule="sgd"``) or
        the optimizer's step ``theta - theta'_i`` (``rule="optimizer"``), ``g_i`` the
        gradient of task i's (weighted) training term and ``grad L_j`` that of task j's
        unweighted loss, on the batch ``batch`` selects; it needs no lookahead forward
        pass. ``rule``, ``lookahead_scale``, ``divide_by_lr`` and ``batch`` apply to it as
        to ``"lookahead"``.
      cosine_kernels_only: cosine over rank >= 2 shared variables only, as the
        original CS code (BatchNorm scales and biases left out).
      stderr_block: the blocks of the batch-means standard error kept during ``fit()``
        (:mod:`tag_tf.core.state`): ``"epoch"`` (one block per epoch) or an int K
        (a block every K recorded steps).
      parallel: run the T per-task backward passes and lookahead forwards of a recording
        step as batched (vectorised) computations instead of one after another (see
        :mod:`tag_tf.core.vectorized`); same affinities. False (default): sequential, the
        lowest peak memory. An int n: batched, at most n tasks at a time (bounds memory).
    """

    every_n: int = 10
    rule: LookaheadRule = "sgd"
    divide_by_lr: bool = False
    lookahead_scale: float = 1.0
    window: Optional[Any] = None
    step_range: Optional[Tuple[int, int]] = None
    batch: AffinityBatch = "train"
    validation_data: Optional[Any] = dataclasses.field(default=None, compare=False)
    measures: Tuple[str, ...] = ("lookahead",)
    cosine_kernels_only: bool = True
    stderr_block: Union[str, int] = "epoch"
    parallel: Union[bool, int] = False

    def __post_init__(self):
        if not isinstance(self.every_n, int) or isinstance(self.every_n, bool) \
                or self.every_n < 1:
            raise ValueError(f"every_n must be a positive integer. Received: every_n={self.every_n!r}")
        if self.rule not in LOOKAHEAD_RULES:
            raise ValueError(f"rule must be one of {LOOKAHEAD_RULES}. Received: rule={self.rule!r}")
        if isinstance(self.lookahead_scale, bool) \
                or not isinstance(self.lookahead_scale, (int, float)) \
                or not 0 < self.lookahead_scale < float("inf"):
            raise ValueError(f"lookahead_scale must be a positive finite number. "
                             f"Received: lookahead_scale={self.lookahead_scale!r}")
        object.__setattr__(self, "lookahead_scale", float(self.lookahead_scale))
        if self.batch not in ("train", "validation"):
            raise ValueError(f"batch must be 'train' or 'validation'. Received: batch={self.batch!r}")
        if self.batch == "validation" and self.validation_data is None:
            raise ValueError("batch='validation' needs validation_data (a tf.data.Dataset).")
        measures = (self.measures,) if isinstance(self.measures, str) else tuple(self.measures)
        object.__setattr__(self, "measures", measures)
        if not measures or any(m not in MEASURES for m in measures) \
                or len(set(measures)) != len(measures):
            raise ValueError(f"measures must be a non-empty subset of {MEASURES}. "
                             f"Received: measures={self.measures!r}")
        if not (self.stderr_block == "epoch" or (
                isinstance(self.stderr_block, int) and not isinstance(self.stderr_block, bool)
                and self.stderr_block >= 1)):
            raise ValueError("stderr_block must be 'epoch' or a positive number of recorded "
                             f"steps. Received: stderr_block={self.stderr_block!r}")
        if not isinstance(self.parallel, (bool, int)) or (
                not isinstance(self.parallel, bool) and self.parallel < 1):
            raise ValueError(f"parallel must be a bool or a positive int (tasks per batched "
                             f"pass). Received: parallel={self.parallel!r}")
        if self.window is not None and self.step_range is not None:
            raise ValueError("Give either window (fractions) or step_range (steps), not both.")
        self.window_fractions()  # validates
        if self.step_range is not None:
            start, end = self.step_range
            if not 0 <= start < end:
                raise ValueError(f"step_range must satisfy 0 <= start < end. "
                                 f"Received: step_range={self.step_range!r}")

    @classmethod
    def from_json(cls, values: dict) -> "AffinityConfig":
        """Restores :meth:`to_json` (a saved model's config). The validation dataset is not
        saved: a ``batch="validation"`` config comes back without it, and the model asks for
        it (``MultiTaskModel.attach_validation_data``) before training."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if values.get("batch") != "validation":
            return cls(**values)
        config = cls(**{**values, "batch": "train"})
        object.__setattr__(config, "batch", "validation")
        return config

    def parallel_chunk(self) -> Optional[int]:
        """Tasks per batched pass when ``parallel`` (None: all at once)."""
        return None if isinstance(self.parallel, bool) else self.parallel

    def window_fractions(self) -> Optional[Tuple[float, float]]:
        """The window as ``(start, end)`` fractions of training, or None."""
        if self.window is None:
            return None
        if isinstance(self.window, str):
            if self.window not in WINDOWS:
                raise ValueError(f"Unknown window. Expected one of {sorted(WINDOWS)} or a "
                                 f"(start, end) fraction pair. Received: window={self.window!r}")
            return WINDOWS[self.window]
        try:
            start, end = (float(v) for v in self.window)
        except (TypeError, ValueError):
            raise ValueError(f"window must be a name or a (start, end) pair. "
                             f"Received: window={self.window!r}") from None
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"window fractions must satisfy 0 <= start < end <= 1. "
                             f"Received: window={self.window!r}")
        return start, end

    def step_window(self, total_steps: Optional[int]) -> Tuple[int, Optional[int]]:
        """Resolves the window to ``(start_step, end_step)``; end None = unbounded."""
        if self.step_range is not None:
            return self.step_range
        fractions = self.window_fractions()
        if fractions is None:
            return 0, None
        if not total_steps:
            raise ValueError("A fractional affinity window needs the number of training steps; "
                             "fit() with a known steps_per_epoch (or a finite dataset), or use "
                             "step_range.")
        start, end = fractions
        return int(round(start * total_steps)), int(round(end * total_steps))

    def to_json(self) -> dict:
        """The settings as plain JSON values (the dataset is left out)."""
        return {
            "every_n": self.every_n,
            "rule": self.rule,
            "divide_by_lr": self.divide_by_lr,
            "lookahead_scale": self.lookahead_scale,
            "window": self.window if isinstance(self.window, str) or self.window is None
            else list(self.window_fractions()),
            "step_range": list(self.step_range) if self.step_range else None,
            "batch": self.batch,
            "measures": list(self.measures),
            "cosine_kernels_only": self.cosine_kernels_only,
            "stderr_block": self.stderr_block,
            "parallel": self.parallel,
        }
