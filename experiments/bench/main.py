"""Speed of value_and_grad of L_ot (and its dense variant): rtjax configurations against ott-jax's
plain use and the authors' published formulation (torch + POT), on the same inputs and device.

    python -m experiments.bench --quick          # CPU smoke run (n = 200; blocked also n = 1000), < 2 min
    python -m experiments.bench                  # n in 200 ... 4096 (65536 on GPU); d in 128, 2048

Above --dense-max-n (4096 on CPU, 16384 on GPU) only `rtjax.blocked` runs, with a float64 blocked
reference. A second table times one pass of the blocked solver over the n^2 costs.

Inputs: float32 Gaussian features z [n, d] and uniform targets y [n] (the issue's "random data"),
epsilon = 0.1. Each row: median wall time of value_and_grad after compilation (synchronised), the
first call's time, Sinkhorn iterations, the gradient's relative error against a float64 reference
(rtjax, symmetric implicit differentiation at threshold 1e-9 — itself checked against finite
differences in the tests), and the published formulation's time divided by the row's time.
Writes OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import rtjax
from rtjax import benchmark, blocked, published
from rtjax.compare import relative_error

EPSILON = 0.1
BLOCKED = "rtjax blocked (no n x n array, thr 1e-5)"
# name -> rot_loss keyword arguments; "warm" starts from the potentials of a nearby batch.
JAX_CONFIGS = {
    "rtjax default (symmetric implicit, thr 1e-4)": {},
    "rtjax warm start (training steady state)": {"warm": True},
    "rtjax unrolled (thr 1e-4)": {"differentiation": "unrolled"},
    "ott-jax plain (implicit, thr 1e-3)": {"differentiation": "implicit", "threshold": 1e-3},
    BLOCKED: {"blocked": True},
}
TORCH_CONFIGS = {
    "published (torch + POT, 1000 its)": {},
    "POT stopThr=1e-3 (torch)": {"stopThr": 1e-3},
}
PUBLISHED = "published (torch + POT, 1000 its)"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="n in 200, 1000; d = 128; few repeats")
  p.add_argument("--sizes", help="comma list of NxD, e.g. 200x2048,4096x512 (overrides the grid)")
  p.add_argument("--max-n", type=int, help="skip larger n (default: 4096 on CPU, 65536 on GPU)")
  p.add_argument("--dense-max-n", type=int, help="above this n only the blocked path runs (default: "
                 "4096 on CPU, 16384 on GPU)")
  p.add_argument("--reference-max-n", type=int, default=4096, help="float64 reference up to this n")
  p.add_argument("--no-published", action="store_true", help="skip torch + POT even if importable")
  p.add_argument("--budget", type=float, default=5.0, help="seconds of repeats per row")
  p.add_argument("--note", default="", help="recorded with the results (e.g. what else the machine ran)")
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  args = p.parse_args(argv)
  gpu = jax.devices()[0].platform != "cpu"
  if args.sizes:
    try:
      args.sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    except ValueError:
      p.error(f"--sizes must look like 200x2048,4096x512, got {args.sizes!r}")
  elif args.quick:
    args.sizes = [(200, 128), (1000, 128)]
    args.dense_max_n = args.dense_max_n or 200  # n = 1000: the blocked path alone
  else:
    args.sizes = [(n, d) for n in (200, 1000, 4096, 16384, 65536) for d in (128, 2048)]
  max_n = args.max_n or (65536 if gpu else 4096)
  args.dense_max_n = args.dense_max_n or (16384 if gpu else 4096)
  args.sizes = [(n, d) for n, d in args.sizes if n <= max_n]
  if args.quick:
    args.budget = min(args.budget, 1.0)
  return args


def problem(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.uniform(0, 10, size=n).astype(np.float32)


def reference_grad(z: np.ndarray, y: np.ndarray, use_blocked: bool = False) -> np.ndarray:
  loss = blocked.blocked_rot_loss if use_blocked else rtjax.rot_loss
  with jax.enable_x64(True):
    fn = jax.jit(jax.grad(lambda f: loss(f, jnp.asarray(y, jnp.float64), epsilon=EPSILON, threshold=1e-9,
                                         max_iterations=100_000, linear_solve_tolerance=1e-10)))
    return np.asarray(fn(jnp.asarray(z, jnp.float64)))


def jax_row(z, y, config: dict, budget: float, repeats: int = 3) -> tuple[dict, np.ndarray]:
  config = dict(config)
  warm = config.pop("warm", False)
  loss = blocked.blocked_rot_loss_with_diagnostics if config.pop("blocked", False) else rtjax.rot_loss_with_diagnostics
  step = jax.jit(jax.value_and_grad(
      lambda f, init: loss(f, y, epsilon=EPSILON, init=init, **config), has_aux=True))
  z = jnp.asarray(z)
  init = None
  if warm:  # potentials of the previous step: the same samples, slightly moved features
    (_, info), _ = step(z + 1e-3 * jnp.sin(z), None)
    init = info.potentials
  timing, ((_, info), grad) = benchmark.time_call(step, z, init, budget_s=budget, min_repeats=repeats)
  timing.update(iterations_features=int(info.feature_transport.iterations),
                iterations_targets=int(info.target_transport.iterations),
                converged=bool(info.converged), finite=bool(jnp.all(jnp.isfinite(grad))))
  return timing, np.asarray(grad)


def torch_row(z, y, config: dict, budget: float) -> tuple[dict, np.ndarray]:
  import torch
  fn = published.value_and_grad_fn(y, epsilon=EPSILON, **config)
  features = torch.as_tensor(z)
  timing, (_, grad) = benchmark.time_call(fn, features, sync=lambda out: out, budget_s=budget)
  grad = grad.numpy()
  timing.update(finite=bool(np.all(np.isfinite(grad))))
  return timing, grad


def dense_row(budget: float, channels: int) -> dict:
  """dense_rot_loss on a [4, 96, 128, C] feature map (stride 8 -> 768 pixels, 200 drawn)."""
  key = jax.random.PRNGKey(0)
  feature_map = jax.random.normal(key, (4, 96, 128, channels))
  depth = jax.random.uniform(jax.random.PRNGKey(1), (4, 96, 128), minval=0.0, maxval=10.0)
  step = jax.jit(jax.value_and_grad(lambda f: rtjax.dense_rot_loss(f, depth, key, epsilon=EPSILON)))
  timing, _ = benchmark.time_call(step, feature_map, budget_s=budget)
  return dict(timing, method="rtjax dense_rot_loss (default)", shape=[4, 96, 128, channels])


# Peak memory bandwidth (bytes/s) of the cards the project is lent, for the floor of a pass that
# would read a stored [n, n] float32 cost matrix.
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def pass_row(n: int, d: int, budget: float) -> dict:
  """One pass of the blocked solver over the n^2 costs (one Sinkhorn iteration): time, achieved
  FLOP/s (2 n^2 d for the distance matmul, ~8 n^2 for distances, masks, exp and sums), and the
  time a pass over a stored float32 [n, n] matrix would need at the card's peak bandwidth."""
  z = jnp.asarray(problem(n, d)[0])
  layout = blocked._layout(n, None)
  costs = blocked._costs(z, layout, normalise_by_max=False)
  one_pass = jax.jit(lambda points, f: blocked._soft_min(costs._replace(points=points), f, EPSILON))
  timing, _ = benchmark.time_call(one_pass, costs.points, jnp.zeros(n), budget_s=budget, min_repeats=1)
  flops = 2.0 * n * n * d + 8.0 * n * n
  device = benchmark.device_name()
  bandwidth = next((b for name, b in BANDWIDTH.items() if name in device), None)
  return dict(n=n, d=d, block_size=layout.block, median_ms=timing["median_ms"],
              tflops=flops / timing["median_ms"] / 1e9,
              stored_cost_floor_ms=None if bandwidth is None else 4.0 * n * n / bandwidth * 1e3)


