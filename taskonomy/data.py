"""Taskonomy on-disk layout reader and ``tf.data`` input pipeline.

Follows Standley et al.'s ``taskgrouping/taskonomy_loader.py`` (``TaskonomyLoader``), as the TAG
paper's ``tag/taskonomy/tag.patch`` uses it (see ``/work/shared/taskonomy/README.md``):

* inputs at ``root/rgb/<building>/<image>.png``; the label of a task is the file at the rgb path
  with every ``rgb`` replaced by the task's domain name (``root/normal/<building>/..._normal.png``);
* buildings come from the ``{train,val,test}_models.txt`` lists (``splits/``); validation and test
  keep the first 1000 sorted images of each building;
* inputs and targets are resized to ``image_size`` (256 in the paper), inputs scaled to [0, 1]
  with no mean/std normalisation;
* target normalisations: depth ``(x - 1500) / 1000`` with mask ``x < 2**13`` taken on the raw
  value, normals ``(x - 0.5) * 2`` from [0, 1], keypoints ``(x - 50) / 100``, texture edges
  ``(x - 718) / 1070``, segmentation labels as stored (0 = unlabelled, ignored by the loss);
* training: random horizontal flip (p = 0.5) shared by input and labels, negating the normal's
  x-component.

Targets for masked tasks (depth, normals) carry the validity mask as one extra last channel, so
the plain ``compile(loss={task: ...})`` of Keras passes it to :mod:`taskonomy.losses`; the mask is
the depth mask (loaded even when depth is not a task) unless a ``root/mask`` domain exists and depth
is not trained, as in the original.

Differences from the original, on purpose:
* segmentation labels are resized with nearest neighbour (the original resized class ids
  bilinearly, inventing classes at boundaries);
* the ``rgb`` -> domain replacement applies to the path below ``root`` only (a root such as
  ``/data/rgbd`` broke the original);
* a missing or unreadable file is found before training (:func:`check_examples`, one decode
  of every file) and stops the run with an error naming it, or with ``skip_bad_files=True``
  drops its example and is counted and named in :attr:`Splits.bad_files`, instead of
  silently repeating the previous example's label;
* bit depth is read from each PNG header, so raw values are what the file stores (PIL's 'L' and
  'I;16' semantics) whatever the file's bit depth.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, NamedTuple, Optional, Sequence

import tensorflow as tf

from tag_tf.io import atomic
from tag_tf.io.bad_files import BadFiles, describe_error, find_bad, find_bad_files, handle

SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
SPLITS = ("train", "val", "test")
IMAGE_SIZE = 256  # tag.patch: output_size=(256, 256)
EVAL_IMAGES_PER_BUILDING = 1000  # tag.patch: get_eval_loader / get_test_loader model_limit
DEPTH_MASK_THRESHOLD = 2 ** 13  # TaskonomyLoader: mask = raw depth < 2**13
NUM_SEGMENT_CLASSES = 18  # xception_taskonomy_new: segment_semantic has 18 output channels
INPUT_DOMAIN = "rgb"
MASK_DOMAIN = "mask"


class Domain(NamedTuple):
    """How one Taskonomy domain is decoded and normalised.

    Attributes:
      name: folder name (and the string replacing ``rgb`` in the file name).
      channels: channels decoded from the PNG.
      unit: True for 8-bit-style images that ``ToTensor`` scales to [0, 1] (rgb, normals);
        False for raw values (single-channel 'L' or 16-bit images).
      offset, scale: target = (value - offset) / scale.
      masked: whether the target carries the validity mask as an extra channel.
      nearest: resize with nearest neighbour (class labels).
      flip_negate: channel negated by a horizontal flip (normal x), or None.
      outputs: channels of the network's prediction.
    """

    name: str
    channels: int
    unit: bool
    offset: float = 0.0
    scale: float = 1.0
    masked: bool = False
    nearest: bool = False
    flip_negate: Optional[int] = None
    outputs: int = 1


# The five tasks of the paper's Taskonomy experiment (tag.patch: --tasks=sdntk).
DOMAINS = {
    "segment_semantic": Domain("segment_semantic", 1, unit=False, nearest=True,
                               outputs=NUM_SEGMENT_CLASSES),
    "depth_zbuffer": Domain("depth_zbuffer", 1, unit=False, offset=1500.0, scale=1000.0,
                            masked=True),
    # (x - 0.5) * 2 == (x - 0.5) / 0.5
    "normal": Domain("normal", 3, unit=True, offset=0.5, scale=0.5, masked=True, flip_negate=0,
                     outputs=3),
    "keypoints2d": Domain("keypoints2d", 1, unit=False, offset=50.0, scale=100.0),
    "edge_texture": Domain("edge_texture", 1, unit=False, offset=718.0, scale=1070.0),
}
TASKS = tuple(DOMAINS)
# Standley's task letters (taskonomy_losses.get_losses_and_tasks) and the loss keys the
# published TAG/CS tables use (tag.patch: ss_l, depth_l, norm_l, key_l, edge2d_l).
TASK_LETTERS = {"s": "segment_semantic", "d": "depth_zbuffer", "n": "normal",
                "k": "keypoints2d", "t": "edge_texture"}
LOSS_KEYS = {"segment_semantic": "ss_l", "depth_zbuffer": "depth_l", "normal": "norm_l",
             "keypoints2d": "key_l", "edge_texture": "edge2d_l"}
RGB = Domain(INPUT_DOMAIN, 3, unit=True)


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    """Task names from letters (``"sdntk"``) or names (``"normal,depth_zbuffer"`` or a list).

    The order is the canonical :data:`TASKS` order whatever the order given.
    """
    if isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
        if len(items) == 1 and items[0] not in DOMAINS:
            unknown = sorted(set(items[0]) - set(TASK_LETTERS))
            if unknown:
                raise ValueError(f"Unknown task letter(s) {unknown}; letters are "
                                 f"{TASK_LETTERS}. Received: tasks={spec!r}")
            items = [TASK_LETTERS[c] for c in items[0]]
    else:
        items = list(spec)
    unknown = [t for t in items if t not in DOMAINS]
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown}; tasks are {list(TASKS)}. "
                         f"Received: tasks={spec!r}")
    if not items:
        raise ValueError(f"No tasks given. Received: tasks={spec!r}")
    return [t for t in TASKS if t in items]


# ----------------------------------------------------------------------------- layout
def read_building_list(path: str) -> list[str]:
    """Building names of a ``*_models.txt`` list (lines stripped, blank lines skipped)."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def split_buildings(split: str, splits_dir: str = SPLITS_DIR) -> list[str]:
    """The buildings of ``split`` ("train", "val" or "test") from ``splits_dir``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    return read_building_list(os.path.join(splits_dir, f"{split}_models.txt"))


def list_images(root: str, buildings: Optional[Iterable[str]] = None, *,
                limit: Optional[int | tuple[int, int]] = None) -> list[str]:
    """Sorted rgb paths of the listed buildings (``TaskonomyLoader.__init__``).

    Args:
      root: the Taskonomy root (holding ``rgb/`` and one folder per domain).
      buildings: building names to keep, or None for every building under ``root/rgb``.
      limit: an int keeps the first N sorted images of each building, a pair ``(a, b)`` the
        slice ``a:b`` (the original's ``model_limit``).

    Returns:
      Paths ordered by building name, then file name (deterministic).
    """
    rgb_root = os.path.join(root, INPUT_DOMAIN)
    if not os.path.isdir(rgb_root):
        raise FileNotFoundError(f"No {INPUT_DOMAIN}/ folder under the Taskonomy root "
                                f"{root!r}; expected root/rgb/<building>/<image>.png.")
    wanted = None if buildings is None else set(buildings)
    by_building = {}
    for where, subdirs, files in os.walk(rgb_root):
        if subdirs:
            continue  # only leaf folders are buildings
        building = os.path.basename(where)
        if wanted is not None and building not in wanted:
            continue
        names = sorted(f for f in files if f.lower().endswith(".png"))
        if isinstance(limit, tuple):
            names = names[limit[0]:limit[1]]
        elif limit is not None:
            names = names[:limit]
        by_building[building] = [os.path.join(where, f) for f in names]
    return [p for b in sorted(by_building) for p in by_building[b]]


def label_path(root: str, rgb_path: str, domain: str) -> str:
    """The label file of ``domain`` for an rgb file: ``rgb`` replaced below ``root``."""
    relative = os.path.relpath(rgb_path, root)
    return os.path.join(root, relative.replace(INPUT_DOMAIN, domain))


def mask_source(root: str, tasks: Sequence[str]) -> Optional[str]:
    """The domain whose file gives the mask: None, ``"depth_zbuffer"`` or ``"mask"``."""
    if not any(DOMAINS[t].masked for t in tasks):
        return None
    if "depth_zbuffer" in tasks or not os.path.isdir(os.path.join(root, MASK_DOMAIN)):
        return "depth_zbuffer"
    return MASK_DOMAIN


# ----------------------------------------------------------------------------- decoding
def decode_png(contents: tf.Tensor, channels: int, *, unit: bool) -> tf.Tensor:
    """Decodes a PNG of either bit depth to float32 ``[H, W, channels]``.

    ``unit``: scale to [0, 1] by the file's own maximum (255 or 65535), like torchvision's
    ``ToTensor`` on 8-bit images; otherwise the stored raw values (PIL 'L' / 'I;16').
    """
    bit_depth = tf.io.decode_raw(tf.strings.substr(contents, 24, 1), tf.uint8)[0]

    def sixteen():
        image = tf.cast(tf.io.decode_png(contents, channels=channels, dtype=tf.uint16),
                        tf.float32)
        return image / 65535.0 if unit else image

    def eight():
        image = tf.cast(tf.io.decode_png(contents, channels=channels, dtype=tf.uint8),
                        tf.float32)
        return image / 255.0 if unit else image

    image = tf.cond(tf.equal(bit_depth, 16), sixteen, eight)
    image.set_shape([None, None, channels])
    return image


def _resize(image: tf.Tensor, size: int, *, nearest: bool) -> tf.Tensor:
    if nearest:
        return tf.image.resize(image, (size, size), method="nearest")
    # PIL's BILINEAR filter widens its support when downscaling: antialias=True matches it.
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def _maybe_resize(image: tf.Tensor, size: int, *, nearest: bool) -> tf.Tensor:
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    out = tf.cond(same, lambda: image, lambda: _resize(image, size, nearest=nearest))
    out.set_shape([size, size, image.shape[-1]])
    return out


def _target(domain: Domain, raw: tf.Tensor) -> tf.Tensor:
    return (raw - domain.offset) / domain.scale


def decode_example(files: dict, tasks: Sequence[str], *, image_size: int,
                   mask_domain: Optional[str], flip: tf.Tensor | bool = False):
    """Decodes one example from PNG bytes keyed by domain (``rgb``, tasks, mask source).

    Returns ``(image, {task: target})``: image float32 [S, S, 3] in [0, 1]; each target float32
    [S, S, C] (plus one mask channel for masked tasks). ``flip`` mirrors everything left-right
    and negates the normal's x-component.
    """
    flip = tf.convert_to_tensor(flip)

    def load(domain: Domain, contents):
        image = decode_png(contents, domain.channels, unit=domain.unit)
        image = _maybe_resize(image, image_size, nearest=domain.nearest)
        return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)

    image = load(RGB, files[INPUT_DOMAIN])
    mask = None
    if mask_domain == "depth_zbuffer":
        depth_raw = load(DOMAINS["depth_zbuffer"], files["depth_zbuffer"])
        mask = tf.cast(depth_raw < DEPTH_MASK_THRESHOLD, tf.float32)
    elif mask_domain == MASK_DOMAIN:
        mask_raw = load(Domain(MASK_DOMAIN, 1, unit=False, nearest=True), files[MASK_DOMAIN])
        mask = tf.cast(mask_raw > 0, tf.float32)
    targets = {}
    for task in tasks:
        domain = DOMAINS[task]
        if task == "depth_zbuffer" and mask_domain == "depth_zbuffer":
            target = _target(domain, depth_raw)
        else:
            target = _target(domain, load(domain, files[task]))
        if domain.flip_negate is not None:
            sign = tf.where(flip, -1.0, 1.0)
            factors = [sign if c == domain.flip_negate else tf.constant(1.0)
                       for c in range(domain.channels)]
            target = target * tf.stack(factors)
        if domain.masked:
            target = tf.concat([target, mask], axis=-1)
        targets[task] = target
    return image, targets


def needed_domains(tasks: Sequence[str], mask_domain: Optional[str]) -> list[str]:
    """Domains whose files one example needs, input first."""
    domains = [INPUT_DOMAIN] + list(tasks)
    if mask_domain is not None and mask_domain not in domains:
        domains.append(mask_domain)
    return domains


# ----------------------------------------------------------------------------- datasets
class Examples(NamedTuple):
    """File paths of a split: ``paths[domain][i]`` is example i's file of that domain."""

    root: str
    tasks: tuple[str, ...]
    mask_domain: Optional[str]
    paths: dict

    def __len__(self):
        return len(self.paths[INPUT_DOMAIN])


def find_examples(root: str, tasks: Sequence[str], buildings: Optional[Iterable[str]] = None,
                  *, limit: Optional[int | tuple[int, int]] = None) -> Examples:
    """Lists the examples of ``buildings`` and derives each label path from the rgb path."""
    tasks = parse_tasks(tasks)
    rgb = list_images(root, buildings, limit=limit)
    mask_domain = mask_source(root, tasks)
    paths = {domain: rgb if domain == INPUT_DOMAIN else [label_path(root, p, domain)
                                                          for p in rgb]
             for domain in needed_domains(tasks, mask_domain)}
    return Examples(root, tuple(tasks), mask_domain, paths)


def split_examples(root: str, tasks: Sequence[str], split: str, *,
                   splits_dir: str = SPLITS_DIR,
                   limit: Optional[int | tuple[int, int]] = "default") -> Examples:
    """The examples of a named split; val/test keep 1000 images per building by default."""
    if limit == "default":
        limit = None if split == "train" else EVAL_IMAGES_PER_BUILDING
    return find_examples(root, tasks, split_buildings(split, splits_dir), limit=limit)


def _decode_any_png(contents: tf.Tensor) -> tf.Tensor:
    """Decodes a PNG of either bit depth completely (a truncated or corrupt file fails)."""
    return tf.io.decode_png(contents, dtype=tf.uint16)


_CHECKED: dict = {}  # (path, size, mtime) tuples -> their bad files: one check per process


def _stat_key(files: Sequence[str]) -> tuple:
    key = []
    for path in files:
        try:
            st = os.stat(path)
            key.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            key.append((path, None, None))
    return tuple(key)


def check_examples(examples: Examples, *, skip_bad_files: bool = False,
                   report: Optional[BadFiles] = None, what: str = "Taskonomy",
                   num_parallel_calls: int = tf.data.AUTOTUNE) -> Examples:
    """Reads and decodes every file of ``examples`` once (input and targets); a missing or
    corrupt one raises :class:`tag_tf.io.bad_files.BadFileError` naming it and what is
    wrong, or with ``skip_bad_files`` its example is dropped and the file added to
    ``report`` (count and first paths).

    Returns the examples without the dropped ones. Checks are remembered in the process
    (files unchanged in size and time are not decoded again).
    """
    files = sorted({p for paths in examples.paths.values() for p in paths})
    key = _stat_key(files)
    if key not in _CHECKED:
        _CHECKED[key] = find_bad_files(files, _decode_any_png,
                                       num_parallel_calls=num_parallel_calls)
    bad = dict(_CHECKED[key])
    if not bad:
        return examples
    handle(sorted(bad.items()), skip_bad_files=skip_bad_files, report=report, what=what)
    keep = [i for i in range(len(examples))
            if not any(examples.paths[d][i] in bad for d in examples.paths)]
    return Examples(examples.root, examples.tasks, examples.mask_domain,
                    {d: [v[i] for i in keep] for d, v in examples.paths.items()})


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training steps per epoch: the original's epoch is a fifth of the data past 10000 batches."""
    steps = num_examples // batch_size
    if steps == 0:
        raise ValueError(f"Fewer training examples ({num_examples}) than one batch "
                         f"({batch_size}).")
    return steps // 5 if steps > 10000 else steps


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = True
    return options


def _batch_and_prefetch(dataset, batch_size, drop_remainder, deterministic):
    return (dataset.batch(batch_size, drop_remainder=drop_remainder)
            .prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic)))


