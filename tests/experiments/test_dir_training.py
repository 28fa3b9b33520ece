"""The DIR harness: Table 1/5 methods as configuration, a run resumed after an interruption equals the
uninterrupted run, best-by-validation bookkeeping, a study that resumes without retraining finished runs."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments.common import dir_methods, dir_study
from experiments.common.dir_methods import Labels, Method, Regressor, loss_pieces, method_table
from experiments.common.dir_training import ArrayData, Schedule, build_program, fit, predictions, run_metrics


class Encoder(nn.Module):
  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.relu(x)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(400, 5)).astype(np.float32)
  y = (np.abs(x[:, 0] * 3 + x[:, 1]) * 5).astype(np.float32)  # skewed, 0..~40
  return ArrayData(x[:256], y[:256], x[256:320], y[256:320], x[320:], y[320:])


LABELS = Labels(bin_width=1.0, origin=0.0, num_classes=64)
SCHEDULE = Schedule(epochs=3, batch_size=64, lr=1e-2, milestones=(2,), eval_batch_size=48)


def test_method_table_is_tables_1_and_5():
  t = method_table()
  assert t["ot"] == Method(lam=100.0, epsilon=0.1, rot_samples=200)
  assert t["mt_ot"].num_targets == 8 and t["mt_ot"].lam == 100.0
  assert [t[f"ot_lam{v}"].lam for v in ("1", "10", "1000")] == [1.0, 10.0, 1000.0]
  assert [t[f"ot_gamma{v}"].epsilon for v in ("1", "10")] == [1.0, 10.0]
  assert [t[f"mt{m}"].num_targets for m in (2, 4, 16, 32)] == [2, 4, 16, 32]
  assert t["noise"].noise and t["noise"].num_targets == 8
  assert t["ranksim"].peer_weights == (1000.0,) and t["phreg"].peer_weights == (1.0, 0.1)
  assert set(dir_methods.TABLE_METHODS) <= set(t)
  with pytest.raises(ValueError, match="peer"):
    Method(peer="nope", peer_weights=(1.0,))
  with pytest.raises(ValueError, match="num_targets"):
    Method(num_targets=1, noise=True)


def _strip(history):
  return [{k: v for k, v in h.items() if k not in ("train_seconds", "examples_per_second")} for h in history]


@pytest.mark.slow  # ~15 s
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
  data = _data()
  method = Method(num_targets=4, lam=10.0, epsilon=0.5, rot_samples=32)  # MT + L_ot on sampled rows: keyed
  program = build_program(Regressor(Encoder(), 4), method, SCHEDULE, pieces=loss_pieces(method, labels=LABELS),
                          steps_per_epoch=data.num_train_batches(64))
  whole = fit(program, data, 3, checkpoints=tmp_path / "a", progress=False)

  def stop(epoch, record):
    if epoch == 1:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    fit(program, data, 3, checkpoints=tmp_path / "b", progress=False, on_epoch=stop)
  resumed_epochs = []
  resumed = fit(program, data, 3, checkpoints=tmp_path / "b", progress=False,
                on_epoch=lambda e, r: resumed_epochs.append(e))
  assert resumed_epochs == [2]  # epochs 0 and 1 came from the checkpoint
  assert _strip(resumed.history) == _strip(whole.history)
  assert resumed.best_epoch == whole.best_epoch and resumed.best_val_mae == whole.best_val_mae
  for a, b in zip(jax.tree.leaves(whole.best), jax.tree.leaves(resumed.best)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # best-by-validation: the kept epoch is the one with the lowest validation MAE, and it is what predicts
  maes = [h["val_mae"] for h in whole.history]
  assert whole.best_epoch == int(np.argmin(maes))
  pred, y = predictions(program, whole.best, data, "val")
  np.testing.assert_allclose(np.mean(np.abs(pred - y)), min(maes), rtol=1e-6)
  # an uninterrupted fit in a finished folder trains nothing more
  again = fit(program, data, 3, checkpoints=tmp_path / "a", progress=False,
              on_epoch=lambda e, r: pytest.fail("trained again"))
  assert _strip(again.history) == _strip(whole.history)


@pytest.mark.slow  # a few seconds: kept out of the 5-minute default suite
def test_noise_targets_predict_with_the_first_output_and_shots_are_reported():
  data = _data()
  method = Method(num_targets=3, noise=True)
  program = build_program(Regressor(Encoder(), 3), method, SCHEDULE,
                          pieces=loss_pieces(method, labels=LABELS, noise_std=5.0),
                          steps_per_epoch=data.num_train_batches(64))
  run = fit(program, data, 0, progress=False)
  outputs = program.model.apply(run.best, data.x_test, train=False)[0]
  pred, y = predictions(program, run.best, data, "test")
  np.testing.assert_allclose(pred, np.asarray(outputs[:, 0, 0]), rtol=1e-5, atol=1e-5)  # batch vs whole
  assert np.max(np.abs(pred - np.asarray(outputs.mean(axis=1)[:, 0]))) > 1e-2  # not the mean of the outputs
  metrics = run_metrics(pred, y, data.train_labels)
  assert metrics["all"]["count"] == len(data.y_test) == sum(metrics[r]["count"] for r in ("many", "medium", "few"))
  np.testing.assert_allclose(metrics["all"]["mae"], np.mean(np.abs(pred - y)), rtol=1e-5)


@pytest.mark.slow  # ~20 s
def test_study_resume_keeps_finished_runs(tmp_path):
  data = _data()
  study = lambda seeds: dir_study.Study(
      task="t", methods={"baseline": Method(), "ot": Method(lam=1.0, epsilon=0.5, rot_samples=32)}, seeds=seeds,
      schedule=SCHEDULE, model=dir_methods.regressor(Encoder), labels=LABELS)
  md = lambda report: "x"
  first = dir_study.run_study(study((0,)), data, out=tmp_path, progress=False, markdown=md)
  second = dir_study.run_study(study((0, 1)), data, out=tmp_path, resume=True, progress=False, markdown=md)
  for m in ("baseline", "ot"):
    assert second["runs"][m]["0"] == first["runs"][m]["0"]  # not retrained (its wall time is the saved one)
    assert set(second["runs"][m]) == {"0", "1"}
    assert second["summary"][m]["all"]["mae"]["n"] == 2
  assert not any((tmp_path / "checkpoints").rglob("*.json"))  # finished runs leave no checkpoint behind
  with pytest.raises(ValueError, match="other settings"):
    other = study((0,))
    other = dir_study.Study(**{**other.__dict__, "schedule": Schedule(epochs=2, batch_size=64)})
    dir_study.run_study(other, data, out=tmp_path, resume=True, progress=False, markdown=md)


def test_without_validation_the_last_epoch_is_kept():
  data = _data()
  schedule = Schedule(epochs=2, batch_size=64, lr=1e-2, milestones=(), eval_batch_size=48, select_best=False)
  program = build_program(Regressor(Encoder(), 1), Method(), schedule, pieces=loss_pieces(Method(), labels=LABELS),
                          steps_per_epoch=data.num_train_batches(64))
  run = fit(program, data, 0, progress=False)
  assert run.best_epoch == 1 and run.best_val_mae is None and [h["val_mae"] for h in run.history] == [None, None]
