r"""Cost of TAG's affinity step on the CelebA trunk, measured side by side in one run.

  python -m benchmarks.affinity_overhead            # batch 256, 64x64, 9 tasks (minutes on CPU)
  python -m benchmarks.affinity_overhead --batch_size=32 --image_size=32   # quick
  python -m benchmarks.affinity_overhead --strategy=mirrored --batch_size=32 --image_size=32
  python -m benchmarks.affinity_overhead --batch_size=16 --image_size=32 --tasks=40 \
      --measure=lookahead,taylor --parallel          # both measures, both execution modes
  python -m benchmarks.affinity_overhead --batch_size=16 --image_size=32 \
      --slope_tasks=2,5,9,20,40 --parallel           # how a recording step grows with T
  python -m benchmarks.affinity_overhead --first_call --tasks=9,40 --batch_size=32 \
      --image_size=32                                # start-up: trace + first step, per mode

Step times are measured in ONE process with the modes taking turns step by step (this
machine is noisy; medians of interleaved steps compare fairly); peak RSS is measured per
mode in its own short subprocess. Modes:
  plain       MultiTaskModel(affinity=None): exactly Keras' train_step.
  tag_every_1 TAG recording on every step: the cost of one affinity step.
  tag_every_10 TAG every 10 steps (the paper's setting): 10 consecutive steps.
  naive       the loop a Keras user would write: per task, the tape's gradient of the
              shared variables, assign_sub on them, a full forward pass, restore; then a
              normal training step.
Prints per-step seconds, ratios to plain training and peak RSS. Never used by tests.

``--measure`` (a list: lookahead, taylor) chooses what the TAG modes record, and
``--parallel`` adds each TAG mode again with ``AffinityConfig(parallel=...)`` (batched
per-task passes, :mod:`tag_tf.core.vectorized`), all interleaved in the same run, so the table
shows every measure and execution mode side by side. ``--tasks=40`` puts 40 heads on the
same trunk. ``--slope_tasks`` times a plain and a recording step at each of several task
counts (interleaved per count) and fits a line: the seconds each extra task adds.

``--first_call`` reports, for each ``--tasks`` count, the first call of ``plain`` and of
``tag_every_1`` (tracing plus one step, which records), each run in a fresh process (a
subprocess per mode and round, modes alternating), and their steady step, measured in one
more fresh process per round with the two modes taking turns step by step: a process's own
speed varies by up to 30 % here, so a ratio of steps from two processes mixes that in, and a
ratio within one process does not. The table gives medians over ``--rounds``.
``--jit_compile`` compiles every mode's step with XLA (``compile(jit_compile=True)``).

``--strategy=mirrored`` instead compares TAG / plain under one replica (default strategy)
and under ``--replicas`` replicas of ``tf.distribute.MirroredStrategy`` (the local GPUs, or
without GPUs the CPU split into that many logical devices), all modes interleaved in one
process; ``--batch_size`` is the global batch in both.
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from typing import Literal, Optional

from absl import flags

from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting


@dataclasses.dataclass(frozen=True)
class Args:
    """The benchmark's flags."""

    mode: Optional[str] = setting(None, help="Run one mode (internal, e.g. tag_every_1:"
                                  "lookahead:parallel); unset runs all and prints the table.")
    batch_size: int = setting(256, lower_bound=1, help="Batch size (paper: 256).")
    image_size: int = setting(64, lower_bound=8, help="Image side (paper: 64).")
    tasks: tuple[int, ...] = setting(
        (9,), parse=flags_lib.int_list, help="Number of Dense(2) heads (--first_call: several, "
        "e.g. 9,40; other runs use the first).")
    steps: int = setting(3, lower_bound=1,
                         help="Timed rounds; tag_every_10 times 10 steps per round.")
    warmup: int = setting(1, lower_bound=0, help="Untimed steps (tracing) per mode.")
    strategy: Literal["default", "mirrored"] = setting(
        "default", help="mirrored: TAG / plain under --replicas replicas beside one replica.")
    measure: tuple[str, ...] = setting(
        ("lookahead",), help="What the TAG modes record: lookahead (Eq. 1), taylor (first "
        "order); several give one TAG column each.")
    parallel: bool = setting(False, help="Also run every TAG mode with batched per-task "
                             "passes (AffinityConfig(parallel=...)).")
    parallel_chunk: int = setting(0, lower_bound=0,
                                  help="--parallel: tasks per batched pass (0: all).")
    naive: bool = setting(True, help="Include the naive loop.")
    every_10: bool = setting(True, help="Include the TAG-every-10-steps modes.")
    memory: bool = setting(True, help="Measure peak RSS per mode (a subprocess each).")
    slope_tasks: tuple[int, ...] = setting(
        (), parse=flags_lib.int_list, help="Task counts for the slope fit (e.g. 2,5,9,20,40): "
        "instead of the table, time plain and recording steps at each count.")
    replicas: int = setting(2, lower_bound=1, help="--strategy=mirrored: logical CPU devices "
                            "to create when there is no GPU.")
    first_call: bool = setting(False, help="Report the first call (trace + one step) of plain "
                               "and TAG, each in a fresh process, and their steady step (both "
                               "in one more process, taking turns), per --tasks.")
    rounds: int = setting(2, lower_bound=1, help="--first_call: rounds of fresh processes "
                          "(one per mode, one for the steady step) per task count.")
    jit_compile: bool = setting(False, help="Compile every mode's train step with XLA.")


