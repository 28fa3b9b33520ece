"""Optax training pieces for regression with ROT-Reg and Multiple Targets: a loss, a train step, a state.

    loss_fn = make_loss_fn(model, RotConfig(lam=100.0, epsilon=0.1))
    state = init_train_state(params, optimizer, loss_fn, batch)
    step = jax.jit(make_train_step(loss_fn, optimizer))
    state, metrics = step(state, batch)

The model returns (pred [n, M, k], features [n, d]) (e.g. an encoder followed by `MultiTargetHead`).
The state carries what makes consecutive ROT solves cheap: the last potentials (a warm start; the
gradient does not depend on it) and, for full-batch training where the targets never change, the
prepared target plan (`fixed_targets=True`), solved once instead of at every step.

Other regularizers (the peers: RankSim, Ordinal Entropy, PH-Reg, ...) enter as `regularizer=`, a
function (features, targets, key) -> [T] terms weighted by `regularizer_weights`; losses that a module
computes itself (Information Dropout's KL term) are `sow`n into the "losses" collection and added.
A state made with `key=` splits it at every step: one key for the model's "dropout" rng stream (the
model is stochastic in training exactly when that stream exists), one for the regularizer, one for
`RotConfig.samples` and `targets_fn`.

Models with non-trainable state (BatchNorm's "batch_stats") keep it in `TrainState.model_state`: it is
passed to the model, updated by it (mutable) and carried to the next step, never differentiated.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from rtjax.heads import mt_loss
from rtjax.rot import RotPotentials, RotTargets, prepare_targets, rot_loss
from rtjax.sinkhorn import SolverOptions

__all__ = ["Batch", "OtCarry", "Regularizer", "RotConfig", "TrainState", "init_train_state", "make_loss_fn",
           "make_train_step"]

Batch = tuple[jax.Array, jax.Array]  # (x [n, ...], y [n, k])


@dataclasses.dataclass(frozen=True)
class RotConfig:
  """ROT-Reg in a training loss: L = L_task + lam * L_ot(features, targets; epsilon). lam = 0: off.

  Attributes:
    lam: weight lambda of L_ot (0 switches it off). May also be given per call (see `make_loss_fn`).
    epsilon: entropic regularisation gamma.
    solver: `SolverOptions` of both solves.
    warm_start: start each step's solves from the previous step's potentials (carried in the state).
      Only meaningful when the batch keeps its samples in the same order (full-batch training).
    fixed_targets: the targets are the same at every step (full-batch training): their plan T_Y is
      prepared once by `init_train_state` and carried in the state, not re-solved per step.
    samples: L_ot on this many rows of the batch, drawn without replacement at every step (the published
      AgeDB/NYUD2 code draws 200); None: all rows. Needs a key (`init_train_state(key=...)`).
  """
  lam: float = 0.0
  epsilon: float = 0.1
  solver: SolverOptions = SolverOptions()  # noqa: RUF009 - frozen, hashable: a shared default is safe
  warm_start: bool = True
  fixed_targets: bool = False
  samples: int | None = None

  def __post_init__(self):
    if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                     or self.samples < 2):
      raise ValueError(f"`samples` must be an integer >= 2 (rows for L_ot) or None, got {self.samples!r}.")
    if self.samples is not None and self.fixed_targets:
      raise ValueError("`samples` draws different rows at every step: it cannot be used with `fixed_targets`.")


class OtCarry(NamedTuple):
  """What one step's ROT solves hand to the next: potentials (warm start) and prepared targets."""
  potentials: RotPotentials | None
  targets: RotTargets | None


NO_OT = OtCarry(None, None)


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  ot: OtCarry = NO_OT
  key: jax.Array | None = None  # split at every step when given (dropout rngs, sampling regularizers)
  model_state: Any = None  # non-trainable collections, e.g. {"batch_stats": ...}: updated, not differentiated


Regularizer = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (features, targets, key) -> [T]


