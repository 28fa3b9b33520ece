"""AgeDB-DIR data: the tfds builder (built from a fixture of real JPEG files, no TensorFlow) and the grain pipeline."""
from __future__ import annotations

import csv
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from agedb_fixture import DEFAULT_AGES, write_agedb_fixture
from PIL import Image

from experiments.agedb_dir import data
from experiments.agedb_dir import input_pipeline as pipeline

SIZE = 32  # the stored image side in these tests (the fixture's files are 40-48 × 48-50)


def _csv_rows(manual_dir: pathlib.Path) -> list[dict[str, str]]:
  with (manual_dir / "agedb.csv").open(newline="") as f:
    return list(csv.DictReader(f))


def _write_csv(manual_dir: pathlib.Path, rows: list[dict[str, str]], fieldnames=("age", "path", "split")) -> None:
  with (manual_dir / "agedb.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _pil_resize(path: pathlib.Path, size: int = SIZE) -> np.ndarray:
  """The published read + Resize: PIL open, convert('RGB'), bilinear resize; [size, size, 3] uint8."""
  return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(manual_dir, data_dir, csv rows) of the default fixture built at SIZE."""
  root = tmp_path_factory.mktemp("agedb")
  manual_dir = write_agedb_fixture(root / "manual")
  data.build(manual_dir, root / "tfds", image_size=SIZE)
  return manual_dir, root / "tfds", _csv_rows(manual_dir)


@pytest.fixture
def manual(tmp_path):
  return write_agedb_fixture(tmp_path / "manual")


def _indexed_source(n: int, *, size: int = 8, value: int | None = None, seed: int = 0) -> list[dict]:
  """An in-memory source whose age is the example's index (to identify examples in shuffled batches)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) if value is None else \
      np.full((n, size, size, 3), value, np.uint8)
  return [{"image": images[i], "age": i} for i in range(n)]


def _reference_crop_flip(image: np.ndarray, dy: int, dx: int, flip: bool, pad: int) -> np.ndarray:
  """RandomCrop(padding=pad, fill 0) at (dy, dx) then a horizontal flip, by gathering source pixels."""
  height, width = image.shape[:2]
  y, x = np.indices((height, width))
  if flip:
    x = width - 1 - x
  source_y, source_x = y + dy - pad, x + dx - pad
  inside = (source_y >= 0) & (source_y < height) & (source_x >= 0) & (source_x < width)
  out = np.zeros_like(image)
  out[inside] = image[source_y[inside], source_x[inside]]
  return out


def _all(iterator) -> list[dict[str, np.ndarray]]:
  return list(iterator)


# ----------------------------------------------------------------------------------------------------- builder


def test_fixture_matches_its_contract(built):
  manual_dir, _, rows = built
  assert len(rows) == sum(len(ages) for ages in DEFAULT_AGES.values())
  assert {row["split"] for row in rows[:12]} == {"train", "val", "test"}  # splits interleaved in the csv
  images = [Image.open(manual_dir / row["path"]) for row in rows]
  assert {image.format for image in images} == {"JPEG"}
  assert {image.mode for image in images} == {"RGB", "L"}
  assert len({image.size for image in images}) > 1 and all(image.size != (SIZE, SIZE) for image in images)
  train_ages = [int(row["age"]) for row in rows if row["split"] == "train"]
  counts = np.bincount(train_ages)
  assert counts.max() >= 10 and counts[counts > 0].min() == 1


def test_splits_ages_and_paths_round_trip(built):
  _, data_dir, rows = built
  for split in data.SPLITS:
    expected = [row for row in rows if row["split"] == split]
    source = data.load(data_dir, split, image_size=SIZE)
    assert len(source) == len(expected) == len(DEFAULT_AGES[split])
    examples = [source[i] for i in range(len(source))]
    assert [int(ex["age"]) for ex in examples] == [int(row["age"]) for row in expected]  # csv order
    assert [ex["path"].decode() for ex in examples] == [row["path"] for row in expected]
    assert data.labels(data_dir, split, image_size=SIZE).tolist() == [ex["age"] for ex in examples]
  info = data.builder(data_dir, image_size=SIZE).info
  assert info.features["image"].shape == (SIZE, SIZE, 3) and info.features["image"].encoding_format == "png"
  assert info.disable_shuffling


def test_stored_images_equal_pil_bilinear_resize(built):
  manual_dir, data_dir, _ = built
  for split in data.SPLITS:
    source = data.load(data_dir, split, image_size=SIZE)
    for i in range(len(source)):
      example = source[i]
      assert example["image"].dtype == np.uint8 and example["image"].shape == (SIZE, SIZE, 3)
      np.testing.assert_array_equal(example["image"], _pil_resize(manual_dir / example["path"].decode()))


def test_labels_equal_csv_without_decoding_images(built, monkeypatch):
  _, data_dir, rows = built
  def no_decoding(*args, **kwargs):
    raise AssertionError("labels() decoded an image")
  monkeypatch.setattr(tfds.features.Image, "decode_example_np", no_decoding)
  for split in data.SPLITS:
    ages = data.labels(data_dir, split, image_size=SIZE)
    assert ages.dtype == np.int32
    np.testing.assert_array_equal(ages, [int(row["age"]) for row in rows if row["split"] == split])
  with pytest.raises(ValueError, match="split must be one of train, val, test, got 'training'"):
    data.labels(data_dir, "training", image_size=SIZE)


def test_default_config_is_224_and_image_size_is_checked(tmp_path):
  default = data.builder(tmp_path)
  assert default.builder_config.name == "224px" and default.info.features["image"].shape == (224, 224, 3)
  assert data.builder(tmp_path, image_size=64).data_path == tmp_path / "agedb_dir" / "64px" / "1.0.0"
  with pytest.raises(ValueError, match="image_size must be a positive integer, got 0"):
    data.builder(tmp_path, image_size=0)


def test_load_before_build_names_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no complete AgeDB-DIR dataset at .*agedb_dir/32px/1\.0\.0"):
    data.load(tmp_path, "train", image_size=SIZE)
  with pytest.raises(FileNotFoundError, match="no complete AgeDB-DIR dataset"):
    data.labels(tmp_path, "train", image_size=SIZE)


# ------------------------------------------------------------------------------------------------- bad inputs


def _edit_row(manual_dir: pathlib.Path, index: int, **changes: str) -> dict[str, str]:
  rows = _csv_rows(manual_dir)
  rows[index].update(changes)
  _write_csv(manual_dir, rows)
  return rows[index]


def _assert_nothing_readable(data_dir: pathlib.Path) -> None:
  with pytest.raises(FileNotFoundError, match="no complete AgeDB-DIR dataset"):
    data.load(data_dir, "train", image_size=SIZE)
  assert not list(data_dir.glob("**/incomplete.*"))


def test_missing_csv(manual, tmp_path):
  (manual / "agedb.csv").unlink()
  with pytest.raises(FileNotFoundError, match=r"manual/agedb\.csv not found"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)
  assert not (tmp_path / "tfds").exists()  # validation runs before tfds creates anything


def test_missing_column(manual, tmp_path):
  _write_csv(manual, _csv_rows(manual), fieldnames=("age", "path"))
  with pytest.raises(ValueError, match=r"agedb\.csv: missing column\(s\) split; the header is 'age,path'"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)
  assert not (tmp_path / "tfds").exists()


@pytest.mark.parametrize("age", ["35.5", "-3", "abc", "1e2"])
def test_bad_age(manual, tmp_path, age):
  _edit_row(manual, 4, age=age)
  with pytest.raises(ValueError, match=rf"agedb\.csv row 5 \(line 6\): age '{age}' is not a non-negative integer"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)
  assert not (tmp_path / "tfds").exists()


def test_empty_age(manual, tmp_path):
  _edit_row(manual, 0, age=" ")
  with pytest.raises(ValueError, match=r"agedb\.csv row 1 \(line 2\): empty age"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)


def test_unknown_split(manual, tmp_path):
  _edit_row(manual, 7, split="validation")
  with pytest.raises(ValueError, match=r"agedb\.csv row 8 \(line 9\): split 'validation' is not one of train, val"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)
  assert not (tmp_path / "tfds").exists()


def test_empty_split(manual, tmp_path):
  _write_csv(manual, [row for row in _csv_rows(manual) if row["split"] != "val"])
  with pytest.raises(ValueError, match=r"agedb\.csv: split 'val' has no rows"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)
  assert not (tmp_path / "tfds").exists()


def test_missing_image(manual, tmp_path):
  row = _csv_rows(manual)[9]
  (manual / row["path"]).unlink()
  with pytest.raises(FileNotFoundError, match=rf"row 10 \(line 11\): image .*{row['path']} does not exist"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)
  assert not (tmp_path / "tfds").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(manual, tmp_path, damage):
  row = _csv_rows(manual)[3]
  path = manual / row["path"]
  path.write_bytes(b"not a jpeg" * 10 if damage == "garbage" else path.read_bytes()[:200])
  with pytest.raises(ValueError, match=rf"row 4 \(line 5\): cannot decode image .*{row['path']}"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)
  assert not (tmp_path / "tfds").exists()


def test_failure_while_writing_leaves_no_dataset(manual, tmp_path, monkeypatch):
  # An error after validation (a file vanishing, a full disk): tfds wrote into incomplete.*_1.0.0 and removes it.
  calls = []
  resize = data._resized_png
  def failing(path, image_size):
    calls.append(path)
    if len(calls) == 30:
      raise OSError("simulated read error")
    return resize(path, image_size)
  monkeypatch.setattr(data, "_resized_png", failing)
  with pytest.raises(ValueError, match=r"cannot decode image .*simulated read error"):
    data.build(manual, tmp_path / "tfds", image_size=SIZE)
  assert len(calls) >= 30  # train (24 rows) was written before the failure
  _assert_nothing_readable(tmp_path / "tfds")
  monkeypatch.setattr(data, "_resized_png", resize)
  data.build(manual, tmp_path / "tfds", image_size=SIZE)  # the next build starts afresh
  assert len(data.load(tmp_path / "tfds", "val", image_size=SIZE)) == len(DEFAULT_AGES["val"])


def test_killed_build_leftover_is_not_a_dataset(built, tmp_path):
  # A killed build leaves tfds's temporary folder: complete-looking files under a name tfds never reads.
  manual_dir, data_dir, _ = built
  leftover = tmp_path / "tfds" / "agedb_dir" / f"{SIZE}px" / "incomplete.ABC123_1.0.0"
  shutil.copytree(data_dir / "agedb_dir" / f"{SIZE}px" / "1.0.0", leftover)
  with pytest.raises(FileNotFoundError, match="no complete AgeDB-DIR dataset"):
    data.load(tmp_path / "tfds", "train", image_size=SIZE)
  with pytest.raises(FileNotFoundError, match="no complete AgeDB-DIR dataset"):
    data.labels(tmp_path / "tfds", "train", image_size=SIZE)
  data.build(manual_dir, tmp_path / "tfds", image_size=SIZE)  # a new build is not disturbed by the leftover
  assert len(data.load(tmp_path / "tfds", "test", image_size=SIZE)) == len(DEFAULT_AGES["test"])


def test_existing_build_is_reused_and_overwrite_validates_first(manual, tmp_path):
  data_dir = tmp_path / "tfds"
  data.build(manual, data_dir, image_size=SIZE)
  rows = _csv_rows(manual)
  (manual / "agedb.csv").unlink()
  data.build(manual, data_dir, image_size=SIZE)  # reused: the csv is not read again
  with pytest.raises(FileNotFoundError, match=r"agedb\.csv not found"):
    data.build(manual, data_dir, image_size=SIZE, overwrite=True)
  assert len(data.labels(data_dir, "train", image_size=SIZE)) == len(DEFAULT_AGES["train"])  # still intact
  first_train = next(i for i, row in enumerate(rows) if row["split"] == "train")
  rows[first_train]["age"] = "77"
  _write_csv(manual, rows)
  data.build(manual, data_dir, image_size=SIZE, overwrite=True)
  assert data.labels(data_dir, "train", image_size=SIZE)[0] == 77
  assert data.load(data_dir, "train", image_size=SIZE)[0]["age"] == 77


# --------------------------------------------------------------------------------------------------- pipeline


def test_train_batches_shapes_dtypes_and_range(built):
  _, data_dir, _ = built
  source = data.load(data_dir, "train", image_size=SIZE)
  assert pipeline.num_train_batches(source, 8) == 3 and pipeline.num_train_batches(source, 5) == 4
  batches = _all(pipeline.train_batches(source, batch_size=5, seed=0, epoch=0))
  assert len(batches) == 4  # 24 // 5: the remainder is dropped
  ages = set(data.labels(data_dir, "train", image_size=SIZE).tolist())
  for batch in batches:
    assert set(batch) == {"image", "age"}
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (5, SIZE, SIZE, 3)
    assert batch["age"].dtype == np.float32 and batch["age"].shape == (5,)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert set(batch["age"].tolist()) <= ages
  assert (np.concatenate([b["image"] for b in batches]) == -1).any()  # some padding is visible


def test_augmentation_equals_numpy_reference(built):
  source = _indexed_source(12)
  seed, epoch, pad = 3, 2, 4
  seen = []
  for batch in pipeline.train_batches(source, batch_size=4, seed=seed, epoch=epoch, pad=pad):
    for image, age in zip(batch["image"], batch["age"]):
      index = int(age)
      seen.append(index)
      dy, dx, flip = pipeline.augmentation_params(seed, epoch, index, pad=pad)
      expected = _reference_crop_flip(source[index]["image"], dy, dx, flip, pad)
      np.testing.assert_allclose(image, (expected / 255 - 0.5) / 0.5, rtol=0, atol=1e-6)
  assert sorted(seen) == list(range(12))  # each example once per epoch
  # The real data path: a stored image through the same transform.
  _, data_dir, _ = built
  real = data.load(data_dir, "val", image_size=SIZE)
  params = pipeline.augmentation_params(seed, epoch, 0)
  np.testing.assert_array_equal(pipeline.crop_flip(real[0]["image"], params),
                                _reference_crop_flip(real[0]["image"], *params, pad=16))


def test_padded_crop_region_is_minus_one():
  # All-white images: the image reads +1, the zero fill (torch's RandomCrop fill=0) -1 after normalisation.
  seed, epoch, pad, size = 0, 0, 3, 8
  source = _indexed_source(16, size=size, value=255)
  for batch in pipeline.train_batches(source, batch_size=8, seed=seed, epoch=epoch, pad=pad):
    for image, age in zip(batch["image"], batch["age"]):
      dy, dx, flip = pipeline.augmentation_params(seed, epoch, int(age), pad=pad)
      rows = (np.arange(size) + dy - pad >= 0) & (np.arange(size) + dy - pad < size)
      cols = (np.arange(size) + dx - pad >= 0) & (np.arange(size) + dx - pad < size)
      inside = rows[:, None] & (cols[::-1] if flip else cols)[None, :]
      assert (image[inside] == 1).all() and (image[~inside] == -1).all()


def test_augmentation_params_distribution():
  params = [pipeline.augmentation_params(1, 0, i, pad=16) for i in range(2000)]
  offsets = np.array([(p.dy, p.dx) for p in params])
  assert offsets.min() == 0 and offsets.max() == 32  # torchvision: randint over [0, 2·pad]
  assert 0.45 < np.mean([p.flip for p in params]) < 0.55
  assert params[5] == pipeline.augmentation_params(1, 0, 5, pad=16)  # pure
  assert any(pipeline.augmentation_params(1, 1, i) != params[i] for i in range(10))  # epochs differ


def test_same_seed_and_epoch_give_identical_batches():
  source = _indexed_source(20)
  run = lambda **kw: _all(pipeline.train_batches(source, batch_size=4, **kw))
  first, again = run(seed=7, epoch=3), run(seed=7, epoch=3)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["age"], b["age"])
  order = lambda batches: np.concatenate([b["age"] for b in batches]).tolist()
  assert order(run(seed=7, epoch=4)) != order(first)  # a new epoch, a new permutation
  assert order(run(seed=8, epoch=3)) != order(first)
  assert sorted(order(run(seed=7, epoch=4))) == list(range(20))
  resumed = run(seed=7, epoch=3, start_batch=2)
  assert len(resumed) == 3
  for a, b in zip(first[2:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_batches_order_and_mask(built):
  _, data_dir, _ = built
  source = data.load(data_dir, "test", image_size=SIZE)  # 7 examples
  batches = _all(pipeline.eval_batches(source, batch_size=4))
  assert len(batches) == 2
  for batch in batches:
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["age"].shape == (4,) and batch["mask"].shape == (4,) and batch["mask"].dtype == np.bool_
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [True] * 7 + [False])
  ages = np.concatenate([b["age"] for b in batches])
  np.testing.assert_array_equal(ages[:7], data.labels(data_dir, "test", image_size=SIZE))
  images = np.concatenate([b["image"] for b in batches])
  for i in range(7):  # dataset order, no augmentation
    np.testing.assert_allclose(images[i], (source[i]["image"] / 255 - 0.5) / 0.5, rtol=0, atol=1e-6)
  assert _all(pipeline.eval_batches(source, batch_size=7))[0]["mask"].all()


def test_pipeline_argument_errors():
  source = _indexed_source(6)
  with pytest.raises(ValueError, match="batch_size 8 > 6 training examples"):
    pipeline.train_batches(source, batch_size=8, seed=0, epoch=0)
  with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
    pipeline.train_batches(source, batch_size=2, seed=-1, epoch=0)
  with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
    pipeline.eval_batches(source, batch_size=0)
  with pytest.raises(ValueError, match="non-empty source"):
    pipeline.eval_batches([], batch_size=2)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(built):
  # grain workers are spawned processes (~2 s each to start): slow, and the same batches as in-process.
  _, data_dir, _ = built
  source = data.load(data_dir, "train", image_size=SIZE)
  in_process = _all(pipeline.train_batches(source, batch_size=4, seed=1, epoch=5))
  workers = _all(pipeline.train_batches(source, batch_size=4, seed=1, epoch=5, num_workers=2))
  for a, b in zip(in_process, workers, strict=True):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  evaluation = _all(pipeline.eval_batches(source, batch_size=5, num_workers=2))
  for a, b in zip(_all(pipeline.eval_batches(source, batch_size=5)), evaluation, strict=True):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
