"""Training and evaluating one deep-imbalanced-regression run (AgeDB-DIR's protocol, any data).

    program = build_program(Regressor(encoder, method.num_targets), method, schedule,
                            pieces=loss_pieces(method, labels=...), steps_per_epoch=...)   # once per method
    run = fit(program, data, seed, checkpoints=dir, mesh=rtjax.data_mesh())                # per seed
    pred, y = predictions(program, run.best, data, "test", mesh=mesh)

The protocol (YyzHarry/imbalanced-regression, agedb-dir/train.py): Adam (with torch's weight decay), the
learning rate multiplied by `lr_decay` at each milestone epoch, L1 or MSE task loss, validation MAE after
every epoch, the best-by-validation parameters tested. The train step is `rtjax.train`'s (BatchNorm
statistics carried as model state) and runs data-parallel on the mesh's devices: state replicated, every
batch sharded, every batch-coupled term (L_ot, the peers, BatchNorm) over the global batch.

Resuming: after every epoch the state, the best parameters and the history are checkpointed (orbax). The
batches of epoch e are a pure function of (seed, e) and the step's randomness is carried in the state, so
a run resumed from its last checkpoint computes exactly what the uninterrupted run computes.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import rtjax
from experiments.common.checkpoints import Checkpoints
from experiments.common.dir_methods import Method, predict
from rtjax.train import TrainState, init_train_state, make_loss_fn, make_train_step


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Optimisation protocol. AgeDB-DIR: 90 epochs, batch 256, Adam 1e-3, ×0.1 at epochs 60 and 80, L1."""
  epochs: int = 90
  batch_size: int = 256
  lr: float = 1e-3
  milestones: tuple[int, ...] = (60, 80)
  lr_decay: float = 0.1
  weight_decay: float = 0.0
  task_loss: str = "l1"
  eval_batch_size: int = 256
  select_best: bool = True  # best epoch by validation MAE; False: the last epoch (no validation split)


class DIRData(Protocol):
  """What a run needs from a dataset (numpy in, numpy out)."""
  train_labels: np.ndarray  # [N] training labels (the shots' histogram)

  def num_train_batches(self, batch_size: int) -> int: ...

  def train_batches(self, *, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x [b, ...], y [b]) batches of one epoch, a pure function of (seed, epoch), remainder dropped."""

  def eval_batches(self, split: str, *, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x, y, mask [b]) in dataset order; the last batch padded (mask False)."""


@dataclasses.dataclass(frozen=True)
class ArrayData:
  """In-memory splits as a `DIRData`: x_* [n, ...] and y_* [n] numpy arrays (a tabular dataset, your arrays)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def train_labels(self) -> np.ndarray:
    return self.y_train

  def num_train_batches(self, batch_size: int) -> int:
    return len(self.y_train) // batch_size

  def train_batches(self, *, batch_size, seed, epoch):
    order = np.random.default_rng([seed, epoch]).permutation(len(self.y_train))
    for i in range(self.num_train_batches(batch_size)):
      rows = order[i * batch_size:(i + 1) * batch_size]
      yield self.x_train[rows], self.y_train[rows]

  def eval_batches(self, split, *, batch_size):
    x, y = {"train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test)}[split]
    for start in range(0, len(y), batch_size):
      rows = np.arange(start, start + batch_size)
      mask = rows < len(y)
      rows = np.where(mask, rows, len(y) - 1)  # padding repeats the last example; the mask drops it
      yield x[rows], y[rows], mask


class Program(NamedTuple):
  """A method's compiled pieces, shared by its seeds: the model, the optimizer, the jitted step and predictor."""
  method: Method
  schedule: Schedule
  model: nn.Module
  optimizer: optax.GradientTransformation
  loss_fn: Callable
  step: Callable
  predict: Callable  # (variables, x) -> [b] predictions
  init: Callable[[dict], dict] | None = None  # variables -> variables after model.init (e.g. pretrained weights)


