"""per_task.task_gradients: row k is task k's own gradient, on every path.

The loop differentiates either the stacked terms with a one-hot cotangent or, given the task
outputs, the outputs with task k's output cotangent alone; both must equal the tape's gradient
of each term on its own (also when one task's output is computed from another's; and when two
tasks share one output tensor, a term reads another task's output or a source directly, where
the outputs path must not be used).
"""

import numpy as np
import pytest
import tensorflow as tf

from tag_tf.core import per_task


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    w = tf.Variable(rng.normal(size=(3, 4)))
    v = tf.Variable(rng.normal(size=(4,)))
    x = tf.constant(rng.normal(size=(5, 3)))
    y = tf.constant(rng.normal(size=(5, 2)))
    return w, v, x, y


def _outputs_and_terms(w, v, x, y, layout):
    h = tf.tanh(x @ w + v)
    a = h[:, :2]
    if layout == "chained":  # task b's output is computed from task a's
        b = tf.sin(a) * h[:, 2:]
    elif layout == "shared":  # tasks a and b read one output tensor
        b = a
    else:
        b = h[:, 2:] ** 2
    c = tf.reduce_sum(h, axis=1, keepdims=True)
    outputs = [a, b, c]
    terms = [tf.reduce_mean((a - y) ** 2), 0.5 * tf.reduce_sum(tf.exp(b) * y),
             tf.reduce_mean(tf.math.log1p(c ** 2))]
    if layout == "mixing":  # a term that reads another task's output
        terms[0] = terms[0] + 0.3 * tf.reduce_mean(b)
    if layout == "penalty":  # a term that reads a source directly
        terms[2] = terms[2] + 0.1 * tf.reduce_sum(w ** 2)
    return outputs, terms


# Whether the outputs path applies (traced): only where each term reads only its own output.
OWN_OUTPUTS = {"separate": True, "chained": True, "shared": False, "mixing": False,
               "penalty": False}


@pytest.mark.parametrize("layout", sorted(OWN_OUTPUTS))
@pytest.mark.parametrize("traced", [False, True])
def test_task_gradients_with_and_without_outputs_equal_each_terms_gradient(layout, traced):
    w, v, x, y = _problem()

    def run():
        with tf.GradientTape(persistent=True) as tape:
            outputs, terms = _outputs_and_terms(w, v, x, y, layout)
        plain = per_task.task_gradients(tape, terms, [w, v])
        via_outputs = per_task.task_gradients(tape, terms, [w, v], outputs=outputs)
        want = [tape.gradient(t, [w, v]) for t in terms]
        used.append(per_task._through_own_outputs(terms, outputs, [w, v]))
        return plain, via_outputs, want

    used = []
    plain, via_outputs, want = tf.function(run)() if traced else run()
    assert used == [OWN_OUTPUTS[layout] and traced]
    for stacked in (plain, via_outputs):
        for k, grads in enumerate(want):
            for got, expected in zip([s[k] for s in stacked], grads):
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("layout", ["separate", "chained"])
def test_cotangents_from_a_tape_of_the_losses_alone_equal_each_terms_gradient(layout):
    """The training step's path: the cotangents come from a tape that recorded only the
    terms from the watched outputs (one small backward pass); chained outputs are told
    apart when the training tape alone is given."""
    w, v, x, y = _problem(1)

    @tf.function
    def run():
        with tf.GradientTape(persistent=True) as tape:
            h = tf.tanh(x @ w + v)
            a = h[:, :2]
            b = tf.sin(a) * h[:, 2:] if layout == "chained" else h[:, 2:] ** 2
            outputs = [a, b]
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as heads:
                heads.watch(outputs)
                terms = [tf.reduce_mean((a - y) ** 2), 0.5 * tf.reduce_sum(tf.exp(b) * y)]
        chained.append(per_task._outputs_chained(outputs))
        via_heads = per_task.task_gradients(tape, terms, [w, v], outputs=outputs,
                                            outputs_tape=heads)
        via_outputs = per_task.task_gradients(tape, terms, [w, v], outputs=outputs)
        return via_heads, via_outputs, [tape.gradient(t, [w, v]) for t in terms]

    chained = []
    via_heads, via_outputs, want = run()
    assert chained == [layout == "chained"]
    for stacked in (via_heads, via_outputs):
        for k, grads in enumerate(want):
            for got, expected in zip([s[k] for s in stacked], grads):
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