flags_lib.define_flags(Args)

MODES = ("plain", "tag_every_1", "tag_every_10", "naive")


def _measures():
    from tag_tf.core.config import MEASURES  # pylint: disable=import-outside-toplevel
    return MEASURES


def _valid_mode(mode):
    if mode is not None and mode.startswith(("first_call:", "steady:")):  # internal modes
        mode = mode.split(":", 1)[1]
    try:
        return mode is None or parse_mode(mode)[1] in _measures()
    except ValueError:
        return False


def _task_counts(values):
    try:
        counts = [int(v) for v in values]
    except ValueError:
        return False
    return not counts or (len(set(counts)) >= 2 and min(counts) >= 2)


flags.register_validator("mode", _valid_mode, message=f"--mode must be one of {MODES}, "
                         "optionally followed by ':<measure>' (tag_tf.MEASURES) and ':parallel'")
flags.register_validator("slope_tasks", _task_counts, message="--slope_tasks must be at least "
                         "two different task counts, each an integer >= 2")


def _data(batch_size, image_size, tasks):
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    y = {t: rng.integers(0, 2, size=(batch_size,)) for t in tasks}
    return x, y


def parse_mode(mode):
    """``"tag_every_1:taylor:parallel"`` -> ("tag_every_1", "taylor", True); the measure
    defaults to lookahead and execution to sequential."""
    name, *options = mode.split(":")
    if name not in MODES:
        raise ValueError(f"Unknown mode {name!r}: expected one of {MODES}. Received: {mode!r}")
    measure = next((o for o in options if o != "parallel"), "lookahead")
    return name, measure, "parallel" in options


def tag_modes(measures, parallel, every_10=True):
    """The TAG mode strings for each measure and execution mode."""
    names = ("tag_every_1", "tag_every_10") if every_10 else ("tag_every_1",)
    executions = ("", ":parallel") if parallel else ("",)
    return [f"{name}:{measure}{execution}" for measure in measures
            for execution in executions for name in names]