def build_program(model: nn.Module, method: Method, schedule: Schedule, *, pieces: dict, steps_per_epoch: int,
                  output: Callable[[jax.Array], jax.Array] | None = None,
                  init: Callable[[dict], dict] | None = None) -> Program:
  """Adam with the milestone schedule, and the jitted train step and predictor of `model`.

  Args:
    model: (x, *, train) -> (pred [b, ..., M, 1], features), e.g. `Regressor(encoder, method.num_targets)`.
    pieces: `make_loss_fn`'s keyword arguments ("rot", "regularizer", ...), e.g. `loss_pieces(method, ...)`.
    output: maps the prediction [b, ...] inside the predictor (e.g. an upsampling to the labels' size).
    init: maps freshly initialised variables (e.g. puts pretrained encoder weights in).
  """
  lr = optax.piecewise_constant_schedule(
      schedule.lr, {m * steps_per_epoch: schedule.lr_decay for m in schedule.milestones})
  optimizer = optax.adam(lr)
  if schedule.weight_decay:  # torch.optim.Adam(weight_decay=...): the decay joins the gradient before Adam
    optimizer = optax.chain(optax.add_decayed_weights(schedule.weight_decay), optimizer)
  pieces = dict(pieces)
  loss_fn = make_loss_fn(model, pieces.pop("rot"), schedule.task_loss, model_kwargs={"train": True}, **pieces)
  step = jax.jit(make_train_step(loss_fn, optimizer), donate_argnums=0)
  output = output or (lambda pred: pred)
  predictor = jax.jit(lambda variables, x: output(predict(method, model.apply(variables, x, train=False)[0])))
  return Program(method, schedule, model, optimizer, loss_fn, step, predictor, init)


class Run(NamedTuple):
  """A finished run: best-by-validation variables, their epoch and validation MAE, the per-epoch history."""
  best: dict
  best_epoch: int
  best_val_mae: float
  history: list[dict]


def _variables(state: TrainState) -> dict:
  return {**state.params, **state.model_state}


def init_state(program: Program, x: np.ndarray, y: np.ndarray, seed: int) -> TrainState:
  """A fresh state for `seed` (parameters, optimizer, BatchNorm statistics, step key) from one batch."""
  init_key, step_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = program.model.init(init_key, jnp.asarray(x), train=False)
  if program.init is not None:
    variables = program.init(variables)
  params = {k: v for k, v in variables.items() if k == "params"}
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return init_train_state(params, program.optimizer, program.loss_fn, (jnp.asarray(x), jnp.asarray(y)),
                          key=step_key, model_state=model_state)


def fit(program: Program, data: DIRData, seed: int, *, checkpoints: pathlib.Path | None = None,
        mesh=None, progress: bool = True, desc: str = "", on_epoch: Callable[[int, dict], None] | None = None) -> Run:
  """Trains one seed for `schedule.epochs`, resuming from `checkpoints` (a folder) when it holds a run.

  `on_epoch(epoch, record)` is called after each epoch's checkpoint (tests interrupt a run from it).
  """
  schedule = program.schedule
  mesh = mesh if mesh is not None else rtjax.data_mesh(jax.local_devices()[:1])
  x0, y0 = next(iter(data.train_batches(batch_size=schedule.batch_size, seed=seed, epoch=0)))
  state = rtjax.replicate(init_state(program, x0, y0, seed), mesh)
  tree = {"state": state, "best": _variables(state)}
  record = {"epoch": -1, "best_epoch": -1, "best_val_mae": None, "history": []}
  store = None if checkpoints is None else Checkpoints(checkpoints)
  restored = None if store is None else store.latest(tree)
  if restored is not None:
    _, tree, record = restored
  steps = data.num_train_batches(schedule.batch_size)
  bar = tqdm(total=schedule.epochs * steps, initial=(record["epoch"] + 1) * steps, disable=not progress,
             desc=desc or f"seed {seed}", unit="step", leave=False)
  try:
    for epoch in range(record["epoch"] + 1, schedule.epochs):
      tree, record = _epoch(program, data, seed, epoch, tree, record, mesh, bar)
      if store is not None:
        store.save(epoch, tree, record)
      if on_epoch is not None:
        on_epoch(epoch, record)
  finally:
    bar.close()
    if store is not None:
      store.close()
  return Run(tree["best"], record["best_epoch"], record["best_val_mae"], record["history"])