def run(args, save=lambda report: None) -> dict:
  """The benchmark; `save(report)` is called after every row (long runs keep what they measured)."""
  use_torch = not args.no_published and published.available()
  report = {"device": benchmark.device_name(), "epsilon": EPSILON, "rows": [], "dense": [], "passes": [],
            "reference": "float64 rtjax symmetric-implicit, threshold 1e-9",
            "versions": benchmark.library_versions(), "published_available": use_torch,
            "date": time.strftime("%Y-%m-%d"), "note": args.note}
  for n, d in args.sizes:
    dense = n <= args.dense_max_n
    if not dense:  # the cost of one pass first: the full call takes many of them
      report["passes"].append(pass_row(n, d, args.budget))
      save(report)
    z, y = problem(n, d)
    ref = reference_grad(z, y, use_blocked=not dense) if n <= args.reference_max_n else None
    published_ms = None
    configs = [(name, "jax", c) for name, c in JAX_CONFIGS.items() if dense or name == BLOCKED]
    if use_torch and dense:
      configs = [(name, "torch", c) for name, c in TORCH_CONFIGS.items()] + configs
    for name, backend, config in configs:
      try:
        if backend == "torch":
          timing, grad = torch_row(z, y, config, args.budget)
        else:  # beyond the dense sizes one call, compilation included (minutes on CPU at n = 65,536)
          timing, grad = jax_row(z, y, config, args.budget, repeats=3 if dense else 0)
        row = dict(timing, grad_rel_error=relative_error(grad, ref), error=None)
      except Exception as e:  # a failing configuration is a result, not a crash of the benchmark
        row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", "median_ms": None}
      if name == PUBLISHED:
        published_ms = row["median_ms"]
      row.update(n=n, d=d, method=name, peak_device_bytes=benchmark.peak_memory_bytes(),
                 peak_host_bytes=benchmark.peak_host_bytes())
      row["published_over_this"] = (published_ms / row["median_ms"]
                                    if published_ms and row["median_ms"] else None)
      report["rows"].append(row)
      print(_row_text(row), flush=True)
      save(report)
    if dense:
      report["passes"].append(pass_row(n, d, args.budget))
  report["dense"] = [dense_row(args.budget, c) for c in (128,)]
  return report