def make_dataset(examples: Examples, *, batch_size: int, training: bool,
                 image_size: int = IMAGE_SIZE, augment: Optional[bool] = None,
                 seed: Optional[int] = None, repeat: bool = False,
                 drop_remainder: Optional[bool] = None, deterministic: Optional[bool] = None,
                 num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """A batched ``(image, {task: target})`` dataset: parallel read + decode, then prefetch.

    Nothing is dropped: a missing or corrupt file stops the iteration with TensorFlow's
    error. Check the examples first with :func:`check_examples` (``load_splits`` does),
    which names the file, or drops it with ``skip_bad_files=True`` and reports it.

    Args:
      examples: from :func:`find_examples` / :func:`split_examples`.
      batch_size: examples per batch.
      training: shuffle every epoch (the whole file list, like ``DataLoader(shuffle=True)``)
        and flip; evaluation keeps file order.
      image_size: side of the square inputs and targets (divisible by 16 for the model).
      augment: random horizontal flip; defaults to ``training``.
      seed: shuffle/flip seed (None: nondeterministic).
      repeat: repeat forever (use with ``fit(steps_per_epoch=...)``).
      drop_remainder: defaults to ``training``.
      deterministic: element order guarantees; defaults to ``not training or seed is not None``.
      num_parallel_calls: decode parallelism.
    """
    augment = training if augment is None else augment
    drop_remainder = training if drop_remainder is None else drop_remainder
    deterministic = (not training or seed is not None) if deterministic is None else deterministic
    dataset = tf.data.Dataset.from_tensor_slices(
        {d: examples.paths[d] for d in examples.paths})
    if training:
        dataset = dataset.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = _with_flips(dataset, augment, seed)
    return _load_batches(dataset, examples, batch_size=batch_size, image_size=image_size,
                         drop_remainder=drop_remainder, deterministic=deterministic,
                         num_parallel_calls=num_parallel_calls)


def _load_batches(dataset: tf.data.Dataset, examples: Examples, *, batch_size: int,
                  image_size: int, drop_remainder: bool, deterministic: bool,
                  num_parallel_calls: int) -> tf.data.Dataset:
    """``(paths by domain, flip)`` elements -> decoded, batched, prefetched examples."""
    domains = list(examples.paths)

    def load(paths, flip):
        files = {d: tf.io.read_file(paths[d]) for d in domains}
        return decode_example(files, examples.tasks, image_size=image_size,
                              mask_domain=examples.mask_domain, flip=flip)

    dataset = dataset.map(load, num_parallel_calls=num_parallel_calls,
                          deterministic=deterministic)
    return _batch_and_prefetch(dataset, batch_size, drop_remainder, deterministic)


def epoch_data_fn(examples: Examples, *, batch_size: int, steps_per_epoch: int, seed: int,
                  image_size: int = IMAGE_SIZE, augment: bool = True,
                  num_parallel_calls: int = tf.data.AUTOTUNE
                  ) -> Callable[[int], tf.data.Dataset]:
    """``epoch -> that epoch's batches`` of the endless training stream
    (``pipeline.Experiment.train_data_fn``).

    The stream passes over the examples again and again; pass ``p`` is the permutation
    ``stateless_shuffle(seed=(seed, 2p))`` with flips drawn from ``(seed, 2p + 1)``, and
    epoch ``k`` is its ``steps_per_epoch`` batches from example ``k * steps_per_epoch *
    batch_size`` on (batches span passes, as :func:`make_dataset` with ``repeat``). An
    epoch's data is a function of the epoch alone, not of how often it was iterated, so
    resumes are exact under a ``tf.distribute`` strategy; starting at epoch k costs no
    reading of the earlier epochs. Pass examples checked by :func:`check_examples`
    (``load_splits`` does): a missing or corrupt file stops the iteration.
    """
    if steps_per_epoch < 1 or batch_size < 1:
        raise ValueError(f"Need steps_per_epoch >= 1 and batch_size >= 1. Received: "
                         f"steps_per_epoch={steps_per_epoch}, batch_size={batch_size}")
    size = len(examples)
    if size == 0:
        raise ValueError("No training examples.")
    paths = {d: tf.constant(list(v)) for d, v in examples.paths.items()}

    def one_pass(p):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), 2 * p]))
        if augment:
            flips = tf.random.stateless_uniform(
                [size], seed=tf.stack([tf.constant(seed, tf.int64), 2 * p + 1])) < 0.5
        else:
            flips = tf.zeros([size], tf.bool)
        return tf.data.Dataset.from_tensor_slices((order, flips))

    def epoch_data(epoch: int) -> tf.data.Dataset:
        first_pass, offset = divmod(epoch * steps_per_epoch * batch_size, size)
        stream = tf.data.Dataset.range(first_pass, 2**62).flat_map(one_pass).skip(offset)
        stream = stream.map(lambda i, flip: ({d: tf.gather(v, i) for d, v in paths.items()},
                                             flip))
        batches = _load_batches(stream, examples, batch_size=batch_size,
                                image_size=image_size, drop_remainder=True, deterministic=True,
                                num_parallel_calls=num_parallel_calls)
        # An endless stream: every epoch has its steps.
        return batches.take(steps_per_epoch).apply(
            tf.data.experimental.assert_cardinality(steps_per_epoch))

    return epoch_data


