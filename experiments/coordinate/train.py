"""Training coordinate-prediction runs fast: all seeds of a (dataset, method) unit in one compiled
program, one program per network structure reused across datasets, lambda and gamma (they are
arguments, not constants), and units run concurrently, one per CPU core.

A program trains full-batch (one step = one epoch) with the train step of `rtjax.train`: seeds are
vmapped, epochs are scanned in chunks of `eval_every`, and after each chunk the validation MSE decides,
inside the program, whether the parameters become the seed's best. Only the chunk loop runs in Python
(the progress bar). With L_ot the target plan is prepared once per run (the targets never change) and
each step's Sinkhorn solves start from the previous step's potentials. The peers are regularizers of
the same step (experiments/coordinate/peers.py) with their weights as arguments; those that draw
samples or noise get a per-seed key that the state splits at every step.

After training, the tightness diagnostics of paper Table 4 are taken on the test features of every
seed's best parameters.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.coordinate import configs, peers
from experiments.coordinate.configs import SOLVER, Protocol
from experiments.coordinate.data import NUM_TRAIN, CoordinateData, split
from experiments.coordinate.models import MLPRegressor
from rtjax import mt_predict
from rtjax.diagnostics import tightness_diagnostics
from rtjax.train import RotConfig, TrainState, init_train_state, make_loss_fn, make_train_step

Batch = tuple[jax.Array, jax.Array]


class Unit(NamedTuple):
  """One table cell: a method on a dataset with its lambda/gamma, trained for every seed."""
  dataset: str
  method: str
  lam: float = 0.0
  gamma: float | None = None

  @property
  def with_ot(self) -> bool:
    return self.method in configs.OT_METHODS

  @property
  def peer(self) -> str | None:
    return peers.peer_of(self.method)


class Carry(NamedTuple):
  """Per-seed state of a program between chunks (leading axis = seeds)."""
  state: TrainState
  best_params: Any
  best_val: jax.Array       # [] validation MSE of best_params
  best_epoch: jax.Array     # []
  epoch: jax.Array          # []
  nonfinite_steps: jax.Array    # [] steps whose loss was NaN/inf
  unconverged_steps: jax.Array  # [] steps whose OT solves missed their threshold


class FitResult(NamedTuple):
  """Per-seed outcome (leading axis = seeds)."""
  best_params: Any
  best_val_mse: jax.Array       # [S]
  best_epoch: jax.Array         # [S]
  val_history: jax.Array        # [S, epochs // eval_every]
  nonfinite_steps: jax.Array    # [S]
  unconverged_steps: jax.Array  # [S]


class Program(NamedTuple):
  model: MLPRegressor
  start: Callable        # (seeds [S], train, gamma) -> Carry
  chunk: Callable        # (carry, train, val, lam, weights [T]) -> (carry, val_mse [S])
  predict: Callable      # (params [S, ...], x) -> [S, n, 3]
  diagnostics: Callable  # (params [S, ...], x, y) -> TightnessDiagnostics of [S] arrays


def prediction_mse(model, params, batch: Batch) -> jax.Array:
  """Mean squared error over samples and target dims of the MT prediction (mean of the copies)."""
  x, y = batch
  return jnp.mean(jnp.square(mt_predict(model.apply(params, x)[0]) - y))


@functools.cache
def program(num_targets: int, with_ot: bool, peer: str | None, protocol: Protocol) -> Program:
  """The compiled functions of one network structure (compiled on first use, once per data shape)."""
  model = MLPRegressor(num_targets=num_targets, information_dropout=peer == "infdrop",
                       kl_weight=configs.INFDROP_KL_WEIGHT, num_train=NUM_TRAIN)
  rot = RotConfig(lam=1.0, solver=SOLVER, fixed_targets=True) if with_ot else RotConfig()
  regularizer = peers.REGULARIZERS.get(peer)
  loss_fn = make_loss_fn(model, rot, regularizer=regularizer,
                         regularizer_weights=None if regularizer is None else jnp.zeros(()))
  optimizer = optax.adamw(protocol.learning_rate, weight_decay=protocol.weight_decay)
  step = make_train_step(loss_fn, optimizer)

  def start(seed, train: Batch, gamma) -> Carry:
    params = model.init(jax.random.PRNGKey(seed), train[0])
    # Peers draw samples (OE, PH-Reg, RankSim) or noise (InfDrop) from a key of their own per seed; the
    # other methods are deterministic.
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1) if peer else None
    state = init_train_state(params, optimizer, loss_fn, train, rot if with_ot else None,
                             epsilon=gamma if with_ot else None, key=key)
    zero = jnp.zeros((), jnp.int32)
    return Carry(state, params, jnp.asarray(jnp.inf, jnp.float32), zero, zero, zero, zero)

  def chunk(carry: Carry, train: Batch, val: Batch, lam, weights) -> tuple[Carry, jax.Array]:
    kwargs = ({"lam": lam} if with_ot else {}) | ({"reg_weights": weights} if regularizer else {})

    def body(state, _):
      state, metrics = step(state, train, **kwargs)
      return state, (~jnp.isfinite(metrics["loss"]), ~jnp.asarray(metrics.get("ot_converged", True)))
    state, (nonfinite, missed) = jax.lax.scan(body, carry.state, None, length=protocol.eval_every)
    epoch = carry.epoch + protocol.eval_every
    val_mse = prediction_mse(model, state.params, val)
    better = val_mse < carry.best_val  # NaN never wins
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(better, n, o), new, old)
    return Carry(state, keep(state.params, carry.best_params), keep(val_mse, carry.best_val),
                 keep(epoch, carry.best_epoch), epoch, carry.nonfinite_steps + nonfinite.sum(),
                 carry.unconverged_steps + missed.sum()), val_mse

  predict = lambda params, x: mt_predict(model.apply(params, x)[0])
  diagnostics = lambda params, x, y: tightness_diagnostics(model.apply(params, x)[1], y)
  return Program(model, jax.jit(jax.vmap(start, in_axes=(0, None, None))),
                 jax.jit(jax.vmap(chunk, in_axes=(0, None, None, None, None))),
                 jax.jit(jax.vmap(predict, in_axes=(0, None))),
                 jax.jit(jax.vmap(diagnostics, in_axes=(0, None, None))))


def fit(data: CoordinateData, unit: Unit, seeds: Iterable[int], protocol: Protocol,
        progress: Callable[[int], None] = lambda epochs: None) -> tuple[dict, FitResult, Program]:
  """Trains every seed of `unit` on `data`; returns (summary dict, FitResult, Program).

  `progress(seed_epochs)` is called after every chunk with the seed-epochs it trained (from the
  calling thread)."""
  if protocol.epochs % protocol.eval_every:
    raise ValueError(f"`epochs` ({protocol.epochs}) must be a multiple of `eval_every` ({protocol.eval_every}).")
  start_time = time.perf_counter()
  num_targets = protocol.num_targets if unit.method in configs.MT_METHODS else 1
  # Programs depend on neither the epochs nor the number of seeds: one compilation serves all.
  prog = program(num_targets, unit.with_ot, unit.peer, dataclasses.replace(protocol, epochs=0, seeds=0))
  train, val, test = (tuple(map(jnp.asarray, part)) for part in split(data))
  gamma = jnp.asarray(unit.gamma if unit.with_ot else 0.0, jnp.float32)
  lam = jnp.asarray(unit.lam, jnp.float32)
  weights = peers.weights(unit.peer, unit.dataset)
  seeds = [int(s) for s in seeds]
  carry = prog.start(jnp.asarray(seeds), train, gamma)
  history = []
  for _ in range(protocol.epochs // protocol.eval_every):
    carry, val_mse = prog.chunk(carry, train, val, lam, weights)
    history.append(np.asarray(val_mse))  # waits: the progress bar must not run ahead of the work
    progress(protocol.eval_every * len(seeds))
  fit_result = FitResult(carry.best_params, carry.best_val, carry.best_epoch, np.stack(history, axis=1),
                         carry.nonfinite_steps, carry.unconverged_steps)
  test_mse = np.asarray(jnp.mean(jnp.square(prog.predict(carry.best_params, test[0]) - test[1]), axis=(1, 2)))
  first = configs.DIAGNOSTIC_POINTS
  diagnostics = prog.diagnostics(carry.best_params, test[0][:first], test[1][:first])
  summary = {
      "method": unit.method, "lam": unit.lam if unit.with_ot else 0.0,
      "gamma": unit.gamma if unit.with_ot else None, "num_targets": num_targets, "seeds": seeds,
      "peer_weights": list(configs.PEER_WEIGHTS[unit.peer][unit.dataset]) if unit.peer else [],
      "diagnostics": {name: np.asarray(v).tolist() for name, v in diagnostics._asdict().items()},
      "test_mse": test_mse.tolist(), "mean": float(np.mean(test_mse)), "std": float(np.std(test_mse)),
      "val_mse": np.asarray(carry.best_val).tolist(), "best_epoch": np.asarray(carry.best_epoch).tolist(),
      "nonfinite_steps": np.asarray(carry.nonfinite_steps).tolist(),
      "ot_unconverged_steps": np.asarray(carry.unconverged_steps).tolist(),
      "wall_time_s": time.perf_counter() - start_time,
  }
  return summary, fit_result, prog


def run_units(jobs: list[tuple[Unit, CoordinateData, Protocol]], *, workers: int | None = None,
              progress: Callable[[int], None] = lambda epochs: None):
  """Runs `fit` for every (unit, data, protocol) job on `workers` threads (default: one per core) and
  yields (unit, summary, fit, program) as each finishes.

  XLA runs a small program mostly on one core, so two concurrent units nearly double the throughput
  of a 2-core machine (1.75x measured). Put the longest jobs first.
  """
  workers = workers or os.cpu_count() or 1
  lock = threading.Lock()

  def locked_progress(epochs: int) -> None:
    with lock:
      progress(epochs)

  def job(unit, data, protocol):
    return unit, *fit(data, unit, range(protocol.seeds), protocol, locked_progress)

  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    futures = [pool.submit(job, *j) for j in jobs]
    try:
      for future in concurrent.futures.as_completed(futures):
        yield future.result()
    except BaseException:
      for f in futures:
        f.cancel()
      raise
