"""AgeDB-DIR as a tfds dataset built without TensorFlow: array_record files read back by random access.

Source (YyzHarry/imbalanced-regression, `agedb-dir/`): the AgeDB face images and `agedb.csv`, columns
`age,path,split` (`path` relative to the data folder, e.g. `AgeDB/0_MariaCallas_35_f.jpg`; split in
train/val/test, 12,208 / 2,140 / 2,140 rows; integer ages). The published torch dataset opens
`os.path.join(data_dir, path)` with PIL, `.convert('RGB')`, then applies `Resize((224, 224))` (PIL bilinear)
on every read. This builder does that resize once, at build time, with the same PIL call, and stores the
result losslessly, so an example read back is exactly the image the published code augments and normalises.

Features of one example: `image` uint8 [S, S, 3] (PNG), `age` int32 (), `path` text (the csv's relative path;
a data source returns it as bytes). Within a split the examples keep the csv's row order
(`disable_shuffling=True`): `load(...)[i]` is the split's i-th csv row, and `labels(...)[i]` its age.

PNG, not JPEG: the published pipeline decodes the original JPEG once and resizes; a JPEG re-encode would add a
second lossy step it does not have. The cost is disk: a 224² PNG (zlib level 1, the fastest to write) measured
~100 kB against ~20 kB for a quality-95 JPEG on synthetic photos, so ~1.6 GB for the 16,488 images.

On-disk layout (tfds's), S = image_size:

  <data_dir>/agedb_dir/<S>px/1.0.0/
    agedb_dir-{train,val,test}.array_record-0000i-of-0000n   the examples
    dataset_info.json, features.json                         tfds's split sizes and feature spec
    metadata.json                                            {"ages": {split: [age, ...]}, ...} for labels()
  <data_dir>/agedb_dir/.config/metadata.json                 tfds's note of the default config
  <data_dir>/downloads/                                      tfds's download folder (stays empty)

Atomic build: `build` validates the csv and decodes every listed image before tfds touches the disk. tfds then
writes everything, metadata.json included, into `<S>px/incomplete.XXXXXX_1.0.0/` and renames it to `1.0.0/` only
after the last file is written; on an exception it deletes the temporary folder. A killed process can leave an
`incomplete.*` folder behind, which tfds never reads as a version (delete it at leisure); `load` and `labels` also
refuse a version folder without tfds's `dataset_info.json` / `features.json`. `overwrite=True` validates first,
then tfds deletes the old `1.0.0/` just before the rename: for a moment there is no dataset, never a partial one.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import os
import pathlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from experiments.common.grain_data import map_in_order, png_bytes

CSV_NAME = "agedb.csv"
COLUMNS = ("age", "path", "split")
SPLITS = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = 224
DATASET_VERSION = "1.0.0"

_AGE = re.compile(r"[0-9]+")

_R = TypeVar("_R")

_CITATION = """\
@inproceedings{moschoglou2017agedb,
  title={AgeDB: the first manually collected, in-the-wild age database},
  author={Moschoglou, Stylianos and Papaioannou, Athanasios and Sagonas, Christos and Deng, Jiankang and
          Kotsia, Irene and Zafeiriou, Stefanos},
  booktitle={CVPR Workshops}, year={2017}}
@inproceedings{yang2021delving,
  title={Delving into Deep Imbalanced Regression},
  author={Yang, Yuzhe and Zha, Kaiwen and Chen, Ying-Cong and Wang, Hao and Katabi, Dina},
  booktitle={ICML}, year={2021}}
