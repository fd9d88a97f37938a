"""CelebA data: TFDS ``celeb_a`` prepared offline from the original files; fast tf.data input.

Two steps (see celeba/README.md):

1. **Prepare** the TFDS dataset once. ``tfds.load("celeb_a")`` downloads from Google Drive,
   which often fails (quota, checksum errors). :func:`prepare_from_files` runs the real TFDS
   ``celeb_a`` builder on the five original files you downloaded by hand
   (:data:`ORIGINAL_FILES`), with its download manager pointed at them: no network access.
2. **Read** it with :func:`load_splits`: images to float [0, 1], resized (64 x 64 in the
   paper), one integer label (0/1) per chosen attribute, parallel decoding, optional cache,
   prefetch. Elements are ``(image, {attribute: label})`` batches, as
   :mod:`tag_tf.runner.pipeline` expects.

Follows google-research ``tag/celeba/CelebA.ipynb`` (``load_dataset``): ``convert_image_dtype``
to float, bilinear ``tf.image.resize``, training examples reshuffled every epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from typing import Callable, NamedTuple, Optional, Sequence
from unittest import mock

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from tag_tf.io import atomic
from tag_tf.io.bad_files import BadFiles, find_bad, handle

# All 40 CelebA attributes, in the order of list_attr_celeba.txt.
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
# The paper's 9 tasks, in the paper's order.
DEFAULT_TASKS = ("5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Goatee",
                 "Mustache", "No_Beard", "Rosy_Cheeks", "Wearing_Hat")
# ``--tasks=all``: every attribute of :data:`ATTRIBUTES`, in that order.
ALL_TASKS = "all"
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 162_770, "validation": 19_867, "test": 19_962}
IMAGE_SIZE = 64
DATASET_NAME = "celeb_a"
BAD_FILES_FILE = "bad_files.json"  # beside the prepared dataset: what preparing dropped

# The TFDS builder's download keys -> the original file names (as on the CelebA site).
ORIGINAL_FILES = {
    "img_align_celeba": "img_align_celeba.zip",
    "list_eval_partition": "list_eval_partition.txt",
    "list_attr_celeba": "list_attr_celeba.txt",
    "landmarks_celeba": "list_landmarks_align_celeba.txt",
    "identity_celeba": "identity_CelebA.txt",
}
# SHA-256 of the original files (TFDS celeb_a checksums.tsv); a mismatch is only a warning.
ORIGINAL_SHA256 = {
    "img_align_celeba.zip": "46fb89443c578308acf364d7d379fe1b9efb793042c0af734b6112e4fd3a8c74",
    "list_eval_partition.txt":
        "fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7",
    "list_attr_celeba.txt": "f0e5da289d5ccf75ffe8811132694922b60f2af59256ed362afa03fefba324d0",
    "list_landmarks_align_celeba.txt":
        "6c02a87569907f6db2ba99019085697596730e8129f67a3d61659f198c48d43b",
    "identity_CelebA.txt": "c6143857c3e2630ac2da9f782e9c1232e5e59be993a9d44e8a7916c78a6158c0",
}


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """Returns ``tasks`` as a list; raises on unknown, duplicate or no attributes."""
    if isinstance(tasks, str):
        raise ValueError(f"tasks must be a list of attribute names, not one string. "
                         f"Received: tasks={tasks!r}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("At least one CelebA attribute is needed. Received: tasks=[]")
    unknown = [t for t in tasks if t not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"Unknown CelebA attribute(s) {unknown}. Attributes: {list(ATTRIBUTES)}")
    duplicates = sorted({t for t in tasks if tasks.count(t) > 1})
    if duplicates:
        raise ValueError(f"Duplicate attribute(s) {duplicates} in tasks={tasks}")
    return tasks


def resolve_tasks(tasks: Optional[Sequence[str] | str]) -> list[str]:
    """``--tasks`` as attribute names: None or empty -> the paper's 9; ``"all"`` (or
    ``["all"]``) -> the 40 :data:`ATTRIBUTES` in file order; a comma-separated string or a
    list -> those names, checked by :func:`check_tasks`. ``all`` mixed with names is an
    error (it already means every attribute)."""
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = list(tasks or [])
    if not tasks:
        return list(DEFAULT_TASKS)
    if ALL_TASKS in tasks:
        if len(tasks) > 1:
            raise ValueError(f"'{ALL_TASKS}' already means all {len(ATTRIBUTES)} attributes; "
                             f"give it alone. Received: tasks={tasks}")
        return list(ATTRIBUTES)
    return check_tasks(tasks)


def _builder_class():
    from tensorflow_datasets.datasets.celeb_a import (  # pylint: disable=g-import-not-at-top
        celeb_a_dataset_builder)
    return celeb_a_dataset_builder


def original_file_paths(files_dir: str) -> dict[str, str]:
    """``{TFDS download key: path}`` of the original files in ``files_dir``; raises if missing."""
    paths = {key: os.path.join(files_dir, name) for key, name in ORIGINAL_FILES.items()}
    missing = [name for key, name in ORIGINAL_FILES.items() if not os.path.isfile(paths[key])]
    if missing:
        raise FileNotFoundError(
            f"{files_dir} lacks the original CelebA file(s) {missing}. Needed: "
            f"{sorted(ORIGINAL_FILES.values())} (see celeba/README.md, 'Data').")
    return paths


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_original_files(files_dir: str) -> list[str]:
    """Compares the files' SHA-256 with the originals'; returns (and logs) the mismatches."""
    mismatched = []
    for path in original_file_paths(files_dir).values():
        name = os.path.basename(path)
        if _sha256(path) != ORIGINAL_SHA256[name]:
            mismatched.append(name)
    if mismatched:
        logging.warning("CelebA file(s) %s differ from the originals TFDS knows (re-packed "
                        "archive or other release?); preparing them anyway.", mismatched)
    return mismatched


def _listed_names(path: str, *, header: bool) -> list[str]:
    """Image names of a CelebA list file (first column; after the count and header lines
    when ``header``)."""
    with open(path) as f:
        lines = f.read().split("\n")
    return [line.split()[0] for line in lines[2 if header else 0:] if line.strip()]


def check_original_files(files_dir: str, *,
                         num_parallel_calls: int = tf.data.AUTOTUNE) -> list[tuple[str, str]]:
    """Every image the partition file lists: in the archive, with a row in the attribute,
    landmark and identity files, and a complete JPEG (each decoded once, in parallel).

    Returns the bad ones as ``(name, reason)``, names like
    ``img_align_celeba.zip:img_align_celeba/000002.jpg``.
    """
    paths = original_file_paths(files_dir)
    names = _listed_names(paths["list_eval_partition"], header=False)
    rows = {key: set(_listed_names(paths[key], header=key != "identity_celeba"))
            for key in ("list_attr_celeba", "landmarks_celeba", "identity_celeba")}
    archive_name = os.path.basename(paths["img_align_celeba"])
    bad, present = [], []
    with zipfile.ZipFile(paths["img_align_celeba"]) as archive:
        members = {os.path.basename(n): n for n in archive.namelist() if not n.endswith("/")}
        for name in names:
            label = f"{archive_name}:{members.get(name, 'img_align_celeba/' + name)}"
            lacking = [ORIGINAL_FILES[k] for k, listed in rows.items() if name not in listed]
            if name not in members:
                bad.append((label, f"missing from {archive_name}"))
            elif lacking:
                bad.append((label, f"no row in {', '.join(lacking)}"))
            else:
                present.append(name)

        def read(k):
            try:
                return archive.read(members[present[k]])
            except (zipfile.BadZipFile, OSError) as e:  # a damaged member (CRC, truncation)
                raise ValueError(f"unreadable in {archive_name}: {e}") from e

        def contents():
            for k in range(len(present)):
                try:
                    yield read(k)
                except ValueError:
                    yield b""  # (fails to decode: found bad, and named by read(k))

        dataset = tf.data.Dataset.from_generator(contents,
                                                 output_signature=tf.TensorSpec((), tf.string))
        for k, reason in find_bad(dataset, lambda c: tf.io.decode_jpeg(c, channels=3),
                                  count=len(present), item_at=read,
                                  num_parallel_calls=num_parallel_calls):
            bad.append((f"{archive_name}:{members[present[k]]}", reason))
    return bad


def read_bad_files(builder: tfds.core.DatasetBuilder) -> BadFiles:
    """What :func:`prepare_from_files` dropped (``skip_bad_files``) from this dataset."""
    path = os.path.join(builder.data_dir, BAD_FILES_FILE)
    if not tf.io.gfile.exists(path):
        return BadFiles()
    with tf.io.gfile.GFile(path) as f:
        return BadFiles.from_json(json.load(f))


def prepare_from_files(files_dir: str, data_dir: str, *,
                       verify_checksums: bool = True, skip_bad_files: bool = False,
                       report: Optional[BadFiles] = None) -> tfds.core.DatasetBuilder:
    """Builds TFDS ``celeb_a`` in ``data_dir`` from the original files, without any network.

    Runs the real TFDS builder (same features, splits, example keys and file layout as
    ``tfds.load("celeb_a")``), with its download manager's ``download`` answering from
    ``files_dir`` instead of Google Drive. The archive is read in place (the builder loads
    all images into memory, about 1.5 GB). An already prepared dataset is left as it is.

    Before preparing, every listed image is checked (:func:`check_original_files`): one
    missing from the archive or the label files, or not a complete JPEG, stops here with
    :class:`tag_tf.io.bad_files.BadFileError` naming it (nothing is prepared); with
    ``skip_bad_files`` it is left out of the dataset, and the count and first names are
    added to ``report`` and written beside the dataset (:func:`read_bad_files`).

    Args:
      files_dir: folder holding the five files of :data:`ORIGINAL_FILES`.
      data_dir: TFDS data directory to write (``<data_dir>/celeb_a/2.1.0``).
      verify_checksums: compare the files with the originals' SHA-256 (a mismatch is
        logged as a warning, not an error).
      skip_bad_files: leave bad images out instead of failing.
      report: receives the left-out images (count and first names).

    Returns:
      The prepared builder.
    """
    paths = original_file_paths(files_dir)
    if verify_checksums:
        verify_original_files(files_dir)
    module = _builder_class()
    by_url = {
        module.IMG_ALIGNED_DATA: paths["img_align_celeba"],
        module.EVAL_LIST: paths["list_eval_partition"],
        module.ATTR_DATA: paths["list_attr_celeba"],
        module.LANDMARKS_DATA: paths["landmarks_celeba"],
        module.IDENTITY_DATA: paths["identity_celeba"],
    }

    def local_download(url_or_urls):
        def one(url):
            if url not in by_url:
                raise ValueError(f"celeb_a asked for {url!r}, which has no local file; "
                                 "nothing is downloaded.")
            return by_url[url]
        return tf.nest.map_structure(one, url_or_urls)

    builder = module.Builder(data_dir=data_dir)
    if builder.is_prepared():
        logging.info("%s is already prepared in %s.", builder.info.full_name, data_dir)
        if report is not None:
            report.merge(read_bad_files(builder))
        return builder
    bad = check_original_files(files_dir)
    dropped = BadFiles()
    handle(bad, skip_bad_files=skip_bad_files, report=dropped, what="CelebA image")
    filtered_dir = None
    if bad:  # skip_bad_files: a partition list without them (the builder reads only those)
        names = {name.rsplit("/", 1)[-1] for name, _ in bad}
        filtered_dir = tempfile.mkdtemp(prefix="celeba_partition_")
        filtered = os.path.join(filtered_dir, ORIGINAL_FILES["list_eval_partition"])
        with open(paths["list_eval_partition"]) as f:
            lines = [line for line in f.read().split("\n")
                     if line.strip() and line.split()[0] not in names]
        with open(filtered, "w") as f:
            f.write("\n".join(lines) + "\n")
        by_url[module.EVAL_LIST] = filtered
    make_manager = builder._make_download_manager  # pylint: disable=protected-access

    def offline_manager(*args, **kwargs):
        manager = make_manager(*args, **kwargs)
        manager.download = local_download
        manager.download_and_extract = local_download
        return manager

    config = tfds.download.DownloadConfig(try_download_gcs=False)
    try:
        with mock.patch.object(builder, "_make_download_manager", offline_manager):
            builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"),
                                         download_config=config)
    finally:
        if filtered_dir:
            shutil.rmtree(filtered_dir, ignore_errors=True)
    if dropped:
        atomic.atomic_write_json(os.path.join(builder.data_dir, BAD_FILES_FILE),
                                 dropped.to_json(), indent=1)
    if report is not None:
        report.extend(dropped.first)
        report.count += dropped.count - len(dropped.first)
    return builder


def load_builder(data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
    """The prepared ``celeb_a`` builder in ``data_dir`` (default TFDS directory if None)."""
    builder = _builder_class().Builder(data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS celeb_a is not prepared in {builder.data_dir}. Prepare it from the original "
            "files with `python -m celeba.main --mode=prepare --files_dir=... --data_dir=...` "
            "(see celeba/README.md).")
    return builder


def _preprocess(image_feature, tasks: Sequence[str], image_size: int):
    def fn(example):
        image = image_feature.decode_example(example["image"])
        image = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
        image = tf.image.resize(image, [image_size, image_size])  # bilinear, as the original
        labels = {task: tf.cast(example["attributes"][task], tf.int32) for task in tasks}
        return image, labels
    return fn


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of training epoch ``epoch`` of a run seeded ``seed``."""
    return (seed * 1_000_003 + epoch + 1) % 2**31


