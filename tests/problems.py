"""Random test problems (float64 NumPy)."""
import numpy as np


def random_problem(seed: int, n: int, d: int, k: int = 1):
  """Gaussian features [n, d] and uniform targets [n, k] (float64 NumPy)."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.uniform(0, 10, size=(n, k))


def distance_cost(seed: int, n: int, d: int = 3) -> np.ndarray:
  """A Euclidean cost [n, n] of n Gaussian points normalised to mean norm 1 (float64)."""
  z = np.random.default_rng(seed).normal(size=(n, d))
  z /= np.linalg.norm(z, axis=1).mean()
  return np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
