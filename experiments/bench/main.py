"""Speed of value_and_grad of L_ot (and its pixel variant): rtjax configurations against the authors'
published formulation (torch + POT), on the same inputs and device.

    python -m experiments.bench --quick          # CPU smoke run (n = 200; blocked also n = 1000), < 2 min
    python -m experiments.bench                  # n in 200 ... 4096 (65536 on GPU); d in 128, 2048
    python -m experiments.bench --sizes 200x2048,4096x512 --kinds clustered --out benchmarks/cpu

Above --dense-max-n (4096 on CPU, 16384 on GPU) only the blocked path runs, with a float64 blocked
reference. A second table times one pass of the blocked solver over the n^2 costs, against the
stored-matrix (bandwidth) and compute (2 n^2 d FLOP at peak FP32) floors of the lent H100/H200.

Problem kinds (--kinds; see problems.py). Gaussian features alone mislead: in d = 2048 all pairwise
distances of N(0, I) points are equal to ~2 %, the entropic plan is nearly uniform from the start,
and from n = 1000 on POT's Sinkhorn (the published formulation, float32) stops at its first check,
after 10 iterations (rtjax after 6-15): such rows time the distance matmuls, not Sinkhorn. (At
n = 200 float32 round-off keeps POT above its 1e-9 threshold: 300-1000 iterations of nearly nothing.)
"clustered" (a few clusters on a 3-D manifold embedded in d dimensions, targets following them;
distances spread by ~50 % whatever d) and "trained" (the coordinate experiment's trained features,
d = 100) are problems where the solves do real work: POT runs its 1000 iterations on "clustered"
(its float32 marginal error stalls near 1e-7), rtjax's Newton steps converge in 7-13.

Each row: median wall time of value_and_grad after compilation (synchronised), the first call's
time, Sinkhorn iterations, the gradient's relative error against a float64 reference (rtjax at
threshold 1e-9, itself checked against finite differences in the tests) and the published
formulation's time divided by the row's. torch rows are timed with 1 thread and with all cores and
keep the faster (both recorded): on this project's shared 2-core CPU torch's default (all cores) made
the published loss at n = 200, d = 128 2-3x slower when the machine was quiet and 20-40x slower
under load (12.7 s vs 316 ms a call), which would flatter rtjax. rtjax rows run on XLA's own CPU
thread pool (not tunable at run time). No NumPy row: POT runs on torch tensors here, so torch's
thread count is the one that matters.

Writes OUT/results.json and OUT/results.md after every row (OUT defaults to runs/bench, which git
ignores; the committed results in benchmarks/ change only with an explicit --out). Exit status 1
if a recorded number is non-finite (written as null); a failing configuration is recorded as an
`error` string and does not change the exit status.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import jax

from experiments.bench import problems, rows
from experiments.bench import report as report_md
from experiments.common import cli, published, results, timing

QUICK = {"sizes": [(200, 128), (1000, 128)], "dense_max_n": 200, "budget": 1.0, "kinds": ["gaussian", "clustered"]}
DEFAULTS = {"sizes": [(n, d) for n in (200, 1000, 4096, 16384, 65536) for d in (128, 2048)], "budget": 5.0,
            "kinds": list(problems.KINDS)}


def size(text: str) -> tuple[int, int]:
  """'NxD' -> (n, d) with n >= 2, d >= 1 (an argparse type)."""
  try:
    n, d = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"sizes look like 200x2048,4096x512, got {text!r}") from None
  if n < 2 or d < 1:
    raise argparse.ArgumentTypeError(f"needs n >= 2 and d >= 1, got {text!r}")
  return n, d


def parse_args(argv=None) -> argparse.Namespace:
  """Parses and checks every argument (and the output folder) before any work."""
  p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="defaults for a smoke run: sizes 200x128,1000x128, "
                 "--dense-max-n 200, --budget 1, --kinds gaussian,clustered (explicit values win)")
  p.add_argument("--sizes", type=cli.comma_list(size), help="comma list of NxD, e.g. 200x2048,4096x512 "
                 "(default: n in 200, 1000, 4096, 16384, 65536 x d in 128, 2048, up to --max-n)")
  p.add_argument("--kinds", type=cli.comma_list(str, choices=problems.KINDS),
                 help=f"problem kinds, comma list from {', '.join(problems.KINDS)} (default: all)")
  p.add_argument("--max-n", type=cli.positive_int, help="skip larger n (default grid: 4096 on CPU, 65536 on GPU)")
  p.add_argument("--dense-max-n", type=cli.positive_int, help="above this n only the blocked path runs "
                 "(default: 4096 on CPU, 16384 on GPU)")
  p.add_argument("--reference-max-n", type=cli.positive_int, default=4096, help="float64 reference up to this n")
  p.add_argument("--no-published", action="store_true", help="skip torch + POT even if importable")
  p.add_argument("--budget", type=cli.nonnegative_float, help="seconds of repeats per row (default 5)")
  p.add_argument("--note", default="", help="recorded with the results (e.g. what else the machine ran)")
  p.add_argument("--out", type=pathlib.Path, default=results.default_out("bench"))
  args = p.parse_args(argv)
  gpu = jax.devices()[0].platform != "cpu"
  explicit_sizes = args.sizes is not None
  for name, value in (QUICK if args.quick else {}).items():  # --quick fills only what was not given
    if getattr(args, name) is None:
      setattr(args, name, value)
  for name, value in DEFAULTS.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  args.dense_max_n = args.dense_max_n or (16384 if gpu else 4096)
  max_n = args.max_n or (None if explicit_sizes or args.quick else 65536 if gpu else 4096)
  args.sizes = [(n, d) for n, d in args.sizes if max_n is None or n <= max_n]
  if not args.sizes:
    p.error(f"no size has n <= --max-n {max_n}")
  cli.check_out_dir(p, args.out)
  return args


def problem_rows(args, problem: problems.Problem, dense: bool, use_torch: bool):
  """The rows of one problem: torch peers first (their time is the ratio's numerator), then rtjax."""
  n = len(problem.features)
  ref = None
  if n <= args.reference_max_n:
    ref = rows.reference_grad(problem, blocked=not dense)
  configs = [(name, "jax", c) for name, c in rows.JAX_CONFIGS.items() if dense or name == rows.BLOCKED]
  if use_torch and dense:
    configs = [(name, "torch", c) for name, c in rows.TORCH_CONFIGS.items()] + configs
  published_ms = None
  for name, backend, config in configs:
    row = one_row(problem, name, backend, config, ref, args.budget, dense)
    if name == rows.PUBLISHED:
      published_ms = row["median_ms"]
    row["published_over_this"] = published_ms / row["median_ms"] if published_ms and row["median_ms"] else None
    yield row


def one_row(problem, name: str, backend: str, config: dict, ref, budget: float, dense: bool) -> dict:
  n, d = problem.features.shape
  try:
    if backend == "torch":
      row, grad = rows.torch_row(problem, config, budget)
    else:  # beyond the dense sizes at least one call, compilation included (minutes on CPU at n = 65,536)
      row, grad = rows.jax_row(problem, config, budget, repeats=3 if dense else 0)
    row.update(grad_rel_error=rows.relative_error(grad, ref), error=None)
    if name == rows.BLOCKED:
      row.update(rows.compute_floor(row, n, d, rows.card(timing.device_name())[1]))
  except Exception as e:  # a failing configuration is a result, not a crash of the benchmark
    row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", "median_ms": None}
  return dict(row, kind=problem.kind, n=n, d=d, method=name, peak_device_bytes=timing.peak_memory_bytes(),
              peak_host_bytes=timing.peak_host_bytes())


def bench(args, save=lambda report: None) -> dict:
  """The benchmark; `save(report)` is called after every row (long runs keep what they measured)."""
  use_torch = not args.no_published and published.available()
  report = {"device": timing.device_name(), "epsilon": rows.EPSILON, "kinds": args.kinds, "rows": [],
            "dense": [], "passes": [], "reference": "float64 rtjax, threshold 1e-9",
            "versions": timing.library_versions(), "published_available": use_torch,
            "torch_thread_counts": rows.thread_counts() if use_torch else None,
            "date": time.strftime("%Y-%m-%d"), "note": args.note}
  done = set()  # "trained" runs at d = 100 whatever d was asked: once per n
  for n, d in args.sizes:
    dense = n <= args.dense_max_n
    if not dense:  # the cost of one pass first: the full call takes many of them
      report["passes"].append(rows.pass_row(n, d, args.budget))
      save(report)
    for kind in args.kinds:
      shape = problems.shape(kind, n, d)
      if shape is None or (kind, shape) in done:
        continue
      done.add((kind, shape))
      for row in problem_rows(args, problems.make(kind, *shape), dense, use_torch):
        report["rows"].append(row)
        print(report_md.row_text(row), flush=True)
        save(report)
    if dense:
      report["passes"].append(rows.pass_row(n, d, args.budget))
      save(report)
  report["dense"] = [rows.pixel_row(args.budget, c) for c in (128,)]
  return report


def main(argv=None) -> dict:
  args = parse_args(argv)

  def save(report: dict) -> None:
    report["nonfinite"] = results.write_results(args.out, report, report_md.markdown(report))

  report = bench(args, save)
  save(report)
  print(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'}")
  return report


def run(argv=None) -> int:
  """The command line: exit status 0, or 1 if a recorded number is non-finite."""
  return cli.exit_status(main(argv))
