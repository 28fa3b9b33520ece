"""Coordinate-prediction data, loader, training programs and the experiment's command line."""
import dataclasses
import json
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import rtjax
from experiments.coordinate import configs, peers, train
from experiments.coordinate import main as experiment
from experiments.coordinate.data import DATASETS, coordinate_dataset, load_npz, mix_coordinates, sample_shape, split
from experiments.coordinate.models import MLPRegressor

SHORT = dataclasses.replace(configs.Protocol(), epochs=20, eval_every=10, seeds=2)


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_layout_and_determinism(name):
  data = coordinate_dataset(name, seed=3, num_points=400)
  assert data.x.shape == (400, 100) and data.y.shape == (400, 3)
  assert data.x.dtype == np.float32
  a, b, c = data.y.T
  np.testing.assert_allclose(data.x[:, :4], np.stack([a + b + c, a + b - c, a - b + c, -a + b + c], 1), rtol=1e-5,
                             atol=1e-4)
  again = coordinate_dataset(name, seed=3, num_points=400)
  np.testing.assert_array_equal(data.x, again.x)
  other = coordinate_dataset(name, seed=4, num_points=400)
  assert not np.array_equal(data.y, other.y)
  # Noise columns are mixtures of other points of the same shape: unmix them and check they lie on it.
  unmix = np.linalg.pinv(mix_coordinates(np.eye(3)))
  noise_points = data.x[:, 4:].reshape(-1, 4) @ unmix
  assert noise_points.shape == (400 * 24, 3)
  assert not np.allclose(noise_points[:400], data.y)


def test_torus_radii():
  p = sample_shape("torus", 5000, seed=0)
  ring = np.hypot(p[:, 0], p[:, 1])
  np.testing.assert_allclose(np.hypot(ring - 4.0, p[:, 2]), 1.0, atol=1e-9)  # tube radius 1 around R=4
  assert abs(ring.mean() - 4.0) < 0.1 and p[:, 2].min() > -1 - 1e-9


def test_circle_is_a_rotated_unit_circle_on_1000_angles():
  p = sample_shape("circle", 3000, seed=1)
  np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-9)
  _, s, _ = np.linalg.svd(p - p.mean(0))
  assert s[2] < 1e-8 * s[0]  # planar
  assert not np.allclose(np.abs(p[:, 2]), 0.0)  # the plane is rotated out of z = 0
  assert len(np.unique(np.round(p, 9), axis=0)) <= 1000


def test_swiss_roll_and_mammoth():
  p = sample_shape("swiss_roll", 2000, seed=2)
  t = np.hypot(p[:, 0], p[:, 2])
  assert t.min() >= 1.5 * np.pi - 1e-9 and t.max() <= 4.5 * np.pi + 1e-9
  assert 0 <= p[:, 1].min() and p[:, 1].max() <= 21
  m = sample_shape("mammoth", 3000, seed=0)
  assert m.shape == (3000, 3) and len(np.unique(m, axis=0)) == 3000  # drawn without replacement


def test_split_rule():
  data = coordinate_dataset("torus", 0, num_points=300)
  train, val, test = split(data)
  assert (len(train.x), len(val.x), len(test.x)) == (100, 100, 100)
  np.testing.assert_array_equal(val.y, data.y[100:200])


def test_npz_loader(tmp_path):
  rng = np.random.default_rng(0)
  good = tmp_path / "good.npz"
  np.savez(good, data=rng.normal(size=(250, 100)), label=rng.normal(size=(250, 3)))
  loaded = load_npz(good)
  assert loaded.x.shape == (250, 100) and loaded.y.dtype == np.float32
  bad_cases = {
      "missing.npz": dict(data=np.ones((250, 100))),
      "shape.npz": dict(data=np.ones((250, 100)), label=np.ones((250, 2))),
      "count.npz": dict(data=np.ones((250, 100)), label=np.ones((249, 3))),
      "small.npz": dict(data=np.ones((150, 100)), label=np.ones((150, 3))),
      "nan.npz": dict(data=np.full((250, 100), np.nan), label=np.ones((250, 3))),
  }
  for name, arrays in bad_cases.items():
    np.savez(tmp_path / name, **arrays)
    with pytest.raises(ValueError, match=name):
      load_npz(tmp_path / name)
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(ValueError, match="Cannot read"):
    load_npz(tmp_path / "text.npz")