def _build(mode, tasks, image_size, parallel_chunk=0, jit_compile=False):
    import keras  # pylint: disable=import-outside-toplevel
    import tag_tf  # pylint: disable=import-outside-toplevel
    from celeba.model import TRUNK_LAYERS, celeba_network  # pylint: disable=import-outside-toplevel
    name, measure, parallel = parse_mode(mode)
    if measure not in tag_tf.MEASURES:
        raise ValueError(f"--measure={measure!r} is not a measure of this tag_tf: "
                         f"{tag_tf.MEASURES}")
    network = celeba_network(tasks, image_size=image_size)
    every_n = {"tag_every_1": 1, "tag_every_10": 10}.get(name)
    config = tag_tf.AffinityConfig(
        every_n=every_n, measures=(measure,),
        parallel=(parallel_chunk or True) if parallel else False) if every_n else None
    model = tag_tf.MultiTaskModel(network, shared=list(TRUNK_LAYERS), affinity=config)
    model.compile(optimizer=keras.optimizers.SGD(5e-4, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    return model


def _step_counter(model):
    """The model's training-step clock (``affinity_state`` since tag_tf's state layout 2)."""
    return getattr(model, "affinity_state", model).train_step_counter


def first_call(mode, batch_size, image_size, num_tasks, steps=2, jit_compile=False):
    """Seconds of the first ``train_on_batch`` (tracing + one step; a TAG mode records on
    it) and the peak RSS (MiB) of this process after ``steps`` more (untimed: the steady
    step is :func:`steady_steps`)."""
    tasks = [f"task_{k}" for k in range(num_tasks)]
    x, y = _data(batch_size, image_size, tasks)
    model = _build(mode, tasks, image_size, jit_compile=jit_compile)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    for _ in range(steps):
        model.train_on_batch(x, y)
    return {"first_call_s": first,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def steady_steps(mode, batch_size, image_size, num_tasks, rounds=8, jit_compile=False):
    """Median seconds of a plain step and of a ``mode`` step in THIS process, the two taking
    turns step by step after two untimed steps each, and their ratio."""
    fns = _step_fns(["plain", mode], batch_size, image_size, num_tasks,
                    jit_compile=jit_compile)
    seconds = _time_rounds(fns, rounds, warmup=2)
    return {"plain_s": seconds["plain"], "tag_s": seconds[mode],
            "ratio": seconds[mode] / seconds["plain"]}


def _subprocess_result(mode, flags):
    """The RESULT of this script run with ``--mode=mode`` and ``flags`` in a fresh process."""
    cmd = [sys.executable, "-m", "benchmarks.affinity_overhead", f"--mode={mode}", *flags]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.split("RESULT ", 1)[1])


def first_call_table(args, task_counts, modes):
    """Per task count and round: :func:`first_call` of each mode in a fresh process (modes
    alternating), then :func:`steady_steps` in one more; prints medians over the rounds."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    results = {}
    tag = modes[1]
    for round_ in range(args.rounds):
        for count in task_counts:
            flags = [f"--batch_size={args.batch_size}", f"--image_size={args.image_size}",
                     f"--tasks={count}", f"--jit_compile={args.jit_compile}"]
            for mode in modes:
                result = _subprocess_result(f"first_call:{mode}", flags)
                results.setdefault((count, mode), []).append(result)
                print(f"round {round_}, T={count}, {mode}: first call "
                      f"{result['first_call_s']:.1f} s, peak RSS "
                      f"{result['peak_rss_mib']:.0f} MiB ({machine_load()})", flush=True)
            result = _subprocess_result(f"steady:{tag}", flags)
            results.setdefault((count, "steady"), []).append(result)
            print(f"round {round_}, T={count}, steady (one process): plain "
                  f"{result['plain_s']:.3f} s, TAG {result['tag_s']:.3f} s, TAG / plain "
                  f"{result['ratio']:.2f} ({machine_load()})", flush=True)
    median = lambda key, count, mode: float(np.median(  # noqa: E731
        [r[key] for r in results[(count, mode)]]))
    print(f"\nbatch {args.batch_size}, {args.image_size}x{args.image_size}, medians of "
          f"{args.rounds} fresh processes per cell, jit_compile={args.jit_compile}, "
          f"{machine_load()}; steady: both modes in one process, taking turns")
    print("| heads | first call, plain s | first call, TAG s | TAG / plain | steady step, "
          "plain s | steady step, TAG s | TAG / plain (per process) | peak RSS plain / TAG "
          "MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for count in task_counts:
        f_p, f_t = (median("first_call_s", count, m) for m in modes)
        r_p, r_t = (median("peak_rss_mib", count, m) for m in modes)
        s_p, s_t, ratio = (median(k, count, "steady") for k in ("plain_s", "tag_s", "ratio"))
        spread = [r["ratio"] for r in results[(count, "steady")]]
        print(f"| {count} | {f_p:.1f} | {f_t:.1f} | {f_t / f_p:.2f} | {s_p:.3f} | {s_t:.3f} | "
              f"{ratio:.1f} ({min(spread):.1f}-{max(spread):.1f}) | {r_p:.0f} / {r_t:.0f} |")
    return results


def _naive_step_fn(model):
    """The straightforward TAG loop, as a user would write it (inside tf.function)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    losses = model._task_losses  # pylint: disable=protected-access
    shared = model.shared_variables
    lr = 5e-4

    @tf.function
    def step(x, y):
        with tf.GradientTape(persistent=True) as tape:
            before = losses.compute(y, model(x, training=True))
        rows = []
        for loss in before:
            grads = tape.gradient(loss, shared)
            for variable, grad in zip(shared, grads):
                variable.assign_sub(lr * grad)
            after = losses.compute(y, model(x, training=True))
            for variable, grad in zip(shared, grads):
                variable.assign_add(lr * grad)
            rows.append(tf.stack([1.0 - a / b for a, b in zip(after, before)]))
        del tape
        return tf.stack(rows)

    return step


def _step_fns(modes, batch_size, image_size, num_tasks, strategy=None, parallel_chunk=0,
              jit_compile=False):
    """One callable per mode, each doing one training step of that mode on a fixed batch
    (models built under ``strategy`` when given)."""
    import contextlib  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tasks = [f"task_{k}" for k in range(num_tasks)]
    x, y = _data(batch_size, image_size, tasks)
    fns = {}
    for mode in modes:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = _build(mode, tasks, image_size, parallel_chunk, jit_compile)
        if mode == "naive":
            naive = _naive_step_fn(model)
            xt, yt = tf.constant(x), {t: tf.constant(v) for t, v in y.items()}

            def step(model=model, naive=naive, xt=xt, yt=yt):
                naive(xt, yt).numpy()
                model.train_on_batch(x, y)
        else:
            def step(model=model):
                model.train_on_batch(x, y)
        fns[mode] = (model, step)
    return fns


def peak_memory(mode, batch_size, image_size, num_tasks, parallel_chunk=0):
    """Peak RSS (MiB) of a process that traces and runs a few steps of one mode."""
    (model, step), = _step_fns([mode], batch_size, image_size, num_tasks,
                               parallel_chunk=parallel_chunk).values()
    for _ in range(2 if not mode.startswith("tag_every_10") else 1):
        step()  # step 0 records in every TAG mode
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved_times(modes, batch_size, image_size, num_tasks, rounds, warmup,
                      parallel_chunk=0):
    """Median seconds per step of each mode, the modes taking turns step by step.

    tag_every_10 modes are timed over whole 10-step windows (one recording step each),
    reported per step; the others per single step.
    """
    fns = _step_fns(modes, batch_size, image_size, num_tasks, parallel_chunk=parallel_chunk)
    return _time_rounds(fns, rounds, warmup)


def _time_rounds(fns, rounds, warmup):
    """Median seconds per step of each entry of ``fns``, taking turns step by step."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    for _, step in fns.values():
        for _ in range(warmup):
            step()
    times = {key: [] for key in fns}
    for _ in range(rounds):
        for key, (model, step) in fns.items():
            mode = key[-1] if isinstance(key, tuple) else key
            steps = 10 if mode.startswith("tag_every_10") else 1
            if steps > 1:
                _step_counter(model).assign(0)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[key].append((time.perf_counter() - start) / steps)
    return {key: float(np.median(values)) for key, values in times.items()}


def mirrored_comparison(batch_size, image_size, num_tasks, rounds, warmup, replicas):
    """TAG / plain under one replica and under ``replicas`` MirroredStrategy replicas."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tag_tf.runner import pipeline  # pylint: disable=import-outside-toplevel
    if not tf.config.list_physical_devices("GPU"):
        pipeline.split_cpu(replicas)  # before TensorFlow starts
    mirrored = pipeline.make_strategy("mirrored")
    modes = ("plain", "tag_every_1", "tag_every_10")
    fns = {}
    for label, strategy in (("1", None), (str(mirrored.num_replicas_in_sync), mirrored)):
        for mode, entry in _step_fns(modes, batch_size, image_size, num_tasks,
                                     strategy).items():
            fns[(label, mode)] = entry
    seconds = _time_rounds(fns, rounds, warmup)
    labels = sorted({label for label, _ in fns}, key=int)
    devices = list(mirrored.extended.worker_devices)
    print(f"\nglobal batch {batch_size}, {image_size}x{image_size}, {num_tasks} tasks, "
          f"{os.cpu_count()} CPU cores; mirrored over {devices}")
    print("| replicas | plain s/step | TAG every 1 s/step | TAG every 10 s/step | "
          "TAG step / plain | TAG every 10 / plain |")
    print("|---|---|---|---|---|---|")
    for label in labels:
        plain = seconds[(label, "plain")]
        every_1, every_10 = seconds[(label, "tag_every_1")], seconds[(label, "tag_every_10")]
        print(f"| {label} | {plain:.3f} | {every_1:.3f} | {every_10:.3f} | "
              f"{every_1 / plain:.2f} | {every_10 / plain:.2f} |")


def machine_load() -> str:
    """The 1/5/15-minute load averages (the figures are contended when above the cores)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def fit_slope(task_counts, seconds):
    """Least-squares line ``seconds = intercept + slope * T``: (slope, intercept)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    slope, intercept = np.polyfit(np.asarray(task_counts, float), np.asarray(seconds, float), 1)
    return float(slope), float(intercept)


def slope_table(task_counts, modes, batch_size, image_size, rounds, warmup, parallel_chunk=0):
    """Times plain and recording steps at each task count; prints them and the fitted
    seconds per extra task of each mode."""
    seconds = {}
    for count in task_counts:
        print(f"T = {count}: tracing and timing ({machine_load()})", flush=True)
        times = interleaved_times(["plain"] + modes, batch_size, image_size, count, rounds,
                                  warmup, parallel_chunk)
        for mode, value in times.items():
            seconds[(mode, count)] = value
    columns = ["plain"] + modes
    print(f"\nbatch {batch_size}, {image_size}x{image_size}, {machine_load()}")
    print("| T | " + " | ".join(f"{m} s/step" for m in columns) + " | "
          + " | ".join(f"{m} / plain" for m in modes) + " |")
    print("|---" * (1 + len(columns) + len(modes)) + "|")
    for count in task_counts:
        plain = seconds[("plain", count)]
        print(f"| {count} | " + " | ".join(f"{seconds[(m, count)]:.3f}" for m in columns)
              + " | " + " | ".join(f"{seconds[(m, count)] / plain:.2f}" for m in modes) + " |")
    print("\n| mode | seconds per extra task (slope) | intercept s | slope / plain step at "
          f"T={task_counts[0]} |")
    print("|---|---|---|---|")
    for mode in columns:
        slope, intercept = fit_slope(task_counts, [seconds[(mode, c)] for c in task_counts])
        print(f"| {mode} | {slope:.4f} | {intercept:.3f} | "
              f"{slope / seconds[('plain', task_counts[0])]:.3f} |")
    return seconds


def overhead_table(modes, peaks, seconds, num_tasks, batch_size, image_size):
    """Prints the side-by-side ratios of the default (non-slope) run."""
    plain = seconds["plain"]
    print(f"\nbatch {batch_size}, {image_size}x{image_size}, "
          f"{num_tasks} tasks, {machine_load()}")
    print("| mode | s/step | / plain | peak RSS MiB | RSS / plain |")
    print("|---|---|---|---|---|")
    for mode in modes:
        peak = peaks.get(mode)
        memory = f"{peak:.0f} | {peak / peaks['plain']:.2f}" if peak else "- | -"
        print(f"| {mode} | {seconds[mode]:.3f} | {seconds[mode] / plain:.2f} | {memory} |")
    if "naive" in seconds:
        naive = seconds["naive"]
        print(f"\nnaive every 10 / plain (overall): {(9 * plain + naive) / 10 / plain:.2f}")
        for mode in modes:
            if mode.startswith("tag_every_1:"):
                print(f"{mode} step / naive step: {seconds[mode] / naive:.2f} (target <= 0.6)")
    by_measure = {}
    for mode in modes:
        name, measure, parallel = parse_mode(mode) if mode.startswith("tag") else (mode, 0, 0)
        if name == "tag_every_1":
            by_measure.setdefault(measure, {})[parallel] = mode
    for measure, pair in by_measure.items():
        if len(pair) == 2:
            seq, par = pair[False], pair[True]
            memory = (f", peak RSS parallel / sequential {peaks[par] / peaks[seq]:.2f}"
                      if peaks.get(par) and peaks.get(seq) else "")
            print(f"{measure}: recording step parallel / sequential "
                  f"{seconds[par] / seconds[seq]:.2f}{memory}")
    if "lookahead" in by_measure and "taylor" in by_measure:
        for parallel, mode in by_measure["taylor"].items():
            other = by_measure["lookahead"].get(parallel)
            if other:
                print(f"taylor / lookahead recording step ({'parallel' if parallel else 'sequential'})"
                      f": {seconds[mode] / seconds[other]:.2f} (target <= 0.6)")


def main(argv):
    if len(argv) > 1:
        raise errors.UsageError(f"Unexpected arguments: {argv[1:]}. Pass flags only; --help "
                                "lists them.")
    args = flags_lib.read_flags(Args)
    if any(t < 2 for t in args.tasks):
        raise errors.UsageError(f"--tasks must be integers >= 2 (heads). Received: "
                                f"--tasks={','.join(str(t) for t in args.tasks)}")
    unknown = sorted(set(args.measure) - set(_measures())) if args.measure else ["(none)"]
    if unknown:  # checked here, not by a flag validator: it imports TensorFlow
        raise errors.UsageError(f"--measure must name measures of {_measures()}. Received: "
                                f"--measure={','.join(args.measure)}")
    task_counts = list(args.tasks)
    if args.strategy == "mirrored":
        mirrored_comparison(args.batch_size, args.image_size, task_counts[0], args.steps,
                            args.warmup, args.replicas)
        return
    if args.mode and args.mode.startswith("first_call:"):
        print("RESULT " + json.dumps(first_call(
            args.mode.split(":", 1)[1], args.batch_size, args.image_size, task_counts[0],
            jit_compile=args.jit_compile)))
        return
    if args.mode and args.mode.startswith("steady:"):
        print("RESULT " + json.dumps(steady_steps(
            args.mode.split(":", 1)[1], args.batch_size, args.image_size, task_counts[0],
            jit_compile=args.jit_compile)))
        return
    if args.mode:
        print("RESULT " + json.dumps({"peak_rss_mib": peak_memory(
            args.mode, args.batch_size, args.image_size, task_counts[0],
            args.parallel_chunk)}))
        return
    if args.first_call:
        first_call_table(args, task_counts, ["plain", "tag_every_1:lookahead"])
        return
    tags = tag_modes(args.measure, args.parallel, args.every_10)
    if args.slope_tasks:
        if len(set(args.slope_tasks)) < 2:
            raise errors.UsageError("--slope_tasks needs at least two task counts to fit a "
                                    f"slope. Received: {list(args.slope_tasks)}")
        slope_table(list(args.slope_tasks),
                    [m for m in tags if m.startswith("tag_every_1:")], args.batch_size,
                    args.image_size, args.steps, args.warmup, args.parallel_chunk)
        return
    modes = ["plain"] + tags + (["naive"] if args.naive else [])
    peaks = {}
    flags = [f"--batch_size={args.batch_size}", f"--image_size={args.image_size}",
             f"--tasks={task_counts[0]}", f"--parallel_chunk={args.parallel_chunk}"]
    for mode in modes if args.memory else []:
        peaks[mode] = _subprocess_result(mode, flags)["peak_rss_mib"]
        print(f"{mode:>30}: peak RSS {peaks[mode]:.0f} MiB ({machine_load()})", flush=True)
    seconds = interleaved_times(modes, args.batch_size, args.image_size, task_counts[0],
                                args.steps, args.warmup, args.parallel_chunk)
    for mode in modes:
        print(f"{mode:>30}: {seconds[mode]:.3f} s/step (median of {args.steps}, interleaved)")
    overhead_table(modes, peaks, seconds, task_counts[0], args.batch_size, args.image_size)


if __name__ == "__main__":
    errors.run(main)
