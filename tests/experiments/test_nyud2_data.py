"""NYUD2-DIR data: the tfds builder (built from synthetic files and from scikit-image's motorcycle, no TensorFlow),
the balanced test mask, and the grain pipeline against a re-implementation of the published transforms."""
from __future__ import annotations

import itertools
import json
import pathlib

import numpy as np
import pytest
from nyud2_fixture import encode_test_depth, encode_train_depth, write_nyud2_fixture
from PIL import Image
from scipy import ndimage

from experiments.nyud2_dir import data, motorcycle
from experiments.nyud2_dir import input_pipeline as pipeline
from rtjax.shots import FEW, MANY, MEDIUM

SCALE = 60                       # the fixture's 64×48 files scale to 80×60
GEO = data.geometry(SCALE)       # crop 76×57 at (2, 2), training depth 38×28
N_TRAIN, N_TEST = 6, 4


def _lines(manual: pathlib.Path, split: str) -> list[list[str]]:
  return [line.split(",") for line in (manual / data.CSVS[split]).read_text().splitlines()]


def _write_lines(manual: pathlib.Path, split: str, lines: list[list[str]]) -> None:
  (manual / data.CSVS[split]).write_text("".join(",".join(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """(manual_dir, data_dir) of the default fixture built at SCALE."""
  root = tmp_path_factory.mktemp("nyud2")
  manual = write_nyud2_fixture(root / "manual", n_train=N_TRAIN, n_test=N_TEST)
  data.build(manual, root / "tfds", scale=SCALE)
  return manual, root / "tfds"


@pytest.fixture
def manual(tmp_path):
  return write_nyud2_fixture(tmp_path / "manual", n_train=N_TRAIN, n_test=N_TEST)


def _examples(data_dir, split, **kw) -> list[dict]:
  source = data.load(data_dir, split, scale=SCALE, **kw)
  return [source[i] for i in range(len(source))]


# --------------------------------------------------------------------------------------- decoding and geometry


def test_fixture_matches_its_contract(built):
  manual, _ = built
  for split, n in (("train", N_TRAIN), ("test", N_TEST)):
    lines = _lines(manual, split)
    assert len(lines) == n and all(len(line) == 2 and line[0].startswith("data/nyu2_") for line in lines)
    for rgb, depth in lines:
      assert Image.open(manual / rgb).mode == "RGB"
      assert Image.open(manual / rgb).format == ("JPEG" if split == "train" else "PNG")
      assert Image.open(manual / depth).mode == ("L" if split == "train" else "I;16")


def test_depth_scales_known_pixels(tmp_path):
  train = np.array([[0, 51, 255]], np.uint8)
  Image.fromarray(train).save(tmp_path / "train.png")
  test = np.array([[0, 2500, 9999]], np.uint16)
  Image.fromarray(test).save(tmp_path / "test.png")
  np.testing.assert_array_equal(data.decode_depth(tmp_path / "train.png", "train"), [[0, 2, 10]])  # px / 255 · 10
  np.testing.assert_allclose(data.decode_depth(tmp_path / "test.png", "test"), [[0, 2.5, 9.999]], rtol=1e-7)
  # The published float32 arithmetic (ToTensor: bytes / 255 then · 10; int16 / 1000), bit for bit.
  px = np.arange(256, dtype=np.uint8)[None]
  Image.fromarray(px).save(tmp_path / "all.png")
  expected = (px.astype(np.float32) / np.float32(255)) * np.float32(10)
  assert data.decode_depth(tmp_path / "all.png", "train").tobytes() == expected.tobytes()
  assert data.decode_depth(tmp_path / "test.png", "test").dtype == np.float32


def test_wrong_depth_encodings_are_refused(tmp_path):
  Image.fromarray(np.full((4, 4), 3000, np.uint16)).save(tmp_path / "sixteen.png")
  Image.fromarray(np.full((4, 4), 30, np.uint8)).save(tmp_path / "eight.png")
  Image.fromarray(np.full((4, 4), 12000, np.uint16)).save(tmp_path / "far.png")
  with pytest.raises(ValueError, match=r"training depth .*sixteen\.png is a PIL 'I;16' image; .*8-bit"):
    data.decode_depth(tmp_path / "sixteen.png", "train")
  with pytest.raises(ValueError, match=r"test depth .*eight\.png is a PIL 'L' image; .*16-bit"):
    data.decode_depth(tmp_path / "eight.png", "test")
  with pytest.raises(ValueError, match=r"far\.png: depths in \[12, 12\] m .*outside \[0, 10\] m"):
    data.decode_depth(tmp_path / "far.png", "test")


def test_published_geometry():
  assert data.geometry(240) == data.PUBLISHED_GEOMETRY == (240, (304, 228), (152, 114))
  assert GEO == (60, (76, 57), (38, 28))
  assert data.scaled_size(640, 480, 240) == (320, 240) and data.scaled_size(480, 640, 240) == (240, 320)
  assert data.scaled_size(741, 500, 240) == (355, 240)  # int(240 · 741 / 500) = int(355.68)
  assert data.scaled_size(320, 240, 240) == (320, 240)
  assert data.crop_offsets(320, 240, (304, 228)) == (8, 6)
  assert data.crop_offsets(80, 60, (76, 57)) == (2, 2)  # round(1.5) = 2
  assert data.crop_offsets(81, 62, (76, 57)) == (2, 2)  # round(2.5) = 2: Python's half-to-even, as published
  with pytest.raises(ValueError, match="smaller than the 76×57 crop"):
    data.crop_offsets(75, 60, (76, 57))
  with pytest.raises(ValueError, match="scale must be an integer >= 8"):
    data.geometry(4)


def test_stored_examples_equal_pil_reference(built):
  # The published Scale + CenterCrop with PIL calls on the files: RGB bilinear, depth nearest, PIL's crop box.
  manual, data_dir = built
  for split in data.SPLITS:
    for example, (rgb, depth) in zip(_examples(data_dir, split), _lines(manual, split), strict=True):
      assert example["rgb_path"].decode() == rgb and example["depth_path"].decode() == depth
      image = Image.open(manual / rgb).resize((80, 60), Image.Resampling.BILINEAR)
      depth_image = Image.open(manual / depth).resize((80, 60), Image.Resampling.NEAREST)
      if split == "test":
        box = (2, 2, 2 + 76, 2 + 57)
        image, depth_image = image.crop(box), depth_image.crop(box)
      px = np.asarray(depth_image).astype(np.float32)
      metres = (px / np.float32(255)) * np.float32(10) if split == "train" else px / np.float32(1000)
      np.testing.assert_array_equal(example["image"], np.asarray(image))
      np.testing.assert_array_equal(example["depth"], metres)
      assert example["depth"].dtype == np.float32
      assert example["balanced_mask"].shape == ((57, 76) if split == "test" else (0, 0))


def test_load_before_build_and_configs(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no complete NYUD2-DIR dataset at .*nyud2_dir/60px/1\.0\.0"):
    data.load(tmp_path, "train", scale=SCALE)
  default = data.builder(tmp_path)
  assert default.builder_config.name == "240px" and default.info.disable_shuffling
  assert data.builder(tmp_path, scale=60, mask_seed=3).data_path == tmp_path / "nyud2_dir" / "60px_seed3" / "1.0.0"
  with pytest.raises(ValueError, match="mask_seed must be a non-negative integer, got -1"):
    data.builder(tmp_path, mask_seed=-1)


# ------------------------------------------------------------------------------------------------ bad inputs


def _build_fails(manual, tmp_path, error, match):
  with pytest.raises(error, match=match):
    data.build(manual, tmp_path / "tfds", scale=SCALE)
  assert not (tmp_path / "tfds").exists()  # validation runs before tfds creates anything


def test_missing_csv(manual, tmp_path):
  (manual / data.TEST_CSV).unlink()
  _build_fails(manual, tmp_path, FileNotFoundError, r"data/nyu2_test\.csv not found")


@pytest.mark.parametrize("line", ["only_one_field.jpg", "a.jpg,", "a.jpg,b.png,c.png"])
def test_bad_csv_line(manual, tmp_path, line):
  lines = _lines(manual, "train")
  lines[2] = line.split(",")
  _write_lines(manual, "train", lines)
  _build_fails(manual, tmp_path, ValueError, r"nyu2_train\.csv line 3: expected `rgb_path,depth_path`")


def test_empty_split(manual, tmp_path):
  (manual / data.TEST_CSV).write_text("\n")
  _build_fails(manual, tmp_path, ValueError, r"nyu2_test\.csv: no rows \(an empty split\)")


def test_missing_file(manual, tmp_path):
  _, depth = _lines(manual, "train")[4]
  (manual / depth).unlink()
  _build_fails(manual, tmp_path, FileNotFoundError, rf"nyu2_train\.csv line 5: .*{depth} does not exist")


def test_corrupt_file(manual, tmp_path):
  rgb, _ = _lines(manual, "test")[1]
  (manual / rgb).write_bytes((manual / rgb).read_bytes()[:100])
  _build_fails(manual, tmp_path, ValueError, rf"nyu2_test\.csv line 2: cannot decode .*{rgb}")


def test_swapped_columns_are_refused(manual, tmp_path):
  _write_lines(manual, "train", [line[::-1] for line in _lines(manual, "train")])
  _build_fails(manual, tmp_path, ValueError, r"nyu2_train\.csv line 1: .*0\.png is a PIL 'L' image, not an RGB colour")


def test_wrong_encodings_in_a_build(manual, tmp_path):
  _, depth = _lines(manual, "test")[3]
  Image.fromarray(np.full((48, 64), 60, np.uint8)).save(manual / depth)  # an 8-bit test depth
  _build_fails(manual, tmp_path, ValueError, rf"nyu2_test\.csv line 4: test depth .*{depth} is a PIL 'L' image")
  Image.fromarray(np.full((48, 64), 10500, np.uint16)).save(manual / depth)  # 10.5 m: not millimetres
  _build_fails(manual, tmp_path, ValueError, r"depths in \[10\.5, 10\.5\] m .*outside \[0, 10\] m")
  rgb, _ = _lines(manual, "train")[0]
  Image.open(manual / rgb).convert("L").save(manual / rgb)
  _build_fails(manual, tmp_path, ValueError, rf"line 1: .*{rgb} is a PIL 'L' image, not an RGB colour image")


def test_size_mismatch(manual, tmp_path):
  _, depth = _lines(manual, "train")[1]
  Image.fromarray(np.full((40, 64), 60, np.uint8)).save(manual / depth)
  _build_fails(manual, tmp_path, ValueError, r"line 2: .*1\.jpg is 64×48 but its depth .*1\.png is 64×40")


def test_no_test_depth_to_balance(manual, tmp_path):
  for _, depth in _lines(manual, "test"):
    Image.fromarray(encode_test_depth(np.full((48, 64), 0.6))).save(manual / depth)
  _build_fails(manual, tmp_path, ValueError, r"no test depth is >= 0\.7 m .*balanced test mask would be empty")


def test_failure_while_writing_leaves_no_dataset(manual, tmp_path, monkeypatch):
  # Validation reads 10 examples, the mask 4 more; the 17th read is inside tfds's writing (train).
  calls = itertools.count(1)
  original = data.preprocess
  def failing(*args):
    if next(calls) == 17:
      raise OSError("simulated read error")
    return original(*args)
  monkeypatch.setattr(data, "preprocess", failing)
  with pytest.raises(OSError, match="simulated read error"):
    data.build(manual, tmp_path / "tfds", scale=SCALE)
  with pytest.raises(FileNotFoundError, match="no complete NYUD2-DIR dataset"):
    data.load(tmp_path / "tfds", "train", scale=SCALE)
  assert not list((tmp_path / "tfds").glob("**/incomplete.*"))
  monkeypatch.setattr(data, "preprocess", original)
  data.build(manual, tmp_path / "tfds", scale=SCALE)  # the next build starts afresh
  assert len(data.load(tmp_path / "tfds", "test", scale=SCALE)) == N_TEST


# ------------------------------------------------------------------------------------------ bins, shots, mask


def test_bins_and_shots():
  np.testing.assert_array_equal(data.bin_index([0, 0.05, 0.69, 0.7, 4.56, 9.89, 9.9, 10, 40]),
                                [0, 0, 6, 7, 45, 98, 99, 99, 99])  # 0.7 · 10 in float32 is 7, as published
  bins = sorted(b for shot in data.SHOT_BINS.values() for b in shot)
  assert bins == list(range(100))  # a partition
  assert data.SHOT_BINS["many"] == (*range(9, 46), 47, 49)
  assert data.SHOT_BINS["medium"] == (7, 8, 46, 48, 50, 51, 52, 53, 54, 55, 56, 58, 60, 61, 63)
  assert data.SHOT_BINS["few"][:10] == (0, 1, 2, 3, 4, 5, 6, 57, 59, 62) and data.SHOT_BINS["few"][-1] == 99
  np.testing.assert_array_equal(data.shot_index([[0.3, 0.75, 2.0], [4.65, 5.75, 9.99]]),
                                [[FEW, MEDIUM, MANY], [MEDIUM, FEW, FEW]])
  with pytest.raises(ValueError, match="finite and >= 0"):
    data.bin_index([1.0, -0.5])


def _assert_balanced(depths: np.ndarray, mask: np.ndarray) -> int:
  """Asserts the balanced-mask contract; returns the per-bin count."""
  bins = data.bin_index(depths)
  counts = np.bincount(bins.ravel(), minlength=100)[7:]
  keep = counts[counts > 0].min()
  kept = np.bincount(bins[mask], minlength=100)
  assert (kept[:7] == 0).all()
  np.testing.assert_array_equal(kept[7:], np.where(counts > 0, keep, 0))
  return int(keep)


def test_balanced_mask_counts_and_seeds():
  rng = np.random.default_rng(0)
  # Skewed like NYU: most pixels near 2-4 m, a tail to 10 m, some below 0.7 m and some holes (0).
  depths = np.clip(rng.lognormal(1.1, 0.45, (5, 24, 32)), 0, 10).astype(np.float32)
  depths[0, :3] = 0.0
  depths[1, :2] = 0.4
  mask = data.balanced_mask(depths, seed=0)
  assert mask.shape == depths.shape and mask.dtype == np.bool_
  keep = _assert_balanced(depths, mask)
  assert keep >= 1 and not mask[0, :3].any() and not mask[1, :2].any()
  np.testing.assert_array_equal(mask, data.balanced_mask(depths, seed=0))  # deterministic per seed
  other = data.balanced_mask(depths, seed=1)
  assert (other != mask).any()
  assert _assert_balanced(depths, other) == keep  # another draw, the same counts
  with pytest.raises(ValueError, match=r"no test depth is in bins 7\.\.99"):
    data.balanced_mask(np.full((2, 3), 0.5), seed=0)


def test_stored_masks_are_the_seeded_mask_of_the_stored_depths(built, tmp_path):
  manual, data_dir = built
  examples = _examples(data_dir, "test")
  depths = np.stack([ex["depth"] for ex in examples])
  masks = np.stack([ex["balanced_mask"] for ex in examples])
  np.testing.assert_array_equal(masks, data.balanced_mask(depths, seed=0))
  keep = _assert_balanced(depths, masks)
  summary = data.metadata(data_dir, scale=SCALE)["balanced_mask"]
  assert summary["seed"] == 0 and summary["pixels_per_bin"] == keep and summary["pixels"] == masks.sum()
  assert summary["test_bin_counts"] == np.bincount(data.bin_index(depths).ravel(), minlength=100).tolist()
  assert not masks[0, 8:13, 23:28].any()  # the hole (depth 0) at rows 10-13, columns 20-23 of the file
  # Another seed is another config (its own folder) with another mask over the same depths.
  data.build(manual, tmp_path / "tfds", scale=SCALE, mask_seed=5)
  other = np.stack([ex["balanced_mask"] for ex in _examples(tmp_path / "tfds", "test", mask_seed=5)])
  np.testing.assert_array_equal(other, data.balanced_mask(depths, seed=5))
  assert (other != masks).any()


# --------------------------------------------------------------------------------------------------- pipeline


def _published_reference(manual: pathlib.Path, rgb: str, depth: str, params: pipeline.Augmentation):
  """nyu_transform.py's training chain, written out with PIL, scipy and NumPy from the original files:
  Scale → flip → RandomRotate → CenterCrop + depth.resize → ToTensor → Lighting → ColorJitter → Normalize.
  Channels first, as the torch code."""
  image = Image.open(manual / rgb).resize((80, 60), Image.Resampling.BILINEAR)
  depth_image = Image.open(manual / depth).resize((80, 60), Image.Resampling.NEAREST)
  if params.flip:
    image, depth_image = image.transpose(Image.FLIP_LEFT_RIGHT), depth_image.transpose(Image.FLIP_LEFT_RIGHT)
  image = Image.fromarray(ndimage.rotate(np.asarray(image), params.angle, reshape=False, order=2))
  depth_image = Image.fromarray(ndimage.rotate(np.asarray(depth_image), params.angle, reshape=False, order=2))
  box = (2, 2, 78, 59)
  image, depth_image = image.crop(box), depth_image.crop(box).resize((38, 28))  # PIL's default filter
  x = np.asarray(image).transpose(2, 0, 1).astype(np.float32) / 255
  eigval = np.array([0.2175, 0.0188, 0.0045], np.float32)
  eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
                    np.float32)
  alpha = np.array(params.lighting, np.float32)
  x = x + (eigvec * alpha.reshape(1, 3) * eigval.reshape(1, 3)).sum(1).reshape(3, 1, 1)
  def grayscale(img):
    gs = img.copy()
    gs[0] = gs[0] * 0.299 + gs[1] * 0.587 + gs[2] * 0.114
    gs[1], gs[2] = gs[0], gs[0]
    return gs
  jitters = [lambda img, a: img + a * (0 - img),
             lambda img, a: img + a * (np.full_like(img, grayscale(img).mean()) - img),
             lambda img, a: img + a * (grayscale(img) - img)]
  for i in params.jitter_order:
    x = jitters[i](x, np.float32(params.jitter[i]))
  mean, std = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1), np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
  x = ((x - mean) / std).transpose(1, 2, 0)
  return x, (np.asarray(depth_image).astype(np.float32) / np.float32(255)) * np.float32(10)


def test_training_batches_equal_the_published_transform(built):
  manual, data_dir = built
  source = data.load(data_dir, "train", scale=SCALE)
  lines = _lines(manual, "train")
  seed, epoch = 3, 1
  seen = []
  for batch in pipeline.train_batches(source, batch_size=3, seed=seed, epoch=epoch, geometry=GEO):
    assert batch["image"].shape == (3, 57, 76, 3) and batch["image"].dtype == np.float32
    assert batch["depth"].shape == (3, 28, 38) and batch["depth"].dtype == np.float32
    for image, depth, index in zip(batch["image"], batch["depth"], batch["index"]):
      seen.append(int(index))
      params = pipeline.augmentation_params(seed, epoch, int(index))
      expected_image, expected_depth = _published_reference(manual, *lines[index], params)
      np.testing.assert_allclose(image, expected_image, rtol=0, atol=2e-5)
      np.testing.assert_array_equal(depth, expected_depth)  # bit-identical: the 8-bit steps are replayed
  assert sorted(seen) == list(range(N_TRAIN))
  flips = [pipeline.augmentation_params(seed, epoch, i).flip for i in range(N_TRAIN)]
  assert any(flips) and not all(flips)  # both branches were compared


def test_augmentation_params_distribution():
  params = [pipeline.augmentation_params(1, 0, i) for i in range(2000)]
  angles = np.array([p.angle for p in params])
  assert -5 <= angles.min() < -4.9 and 4.9 < angles.max() <= 5
  assert 0.45 < np.mean([p.flip for p in params]) < 0.55
  assert 0.09 < np.std([p.lighting for p in params]) < 0.11
  jitter = np.array([p.jitter for p in params])
  assert -0.4 <= jitter.min() < -0.39 and 0.39 < jitter.max() <= 0.4
  assert {p.jitter_order for p in params} == set(itertools.permutations(range(3)))
  assert params[5] == pipeline.augmentation_params(1, 0, 5)  # pure
  assert all(pipeline.augmentation_params(1, 1, i) != params[i] for i in range(10))  # epochs differ


def _memory_source(n: int, *, size=(40, 30), seed=0) -> list[dict]:
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8),
           "depth": pipeline.depth_metres(rng.integers(0, 256, (size[1], size[0]))),
           "balanced_mask": np.zeros((0, 0), bool)} for _ in range(n)]