def make_dataset(builder: tfds.core.DatasetBuilder, split: str, *, tasks: Sequence[str],
                 batch_size: int, image_size: int = IMAGE_SIZE, training: bool = False,
                 seed: int = 0, shuffle_buffer: Optional[int] = None,
                 cache: Optional[str] = None, limit: Optional[int] = None,
                 epoch: Optional[int] = None) -> tf.data.Dataset:
    """One split as batches of ``(image [B, s, s, 3] float32 in [0, 1], {task: int32 [B]})``.

    Args:
      builder: a prepared ``celeb_a`` builder (:func:`load_builder`).
      split: ``"train"``, ``"validation"`` or ``"test"`` (any TFDS split string works).
      tasks: attributes to label (:func:`check_tasks`).
      batch_size: examples per batch (the last batch may be smaller).
      image_size: output height and width.
      training: shuffle the files and the examples, reshuffled every epoch.
      seed: shuffle seed.
      shuffle_buffer: examples in the shuffle buffer (default: the whole split, as the
        original). Without a cache the buffer holds encoded JPEGs (~1.5 GB for the
        training split); with one it holds decoded images.
      cache: ``None`` (decode every epoch), ``"memory"``, or a file path prefix (the split
        name is appended): caches decoded, resized images.
      limit: use only the first ``limit`` examples (debugging, tests).
      epoch: training only: this epoch's data, shuffled by :func:`epoch_seed` and the same
        on every iteration (None: one dataset reshuffled on every iteration).
    """
    tasks = check_tasks(tasks)
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size and image_size must be positive. Received: "
                         f"batch_size={batch_size}, image_size={image_size}")
    reshuffle = epoch is None
    if not reshuffle:
        seed = epoch_seed(seed, epoch)
    ds = builder.as_dataset(
        split=split, shuffle_files=training,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=seed,
                                    shuffle_reshuffle_each_iteration=reshuffle))
    if limit is not None:
        ds = ds.take(limit)
    ds = ds.map(lambda ex: {"image": ex["image"], "attributes": ex["attributes"]})
    preprocess = _preprocess(builder.info.features["image"], tasks, image_size)
    size = int(builder.info.splits[split].num_examples) if limit is None else limit
    buffer = max(1, min(shuffle_buffer or size, size))
    if cache:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.cache() if cache == "memory" else ds.cache(f"{cache}_{split}_{image_size}")
        if training:
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=reshuffle)
    else:
        if training:  # shuffle the small encoded examples, then decode in parallel
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=reshuffle)
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=not training or not reshuffle)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_data_fn(data_dir: Optional[str], *, tasks: Sequence[str] = DEFAULT_TASKS,
                  batch_size: int = 256, image_size: int = IMAGE_SIZE, seed: int = 0,
                  shuffle_buffer: Optional[int] = None, cache: Optional[str] = None,
                  limit: Optional[int] = None) -> Callable[[int], tf.data.Dataset]:
    """``epoch -> that epoch's training batches`` (``pipeline.Experiment.train_data_fn``).

    Each epoch's files and examples are shuffled by :func:`epoch_seed` without reshuffling,
    so the epoch's batches do not depend on how often the dataset is iterated: resumes are
    exact under a ``tf.distribute`` strategy too. Arguments as :func:`make_dataset` (a
    ``"memory"`` cache is per epoch here: use a file cache to decode once).
    """
    builder = load_builder(data_dir)

    def epoch_data(epoch: int) -> tf.data.Dataset:
        return make_dataset(builder, "train", tasks=tasks, batch_size=batch_size,
                            image_size=image_size, training=True, seed=seed,
                            shuffle_buffer=shuffle_buffer, cache=cache, limit=limit,
                            epoch=epoch)

    return epoch_data


class Splits(NamedTuple):
    """The three CelebA splits as batched datasets, and the images the prepare step left
    out (``prepare_from_files(skip_bad_files=True)``; count and first names)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    bad_files: Optional[BadFiles] = None


def load_splits(data_dir: Optional[str], *, tasks: Sequence[str] = DEFAULT_TASKS,
                batch_size: int = 256, image_size: int = IMAGE_SIZE, seed: int = 0,
                shuffle_buffer: Optional[int] = None, cache: Optional[str] = None,
                limit: Optional[int] = None) -> Splits:
    """Train (shuffled), validation and test datasets of the prepared ``celeb_a`` in ``data_dir``.

    See :func:`make_dataset` for the arguments; ``limit`` applies to every split.
    """
    builder = load_builder(data_dir)
    common = dict(tasks=tasks, batch_size=batch_size, image_size=image_size, seed=seed,
                  cache=cache, limit=limit)
    return Splits(
        train=make_dataset(builder, "train", training=True, shuffle_buffer=shuffle_buffer,
                           **common),
        validation=make_dataset(builder, "validation", **common),
        test=make_dataset(builder, "test", **common),
        bad_files=read_bad_files(builder))
