"""The methods of the deep-imbalanced-regression tables as configuration (paper Tables 1, 2, 5).

A `Method` says what is added to the task loss: M target copies (MT), L_ot with (λ, γ) on sampled rows of
the batch's features, a peer regularizer (RankSim, Ordinal Entropy, PH-Reg) with its weights, or noise
targets instead of copies (Table 5's "noise" row). `method_table` builds Table 1's rows and Table 5's
ablations from a task's defaults; `regressor` and `loss_pieces` turn a method into a Flax model and the
arguments of `rtjax.train.make_loss_fn`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

import rtjax
from rtjax.topology import PUBLISHED_SETTINGS
from rtjax.train import RotConfig

PEERS = ("ranksim", "oe", "phreg")
TABLE_METHODS = ("baseline", "ranksim", "oe", "phreg", "mt", "ot", "mt_ot")  # Table 1's rows, in its order
# Row names as the paper prints them; the ablations keep their keys (ot_lam10, mt16, ...).
NAMES = {"baseline": "Baseline", "ranksim": "+ RankSim", "oe": "+ OE", "phreg": "+ PH-Reg", "mt": "+ MT",
         "ot": "+ L_ot", "mt_ot": "+ MT + L_ot", "noise": "+ MT, noise targets"}


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of a DIR table.

  Attributes:
    num_targets: M, copies of the target (1: no MT).
    lam, epsilon: L_ot's weight λ (0: off) and entropic γ.
    rot_samples: rows of the batch L_ot is computed on (the published code draws 200).
    peer: None or one of PEERS; `peer_weights` the weights of its terms.
    noise: the M - 1 extra outputs regress Gaussian noise instead of copies of y (Table 5, "noise").
    phreg_points: PH-Reg's L_d sample sizes (min, max, jump): the agedb-dir code's 128..256 by 16 (a batch
      needs at least `min` rows).
  """
  num_targets: int = 1
  lam: float = 0.0
  epsilon: float = 0.1
  rot_samples: int = 200
  peer: str | None = None
  peer_weights: tuple[float, ...] = ()
  noise: bool = False
  phreg_points: tuple[int, int, int] = (128, 256, 16)

  def __post_init__(self):
    if self.num_targets < 1 or (self.noise and self.num_targets < 2):
      raise ValueError(f"`num_targets` must be >= 1 (>= 2 with noise), got {self.num_targets}.")
    if self.peer is not None and self.peer not in PEERS:
      raise ValueError(f"`peer` must be None or one of {PEERS}, got {self.peer!r}.")
    if (self.peer is None) != (not self.peer_weights):
      raise ValueError(f"`peer_weights` go with a peer: peer={self.peer!r}, weights={self.peer_weights}.")


@dataclasses.dataclass(frozen=True)
class Defaults:
  """A task's settings of the paper's methods (AgeDB: λ 100, γ 0.1, M 8; RankSim γ 1000, λ_interp 2)."""
  lam: float = 100.0
  epsilon: float = 0.1
  num_targets: int = 8
  rot_samples: int = 200
  ranksim_weight: float = 1000.0
  oe_weight: float = 1.0
  phreg_weights: tuple[float, float] = (PUBLISHED_SETTINGS["agedb"]["lambda_t"],
                                        PUBLISHED_SETTINGS["agedb"]["lambda_d"])
  phreg_points: tuple[int, int, int] = (128, 256, 16)


def ablations(table: dict[str, Method]) -> tuple[str, ...]:
  """The keys of `table` that are not Table 1 rows (Table 5's ablations)."""
  return tuple(m for m in table if m not in TABLE_METHODS)