"""


class Row(NamedTuple):
  """One validated csv data row.

  `number` counts data rows from 1 (the header is not a row); `line` is the file line it ends on (the header
  is line 1), for error messages; `age` is the integer age; `path` is relative to the manual folder.
  """
  number: int
  line: int
  age: int
  path: str


def read_csv(csv_path: str | os.PathLike) -> dict[str, list[Row]]:
  """Reads and validates `agedb.csv`; returns the rows of each split in file order.

  Args:
    csv_path: the csv, with at least the columns `age,path,split` (others are ignored).

  Returns:
    {"train": [Row, ...], "val": [...], "test": [...]}, every split non-empty.

  Raises:
    FileNotFoundError: the csv does not exist.
    ValueError: a missing column; an empty value; an age that is not a non-negative integer; a split not in
      train/val/test; a split with no rows. The message names the csv, the row number (and line) and the value.
  """
  csv_path = pathlib.Path(csv_path)
  if not csv_path.is_file():
    raise FileNotFoundError(f"{csv_path} not found: AgeDB-DIR needs {CSV_NAME} (columns age,path,split, from "
                            "YyzHarry/imbalanced-regression) in the manual folder, next to the AgeDB/ image folder")
  rows: dict[str, list[Row]] = {split: [] for split in SPLITS}
  with csv_path.open(newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [column for column in COLUMNS if column not in header]
    if missing:
      raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}; the header is {','.join(header)!r}, "
                       f"AgeDB-DIR needs {','.join(COLUMNS)}")
    for number, record in enumerate(reader, start=1):
      where = f"{csv_path} row {number} (line {reader.line_num})"
      values = {}
      for column in COLUMNS:
        value = (record.get(column) or "").strip()  # a short row gives None
        if not value:
          raise ValueError(f"{where}: empty {column}")
        values[column] = value
      if not _AGE.fullmatch(values["age"]):
        raise ValueError(f"{where}: age {values['age']!r} is not a non-negative integer")
      if values["split"] not in rows:
        raise ValueError(f"{where}: split {values['split']!r} is not one of {', '.join(SPLITS)}")
      rows[values["split"]].append(Row(number, reader.line_num, int(values["age"]), values["path"]))
  for split, split_rows in rows.items():
    if not split_rows:
      raise ValueError(f"{csv_path}: split {split!r} has no rows (each of {', '.join(SPLITS)} needs at least one)")
  return rows


def _open_rgb(path: pathlib.Path) -> Image.Image:
  """The published dataset's read: PIL open + `.convert('RGB')` (grayscale and CMYK files become RGB)."""
  with Image.open(path) as image:
    return image.convert("RGB")


def _resized_png(path: pathlib.Path, image_size: int) -> bytes:
  """PNG bytes of the image at `path` as torchvision's Resize((S, S)) gives it on a PIL image: [S, S, 3] uint8."""
  return png_bytes(_open_rgb(path).resize((image_size, image_size), Image.Resampling.BILINEAR))


def _read_row_image(row: Row, *, root: pathlib.Path, csv_path: pathlib.Path,
                    read: Callable[[pathlib.Path], _R]) -> _R:
  """`read(root / row.path)`, with errors that name the csv row and the image file."""
  path = root / row.path
  where = f"{csv_path} row {row.number} (line {row.line})"
  try:
    return read(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"{where}: image {path} does not exist") from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    # PIL reports undecodable data as UnidentifiedImageError (an OSError), truncation as OSError, bad headers
    # as SyntaxError or ValueError.
    raise ValueError(f"{where}: cannot decode image {path}: {error}") from error


def check_images(manual_dir: str | os.PathLike, rows: dict[str, list[Row]]) -> None:
  """Opens and fully decodes (as RGB) every image the rows list, in csv order.

  Raises:
    FileNotFoundError: a listed image does not exist (the message names the csv row and the file).
    ValueError: a listed image cannot be decoded (same).
  """
  root = pathlib.Path(manual_dir)
  read = functools.partial(_read_row_image, root=root, csv_path=root / CSV_NAME, read=_open_rgb)
  ordered = sorted((row for split_rows in rows.values() for row in split_rows), key=lambda row: row.number)
  for _ in map_in_order(read, ordered):
    pass


