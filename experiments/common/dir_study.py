"""A DIR study: every (method, seed) run of a table, saved as it finishes, resumable, one report.

    report = run_study(study, data, out=pathlib.Path("runs/x"), resume=True)

Each run trains with `dir_training.fit` (checkpointed every epoch under OUT/checkpoints/<method>/seed<k>,
removed once the run's numbers are in the results), is tested per shot, and is written into
OUT/results.json.gz and OUT/results.md at once (atomically: an interrupted study keeps every finished run;
`resume` skips them and continues an interrupted run from its last epoch). Runs go `workers` at a time in
threads (XLA releases the GIL; two on two cores is about 1.7x one).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import pathlib
import shutil
import threading
import time
from collections.abc import Callable

import flax.linen as nn
import numpy as np
from tqdm.auto import tqdm

from experiments.common import results
from experiments.common.dir_methods import Labels, Method, loss_pieces
from experiments.common.dir_training import (
  DIRData,
  Program,
  Schedule,
  build_program,
  fit,
  per_bin_errors,
  predictions,
  run_metrics,
)


@dataclasses.dataclass(frozen=True)
class Study:
  """What a table is made of.

  `model(method)` builds the Flax model of a method (e.g. `dir_methods.regressor(encoder_factory)`);
  `pieces(method)` its loss pieces (default `loss_pieces(method, labels=..., noise_std=...)`); `output` maps
  predictions inside the predictor (e.g. an upsampling); `evaluate(pred, labels)` replaces the per-shot
  table of a run (default: `run_metrics` with `shots` and the label bins); `after(program, variables)`
  measures the trained network further (e.g. Table 4's diagnostics under "diagnostics": summarised over
  seeds) and returns entries added to the run's record. `scale` converts model units to
  reported units (e.g. 1000 when a price is trained in $1000s and reported in $).
  """
  task: str
  methods: dict[str, Method]
  seeds: tuple[int, ...]
  schedule: Schedule
  model: Callable[[Method], nn.Module]
  labels: Labels
  noise_std: float = 1.0
  scale: float = 1.0
  pieces: Callable[[Method], dict] | None = None
  init: Callable[[dict], dict] | None = None  # variables -> variables after model.init (pretrained weights)
  output: Callable | None = None
  evaluate: Callable[[np.ndarray, np.ndarray], dict] | None = None
  after: Callable[[Program, dict], dict] | None = None  # (program, best variables) -> entries of the run
  shots: tuple[int, int] = (100, 20)  # (many, few) thresholds on training examples per bin
  settings: dict = dataclasses.field(default_factory=dict)  # recorded with the results (protocol, data)


def run_study(study: Study, data: DIRData, *, out: pathlib.Path, resume: bool = False, workers: int = 1,
              mesh=None, progress: bool = True, markdown: Callable[[dict], str]) -> dict:
  """Trains and tests every (method, seed) not yet in OUT/results.json.gz (with `resume`); returns the report.

  Numbers are saved to 6 significant digits in compact gzipped JSON: a table of 170 runs with their
  histories and per-bin errors is ~0.15 MB instead of 1.7 MB.
  """
  out = pathlib.Path(out)
  report = _start(study, out, resume)
  todo = [(m, s) for m in study.methods for s in study.seeds if str(s) not in report["runs"].get(m, {})]
  steps = data.num_train_batches(study.schedule.batch_size)
  programs, lock = {}, threading.Lock()

  def program(name: str) -> Program:
    with lock:  # one compiled program per method, shared by its seeds
      if name not in programs:
        method = study.methods[name]
        pieces = (study.pieces(method) if study.pieces else
                  loss_pieces(method, labels=study.labels, noise_std=study.noise_std))
        programs[name] = build_program(study.model(method), method, study.schedule, pieces=pieces,
                                       steps_per_epoch=steps, output=study.output, init=study.init)
      return programs[name]

  def one(unit):
    name, seed = unit
    prog, start = program(name), time.perf_counter()
    ckpt = out / "checkpoints" / name / f"seed{seed}"
    run = fit(prog, data, seed, checkpoints=ckpt, mesh=mesh, progress=progress and workers == 1,
              desc=f"{name} seed {seed}")
    pred, labels = predictions(prog, run.best, data, "test", mesh=mesh)
    pred, labels, train = pred * study.scale, labels * study.scale, np.asarray(data.train_labels) * study.scale
    width, origin = study.labels.bin_width * study.scale, study.labels.origin * study.scale
    many, few = study.shots
    test = (study.evaluate(pred, labels) if study.evaluate else
            run_metrics(pred, labels, train, bin_width=width, origin=origin, many=many, few=few))
    entry = {"test": test,
             "per_bin": per_bin_errors(pred, labels, bin_width=width, origin=origin),
             "best_epoch": run.best_epoch,
             "best_val_mae": None if run.best_val_mae is None else run.best_val_mae * study.scale,
             "history": run.history, "seconds": time.perf_counter() - start}
    if study.after is not None:
      entry.update(study.after(prog, run.best))
    with lock:
      report["runs"].setdefault(name, {})[str(seed)] = rounded(entry)
      report["summary"] = summarize(report["runs"])
      results.write_results(out, report, markdown, indent=None, compress=True)
    shutil.rmtree(ckpt, ignore_errors=True)  # its numbers are saved; resume skips the run now

  with tqdm(total=len(todo), disable=not progress or workers == 1, desc=study.task, unit="run") as bar:
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      for future in concurrent.futures.as_completed([pool.submit(one, u) for u in todo]):
        future.result()
        bar.update(1)
  report["summary"] = summarize(report["runs"])
  results.write_results(out, report, markdown, indent=None, compress=True)
  if not any(p.is_file() for p in (out / "checkpoints").rglob("*")):
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # every run finished: no empty folders left
  return results.read_results(out)


def _start(study: Study, out: pathlib.Path, resume: bool) -> dict:
  """The report to fill: the saved one when resuming the same protocol, else an empty one."""
  settings = {"task": study.task, "schedule": dataclasses.asdict(study.schedule), "shots": list(study.shots),
              "methods": {k: dataclasses.asdict(v) for k, v in study.methods.items()}, **study.settings}
  report = {"settings": settings, "runs": {}, "summary": {}}
  if resume and ((out / "results.json").exists() or (out / "results.json.gz").exists()):
    saved = results.read_results(out)
    plain = json.loads(json.dumps(results.finite_json(settings)[0]))  # as saved: tuples are lists
    same = {k: v for k, v in saved["settings"].items() if k != "methods"} == {
        k: v for k, v in plain.items() if k != "methods"}
    if not same:
      raise ValueError(f"--resume: the results in {out} were made with other settings; use another --out.")
    report["runs"] = {m: r for m, r in saved["runs"].items()
                      if m in study.methods and saved["settings"]["methods"].get(m) == plain["methods"][m]}
  elif not resume:
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a fresh study never resumes a stale run
  return report


def summarize(runs: dict) -> dict:
  """{method: {region: {metric: {"mean", "std", "n"}}}} over seeds (std with ddof=0, as the paper's); with
  per-run "diagnostics", {method: {"diagnostics": {name: {"mean", "std", "n"}}}} too."""
  out = {}
  for method, seeds in runs.items():
    entries = list(seeds.values())
    out[method] = {}
    for region in entries[0]["test"]:
      out[method][region] = {}
      for metric in (k for k in entries[0]["test"][region] if k != "count"):
        values = [e["test"][region][metric] for e in entries]
        values = np.asarray([v for v in values if v is not None], np.float64)  # None: an empty region
        out[method][region][metric] = _stats(values)
    if "diagnostics" in entries[0]:
      out[method]["diagnostics"] = {k: _stats(np.asarray([e["diagnostics"][k] for e in entries], np.float64))
                                    for k in entries[0]["diagnostics"]}
  return out


def _stats(values: np.ndarray) -> dict:
  if not len(values):
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def rounded(obj, digits: int = 6):
  """`obj` with every float rounded to `digits` significant digits (what the results files keep)."""
  if isinstance(obj, float):
    return float(f"{obj:.{digits}g}")
  if isinstance(obj, dict):
    return {k: rounded(v, digits) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [rounded(v, digits) for v in obj]
  return obj
