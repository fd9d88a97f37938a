"""CelebA data: fake original files -> the real TFDS celeb_a builder (offline) -> tf.data."""

import collections
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from tag_tf.io.bad_files import BadFileError, BadFiles

from celeba import data
from celeba import experiment as celeba_experiment
from celeba import model as celeba_model
from celeba import testing

SPLITS = {"train": 6, "validation": 3, "test": 3}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, no_downloads):
    root = tmp_path_factory.mktemp("celeba")
    files = str(root / "files")
    testing.write_fake_celeba(files, SPLITS)
    with no_downloads():
        builder = data.prepare_from_files(files, str(root / "tfds"), verify_checksums=False)
    return files, str(root / "tfds"), builder


def test_constants():
    assert len(data.ATTRIBUTES) == len(set(data.ATTRIBUTES)) == 40
    assert data.DEFAULT_TASKS == ("5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair",
                                  "Goatee", "Mustache", "No_Beard", "Rosy_Cheeks", "Wearing_Hat")
    assert set(data.DEFAULT_TASKS) <= set(data.ATTRIBUTES)
    assert data.check_tasks(["Male", "Young"]) == ["Male", "Young"]
    for bad in ([], ["Beard"], ["Male", "Male"]):
        with pytest.raises(ValueError):
            data.check_tasks(bad)


def test_fake_files_have_the_original_formats(tmp_path):
    paths = testing.write_fake_celeba(str(tmp_path), {"train": 3, "validation": 1, "test": 1})
    assert sorted(os.path.basename(p) for p in paths.values()) == sorted(
        data.ORIGINAL_FILES.values())
    with zipfile.ZipFile(paths["img_align_celeba"]) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        image = tf.io.decode_jpeg(archive.read(names[0])).numpy()
    assert names == [f"img_align_celeba/{i:06d}.jpg" for i in range(1, 6)]
    assert image.shape == (218, 178, 3)
    attr = open(paths["list_attr_celeba"]).read().split("\n")
    assert attr[0] == "5" and attr[1].split() == list(data.ATTRIBUTES) and attr[-1] == ""
    assert attr[2].split()[0] == "000001.jpg" and set(attr[2].split()[1:]) <= {"1", "-1"}
    assert open(paths["list_eval_partition"]).read().split("\n")[:5] == [
        "000001.jpg 0", "000002.jpg 0", "000003.jpg 0", "000004.jpg 1", "000005.jpg 2"]
    marks = open(paths["landmarks_celeba"]).read().split("\n")
    assert marks[0] == "5" and len(marks[1].split()) == 10 and len(marks[2].split()) == 11
    assert len(open(paths["identity_celeba"]).read().split("\n")[0].split()) == 2


def test_prepare_with_the_real_builder_offline(prepared):
    files, _, builder = prepared
    assert builder.info.name == "celeb_a"
    assert {name: s.num_examples for name, s in builder.info.splits.items()} == SPLITS
    # Labels survive the trip: compare each split's multiset of attribute rows.
    labels = testing.fake_labels(files)
    partition = dict(line.split() for line in
                     open(os.path.join(files, "list_eval_partition.txt")).read().split("\n")
                     if line)
    for split, split_id in (("train", "0"), ("validation", "1"), ("test", "2")):
        expected = collections.Counter(
            tuple(labels[name][a] for a in data.ATTRIBUTES)
            for name, part in partition.items() if part == split_id)
        got = collections.Counter(
            tuple(bool(ex["attributes"][a]) for a in data.ATTRIBUTES)
            for ex in builder.as_dataset(split=split).as_numpy_iterator())
        assert got == expected, split


def test_prepare_errors(tmp_path, prepared):
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt"):
        data.prepare_from_files(str(tmp_path), str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="--mode=prepare"):
        data.load_builder(str(tmp_path / "empty"))
    files, tfds_dir, _ = prepared
    assert data.prepare_from_files(files, tfds_dir, verify_checksums=False).is_prepared()
    assert sorted(data.verify_original_files(files)) == sorted(data.ORIGINAL_FILES.values())


