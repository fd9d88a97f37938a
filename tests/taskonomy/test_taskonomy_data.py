"""Taskonomy layout reader and tf.data pipeline on a tiny fake tree (offline)."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from tag_tf.io.bad_files import BadFileError, BadFiles
from taskonomy import data
from taskonomy import testing

SIZE = 32
SPLIT_HASHES = {  # taskonomy/splits/PROVENANCE.md
    "train": ("b5a90e62cbb3f7f9497e031dcdbb4a7adfefb56c2b461f5747565d6497515d2c", 107),
    "val": ("428d4307761857179b989a707e03321824bab0c374034c2c125ed9a3cbf6175f", 18),
    "test": ("6632a9d0cdc1f46bd679bfa3fcf86a65f016edde3c702b3938843aa6fe7aab33", 17),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("taskonomy") / "data")
    buildings = testing.write_fake_taskonomy(root, size=SIZE, frames=3)
    return root, buildings


def _png(path, dtype):
    return tf.io.decode_png(tf.io.read_file(path), dtype=dtype).numpy().astype(np.float64)


def _first(dataset):
    return next(iter(dataset.unbatch().as_numpy_iterator()))


def test_building_lists_are_the_originals():
    seen = set()
    for split, (sha, count) in SPLIT_HASHES.items():
        path = os.path.join(data.SPLITS_DIR, f"{split}_models.txt")
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha
        names = data.split_buildings(split)
        assert len(names) == len(set(names)) == count
        assert not seen & set(names)
        seen |= set(names)


def test_parse_tasks():
    assert data.parse_tasks("sdntk") == list(data.TASKS)
    assert data.parse_tasks("nd") == ["depth_zbuffer", "normal"]
    assert data.parse_tasks("normal,segment_semantic") == ["segment_semantic", "normal"]
    assert data.parse_tasks(["keypoints2d"]) == ["keypoints2d"]
    with pytest.raises(ValueError, match="letter"):
        data.parse_tasks("sx")
    with pytest.raises(ValueError, match="Unknown task"):
        data.parse_tasks(["depth"])


def test_label_path_replaces_rgb_below_the_root_only():
    root = "/mnt/rgbd/taskonomy"
    rgb = f"{root}/rgb/hanson/point_1_view_2_domain_rgb.png"
    assert data.label_path(root, rgb, "depth_zbuffer") == \
        f"{root}/depth_zbuffer/hanson/point_1_view_2_domain_depth_zbuffer.png"


def test_layout_listing_and_limits(tree):
    root, buildings = tree
    train = data.split_examples(root, "sdntk", "train")
    assert len(train) == 3 * len(buildings["train"])
    rgb = train.paths["rgb"]
    assert rgb == sorted(rgb) and all(os.path.exists(p) for p in rgb)
    for task in data.TASKS:
        assert all(os.path.exists(p) for p in train.paths[task])
    assert {p.split(os.sep)[-2] for p in rgb} == set(buildings["train"])
    assert len(data.split_examples(root, "d", "val")) == 3
    assert len(data.find_examples(root, "d", limit=1)) == 4  # 4 buildings, 1 image each
    sliced = data.find_examples(root, "d", buildings["train"][:1], limit=(1, 3))
    assert [os.path.basename(p) for p in sliced.paths["rgb"]] == \
        sorted(os.path.basename(p) for p in rgb[:3])[1:3]
    assert train.mask_domain == "depth_zbuffer"
    assert data.split_examples(root, "kt", "train").mask_domain is None


def test_targets_follow_the_original_normalisations(tree):
    root, _ = tree
    examples = data.split_examples(root, "sdntk", "val")
    image, targets = _first(data.make_dataset(examples, batch_size=1, training=False,
                                              image_size=SIZE))
    p = {d: examples.paths[d][0] for d in examples.paths}
    np.testing.assert_allclose(image, _png(p["rgb"], tf.uint8) / 255.0, atol=1e-6)
    depth = _png(p["depth_zbuffer"], tf.uint16)
    mask = (depth < 2 ** 13).astype(np.float64)
    assert 0 < mask.mean() < 1
    np.testing.assert_allclose(targets["depth_zbuffer"][..., :1], (depth - 1500) / 1000,
                               rtol=1e-6)
    np.testing.assert_array_equal(targets["depth_zbuffer"][..., 1:], mask)
    normal = _png(p["normal"], tf.uint8) / 255.0
    np.testing.assert_allclose(targets["normal"][..., :3], (normal - 0.5) * 2, atol=1e-6)
    np.testing.assert_array_equal(targets["normal"][..., 3:], mask)
    np.testing.assert_allclose(targets["keypoints2d"], (_png(p["keypoints2d"], tf.uint16) - 50)
                               / 100, rtol=1e-6)
    np.testing.assert_allclose(targets["edge_texture"],
                               (_png(p["edge_texture"], tf.uint16) - 718) / 1070, rtol=1e-6)
    np.testing.assert_array_equal(targets["segment_semantic"],
                                  _png(p["segment_semantic"], tf.uint8))
    assert image.dtype == np.float32 and all(t.dtype == np.float32 for t in targets.values())


def test_flip_mirrors_everything_and_negates_normal_x(tree):
    root, _ = tree
    examples = data.split_examples(root, "sdntk", "val")
    files = {d: tf.io.read_file(examples.paths[d][0]) for d in examples.paths}
    kwargs = dict(image_size=SIZE, mask_domain=examples.mask_domain)
    image, targets = data.decode_example(files, examples.tasks, flip=False, **kwargs)
    f_image, f_targets = data.decode_example(files, examples.tasks, flip=True, **kwargs)
    np.testing.assert_array_equal(f_image, image.numpy()[:, ::-1])
    for task in examples.tasks:
        expected = targets[task].numpy()[:, ::-1].copy()
        if task == "normal":
            expected[..., 0] *= -1
        np.testing.assert_array_equal(f_targets[task], expected)


def test_training_flips_about_half_and_reshuffles(tree):
    root, _ = tree
    examples = data.split_examples(root, "n", "train")
    dataset = data.make_dataset(examples, batch_size=2, training=True, image_size=SIZE, seed=3)
    plain = {p: None for p in examples.paths["rgb"]}
    reference = [x for x, _ in data.make_dataset(examples, batch_size=1, training=False,
                                                  image_size=SIZE).unbatch()
                 .as_numpy_iterator()]
    flips, orders = 0, []
    for _ in range(4):
        order = []
        for x, y in dataset.unbatch().as_numpy_iterator():
            match = [i for i, r in enumerate(reference) if np.array_equal(r, x)]
            mirrored = [i for i, r in enumerate(reference) if np.array_equal(r[:, ::-1], x)]
            assert match or mirrored
            flips += not match
            order.append((match or mirrored)[0])
        orders.append(tuple(order))
    assert len(order) == len(plain) and 0 < flips < 4 * len(plain)
    assert len(set(orders)) > 1


def test_resize_keeps_class_ids_and_uses_antialiased_bilinear(tree):
    root, _ = tree
    examples = data.split_examples(root, "sd", "val")
    _, targets = _first(data.make_dataset(examples, batch_size=1, training=False, image_size=16))
    labels = targets["segment_semantic"]
    assert labels.shape == (16, 16, 1)
    source = set(np.unique(_png(examples.paths["segment_semantic"][0], tf.uint8)))
    assert set(np.unique(labels)) <= source
    assert targets["depth_zbuffer"].shape == (16, 16, 2)
    assert set(np.unique(targets["depth_zbuffer"][..., 1])) <= {0.0, 1.0}


def test_png_bit_depth_is_read_from_the_file(tmp_path):
    values = np.array([[0, 50, 255]], np.uint8)[..., None]
    path = str(tmp_path / "eight.png")
    tf.io.write_file(path, tf.io.encode_png(values))
    raw = data.decode_png(tf.io.read_file(path), 1, unit=False)
    np.testing.assert_array_equal(raw.numpy()[..., 0], [[0, 50, 255]])
    wide = np.array([[0, 50, 65535]], np.uint16)[..., None]
    tf.io.write_file(path, tf.io.encode_png(wide))
    np.testing.assert_array_equal(data.decode_png(tf.io.read_file(path), 1, unit=False)
                                  .numpy()[..., 0], [[0, 50, 65535]])
    np.testing.assert_allclose(data.decode_png(tf.io.read_file(path), 1, unit=True)
                               .numpy()[..., 0], [[0, 50 / 65535, 1]])


def test_mask_files_are_used_when_depth_is_not_trained(tmp_path):
    root = str(tmp_path / "masked")
    testing.write_fake_taskonomy(root, size=SIZE, frames=1, with_mask=True,
                                 buildings={"val": ["hortense"]})
    only_normals = data.split_examples(root, "n", "val")
    assert only_normals.mask_domain == "mask"
    with_depth = data.split_examples(root, "dn", "val")
    assert with_depth.mask_domain == "depth_zbuffer"
    _, a = _first(data.make_dataset(only_normals, batch_size=1, training=False,
                                    image_size=SIZE))
    _, b = _first(data.make_dataset(with_depth, batch_size=1, training=False, image_size=SIZE))
    np.testing.assert_array_equal(a["normal"], b["normal"])


def test_tfrecords_yield_what_the_folders_yield(tree, tmp_path):
    root, _ = tree
    info = data.convert_splits(root, "sdntk", str(tmp_path / "rec"),
                               num_shards={"train": 2, "val": 1, "test": 1})
    assert {s: v["examples"] for s, v in info["splits"].items()} == \
        {"train": 6, "val": 3, "test": 3}
    folders = data.load_splits(root, "sdntk", batch_size=2, image_size=SIZE)
    records = data.load_splits(None, "sdntk", batch_size=2, image_size=SIZE,
                               tfrecord_dir=str(tmp_path / "rec"))
    assert records.steps_per_epoch == folders.steps_per_epoch == 3
    for a, b in zip(folders.validation.unbatch(), records.validation.unbatch()):
        np.testing.assert_array_equal(a[0], b[0])
        for task in data.TASKS:
            np.testing.assert_array_equal(a[1][task], b[1][task])
    x, y = next(iter(records.train))
    assert x.shape == (2, SIZE, SIZE, 3) and y["normal"].shape == (2, SIZE, SIZE, 4)


def test_missing_files_stop_the_run_or_are_skipped_and_reported(tmp_path):
    """A missing target file is never dropped silently: the pipelines fail on it, the check
    names it, and skip_bad_files drops its example and reports it."""
    root = str(tmp_path / "broken")
    testing.write_fake_taskonomy(root, size=SIZE, frames=3, buildings={"val": ["hortense"]},
                                 domains=("rgb", "keypoints2d"))
    examples = data.split_examples(root, "k", "val")
    missing = examples.paths["keypoints2d"][1]
    os.remove(missing)
    for training in (True, False):  # unchecked examples: the pipeline stops, naming the file
        with pytest.raises(tf.errors.NotFoundError, match="point_1_view_1_domain_keypoints2d"):
            list(data.make_dataset(examples, batch_size=1, training=training, image_size=SIZE,
                                   seed=0))
    with pytest.raises(BadFileError, match=f"Bad Taskonomy file {missing}: missing"):
        data.check_examples(examples)
    report = BadFiles()
    kept = data.check_examples(examples, skip_bad_files=True, report=report)
    assert len(kept) == 2 and missing not in kept.paths["keypoints2d"]
    assert report.count == 1 and report.paths == [missing]
    trained = list(data.make_dataset(kept, batch_size=1, training=True, image_size=SIZE,
                                     seed=0).as_numpy_iterator())
    assert len(trained) == 2


def _truncate(path, size=200):
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("split", ["train", "test"])
def test_truncated_png_stops_the_run_naming_it_or_is_skipped(tmp_path, split):
    """The issue's case: an rgb PNG truncated to 200 bytes in a training or a test building.
    load_splits stops before training, naming the file and the problem; with
    skip_bad_files the example is dropped, counted and named in Splits.bad_files."""
    root = str(tmp_path / "data")
    buildings = testing.write_fake_taskonomy(root, size=SIZE, frames=3)
    bad = data.split_examples(root, "sdntk", split).paths["rgb"][1]
    _truncate(bad)
    assert buildings[split]
    with pytest.raises(BadFileError) as error:
        data.load_splits(root, "sdntk", batch_size=2, image_size=SIZE, seed=0)
    message = str(error.value)
    assert bad in message and "Invalid PNG data" in message and "\n" not in message
    splits = data.load_splits(root, "sdntk", batch_size=2, image_size=SIZE, seed=0,
                              skip_bad_files=True)
    assert splits.bad_files.count == 1 and splits.bad_files.paths == [bad]
    assert "Invalid PNG data" in splits.bad_files.first[0][1]
    assert splits.bad_files.to_json()["first"][0]["path"] == bad
    assert splits.train_examples == (5 if split == "train" else 6)
    test = list(splits.test.unbatch().as_numpy_iterator())
    assert len(test) == (2 if split == "test" else 3)
    next(iter(splits.train_data_fn(0)))


def test_tfrecord_input_bad_records_and_shards(tmp_path):
    """--tfrecord_dir input: a record with a corrupt PNG, or a truncated shard, stops the
    run naming the shard, the record and its key; skip_bad_files drops and reports it."""
    root = str(tmp_path / "data")
    testing.write_fake_taskonomy(root, size=SIZE, frames=3)
    bad = data.split_examples(root, "k", "train").paths["keypoints2d"][2]
    _truncate(bad)  # the conversion copies the PNG bytes as they are
    records = str(tmp_path / "rec")
    data.convert_splits(root, "k", records, num_shards={"train": 2, "val": 1, "test": 1})
    key = os.path.relpath(data.split_examples(root, "k", "train").paths["rgb"][2], root)
    with pytest.raises(BadFileError, match=f"train-00000-of-00002.tfrecord .record 1, {key}.: "
                                           "InvalidArgumentError.*PNG"):
        data.load_splits(None, "k", batch_size=2, image_size=SIZE, tfrecord_dir=records)
    splits = data.load_splits(None, "k", batch_size=2, image_size=SIZE, tfrecord_dir=records,
                              skip_bad_files=True)
    assert splits.bad_files.count == 1 and splits.train_examples == 5
    # (training repeats forever: 5 examples then the first again)
    keys = [x.shape for x, _ in splits.train.unbatch().take(5).as_numpy_iterator()]
    assert len(keys) == 5
    shard = os.path.join(records, "test-00000-of-00001.tfrecord")
    _truncate(shard, 1000)
    with pytest.raises(BadFileError, match=f"{shard}: the whole shard: DataLossError"):
        data.check_tfrecords([shard], "k", mask_domain=None)
    splits = data.load_splits(None, "k", batch_size=2, image_size=SIZE, tfrecord_dir=records,
                              skip_bad_files=True)
    assert splits.bad_files.count == 2 and splits.bad_files.paths[1] == shard
    assert list(splits.test) == []  # the whole test shard was unreadable


def test_steps_per_epoch_is_a_fifth_past_10000_batches():
    assert data.steps_per_epoch(960, 96) == 10
    assert data.steps_per_epoch(96 * 10000, 96) == 10000
    assert data.steps_per_epoch(96 * 10001, 96) == 2000
    with pytest.raises(ValueError, match="Fewer"):
        data.steps_per_epoch(10, 96)