def _epoch(program, data, seed, epoch, tree, record, mesh, bar):
  """One epoch of steps, then validation; the best-by-validation variables are kept."""
  state, losses, start = tree["state"], [], time.perf_counter()
  batch_size = program.schedule.batch_size
  for x, y in data.train_batches(batch_size=batch_size, seed=seed, epoch=epoch):
    state, metrics = program.step(state, rtjax.shard_batch((jnp.asarray(x), jnp.asarray(y)), mesh))
    losses.append(metrics["loss"])
    bar.update(1)
  losses = np.asarray(jax.device_get(losses), np.float64)
  seconds = time.perf_counter() - start
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(f"non-finite training loss in epoch {epoch} (seed {seed}); the run stops here.")
  val_mae = None  # no validation split (select_best=False): the last epoch is kept
  if program.schedule.select_best:
    pred, labels = predictions(program, _variables(state), data, "val", mesh=mesh)
    val_mae = float(np.mean(np.abs(pred - labels)))
  entry = {"epoch": epoch, "train_loss": float(losses.mean()), "val_mae": val_mae, "train_seconds": seconds,
           "examples_per_second": len(losses) * batch_size / seconds}
  best = val_mae is None or record["best_val_mae"] is None or val_mae < record["best_val_mae"]
  record = {"epoch": epoch, "best_epoch": epoch if best else record["best_epoch"],
            "best_val_mae": val_mae if best else record["best_val_mae"], "history": [*record["history"], entry]}
  bar.set_postfix(epoch=epoch, loss=f"{entry['train_loss']:.3g}", val_mae=f"{val_mae or float('nan'):.3g}",
                  ex_s=f"{entry['examples_per_second']:.0f}")
  # A copy: the next step donates (frees) the state's buffers.
  return {"state": state, "best": jax.tree.map(jnp.copy, _variables(state)) if best else tree["best"]}, record


def predictions(program: Program, variables: dict, data: DIRData, split: str, *, mesh=None) -> tuple[np.ndarray,
                                                                                                       np.ndarray]:
  """([m] predictions, [m] labels) of a split: the entries its mask keeps (padding removed; per pixel for maps)."""
  mesh = mesh if mesh is not None else rtjax.data_mesh(jax.local_devices()[:1])
  preds, labels = [], []
  for x, y, mask in data.eval_batches(split, batch_size=program.schedule.eval_batch_size):
    pred = program.predict(variables, rtjax.shard_batch(jnp.asarray(x), mesh))
    mask = np.asarray(mask, bool)
    preds.append(np.asarray(pred)[mask])
    labels.append(np.asarray(y)[mask])
  return np.concatenate(preds).astype(np.float64), np.concatenate(labels).astype(np.float64)


def run_metrics(pred: np.ndarray, labels: np.ndarray, train_labels: np.ndarray, *, bin_width: float = 1.0,
                origin: float = 0.0, many: int = 100, few: int = 20) -> dict[str, dict[str, float | None]]:
  """Per-shot MAE/MSE/GM (and counts) as Python numbers: the table cells of one run. A region without test
  examples has count 0 and None metrics (nothing to average; not a failed number)."""
  shots = rtjax.shot_index(labels, train_labels, bin_width=bin_width, origin=origin, many=many, few=few)
  out = rtjax.shot_metrics(jnp.asarray(pred, jnp.float32), jnp.asarray(labels, jnp.float32), jnp.asarray(shots))
  cell = lambda k, v, count: int(v) if k == "count" else (float(v) if count else None)
  return {region: {k: cell(k, v, int(values["count"])) for k, v in values.items()} for region, values in out.items()}


def per_bin_errors(pred: np.ndarray, labels: np.ndarray, *, bin_width: float = 1.0,
                   origin: float = 0.0) -> dict[str, list]:
  """{"bin": [B] occupied bins, "mae": [B] mean |error| per bin} for the per-bin error figure."""
  bins = rtjax.label_bins(labels, bin_width=bin_width, origin=origin)
  occupied = np.unique(bins)
  return {"bin": occupied.tolist(),
          "mae": [float(np.mean(np.abs(pred - labels)[bins == b])) for b in occupied]}