def test_datasets(prepared):
    _, tfds_dir, _ = prepared
    tasks = ["Black_Hair", "No_Beard"]
    splits = data.load_splits(tfds_dir, tasks=tasks, batch_size=4, image_size=16, seed=0)
    x, y = next(iter(splits.train))
    assert x.shape == (4, 16, 16, 3) and x.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    assert sorted(y) == tasks and all(v.dtype == tf.int32 and v.shape == (4,) for v in y.values())
    assert [int(b[0].shape[0]) for b in splits.train] == [4, 2]
    assert sum(int(b[0].shape[0]) for b in splits.test) == 3
    # Evaluation splits are deterministic; a cache gives the same elements.
    builder = data.load_builder(tfds_dir)
    plain = list(splits.validation.as_numpy_iterator())
    cached = data.make_dataset(builder, "validation", tasks=tasks, batch_size=4, image_size=16,
                               cache="memory")
    for (a, la), (b, lb) in zip(plain, cached.as_numpy_iterator()):
        np.testing.assert_allclose(a, b, atol=1e-6)
        assert all((la[t] == lb[t]).all() for t in tasks)
    limited = data.make_dataset(builder, "train", tasks=tasks, batch_size=2, limit=3,
                                training=True, image_size=8)
    assert sum(int(b[0].shape[0]) for b in limited) == 3


def test_learning_rate_schedule():
    rates = [celeba_experiment.learning_rate_at(e) for e in range(31)]
    assert rates[0] == rates[13] == 5e-4  # the notebook halves at the start of epoch 15
    assert rates[14] == rates[28] == 2.5e-4 and rates[29] == rates[30] == 1.25e-4
    assert celeba_experiment.learning_rate_at(50, 1.0, 0) == 1.0


def test_loss_and_error():
    labels = np.array([0, 1, 1, 0])
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(celeba_model.error_percent(labels, logits), [0, 0, 100, 0])
    metric = celeba_model.error_metric()
    metric.update_state(labels, logits)
    assert float(metric.result()) == pytest.approx(25.0)
    expected = np.mean(-np.log(np.exp(logits[np.arange(4), labels])
                                / np.exp(logits).sum(axis=1)))
    assert float(celeba_model.task_loss()(labels, logits)) == pytest.approx(expected, rel=1e-5)


def _damage_archive(files, *, truncate: str, remove: str) -> None:
    """Rewrites img_align_celeba.zip with ``truncate`` cut to 200 bytes and ``remove`` gone."""
    path = os.path.join(files, data.ORIGINAL_FILES["img_align_celeba"])
    with zipfile.ZipFile(path) as archive:
        items = [(i.filename, archive.read(i.filename)) for i in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in items:
            if not name.endswith(remove):
                archive.writestr(name, content[:200] if name.endswith(truncate) else content)


def test_prepare_stops_on_a_bad_image_or_skips_and_reports_it(tmp_path, no_downloads):
    """A truncated JPEG or an image missing from the archive stops the prepare step naming
    it (nothing prepared); with skip_bad_files both are left out, counted and named."""
    files = str(tmp_path / "files")
    testing.write_fake_celeba(files, SPLITS)
    _damage_archive(files, truncate="000002.jpg", remove="000005.jpg")
    tfds_dir = str(tmp_path / "tfds")
    with no_downloads():
        with pytest.raises(BadFileError, match="Bad CelebA image file img_align_celeba.zip:"
                                               "img_align_celeba/000005.jpg: missing from "
                                               "img_align_celeba.zip .2 bad files in all; the "
                                               "next: .*000002.jpg"):
            data.prepare_from_files(files, tfds_dir, verify_checksums=False)
        with pytest.raises(FileNotFoundError):
            data.load_builder(tfds_dir)  # nothing was prepared
        report = BadFiles()
        builder = data.prepare_from_files(files, tfds_dir, verify_checksums=False,
                                          skip_bad_files=True, report=report)
    assert report.count == 2
    assert report.first[0] == ("img_align_celeba.zip:img_align_celeba/000005.jpg",
                               "missing from img_align_celeba.zip")
    assert report.first[1][0] == "img_align_celeba.zip:img_align_celeba/000002.jpg"
    assert "JPEG" in report.first[1][1] or "jpeg" in report.first[1][1]
    assert builder.info.splits["train"].num_examples == SPLITS["train"] - 2
    splits = data.load_splits(tfds_dir, tasks=["Male"], batch_size=2, image_size=8)
    assert splits.bad_files.to_json() == report.to_json()
    assert sum(int(x.shape[0]) for x, _ in splits.train) == SPLITS["train"] - 2


def test_report_merge_keeps_the_whole_count():
    """An already prepared dataset reports what was left out: all of the count, even past
    the first FIRST names it keeps."""
    from tag_tf.io import bad_files  # pylint: disable=g-import-not-at-top
    many = BadFiles()
    many.extend((f"f{k}.jpg", "missing") for k in range(bad_files.FIRST + 5))
    merged = BadFiles()
    merged.merge(BadFiles.from_json(many.to_json()))
    assert merged.count == bad_files.FIRST + 5 and merged.first == many.first
    merged.merge(BadFiles(1, [("x.jpg", "missing")]))
    assert merged.count == bad_files.FIRST + 6 and len(merged.first) == bad_files.FIRST