@pytest.mark.slow  # default-suite budget; CI runs it with -m slow
def test_vmapped_seeds_equal_single_seed_runs():
  data = coordinate_dataset("circle", 0, num_points=300)
  unit = train.Unit("circle", "mt+ot", 1.0, 0.1)
  together, _, _ = train.fit(data, unit, [0, 1], SHORT)
  for i, seed in enumerate([0, 1]):
    alone, _, _ = train.fit(data, unit, [seed], SHORT)
    np.testing.assert_allclose(alone["test_mse"][0], together["test_mse"][i], rtol=1e-4)
    assert alone["best_epoch"][0] == together["best_epoch"][i]


def test_best_by_validation_selection():
  data = coordinate_dataset("torus", 0, num_points=300)
  protocol = dataclasses.replace(SHORT, epochs=40, seeds=1)
  summary, fit, _ = train.fit(data, train.Unit("torus", "baseline"), [0], protocol)
  history = np.asarray(fit.val_history[0])
  assert summary["val_mse"][0] == pytest.approx(history.min())
  assert summary["best_epoch"][0] == 10 * (int(np.argmin(history)) + 1)


def test_one_compilation_serves_datasets_lambda_and_gamma():
  """Data, lambda and gamma are arguments of the compiled programs, not constants."""
  train.program.cache_clear()
  prog = train.program(1, True, None, dataclasses.replace(SHORT, epochs=0, seeds=0))
  for name, lam, gamma in (("circle", 1.0, 0.1), ("torus", 10.0, 0.05), ("mammoth", 100.0, 0.01)):
    train.fit(coordinate_dataset(name, 0, num_points=300), train.Unit(name, "ot", lam, gamma), [0, 1], SHORT)
  assert prog.chunk._cache_size() == 1 and prog.start._cache_size() == 1


@pytest.mark.slow  # default-suite budget; CI runs it with -m slow
def test_units_run_concurrently_give_the_same_results():
  data = coordinate_dataset("circle", 0, num_points=300)
  jobs = [(train.Unit("circle", m, 1.0, 0.1), data, SHORT) for m in ("ot", "baseline", "mt")]
  concurrent = {u.method: s for u, s, _, _ in train.run_units(jobs, workers=2)}
  for unit, _, protocol in jobs:
    alone, _, _ = train.fit(data, unit, range(protocol.seeds), protocol)
    np.testing.assert_allclose(concurrent[unit.method]["test_mse"], alone["test_mse"], rtol=1e-5)


def test_method_families_are_disjoint():
  """'topo' contains the letters 'ot': membership, not substrings, decides what a method trains."""
  assert not train.Unit("circle", "topo").with_ot and train.Unit("circle", "mt+ot").with_ot
  assert set(configs.METHODS) == set(configs.CORE_METHODS) | set(configs.PEERS)


