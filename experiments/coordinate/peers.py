"""The peers of Table 3 as `rtjax.train` regularizers: (features [n, d], targets [n, 3], key) -> [T] terms,
weighted per dataset by `configs.PEER_WEIGHTS` (weights are program arguments, so one compilation per
method serves every dataset). Information Dropout is part of the model instead (models.MLPRegressor).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.coordinate import configs
from rtjax.ordinal_entropy import ordinal_entropy_loss
from rtjax.ranksim import ranksim_loss
from rtjax.topology import ph_reg_loss

_MIN, _MAX, _JUMP = configs.PH_DIMENSION_POINTS
# PH-Reg's coordinate code computes L_t on 80 of the 100 training points and L_d from 19..79 points.
_PH = {"min_points": _MIN, "max_points": _MAX, "point_jump": _JUMP, "topology_points": configs.OE_SAMPLES}


def _oe(features, targets, key):
  return ordinal_entropy_loss(features, targets, key, num_samples=configs.OE_SAMPLES)[None]


def _topo(features, targets, key):
  """L_t alone (the "+ Topological Autoencoder" row); a Python 0 weight skips L_d."""
  return ph_reg_loss(features, targets, key, lambda_t=1.0, lambda_d=0, **_PH)[None]


def _phreg(features, targets, key):
  """[L_t, L_d] from the same key: the same points as ph_reg_loss(lambda_t, lambda_d) would use."""
  l_t = ph_reg_loss(features, targets, key, lambda_t=1.0, lambda_d=0, **_PH)
  l_d = ph_reg_loss(features, targets, key, lambda_t=0, lambda_d=1.0, **_PH)
  return jnp.stack([l_t, l_d])


def _ranksim(features, targets, key):
  return ranksim_loss(features, targets, key, interpolation=configs.RANKSIM_INTERPOLATION)[None]


REGULARIZERS = {"oe": _oe, "topo": _topo, "phreg": _phreg, "ranksim": _ranksim}


def peer_of(method: str) -> str | None:
  """The peer a method adds (None for the baseline, MT and L_ot rows)."""
  return method if method in configs.PEERS else None


def weights(peer: str | None, dataset: str) -> jax.Array:
  """[T] the weights of the peer's terms on `dataset` (empty without a regularizer)."""
  return jnp.asarray(configs.PEER_WEIGHTS[peer][dataset] if peer in REGULARIZERS else (), jnp.float32)