def _fmt(value, spec: str) -> str:
  return "–" if value is None else format(value, spec)


def _row_text(row: dict) -> str:
  if row.get("error"):
    return f"n={row['n']:>6} d={row['d']:>5} {row['method']:<46} FAILED {row['error']}"
  return (f"n={row['n']:>6} d={row['d']:>5} {row['method']:<46} {row['median_ms']:9.2f} ms  "
          f"grad err {_fmt(row['grad_rel_error'], '.1e')}  published/this {_fmt(row['published_over_this'], '.1f')}")


def markdown(report: dict) -> str:
  lines = [f"# L_ot value_and_grad benchmark on {report['device']} (float32, epsilon {report['epsilon']})", "",
           *([f"Note: {report['note']}", ""] if report.get("note") else []),
           f"Versions: {report['versions']}. Gradient error: relative to {report['reference']}. "
           "`published / this` = the published formulation's median time over the row's (higher = faster).",
           "", "| n | d | method | median ms | first call s | iterations (z / y) | grad rel. error | "
           "published / this | peak device MB | process peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["rows"]:
    if r.get("error"):
      lines.append(f"| {r['n']} | {r['d']} | {r['method']} | failed: {r['error']} | | | | | | |")
      continue
    its = (f"{r['iterations_features']} / {r['iterations_targets']}" if "iterations_features" in r else "–")
    mem = None if r["peak_device_bytes"] is None else r["peak_device_bytes"] / 2**20
    once = " (one call)" if r.get("repeats") == 0 else ""
    lines.append(f"| {r['n']} | {r['d']} | {r['method']} | {r['median_ms']:.2f}{once} | {r['first_call_s']:.2f} | "
                 f"{its} | {_fmt(r['grad_rel_error'], '.1e')} | {_fmt(r['published_over_this'], '.1f')} | "
                 f"{_fmt(mem, '.0f')} | {_fmt(r.get('peak_host_bytes', 0) / 2**20, '.0f')} |")
  lines += ["", "One pass of the blocked solver over the n^2 costs (= one Sinkhorn iteration; the gradient "
            "costs a few more passes plus one per CG iteration). Floor: reading a stored float32 [n, n] "
            "cost matrix once at the card's peak bandwidth.", "",
            "| n | d | block | ms per pass | TFLOP/s | stored-matrix floor ms |", "|---|---|---|---|---|---|"]
  lines += [f"| {r['n']} | {r['d']} | {r['block_size']} | {r['median_ms']:.2f} | {r['tflops']:.2f} | "
            f"{_fmt(r['stored_cost_floor_ms'], '.2f')} |" for r in report.get("passes", [])]
  lines += ["", "| dense variant | feature map | median ms | first call s |", "|---|---|---|---|"]
  lines += [f"| {r['method']} | {r['shape']} | {r['median_ms']:.2f} | {r['first_call_s']:.2f} |"
            for r in report["dense"]]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  args = parse_args(argv)
  save = lambda report: benchmark.write_results(args.out, report, markdown(report))
  report = run(args, save)
  save(report)
  print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}")
  return report


if __name__ == "__main__":
  main()