def make_loss_fn(model: nn.Module, rot: RotConfig, task_loss: str | Callable = "mse", *,
                 regularizer: Regularizer | None = None, regularizer_weights=None,
                 model_kwargs: dict[str, Any] | None = None,
                 targets_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> Callable:
  """(params, batch, ot=NO_OT, lam=None, epsilon=None, key=None, reg_weights=None, model_state=None)
  -> (loss, metrics).

  L = task + lam * L_ot + sum_t w_t * R_t(features, targets, key) + sum of the model's sown "losses".

  Args:
    model: returns (pred [n, M, k], features [n, d]).
    rot: ROT-Reg settings (`lam=0` switches it off).
    task_loss: "mse", "l1" or a callable, as in `mt_loss`.
    regularizer: (features [n, d], targets [n, k], key) -> [T] (or []) terms, e.g. `rtjax.ph_reg_terms`.
      It receives `key=None` when the loss is called without a key.
    regularizer_weights: [T] (or []) default weights w of its terms.
    model_kwargs: keyword arguments of `model.apply` in training, e.g. {"train": True}.
    targets_fn: (y [n, k], key) -> what the task loss regresses, [n, k] or per copy [n, M, k] (e.g. Table
      5's noise targets); L_ot and the regularizer always see y. Called with key=None without a key.

  `lam`, `epsilon` and `reg_weights` override the defaults per call (arrays are fine: one compiled step
  serves a sweep). With ROT on, metrics hold "rot", "ot_converged", "ot_iterations" and "ot" (the
  `OtCarry` for the next step); with a regularizer "regularizer" ([T] terms); with sown losses "sown";
  with `model_state` (its collections are mutable) "model_state", the updated collections.
  """
  if regularizer is not None and regularizer_weights is None:
    raise ValueError("`regularizer_weights` must be given with `regularizer` (the weights of its terms).")

  def loss_fn(params, batch: Batch, ot: OtCarry = NO_OT, lam=None, epsilon=None, key=None, reg_weights=None,
              model_state=None):
    x, y = batch
    model_key, reg_key, sample_key, target_key = [None] * 4 if key is None else _split(key)
    rngs = {} if key is None else {"dropout": model_key}
    # `model.init` returns what the model sowed at init too; applied with it, this step's losses would be
    # appended to those.
    variables = {k: v for k, v in params.items() if k != "losses"} | (model_state or {})
    (pred, features), updated = model.apply(variables, x, rngs=rngs, mutable=["losses", *(model_state or {})],
                                            **(model_kwargs or {}))
    sown = updated.get("losses", {})
    task = mt_loss(pred, y if targets_fn is None else targets_fn(y, target_key), loss=task_loss)
    metrics, loss = {"task": task}, task
    if model_state is not None:
      metrics["model_state"] = {k: updated[k] for k in model_state}
    if sown:
      metrics["sown"] = sum(jnp.sum(leaf) for leaf in jax.tree.leaves(sown))
      loss = loss + metrics["sown"]
    if regularizer is not None:
      weights = regularizer_weights if reg_weights is None else reg_weights
      metrics["regularizer"] = regularizer(features, y, reg_key)
      loss = loss + jnp.sum(jnp.asarray(weights) * metrics["regularizer"])
    if rot.lam == 0 and lam is None:
      return loss, metrics
    lam = rot.lam if lam is None else lam
    init = ot.potentials if rot.warm_start else None
    if rot.samples is not None:
      features, y = _sample_rows(features, y, rot.samples, sample_key)
    if ot.targets is not None:  # prepared (fixed targets): epsilon is theirs
      reg, info = rot_loss(features, ot.targets, init=init, solver=rot.solver, return_diagnostics=True)
    else:
      reg, info = rot_loss(features, y, epsilon=rot.epsilon if epsilon is None else epsilon, init=init,
                           solver=rot.solver, return_diagnostics=True)
    carry = OtCarry(info.potentials if rot.warm_start else None, ot.targets)
    metrics.update(rot=reg, ot_converged=info.converged, ot_iterations=info.feature.iterations, ot=carry)
    return loss + lam * reg, metrics
  return loss_fn


def _split(key):
  """(model, regularizer, L_ot rows, targets_fn) keys. The first two are `split(key)`, as before the last
  two existed, so that runs without them keep their random streams."""
  model_key, reg_key = jax.random.split(key)
  return (model_key, reg_key, *jax.random.split(jax.random.fold_in(key, 0x5EED)))


def _sample_rows(features, y, samples: int, key):
  """`samples` rows of (features, y) without replacement (all rows, in order, when the batch is smaller)."""
  n = features.shape[0]
  if n <= samples:
    return features, y
  if key is None:
    raise ValueError("`RotConfig.samples` draws rows at random: give the state a key (init_train_state(key=...)).")
  rows = jax.random.choice(key, n, (samples,), replace=False)
  return features[rows], jnp.asarray(y)[rows]


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
  """(state, batch, **loss_kwargs) -> (state, metrics): one optax step on loss_fn. Jit it at the call site.

  `loss_kwargs` (e.g. lam, epsilon) are passed to loss_fn. Start from `init_train_state` so that the
  state has the same structure before and after a step (one compilation).
  """
  def step(state: TrainState, batch: Batch, **loss_kwargs):
    key, step_key = (None, None) if state.key is None else jax.random.split(state.key)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if state.model_state is not None:
      loss_kwargs = dict(loss_kwargs, model_state=state.model_state)
    (loss, metrics), grads = grad_fn(state.params, batch, state.ot, key=step_key, **loss_kwargs)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    ot = metrics.pop("ot", state.ot)
    model_state = metrics.pop("model_state", state.model_state)
    new_state = TrainState(optax.apply_updates(state.params, updates), opt_state, ot, key, model_state)
    return new_state, dict(metrics, loss=loss)
  return step


def init_train_state(params, optimizer: optax.GradientTransformation, loss_fn: Callable, batch: Batch,
                     rot: RotConfig | None = None, epsilon=None, key: jax.Array | None = None,
                     model_state=None) -> TrainState:
  """Initial state: optimizer state, cold-start (zero) potentials shaped as loss_fn returns them, and,
  with `rot.fixed_targets`, the prepared targets of `batch` (at `epsilon`, default rot.epsilon).
  `key` (a PRNG key) makes every step draw fresh randomness (dropout rngs, regularizer sampling).
  `model_state`: the model's non-trainable collections (e.g. {"batch_stats": variables["batch_stats"]});
  `params` then holds the trainable ones only (e.g. {"params": variables["params"]})."""
  targets = None
  if rot is not None and rot.fixed_targets:
    targets = prepare_targets(batch[1], epsilon=rot.epsilon if epsilon is None else epsilon, solver=rot.solver)
  ot = NO_OT._replace(targets=targets)
  args = (params, batch, ot) + (() if epsilon is None else (None, epsilon))
  _, metrics = jax.eval_shape(lambda *a: loss_fn(*a, key=key, model_state=model_state), *args)
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
  carry = metrics.get("ot")
  potentials = None if carry is None else zeros(carry.potentials)
  return TrainState(params, optimizer.init(params), OtCarry(potentials, targets), key, model_state)