def test_phreg_terms_weighted_are_the_library_loss():
  """[L_t, L_d] of the coordinate regularizer, weighted, equal rtjax.ph_reg_loss with the same key (the
  two terms must draw the same points as the combined loss)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (100, 16))
  y = jax.random.normal(jax.random.PRNGKey(1), (100, 3))
  key = jax.random.PRNGKey(2)
  lam_t, lam_d = configs.PEER_WEIGHTS["phreg"]["swiss_roll"]
  terms = peers.REGULARIZERS["phreg"](x, y, key)
  expected = rtjax.ph_reg_loss(x, y, key, lambda_t=lam_t, lambda_d=lam_d, min_points=19, max_points=80,
                               point_jump=20, topology_points=80)
  np.testing.assert_allclose(float(lam_t * terms[0] + lam_d * terms[1]), float(expected), rtol=1e-6)


def test_information_dropout_model_is_noisy_only_with_a_dropout_stream():
  model = MLPRegressor(information_dropout=True)
  x = jnp.asarray(coordinate_dataset("circle", 0, num_points=300).x[:100])
  params = {"params": model.init(jax.random.PRNGKey(0), x)["params"]}
  (_, z1), _ = model.apply(params, x, mutable=["losses"])
  (_, z2), _ = model.apply(params, x, mutable=["losses"])
  (_, z3), sown = model.apply(params, x, rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["losses"])
  np.testing.assert_array_equal(z1, z2)
  assert not np.allclose(z1, z3)
  # The sown loss 0.01 * sum(kl) / 100 over 100 samples x 100 features is the mean per-feature kl, which
  # lies in [-log(0.491 / 0.701), -log(0.2455 / 0.701)] (the published alpha lies in [0.2455, 0.491)).
  (penalty,) = jax.tree.leaves(sown)
  lower, upper = -np.log(np.array([0.4911, 0.2455]) / 0.701)
  assert lower <= float(penalty) <= upper


# OE carries the scipy check of the diagnostics and stays in the default suite; the others run with -m slow.
@pytest.mark.parametrize("method", [m if m == "oe" else pytest.param(m, marks=pytest.mark.slow) for m in configs.PEERS])
def test_every_peer_trains_finite_with_its_weights_and_diagnostics(method):
  data = coordinate_dataset("circle", 0, num_points=400)
  summary, fit, prog = train.fit(data, train.Unit("circle", method), [0, 1], SHORT)
  assert np.isfinite(summary["test_mse"]).all() and summary["nonfinite_steps"] == [0, 0]
  assert summary["peer_weights"] == list(configs.PEER_WEIGHTS[method]["circle"])
  assert summary["num_targets"] == 1 and summary["lam"] == 0.0
  if method == "oe":  # the diagnostics of one trained program, against scipy on its features
    test = split(data)[2]
    z = np.asarray(prog.model.apply(jax.tree.map(lambda a: a[0], fit.best_params), test.x)[1], np.float64)
    pairs = np.triu_indices(len(z), 1)
    feature_d = np.linalg.norm(z[:, None] - z[None], axis=-1)[pairs]
    target_d = np.linalg.norm(test.y[:, None].astype(np.float64) - test.y[None], axis=-1)[pairs]
    rho = scipy.stats.spearmanr(feature_d, target_d).statistic
    np.testing.assert_allclose(summary["diagnostics"]["euclidean_spearman"][0], rho, atol=1e-4)
    np.testing.assert_allclose(summary["diagnostics"]["euclidean_volume"][0], feature_d.mean(), rtol=1e-4)
  for values in summary["diagnostics"].values():
    assert len(values) == 2 and np.isfinite(values).all()


def test_peer_keys_make_runs_reproducible_and_seeds_differ():
  data = coordinate_dataset("circle", 0, num_points=300)
  first, _, _ = train.fit(data, train.Unit("circle", "infdrop"), [0, 1], SHORT)
  again, _, _ = train.fit(data, train.Unit("circle", "infdrop"), [0, 1], SHORT)
  assert first["test_mse"] == again["test_mse"] and first["test_mse"][0] != first["test_mse"][1]


def _short_run(tmp_path, *extra, out="out"):
  return experiment.main(["--datasets", "torus", "--seeds", "2", "--epochs", "100", "--no-progress",
                          "--out", str(tmp_path / out), *extra])


@pytest.mark.slow  # sweep, table, figure: ~20 s
def test_experiment_end_to_end(tmp_path):
  npz = tmp_path / "own.npz"
  own = coordinate_dataset("torus", 5, num_points=260)
  np.savez(npz, data=own.x, label=own.y)
  report = experiment.main(["--datasets", "torus", "--seeds", "2", "--epochs", "200", "--sweep",
                            "--sweep-lams", "1,10", "--sweep-gammas", "0.1", "--sweep-extra", "1000:0.1",
                            "--sweep-seeds", "1", "--sweep-epochs", "100", "--data", str(npz),
                            "--out", str(tmp_path / "out"), "--no-progress"])
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert set(saved["results"]["torus"]) == set(configs.CORE_METHODS) and saved["nonfinite"] == []
  for summary in saved["results"]["torus"].values():
    assert len(summary["test_mse"]) == 2 and np.isfinite(summary["mean"])
  assert saved["settings"]["torus"]["source"] == "sweep" and "own.npz" in saved["settings"]["torus"]["data"]
  assert saved["settings"]["torus"]["lam"] in (1.0, 10.0, 1000.0)
  assert [(r["lam"], r["gamma"]) for r in saved["sweeps"]["torus"]["rows"]] == [(1, 0.1), (10, 0.1), (1000, 0.1)]
  md = (tmp_path / "out" / "results.md").read_text()
  assert "| Baseline |" in md and "3.01 ± 0.11" in md  # the paper's torus baseline beside ours
  png = (tmp_path / "out" / "features_torus.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  assert report["results"]["torus"]["ot"]["lam"] == saved["settings"]["torus"]["lam"]
  assert not list((tmp_path / "out").glob(".*.tmp"))  # no temporary files left


def test_default_output_is_an_untracked_run_folder():
  args = experiment.parse_args([])
  assert str(args.out) == os.path.join("runs", "coordinate")
  assert args.datasets == ["circle"] and args.seeds == 10 and args.epochs == 10_000  # the paper protocol


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "sphere"], "unknown"),
    (["--datasets", "torus,circle", "--data", "x.npz"], "exactly one"),
    (["--epochs", "10"], "multiple of 100"),
    (["--epochs", "0"], "must be >= 1"),
    (["--seeds", "0"], "must be >= 1"),
    (["--gamma", "0"], "finite number > 0"),
    (["--lam", "-100"], "finite number >= 0"),
    (["--lam", "nan"], "finite number >= 0"),
    (["--methods", ","], "at least one value"),
    (["--full", "--datasets", "torus"], "do not combine"),
    (["--datasets", "torus", "--data", "missing.npz"], "--data"),
    (["--sweep-extra", "1000"], "lam:gamma"),
])
def test_cli_errors_before_any_work(argv, message, capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    experiment.parse_args(argv + ["--out", str(tmp_path / "out")])
  assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused_before_training(tmp_path, capsys):
  out = tmp_path / "ro"
  out.mkdir()
  out.chmod(stat.S_IRUSR | stat.S_IXUSR)
  with pytest.raises(SystemExit):
    experiment.parse_args(["--out", str(out)])
  assert "cannot write" in capsys.readouterr().err


def test_output_file_standing_in_for_the_folder_is_refused(tmp_path, capsys):
  (tmp_path / "file").write_text("x")
  with pytest.raises(SystemExit):
    experiment.parse_args(["--out", str(tmp_path / "file")])
  assert "cannot write" in capsys.readouterr().err


@pytest.mark.slow  # default-suite budget; CI runs it with -m slow
def test_results_are_saved_per_unit_and_resume_skips_them(tmp_path, monkeypatch):
  _short_run(tmp_path, "--methods", "baseline,mt")
  first = json.loads((tmp_path / "out" / "results.json").read_text())
  trained = []
  original = train.fit
  monkeypatch.setattr(train, "fit",
                      lambda data, unit, *a, **k: trained.append(unit.method) or original(data, unit, *a, **k))
  report = _short_run(tmp_path, "--methods", "baseline,mt,ot", "--resume")
  assert trained == ["ot"]  # baseline and mt came from the earlier run
  assert report["results"]["torus"]["baseline"] == first["results"]["torus"]["baseline"]


def test_interrupted_run_keeps_finished_units(tmp_path, monkeypatch):
  original, done = train.fit, []

  def fit_then_interrupt(data, unit, *args, **kwargs):
    if done:  # the second unit is interrupted (Ctrl-C)
      raise KeyboardInterrupt
    done.append(unit.method)
    return original(data, unit, *args, **kwargs)
  monkeypatch.setattr(train, "fit", fit_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    _short_run(tmp_path, "--methods", "baseline,mt", "--workers", "1")
  saved = json.loads((tmp_path / "out" / "results.json").read_text())
  assert list(saved["results"]["torus"]) == done


def test_non_finite_metrics_are_null_and_set_the_exit_status(tmp_path, monkeypatch):
  original = train.fit

  def diverging(data, unit, *args, **kwargs):
    summary, fit, prog = original(data, unit, *args, **kwargs)
    return dict(summary, mean=float("nan"), test_mse=[float("inf")] * 2), fit, prog
  monkeypatch.setattr(train, "fit", diverging)
  status = experiment.run(["--datasets", "torus", "--seeds", "2", "--epochs", "100", "--methods", "baseline",
                           "--no-progress", "--out", str(tmp_path / "out")])
  text = (tmp_path / "out" / "results.json").read_text()
  saved = json.loads(text)  # valid JSON: no NaN / Infinity literals
  assert status == 1 and "NaN" not in text and "Infinity" not in text
  assert saved["results"]["torus"]["baseline"]["mean"] is None
  assert "results.torus.baseline.mean" in saved["nonfinite"]
  assert "non-finite" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.slow  # default-suite budget; CI runs it with -m slow
def test_merge_combines_runs(tmp_path):
  common = ["--seeds", "1", "--epochs", "100", "--methods", "baseline", "--no-progress"]
  experiment.main(["--datasets", "torus", "--out", str(tmp_path / "a")] + common)
  experiment.main(["--datasets", "circle", "--out", str(tmp_path / "b")] + common)
  merged = experiment.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
  assert set(merged["results"]) == {"torus", "circle"}
  md = (tmp_path / "m" / "results.md").read_text()
  assert "torus (ours)" in md and "circle (ours)" in md
  assert (tmp_path / "m" / "features_circle.png").exists()
  assert "ot_solver" in merged and "OT solver:" in md
  # A later run adds or replaces single methods of a dataset, it does not drop the others.
  experiment.main(["--datasets", "circle", "--out", str(tmp_path / "c"), "--seeds", "1", "--epochs", "100",
                   "--methods", "mt", "--no-progress"])
  merged = experiment.main(["--merge", str(tmp_path / "m"), str(tmp_path / "c"), "--out", str(tmp_path / "n")])
  assert set(merged["results"]["circle"]) == {"baseline", "mt"} and set(merged["results"]["torus"]) == {"baseline"}
  with pytest.raises(SystemExit):
    experiment.parse_args(["--merge", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
