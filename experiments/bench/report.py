"""The benchmark's markdown report and console lines."""
from __future__ import annotations

from experiments.bench import rows


def _fmt(value, spec: str) -> str:
  return "–" if value is None else format(value, spec)


def _mb(value) -> str:
  return _fmt(None if value is None else value / 2**20, ".0f")


def row_text(row: dict) -> str:
  """One console line per row."""
  head = f"{row['kind']:<9} n={row['n']:>6} d={row['d']:>5} {row['method']:<42}"
  if row.get("error"):
    return f"{head} FAILED {row['error']}"
  threads = f"  threads {row['threads']} of {sorted(row['thread_timings'])}" if "threads" in row else ""
  return (f"{head} {row['median_ms']:9.2f} ms  grad err {_fmt(row['grad_rel_error'], '.1e')}  "
          f"published/this {_fmt(row['published_over_this'], '.1f')}{threads}")


def _threads(row: dict) -> str:
  """'1 (1: 150, 2: 24000 ms)': the kept torch thread count and the median at each count tried."""
  if "thread_timings" not in row:
    return "–"
  timings = sorted(row["thread_timings"].items(), key=lambda item: int(item[0]))
  timed = ", ".join(f"{count}: {t['median_ms']:.4g}" for count, t in timings)
  return f"{row['threads']} ({timed} ms)"


def _once(row: dict) -> str:
  """A row timed by its first call alone (compilation included) says so."""
  return " (one call)" if row.get("repeats") == 0 else ""


def _main_row(r: dict) -> str:
  if r.get("error"):
    return f"| {r['kind']} | {r['n']} | {r['d']} | {r['method']} | failed: {r['error']} | | | | | | | |"
  its = f"{r['iterations_features']} / {r['iterations_targets']}" if "iterations_features" in r else "–"
  return (f"| {r['kind']} | {r['n']} | {r['d']} | {r['method']} | {r['median_ms']:.2f}{_once(r)} | "
          f"{r['first_call_s']:.2f} | {its} | {_fmt(r['grad_rel_error'], '.1e')} | "
          f"{_fmt(r['published_over_this'], '.1f')} | {_threads(r)} | {_mb(r['peak_device_bytes'])} | "
          f"{_mb(r.get('peak_host_bytes'))} |")


def _floor_lines(report: dict) -> list[str]:
  blocked = [r for r in report["rows"] if r["method"] == rows.BLOCKED and not r.get("error")]
  if not blocked:
    return []
  lines = ["", "Blocked rows against the compute floor: at least iterations + 1 passes over the n^2 feature "
           "costs, each 2 n^2 d FLOP at the card's peak FP32 rate; the loss and the gradient's CG solves add "
           "passes the diagnostics do not count, so `measured / floor` over-states the per-pass overhead "
           "(the GPU goal: at most 3 at n = 65,536). Empty off the lent cards and for single timed calls.", "",
           "| kind | n | d | median ms | passes >= | compute floor ms | measured / floor |",
           "|---|---|---|---|---|---|---|"]
  lines += [f"| {r['kind']} | {r['n']} | {r['d']} | {r['median_ms']:.2f}{_once(r)} | {r['passes_min']} | "
            f"{_fmt(r['compute_floor_ms'], '.2f')} | {_fmt(r['over_compute_floor'], '.2f')} |" for r in blocked]
  return lines


def markdown(report: dict) -> str:
  lines = [f"# L_ot value_and_grad benchmark on {report['device']} (float32, epsilon {report['epsilon']})", "",
           *([f"Note: {report['note']}", ""] if report.get("note") else []),
           f"Versions: {report['versions']}. Problem kinds: {', '.join(report['kinds'])} (see "
           f"experiments/bench/problems.py). Gradient error: relative to {report['reference']}. "
           "`published / this` = the published formulation's median time (at its best torch thread count) "
           "over the row's (higher = faster). `torch threads`: the count kept (median ms at each count tried).",
           "", "| kind | n | d | method | median ms | first call s | iterations (z / y) | grad rel. error | "
           "published / this | torch threads | peak device MB | process peak RSS MB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  lines += [_main_row(r) for r in report["rows"]]
  lines += _floor_lines(report)
  lines += ["", "One pass of the blocked solver over the n^2 costs (= one Sinkhorn iteration; the gradient "
            "costs a few more passes plus one per CG iteration). Stored-matrix floor: reading a float32 [n, n] "
            "cost matrix once at the card's peak bandwidth; compute floor: 2 n^2 d FLOP at its peak FP32 rate.", "",
            "| n | d | block | ms per pass | TFLOP/s | stored-matrix floor ms | compute floor ms | "
            "measured / compute floor |",
            "|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r['n']} | {r['d']} | {r['block_size']} | {r['median_ms']:.2f} | {r['tflops']:.2f} | "
            f"{_fmt(r['stored_cost_floor_ms'], '.2f')} | {_fmt(r.get('compute_floor_ms'), '.2f')} | "
            f"{_fmt(r.get('over_compute_floor'), '.2f')} |" for r in report.get("passes", [])]
  lines += ["", "| pixel variant | feature map | median ms | first call s |", "|---|---|---|---|"]
  lines += [f"| {r['method']} | {r['shape']} | {r['median_ms']:.2f} | {r['first_call_s']:.2f} |"
            for r in report["dense"]]
  return "\n".join(lines) + "\n"
