"""Per-step cost of each regularizer beside `rot_loss`: `value_and_grad` w.r.t. the features, jitted, at
n = 100 (the coordinate task: d = 100, 3-D targets, the peers' coordinate settings) and n = 1000
(d = 128, 1-D targets, the peers' AgeDB settings where they differ).

    PYTHONPATH=. python benchmarks/peers/measure.py     # writes results.{json,md} beside this file

Every function runs in this process on JAX's CPU (or GPU) backend with its default threads; all rows
are measured in the same run, one after the other (`experiments.common.timing.time_call`: compilation
apart, median of repeats). Ratios to `rot_loss` (cold start) are the comparable numbers on a CPU.
"""
from __future__ import annotations

import json
import pathlib
import platform

import jax
import jax.numpy as jnp

import rtjax
from experiments.common.timing import device_name, time_call
from rtjax.information_dropout import InformationDropout

SIZES = ((100, 100, 3), (1000, 128, 1))  # n, d, target dimension


def losses(z: jax.Array, y: jax.Array, key: jax.Array) -> dict:
  """name -> f(features, targets) -> [] for the problem (z [n, d], y [n, k])."""
  small = z.shape[0] <= 100
  ph = ({"min_points": 19, "max_points": 80, "point_jump": 20, "topology_points": 80} if small else
        {"min_points": 128, "max_points": 256, "point_jump": 16})
  k1, k2, k3 = jax.random.split(key, 3)
  targets = rtjax.prepare_targets(y, epsilon=0.1)
  potentials = rtjax.rot_loss(z, targets, return_diagnostics=True)[1].potentials  # the previous step's
  drop = InformationDropout()
  params = drop.init(k3, z, z, deterministic=True)

  def information_dropout(z, y):
    noisy, kl = drop.apply(params, z, z, deterministic=False, rngs={"dropout": k3})
    return jnp.sum(noisy) + jnp.sum(kl)

  return {
      "rot_loss (cold start, eps 0.1)": lambda z, y: rtjax.rot_loss(z, y, epsilon=0.1),
      "rot_loss (prepared targets, warm start)": lambda z, y: rtjax.rot_loss(z, targets, init=potentials),
      "ranksim_loss": lambda z, y: rtjax.ranksim_loss(z, y, k1),
      f"ordinal_entropy_loss ({'80 samples' if small else 'all samples'})":
          lambda z, y: rtjax.ordinal_entropy_loss(z, y, k2, num_samples=80 if small else None),
      "topological_loss (L_t)": lambda z, y: rtjax.topological_loss(z, y),
      f"ph_reg_loss (L_t + L_d, sizes {ph['min_points']}..{ph['max_points']} step {ph['point_jump']})":
          lambda z, y: rtjax.ph_reg_loss(z, y, k1, **ph),
      "InformationDropout (alpha MLP, noise, KL)": information_dropout,
  }


def main() -> None:
  rows = []
  diagnostics = jax.jit(rtjax.tightness_diagnostics)
  for n, d, k in SIZES:
    kz, ky, kl = jax.random.split(jax.random.PRNGKey(n), 3)
    z = jax.random.normal(kz, (n, d))
    y = jax.random.uniform(ky, (n, k))
    timed = {name: jax.jit(jax.value_and_grad(fn)) for name, fn in losses(z, y, kl).items()}
    timed["tightness_diagnostics (no gradient)"] = diagnostics
    for name, fn in timed.items():
      timing, _ = time_call(fn, z, y, budget_s=3.0)
      rows.append({"n": n, "d": d, "target_dim": k, "function": name, **timing})
      print(f"n={n:5d} {name:70s} {timing['median_ms']:9.3f} ms")
  for row in rows:
    base = next(r for r in rows if r["n"] == row["n"] and r["function"].startswith("rot_loss (cold"))
    row["ratio_to_rot_loss"] = row["median_ms"] / base["median_ms"]
  report = {"device": device_name(), "python": platform.python_version(), "jax": jax.__version__,
            "rtjax": rtjax.__version__, "rows": rows}
  here = pathlib.Path(__file__).parent
  (here / "results.json").write_text(json.dumps(report, indent=1))
  lines = [f"# Regularizers per training step: value_and_grad w.r.t. the features ({report['device']}, "
           f"jax {report['jax']}, float32)", "",
           "n = 100: d = 100, 3-D targets (coordinate task); n = 1000: d = 128, 1-D targets. Median of "
           "repeats after compilation, all rows in one run; `/ rot_loss` = the row's time over rot_loss "
           "with a cold start at the same n.", "",
           "| n | function | median ms | first call s | / rot_loss |", "|---|---|---|---|---|"]
  lines += [f"| {r['n']} | {r['function']} | {r['median_ms']:.3f} | {r['first_call_s']:.2f} | "
            f"{r['ratio_to_rot_loss']:.2f} |" for r in rows]
  (here / "results.md").write_text("\n".join(lines) + "\n")
  print((here / "results.md").read_text())


if __name__ == "__main__":
  main()
