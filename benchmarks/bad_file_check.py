r"""Cost of finding bad input files before training (tag_tf.io.bad_files), on fake data in
the real on-disk formats, next to what it protects.

  python -m benchmarks.bad_file_check                  # Taskonomy 64 px, CelebA
  python -m benchmarks.bad_file_check --size=256 --frames=20

Taskonomy: ``check_examples`` (every PNG of every split's examples read and decoded once)
against one pass of ``make_dataset`` over the same examples (read, decode, resize to
``--image_size``, batch) -- one epoch of input, without any training. CelebA:
``check_original_files`` (every JPEG of the archive decoded once) against
``prepare_from_files`` (the TFDS build, which includes the check). Each is timed
``--repeats`` times, alternating, and the medians are printed. Never used by tests.
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import os
import shutil
import statistics
import tempfile
import time

from absl import flags

from tag_tf.cli import errors

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 64, "Side of the fake Taskonomy PNGs.")
flags.DEFINE_integer("image_size", 64, "Pipeline image size.")
flags.DEFINE_integer("frames", 10, "Frames per Taskonomy building (4 buildings).")
flags.DEFINE_integer("celeba_images", 200, "Fake CelebA images.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (medians).")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def taskonomy(root: str) -> dict:
    from taskonomy import data, testing  # pylint: disable=g-import-not-at-top
    testing.write_fake_taskonomy(root, size=FLAGS.size, frames=FLAGS.frames)
    examples = [data.split_examples(root, "sdntk", s) for s in ("train", "val", "test")]
    files = sum(len({p for v in e.paths.values() for p in v}) for e in examples)

    def check():
        data._CHECKED.clear()  # pylint: disable=protected-access
        for e in examples:
            data.check_examples(e)

    def epoch():
        for e in examples:
            for _ in data.make_dataset(e, batch_size=4, training=False,
                                       image_size=FLAGS.image_size):
                pass

    times = {"check": [], "epoch": []}
    epoch()  # (warm-up: page cache, tracing)
    for _ in range(FLAGS.repeats):
        times["check"].append(_time(check))
        times["epoch"].append(_time(epoch))
    return {"files": files, **{k: statistics.median(v) for k, v in times.items()}}


def celeba(root: str) -> dict:
    from celeba import data, testing  # pylint: disable=g-import-not-at-top
    n = FLAGS.celeba_images
    files = os.path.join(root, "files")
    testing.write_fake_celeba(files, {"train": n - 2 * (n // 10), "validation": n // 10,
                                      "test": n // 10})
    times = {"check": [], "prepare": []}
    for k in range(FLAGS.repeats):
        times["check"].append(_time(lambda: data.check_original_files(files)))
        times["prepare"].append(_time(lambda: data.prepare_from_files(  # noqa: B023
            files, os.path.join(root, f"tfds{k}"), verify_checksums=False)))
    return {"files": n, **{k: statistics.median(v) for k, v in times.items()}}


def main(argv):
    del argv
    root = tempfile.mkdtemp(prefix="tag_tf_bad_file_check_")
    try:
        t = taskonomy(os.path.join(root, "taskonomy"))
        print(f"Taskonomy ({t['files']} PNGs of {FLAGS.size} px, 5 tasks): check "
              f"{t['check']:.2f} s, one input epoch at {FLAGS.image_size} px {t['epoch']:.2f} s "
              f"(check / epoch = {t['check'] / t['epoch']:.2f})")
        c = celeba(os.path.join(root, "celeba"))
        print(f"CelebA ({c['files']} JPEGs): check {c['check']:.2f} s, prepare (with the "
              f"check) {c['prepare']:.2f} s (check / prepare = {c['check'] / c['prepare']:.2f})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    errors.run(main)