def test_same_seed_and_epoch_give_identical_batches():
  source, geo = _memory_source(10), data.Geometry(30, (36, 27), (18, 13))
  run = lambda **kw: list(pipeline.train_batches(source, batch_size=3, geometry=geo, **kw))
  first, again = run(seed=7, epoch=3), run(seed=7, epoch=3)
  assert len(first) == 3 == pipeline.num_train_batches(source, 3)
  for a, b in zip(first, again, strict=True):
    for name in ("image", "depth", "index"):
      np.testing.assert_array_equal(a[name], b[name])
  order = lambda batches: np.concatenate([b["index"] for b in batches]).tolist()
  assert order(run(seed=7, epoch=4)) != order(first) and order(run(seed=8, epoch=3)) != order(first)
  resumed = run(seed=7, epoch=3, start_batch=1)
  for a, b in zip(first[1:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(  # a batch row is `augment` of its example
      first[0]["depth"][0], pipeline.augment(source[first[0]["index"][0]]["image"],
                                             source[first[0]["index"][0]]["depth"],
                                             pipeline.augmentation_params(7, 3, int(first[0]["index"][0])), geo)[1])


def test_training_depth_must_be_8_bit_valued():
  np.testing.assert_array_equal(pipeline.depth_px(pipeline.depth_metres(np.arange(256))), np.arange(256))
  with pytest.raises(ValueError, match="training depth must be 8-bit valued"):
    pipeline.depth_px(np.array([1.0, 2.5]))


def test_eval_batches_order_padding_and_masks(built):
  _, data_dir = built
  source = data.load(data_dir, "test", scale=SCALE)
  batches = list(pipeline.eval_batches(source, batch_size=3, geometry=GEO))
  assert len(batches) == 2
  for batch in batches:
    assert set(batch) == {"image", "depth", "mask", "balanced_mask"}
    assert batch["image"].shape == (3, 57, 76, 3) and batch["depth"].shape == (3, 57, 76)
    assert batch["balanced_mask"].shape == (3, 57, 76) and batch["balanced_mask"].dtype == np.bool_
  cat = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
  np.testing.assert_array_equal(cat["mask"], [True] * N_TEST + [False] * 2)
  examples = _examples(data_dir, "test")
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  for i, example in enumerate(examples):  # source order, no augmentation
    np.testing.assert_allclose(cat["image"][i], (example["image"] / 255 - mean) / std, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(cat["depth"][i], example["depth"])
    np.testing.assert_array_equal(cat["balanced_mask"][i], example["balanced_mask"])
  assert not cat["balanced_mask"][N_TEST:].any() and not cat["depth"][N_TEST:].any()
  # The training split without augmentation (the published FDS pass): cropped, depth at the training size.
  train = list(pipeline.eval_batches(data.load(data_dir, "train", scale=SCALE), batch_size=4, geometry=GEO,
                                     depth_size=GEO.train_depth))
  assert set(train[0]) == {"image", "depth", "mask"} and train[0]["depth"].shape == (4, 28, 38)
  with pytest.raises(ValueError, match="evaluate the test split at its stored size"):
    pipeline.eval_batches(source, batch_size=2, geometry=GEO, depth_size=GEO.train_depth)


def test_pipeline_argument_errors():
  source = _memory_source(4)
  with pytest.raises(ValueError, match="batch_size 5 > 4 training examples"):
    pipeline.train_batches(source, batch_size=5, seed=0, epoch=0)
  with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -1"):
    pipeline.train_batches(source, batch_size=2, seed=0, epoch=-1)
  with pytest.raises(ValueError, match="num_threads must be a positive integer"):
    pipeline.eval_batches(source, batch_size=2, num_threads=0)
  with pytest.raises(ValueError, match="non-empty source"):
    pipeline.eval_batches([], batch_size=2)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(built):
  _, data_dir = built
  source = data.load(data_dir, "train", scale=SCALE)
  in_process = list(pipeline.train_batches(source, batch_size=2, seed=1, epoch=5, geometry=GEO))
  workers = list(pipeline.train_batches(source, batch_size=2, seed=1, epoch=5, geometry=GEO, num_workers=2))
  for a, b in zip(in_process, workers, strict=True):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


# ------------------------------------------------------------------------------------------------- motorcycle


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
  """(manual_dir, data_dir, motorcycle.json) of the motorcycle dataset built at the published 240."""
  root = tmp_path_factory.mktemp("moto")
  manual = motorcycle.write_motorcycle(root / "manual")
  data.build(manual, root / "tfds")
  return manual, root / "tfds", json.loads((manual / motorcycle.MANIFEST).read_text())


def test_motorcycle_depth_from_the_calibration():
  rgb, depth = motorcycle.motorcycle()
  assert rgb.shape == (500, 741, 3) and rgb.dtype == np.uint8 and depth.shape == (500, 741)
  valid = depth > 0
  assert 0.92 < valid.mean() < 0.93  # skimage's disparity is inf on 7.3% of the pixels
  assert 2.11 < depth[valid].min() < 2.111 and 5.016 < depth[valid].max() < 5.017  # DESIGN: 2.1-5.0 m
  # skimage's constants are Middlebury's calib.txt (f = 3979.911 px, doffs = 124.343 px) divided by 4, rounded.
  assert motorcycle.FOCAL_PX * 4 == pytest.approx(3979.911, abs=2e-3)
  assert motorcycle.DOFFS_PX * 4 == pytest.approx(124.343, abs=2e-3)


def test_motorcycle_dataset_builds_with_disjoint_splits(moto):
  _, data_dir, summary = moto
  boxes = {split: [p["box_xyxy"] for p in summary["patches"] if p["split"] == split] for split in data.SPLITS}
  assert len(boxes["train"]) == 12 and len(boxes["test"]) == 3
  assert all(x1 <= motorcycle.SPLIT_X for _, _, x1, _ in boxes["train"])
  assert all(x0 >= motorcycle.SPLIT_X and x1 <= 741 for x0, _, x1, _ in boxes["test"])
  assert len({(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes["train"]}) == 5  # five scales
  assert all((x1 - x0) * 3 == (y1 - y0) * 4 for x0, y0, x1, y1 in boxes["train"] + boxes["test"])  # 4:3
  _, depth = motorcycle.motorcycle()
  for split, n in (("train", 12), ("test", 3)):
    source = data.load(data_dir, split)
    assert len(source) == n
    depths = np.stack([source[i]["depth"] for i in range(n)])
    assert depths.shape == ((n, 240, 320) if split == "train" else (n, 228, 304))
    valid = depths[depths > 0]
    assert 2.1 <= valid.min() < 2.2 and (4.3 < valid.max() <= 5.02)
    assert 0.05 < (depths == 0).mean() < 0.1  # the unknown disparities, stored as 0
    assert summary["splits"][split]["bins"] == sorted(set(data.bin_index(valid).tolist()))
  # A test example is its source box, encoded in millimetres, centre-cropped 320×240 → 304×228.
  x0, y0, x1, y1 = boxes["test"][1]
  expected = data.center_crop(motorcycle.encode_test_depth(depth[y0:y1, x0:x1]).astype(np.float32) / 1000, (304, 228))
  np.testing.assert_array_equal(data.load(data_dir, "test")[1]["depth"], expected)
  assert summary["splits"]["test"]["bins"] == list(range(21, 44))
  train_shots = summary["splits"]["train"]["shots"]
  assert train_shots["medium"] == [46, 48, 50] and not train_shots["few"]
  balanced = data.metadata(data_dir)["balanced_mask"]
  assert balanced["bins"] == list(range(21, 44)) and balanced["pixels"] == 23 * balanced["pixels_per_bin"]
  batch = next(pipeline.train_batches(data.load(data_dir, "train"), batch_size=4, seed=0, epoch=0))
  assert batch["image"].shape == (4, 228, 304, 3) and batch["depth"].shape == (4, 114, 152)


def test_motorcycle_training_files_are_8_bit(moto):
  manual, _, summary = moto
  for patch in summary["patches"]:
    mode = Image.open(manual / patch["depth"]).mode
    assert mode == ("L" if patch["split"] == "train" else "I;16")
  np.testing.assert_array_equal(encode_train_depth(np.array([0.0, 2.0, 10.0])), [0, 51, 255])


def test_motorcycle_command_line_writes_atomically(tmp_path, monkeypatch, capsys):
  out = tmp_path / "moto"
  assert motorcycle.main(["--out", str(out), "--n-train", "1", "--n-test", "1"]) == 0
  assert "train: 1 examples, depth" in capsys.readouterr().out
  first = (out / data.TRAIN_CSV).read_text()
  with pytest.raises(SystemExit) as exit_info:  # a non-empty --out needs --overwrite
    motorcycle.main(["--out", str(out)])
  assert exit_info.value.code == 2 and (out / data.TRAIN_CSV).read_text() == first
  def failing(*args):
    raise OSError("disk full")
  monkeypatch.setattr(motorcycle, "_write", failing)
  with pytest.raises(OSError, match="disk full"):
    motorcycle.main(["--out", str(out), "--overwrite"])
  assert (out / data.TRAIN_CSV).read_text() == first  # the old folder survives a failed rewrite
  assert sorted(p.name for p in tmp_path.iterdir()) == ["moto"]  # no temporary folder left
  monkeypatch.undo()
  motorcycle.main(["--out", str(out), "--overwrite", "--n-train", "2", "--n-test", "1"])
  assert len((out / data.TRAIN_CSV).read_text().splitlines()) == 2
  assert sorted(p.name for p in tmp_path.iterdir()) == ["moto"]