def method_table(d: Defaults = Defaults()) -> dict[str, Method]:
  """Table 1's rows and Table 5's ablations (λ ∈ {1, 10, 1000}, γ ∈ {1, 10}, M ∈ {2, 4, 16, 32}, noise)."""
  ot = dict(lam=d.lam, epsilon=d.epsilon, rot_samples=d.rot_samples)
  table = {
      "baseline": Method(),
      "ranksim": Method(peer="ranksim", peer_weights=(d.ranksim_weight,)),
      "oe": Method(peer="oe", peer_weights=(d.oe_weight,)),
      "phreg": Method(peer="phreg", peer_weights=tuple(d.phreg_weights), phreg_points=tuple(d.phreg_points)),
      "mt": Method(num_targets=d.num_targets),
      "ot": Method(**ot),
      "mt_ot": Method(num_targets=d.num_targets, **ot),
  }
  for lam in (1.0, 10.0, 1000.0):
    table[f"ot_lam{lam:g}"] = Method(**dict(ot, lam=lam))
  for eps in (1.0, 10.0):
    table[f"ot_gamma{eps:g}"] = Method(**dict(ot, epsilon=eps))
  for m in (2, 4, 16, 32):
    table[f"mt{m}"] = Method(num_targets=m)
  table["noise"] = Method(num_targets=d.num_targets, noise=True)
  return table


class Regressor(nn.Module):
  """encoder (x, train) -> features [n, d]; a linear MT head -> (pred [n, M, 1], features)."""
  encoder: nn.Module
  num_targets: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    features = self.encoder(x, train=train)
    return rtjax.MultiTargetHead(self.num_targets, 1)(features), features


def regressor(encoder: Callable[[], nn.Module]) -> Callable[[Method], Regressor]:
  """method -> `Regressor(encoder(), method.num_targets)`: a fresh encoder with the method's MT head."""
  return lambda method: Regressor(encoder(), method.num_targets)


def predict(method: Method, pred: jax.Array) -> jax.Array:
  """[n, ...] from pred [n, ..., M, 1]: the mean of the copies (MT), or the first output when the others
  regress noise."""
  return pred[..., 0, 0] if method.noise else rtjax.mt_predict(pred)[..., 0]


@dataclasses.dataclass(frozen=True)
class Labels:
  """How labels become classes for Ordinal Entropy's centres: class = floor((y - origin) / width), in
  [0, num_classes)."""
  bin_width: float
  origin: float
  num_classes: int


def _peer(method: Method, labels: Labels) -> Callable:
  if method.peer == "ranksim":
    return lambda z, y, key: rtjax.ranksim_loss(z, y, key)[None]
  if method.peer == "oe":
    def oe(z, y, key):
      classes = jnp.floor((y - labels.origin) / labels.bin_width).astype(jnp.int32)
      return rtjax.ordinal_entropy_centres_loss(z, jnp.clip(classes, 0, labels.num_classes - 1),
                                                num_classes=labels.num_classes)[None]
    return oe
  low, high, jump = method.phreg_points
  settings = {k: v for k, v in PUBLISHED_SETTINGS["agedb"].items() if k not in ("lambda_t", "lambda_d")}
  settings.update(min_points=low, max_points=high, point_jump=jump)

  def phreg(z, y, key):  # [L_t, L_d] from the same key (the points ph_reg_loss would use)
    l_t = rtjax.ph_reg_loss(z, y[:, None], key, lambda_t=1.0, lambda_d=0, **settings)
    l_d = rtjax.ph_reg_loss(z, y[:, None], key, lambda_t=0, lambda_d=1.0, **settings)
    return jnp.stack([l_t, l_d])
  return phreg


def loss_pieces(method: Method, *, labels: Labels, noise_std: float = 1.0) -> dict:
  """Keyword arguments of `rtjax.train.make_loss_fn` for `method` (besides model and task loss)."""
  out = {"rot": RotConfig(lam=method.lam, epsilon=method.epsilon, warm_start=False,
                                      samples=method.rot_samples if method.lam else None)}
  if method.peer is not None:
    out.update(regularizer=_peer(method, labels), regularizer_weights=jnp.asarray(method.peer_weights, jnp.float32))
  if method.noise:
    out["targets_fn"] = noise_targets(method.num_targets, noise_std)
  return out


def noise_targets(num_targets: int, noise_std: float) -> Callable:
  """(y [n, ...], key) -> [n, ..., M, 1]: y for the first output, fresh N(0, noise_std²) draws for the
  other M - 1 at every step (Table 5's "noise" row)."""
  def noisy(y, key):
    noise = noise_std * jax.random.normal(key, (*y.shape, num_targets - 1), y.dtype)
    return jnp.concatenate([y[..., None], noise], axis=-1)[..., None]
  return noisy
