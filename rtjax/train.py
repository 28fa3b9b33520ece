"""Optax training pieces: a regularised regression loss, a train step, and a many-seed fit.

`fit_seeds` trains every seed in one compiled program: the seeds are vmapped, epochs are scanned in
chunks of `eval_every`, and after each chunk the validation MSE decides (inside the program) whether
the parameters become the seed's best. Only the chunk loop runs in Python, for the progress bar.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

from rtjax.heads import mt_loss, mt_predict
from rtjax.ot import resolve_solver
from rtjax.rot import RotPotentials, rot_loss_with_diagnostics

Batch = tuple[jax.Array, jax.Array]  # (x [n, D], y [n, k])


@dataclasses.dataclass(frozen=True)
class RotConfig:
  """ROT-Reg in a training loss: L = L_task + lam * L_ot(features, targets; epsilon). lam = 0: off.

  warm_start: start each step's Sinkhorn solves from the previous step's potentials (carried in
  `TrainState.ot_potentials`). Only meaningful when the batch keeps its samples in the same order
  (full-batch training); ignored with "unrolled" differentiation, whose gradient it would spoil.
  """
  lam: float = 0.0
  epsilon: float = 0.1
  solver_options: dict = dataclasses.field(default_factory=dict)
  warm_start: bool = True

  def warm_starts(self) -> bool:
    return self.warm_start and resolve_solver(None, self.solver_options).differentiation != "unrolled"


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  ot_potentials: RotPotentials | None = None  # warm start of the next step's ROT solves


def make_loss_fn(model: nn.Module, rot: RotConfig, task_loss: str = "mse") -> Callable:
  """(params, batch, ot_init=None) -> (loss, metrics) for a model returning (pred [n, M, k], features [n, d]).

  With ROT on, metrics hold "rot", "ot_converged", "ot_iterations" and "ot_potentials" (the
  `RotPotentials` to pass as `ot_init` next step; None when warm starts are off).
  """
  warm = rot.warm_starts()

  def loss_fn(params, batch: Batch, ot_init: RotPotentials | None = None):
    x, y = batch
    pred, features = model.apply(params, x)
    task = mt_loss(pred, y, loss=task_loss)
    metrics = {"task": task}
    if rot.lam == 0:
      return task, metrics
    reg, info = rot_loss_with_diagnostics(features, y, epsilon=rot.epsilon, init=ot_init if warm else None,
                                          **rot.solver_options)
    metrics.update(rot=reg, ot_converged=info.converged, ot_iterations=info.feature_transport.iterations,
                   ot_potentials=info.potentials if warm else None)
    return task + rot.lam * reg, metrics
  return loss_fn


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
  """(state, batch) -> (state, metrics): one optax step on loss_fn. Jit it at the call site.

  The step carries the ROT potentials from one step to the next (`TrainState.ot_potentials`); start
  from `init_train_state` so that the state has the same structure before and after a step.
  """
  def step(state: TrainState, batch: Batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, state.ot_potentials)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    potentials = metrics.pop("ot_potentials", None)
    return (TrainState(optax.apply_updates(state.params, updates), opt_state, potentials),
            dict(metrics, loss=loss))
  return step


def init_train_state(params, optimizer: optax.GradientTransformation, loss_fn: Callable,
                     batch: Batch) -> TrainState:
  """Initial state: optimizer state and cold-start (zero) ROT potentials shaped as loss_fn returns them."""
  _, metrics = jax.eval_shape(loss_fn, params, batch)
  potentials = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metrics.get("ot_potentials"))
  return TrainState(params, optimizer.init(params), potentials)


def prediction_mse(model: nn.Module, params, batch: Batch) -> jax.Array:
  """Mean squared error over samples and target dims of the MT prediction (mean of copies)."""
  x, y = batch
  return jnp.mean(jnp.square(mt_predict(model.apply(params, x)[0]) - y))


class FitResult(NamedTuple):
  """Per-seed outcome (leading axis = seeds)."""
  best_params: Any
  best_val_mse: jax.Array      # [S]
  best_epoch: jax.Array        # [S]
  val_history: jax.Array       # [S, epochs // eval_every]
  nonfinite_steps: jax.Array   # [S] steps whose loss was NaN/inf
  unconverged_steps: jax.Array  # [S] steps whose OT solves missed their threshold


def fit_seeds(model: nn.Module, loss_fn: Callable, optimizer: optax.GradientTransformation,
              train: Batch, val: Batch, seeds: jax.Array, *, epochs: int, eval_every: int = 100,
              progress: bool = True, description: str = "training") -> FitResult:
  """Full-batch training of one model per seed, all seeds in one compiled program.

  Args:
    model: Flax module returning (pred, features); loss_fn from `make_loss_fn`.
    train, val: (x, y) batches; train is used whole at every step (one step = one epoch).
    seeds: [S] integer seeds for the parameter initialisation.
    epochs: number of steps; a multiple of eval_every.
    eval_every: epochs between validation checks (best-by-validation selection).
  """
  if epochs % eval_every:
    raise ValueError(f"`epochs` ({epochs}) must be a multiple of `eval_every` ({eval_every}).")
  step = make_train_step(loss_fn, optimizer)

  def init(seed):
    return init_train_state(model.init(jax.random.PRNGKey(seed), train[0]), optimizer, loss_fn, train)

  def chunk(carry):
    state, best_params, best_val, best_epoch, epoch, bad, unconverged = carry
    def body(state, _):
      state, metrics = step(state, train)
      return state, (~jnp.isfinite(metrics["loss"]), ~jnp.asarray(metrics.get("ot_converged", True)))
    state, (nonfinite, missed) = jax.lax.scan(body, state, None, length=eval_every)
    epoch = epoch + eval_every
    val_mse = prediction_mse(model, state.params, val)
    better = val_mse < best_val  # NaN never wins
    best_params = jax.tree_util.tree_map(lambda b, p: jnp.where(better, p, b), best_params, state.params)
    return (state, best_params, jnp.where(better, val_mse, best_val), jnp.where(better, epoch, best_epoch),
            epoch, bad + nonfinite.sum(), unconverged + missed.sum()), val_mse

  def start(seed):
    state = init(seed)
    zero = jnp.zeros((), jnp.int32)
    return (state, state.params, jnp.asarray(jnp.inf, jnp.float32), zero, zero, zero, zero)

  run_chunk = jax.jit(jax.vmap(chunk))
  carry = jax.jit(jax.vmap(start))(jnp.asarray(seeds))
  history = []
  with tqdm(total=epochs, desc=description, unit="epoch", disable=not progress, leave=False) as bar:
    for _ in range(epochs // eval_every):
      carry, val_mse = run_chunk(carry)
      history.append(jax.block_until_ready(val_mse))  # dispatch is async: wait, or the bar would lie
      bar.update(eval_every)
  _, best_params, best_val, best_epoch, _, bad, unconverged = carry
  return FitResult(best_params, best_val, best_epoch, jnp.stack(history, axis=1), bad, unconverged)