def _with_flips(dataset: tf.data.Dataset, augment: bool, seed: Optional[int]):
    """Pairs each element with its flip decision (p = 0.5 when ``augment``), new each epoch."""
    if not augment:
        return dataset.map(lambda e: (e, tf.constant(False)))
    coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(dataset, coins.map(lambda r: tf.equal(r % 2, 1)))


# ----------------------------------------------------------------------------- TFRecords
def _feature_spec(domains: Sequence[str]) -> dict:
    spec = {d: tf.io.FixedLenFeature([], tf.string) for d in domains}
    spec["key"] = tf.io.FixedLenFeature([], tf.string)
    return spec


def write_tfrecords(examples: Examples, output_prefix: str, *, num_shards: int = 1) -> list[str]:
    """Converts examples to TFRecord shards holding the PNG bytes of every needed domain.

    Each record has one bytes feature per domain (``rgb``, the tasks, the mask source) and a
    ``key`` (the rgb path relative to the root). Decoding stays in :func:`decode_example`, so a
    TFRecord dataset yields exactly what the folder pipeline yields.

    Returns:
      The written shard paths ``{output_prefix}-00000-of-0000N.tfrecord``.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1. Received: num_shards={num_shards}")
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    paths = [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    temporary = [atomic.temporary_name(p) for p in paths]  # renamed once all are complete
    writers = [tf.io.TFRecordWriter(p) for p in temporary]
    try:
        for i in range(len(examples)):
            feature = {}
            for domain, files in examples.paths.items():
                with open(files[i], "rb") as f:
                    feature[domain] = tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[f.read()]))
            key = os.path.relpath(examples.paths[INPUT_DOMAIN][i], examples.root)
            feature["key"] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[key.encode()]))
            record = tf.train.Example(features=tf.train.Features(feature=feature))
            writers[i % num_shards].write(record.SerializeToString())
    except BaseException:
        for writer, tmp in zip(writers, temporary):
            writer.close()
            os.remove(tmp)
        raise
    for writer, tmp, path in zip(writers, temporary, paths):
        writer.close()
        atomic.fsync_file(tmp)
        os.replace(tmp, path)
    atomic.fsync_dir(os.path.dirname(os.path.abspath(output_prefix)))
    return paths


def _writer_info_path(directory: str) -> str:
    return os.path.join(directory, "info.json")


def convert_splits(root: str, tasks: Sequence[str], output_dir: str, *,
                   splits_dir: str = SPLITS_DIR, num_shards: Optional[dict] = None,
                   limit: Optional[int] = None) -> dict:
    """Writes ``output_dir/{train,val,test}-*.tfrecord`` and ``info.json`` (counts, tasks).

    Each shard appears under its name only once complete, and ``info.json`` (which
    :func:`load_splits` reads first) last, so an interrupted conversion is never read.

    ``limit`` caps the images per building of every split (val/test keep at most 1000).
    """
    tasks = parse_tasks(tasks)
    info = {"tasks": tasks, "splits": {}}
    for split in SPLITS:
        split_limit = limit if split == "train" else min(limit or EVAL_IMAGES_PER_BUILDING,
                                                          EVAL_IMAGES_PER_BUILDING)
        examples = split_examples(root, tasks, split, splits_dir=splits_dir, limit=split_limit)
        shards = (num_shards or {}).get(split, max(1, len(examples) // 2000))
        files = write_tfrecords(examples, os.path.join(output_dir, split), num_shards=shards)
        info["mask_domain"] = examples.mask_domain
        info["splits"][split] = {"examples": len(examples),
                                 "files": [os.path.basename(f) for f in files]}
    atomic.atomic_write_json(_writer_info_path(output_dir), info, indent=1)  # last: complete
    return info


def _record_key(path: str, index: int) -> Optional[str]:
    """The ``key`` feature (rgb path below the root) of record ``index`` of a shard."""
    try:
        record = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1)))
        key = tf.io.parse_single_example(record, {"key": tf.io.FixedLenFeature([], tf.string)})
        return key["key"].numpy().decode()
    except (tf.errors.OpError, StopIteration, UnicodeDecodeError):
        return None


def check_tfrecords(files: Sequence[str], tasks: Sequence[str], *,
                    mask_domain: Optional[str], skip_bad_files: bool = False,
                    report: Optional[BadFiles] = None, what: str = "Taskonomy TFRecord",
                    num_parallel_calls: int = tf.data.AUTOTUNE) -> tuple[dict, dict]:
    """Reads every record of the shards ``files`` and decodes its PNGs once; a corrupt shard,
    a record lacking a needed domain or holding a corrupt PNG raises
    :class:`tag_tf.io.bad_files.BadFileError` naming the shard, the record and its key, or
    with ``skip_bad_files`` is dropped and added to ``report``.

    Returns ``(excluded, counts)``: ``{shard index: set of bad record indices, or None for a
    whole unreadable shard}`` (for :func:`make_tfrecord_dataset`'s ``exclude``) and
    ``{shard index: records}`` of the readable shards.
    """
    domains = needed_domains(parse_tasks(tasks), mask_domain)
    spec = _feature_spec(domains)

    def check(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        return [_decode_any_png(example[d]) for d in domains]

    key = (_stat_key(files), tuple(domains))
    if key not in _CHECKED:
        bad, excluded, counts = [], {}, {}
        for k, path in enumerate(files):
            records = tf.data.TFRecordDataset(path)
            try:
                counts[k] = int(records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
            except tf.errors.OpError as e:  # missing, truncated or corrupt shard
                bad.append((path, f"the whole shard: {describe_error(e)}"))
                excluded[k] = None
                continue
            for index, reason in find_bad(records, check, count=counts[k],
                                          num_parallel_calls=num_parallel_calls):
                name = _record_key(path, index)
                bad.append((f"{path} (record {index}" + (f", {name})" if name else ")"), reason))
                excluded.setdefault(k, set()).add(index)
        _CHECKED[key] = (bad, excluded, counts)
    bad, excluded, counts = _CHECKED[key]
    handle(bad, skip_bad_files=skip_bad_files, report=report, what=what)
    return excluded, counts


class Splits(NamedTuple):
    """Batched train / validation / test datasets and the training epoch length."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    train_examples: int
    steps_per_epoch: int
    train_data_fn: Optional[Callable[[int], tf.data.Dataset]] = None  # :func:`epoch_data_fn`
    bad_files: Optional[BadFiles] = None  # dropped with skip_bad_files (count, first paths)


def load_splits(data_dir: str, tasks: Sequence[str], *, batch_size: int,
                eval_batch_size: Optional[int] = None, image_size: int = IMAGE_SIZE,
                splits_dir: str = SPLITS_DIR, seed: Optional[int] = None, augment: bool = True,
                limit: Optional[int] = None, tfrecord_dir: Optional[str] = None,
                skip_bad_files: bool = False) -> Splits:
    """The three splits as the original trains and evaluates on them.

    Training repeats forever (shuffled, flipped) with an epoch of :func:`steps_per_epoch`
    batches; validation and test keep the first 1000 sorted images of each building (fewer
    with ``limit``) in ``eval_batch_size`` batches (default half the training batch, as
    ``tag.patch``). ``tfrecord_dir`` reads shards from :func:`convert_splits` instead.
    With a ``seed`` and folders (not TFRecords), ``train_data_fn`` is the same training
    stream cut into epochs (:func:`epoch_data_fn`), which the pipeline then trains on.

    Every file (or record) of the three splits is decoded once first
    (:func:`check_examples`, :func:`check_tfrecords`): a missing or corrupt one stops here
    with :class:`tag_tf.io.bad_files.BadFileError` naming it; with ``skip_bad_files`` its
    example is dropped, and ``Splits.bad_files`` counts and names the dropped files.
    """
    tasks = parse_tasks(tasks)
    report = BadFiles()
    eval_batch_size = eval_batch_size or max(batch_size // 2, 1)
    train_data_fn = None
    if tfrecord_dir:
        import json  # pylint: disable=g-import-not-at-top
        with open(_writer_info_path(tfrecord_dir)) as f:
            info = json.load(f)
        missing = [t for t in tasks if t not in info["tasks"]]
        if missing:
            raise ValueError(f"The TFRecords in {tfrecord_dir} lack task(s) {missing}; they "
                             f"hold {info['tasks']}.")
        mask_domain = info["mask_domain"] if any(DOMAINS[t].masked for t in tasks) else None

        def split_dataset(split, **kwargs):
            files = [os.path.join(tfrecord_dir, f) for f in info["splits"][split]["files"]]
            excluded, counts = check_tfrecords(
                files, tasks, mask_domain=mask_domain, skip_bad_files=skip_bad_files,
                report=report, what=f"Taskonomy {split} TFRecord")
            examples = info["splits"][split]["examples"]
            if excluded:
                examples = sum(n - len(excluded.get(k) or ()) for k, n in counts.items())
            return make_tfrecord_dataset(
                files, tasks, image_size=image_size, mask_domain=mask_domain,
                num_examples=examples, exclude=excluded, **kwargs), examples

        (train, n_train), (val, _), (test, _) = (
            split_dataset("train", batch_size=batch_size, training=True, augment=augment,
                          seed=seed, repeat=True),
            split_dataset("val", batch_size=eval_batch_size, training=False),
            split_dataset("test", batch_size=eval_batch_size, training=False))
    else:
        eval_limit = min(limit or EVAL_IMAGES_PER_BUILDING, EVAL_IMAGES_PER_BUILDING)
        def checked(split, split_limit):
            return check_examples(
                split_examples(data_dir, tasks, split, splits_dir=splits_dir,
                               limit=split_limit),
                skip_bad_files=skip_bad_files, report=report, what=f"Taskonomy {split}")

        train_examples, val_examples, test_examples = (
            checked("train", limit), checked("val", eval_limit), checked("test", eval_limit))
        n_train = len(train_examples)
        if n_train == 0:
            raise ValueError(f"No training images of the listed buildings under "
                             f"{data_dir}/rgb (lists in {splits_dir}).")
        train = make_dataset(train_examples, batch_size=batch_size, training=True,
                             image_size=image_size, augment=augment, seed=seed, repeat=True)
        if seed is not None:
            train_data_fn = epoch_data_fn(
                train_examples, batch_size=batch_size, seed=seed, image_size=image_size,
                augment=augment, steps_per_epoch=steps_per_epoch(n_train, batch_size))
        val, test = (make_dataset(examples, batch_size=eval_batch_size, training=False,
                                  image_size=image_size)
                     for examples in (val_examples, test_examples))
    return Splits(train, val, test, n_train, steps_per_epoch(n_train, batch_size),
                  train_data_fn, report)


def make_tfrecord_dataset(files: Sequence[str], tasks: Sequence[str], *, batch_size: int,
                          training: bool, mask_domain: Optional[str] = "default",
                          image_size: int = IMAGE_SIZE, augment: Optional[bool] = None,
                          seed: Optional[int] = None, repeat: bool = False,
                          drop_remainder: Optional[bool] = None,
                          shuffle_buffer: int = 10000, num_examples: Optional[int] = None,
                          exclude: Optional[dict] = None,
                          num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Like :func:`make_dataset`, reading shards written by :func:`write_tfrecords`.

    ``mask_domain`` defaults to depth when a masked task is trained (pass ``"mask"`` if the
    shards were written with mask files). ``num_examples`` (from ``info.json``) gives a finite
    dataset its length, so Keras knows when an evaluation ends. ``exclude`` (from
    :func:`check_tfrecords` with ``skip_bad_files``): ``{shard index: record indices to
    drop, or None to drop the shard}``.
    """
    tasks = parse_tasks(tasks)
    if mask_domain == "default":
        mask_domain = "depth_zbuffer" if any(DOMAINS[t].masked for t in tasks) else None
    augment = training if augment is None else augment
    drop_remainder = training if drop_remainder is None else drop_remainder
    deterministic = not training or seed is not None
    spec = _feature_spec(needed_domains(tasks, mask_domain))
    exclude = exclude or {}
    shards = [k for k in range(len(files)) if not (k in exclude and exclude[k] is None)]
    dropped = [k * 2**32 + i for k, records in exclude.items() for i in (records or ())]
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(shards, tf.int64),
                                                  tf.constant([files[k] for k in shards],
                                                              tf.string)))
    if training:
        dataset = dataset.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)

    def read(shard, path):
        records = tf.data.TFRecordDataset(path)
        if not dropped:
            return records
        codes = tf.constant(dropped, tf.int64)
        return records.enumerate().filter(
            lambda i, _: tf.logical_not(tf.reduce_any(tf.equal(shard * 2**32 + i, codes)))
        ).map(lambda _, record: record)

    dataset = dataset.interleave(read, cycle_length=max(1, min(len(shards), 8)),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if num_examples is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_examples))
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = _with_flips(dataset, augment, seed)

    def load(serialized, flip):
        files_ = tf.io.parse_single_example(serialized, spec)
        return decode_example(files_, tasks, image_size=image_size, mask_domain=mask_domain,
                              flip=flip)

    dataset = dataset.map(load, num_parallel_calls=num_parallel_calls,
                          deterministic=deterministic)
    return _batch_and_prefetch(dataset, batch_size, drop_remainder, deterministic)