@dataclasses.dataclass
class AgeDBDirConfig(tfds.core.BuilderConfig):
  """A stored image size: `image_size` is the side S of the square images [S, S, 3] (named `<S>px`)."""
  image_size: int = DEFAULT_IMAGE_SIZE


def _config(image_size: int) -> AgeDBDirConfig:
  return AgeDBDirConfig(name=f"{image_size}px", image_size=image_size,
                        description=f"images resized to {image_size}×{image_size} (PIL bilinear), stored as PNG")


class AgeDBDir(tfds.core.GeneratorBasedBuilder):
  """AgeDB-DIR (Yang et al. 2021): AgeDB faces with the DIR splits of `agedb.csv`, images resized at build time.

  Build with `build(manual_dir, data_dir, image_size=...)` (validates first, writes array_record). Every image
  size is a config named `<S>px` (224px is the registered default; `builder(data_dir, image_size=32)` makes the
  builder of another), written to `<data_dir>/agedb_dir/<S>px/1.0.0/`.
  """

  name = "agedb_dir"
  # tfds 4.9.10 derives code_path (which locates an optional checksums.tsv) through an isinstance test against
  # `importlib_resources`, a backport it only requires on Python < 3.9: for a builder inside a package the test
  # raises ModuleNotFoundError. Stating the path skips it.
  code_path = tfds.core.Path(__file__)
  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
      DATASET_VERSION: "AgeDB-DIR splits of YyzHarry/imbalanced-regression; PNG images resized at build time."}
  BUILDER_CONFIGS: ClassVar[list[AgeDBDirConfig]] = [_config(DEFAULT_IMAGE_SIZE)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Put into the manual folder (`manual_dir`):
    {CSV_NAME}   from https://github.com/YyzHarry/imbalanced-regression/tree/main/agedb-dir/data
                 (columns age,path,split; `path` is relative to the manual folder, e.g.
                 AgeDB/0_MariaCallas_35_f.jpg)
    AgeDB/       the AgeDB images (https://ibug.doc.ic.ac.uk/resources/agedb/, on request), one JPEG per face,
                 named as in the csv
  """

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=("AgeDB-DIR: age estimation from faces with imbalanced training ages and balanced val/test "
                     f"(Yang et al., ICML 2021). Images resized to {size}×{size} with PIL bilinear."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8, encoding_format="png"),
            "age": tfds.features.Scalar(dtype=np.int32),
            "path": tfds.features.Text(),
        }),
        supervised_keys=("image", "age"),
        homepage="https://github.com/YyzHarry/imbalanced-regression",
        citation=_CITATION,
        # csv order within a split: labels() and eval order follow the csv.
        disable_shuffling=True,
        # metadata.json, written into the temporary folder with everything else: labels() without decoding.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
    manual_dir = pathlib.Path(os.fspath(dl_manager.manual_dir))
    csv_path = manual_dir / CSV_NAME
    rows = read_csv(csv_path)
    self.info.metadata["ages"] = {split: [row.age for row in split_rows] for split, split_rows in rows.items()}
    self.info.metadata["image_size"] = self.builder_config.image_size
    self.info.metadata["csv_sha256"] = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    return {split: self._generate_examples(manual_dir, split_rows) for split, split_rows in rows.items()}

  def _generate_examples(self, manual_dir: pathlib.Path, rows: list[Row]) -> Iterator[tuple[int, dict[str, Any]]]:
    # tfds's Image feature encodes numpy arrays with TensorFlow; PNG bytes made by PIL go in as they are.
    read = functools.partial(_read_row_image, root=manual_dir, csv_path=manual_dir / CSV_NAME,
                             read=functools.partial(_resized_png, image_size=self.builder_config.image_size))
    for row, png in zip(rows, map_in_order(read, rows)):
      yield row.number, {"image": png, "age": row.age, "path": row.path}


def _check_image_size(image_size: int) -> None:
  if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer) or image_size < 1:
    raise ValueError(f"image_size must be a positive integer, got {image_size!r}")


def builder(data_dir: str | os.PathLike, *, image_size: int = DEFAULT_IMAGE_SIZE) -> AgeDBDir:
  """The builder of the `<image_size>px` config under `data_dir` (prepared or not; nothing is written)."""
  _check_image_size(image_size)
  config = f"{DEFAULT_IMAGE_SIZE}px" if image_size == DEFAULT_IMAGE_SIZE else _config(int(image_size))
  # The format goes to the constructor: download_and_prepare(file_format=...) refuses to set it on a builder whose
  # info was read from an existing build (RuntimeError), which is the overwrite case.
  return AgeDBDir(config=config, data_dir=os.fspath(data_dir), file_format="array_record")


def build(manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *, image_size: int = DEFAULT_IMAGE_SIZE,
          overwrite: bool = False) -> AgeDBDir:
  """Validates `manual_dir` and writes AgeDB-DIR with images [S, S, 3], S = `image_size`, as array_record.

  Everything is checked before anything is written: the csv (see `read_csv`) and every listed image (opened
  and decoded). An existing complete build is reused as it is (no validation) unless `overwrite=True`, which
  rebuilds it (do so after changing the csv or the images).

  Args:
    manual_dir: holds `agedb.csv` and the image folder its `path` column refers to (AgeDB/).
    data_dir: where tfds writes (`<data_dir>/agedb_dir/<S>px/1.0.0/`).
    image_size: S, the side of the stored square images.
    overwrite: rebuild an existing dataset.

  Returns:
    The prepared builder (`.as_data_source(split)`, `.info`).

  Raises:
    FileNotFoundError: no `agedb.csv` in `manual_dir`, or a listed image is missing.
    ValueError: a bad csv (column, age, split, empty split) or an undecodable image; the message names the csv
      row and the value or file. Nothing is left that reads as a dataset.
  """
  ds_builder = builder(data_dir, image_size=image_size)
  if ds_builder.is_prepared() and not overwrite:
    return ds_builder
  manual_dir = pathlib.Path(manual_dir)
  check_images(manual_dir, read_csv(manual_dir / CSV_NAME))
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  ds_builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir), download_mode=mode))
  return builder(data_dir, image_size=image_size)  # a fresh reader of what is on disk


def _prepared(data_dir: str | os.PathLike, image_size: int) -> AgeDBDir:
  ds_builder = builder(data_dir, image_size=image_size)
  if not ds_builder.is_prepared():
    # tfds's own error for a missing dataset talks about the TFRECORD format; say what is wrong.
    raise FileNotFoundError(f"no complete AgeDB-DIR dataset at {ds_builder.data_path} (image_size={image_size}): "
                            "run experiments.agedb_dir.data.build(manual_dir, data_dir, image_size=...) first")
  return ds_builder


def load(data_dir: str | os.PathLike, split: str, *, image_size: int = DEFAULT_IMAGE_SIZE) -> Sequence[dict[str, Any]]:
  """A random-access data source over a split (tfds split syntax, e.g. "train" or "train[:10%]").

  Element i is {"image": np.uint8 [S, S, 3], "age": int, "path": bytes}, the split's i-th csv row; the source
  is picklable (grain worker processes). Raises FileNotFoundError if the dataset was not built.
  """
  return _prepared(data_dir, image_size).as_data_source(split)


def labels(data_dir: str | os.PathLike, split: str, *, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
  """A split's ages, int32 [n], in data-source order, read from metadata.json (no image is decoded).

  Raises FileNotFoundError if the dataset was not built, ValueError for a split not in train/val/test.
  """
  ds_builder = _prepared(data_dir, image_size)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  ages = np.asarray(ds_builder.info.metadata["ages"][split], dtype=np.int32)
  expected = ds_builder.info.splits[split].num_examples
  if ages.shape != (expected,):
    raise ValueError(f"{ds_builder.data_path}/metadata.json lists {ages.size} {split} ages for {expected} examples")
  return ages
