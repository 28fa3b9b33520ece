"""Results files of experiments and benchmarks: written atomically, as valid JSON, never half-written.

A run writes OUT/results.json (or results.json.gz) and OUT/results.md, again after every finished unit
of work, so an interrupted run keeps what it measured. Each file is written to a temporary file in the
same folder and renamed over the old one: a crash or a full disk leaves the previous complete file,
never a truncated one. Non-finite numbers (NaN, inf), which JSON cannot hold, are written as null and
listed under "nonfinite" (their paths in the report), and `write_results` returns that list so that
the caller's exit status can say so.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

RUNS = pathlib.Path("runs")  # default output root (git-ignored): committed results change only on purpose


def default_out(task: str) -> pathlib.Path:
  """runs/<task>: where a run writes unless --out says otherwise."""
  return RUNS / task


@contextlib.contextmanager
def atomic_path(path: pathlib.Path) -> Iterator[pathlib.Path]:
  """A temporary path next to `path` to write to; renamed to `path` only if the block succeeds."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  try:
    yield pathlib.Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_atomic(path: pathlib.Path, data: bytes | str) -> None:
  """Writes `data` to `path` atomically (temporary file + rename)."""
  with atomic_path(path) as tmp:
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def finite_json(obj: Any, path: str = "") -> tuple[Any, list[str]]:
  """(obj with every NaN/inf float replaced by None, the paths of those values, e.g. "results.circle.std")."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return None, [path or "."]
  if isinstance(obj, dict):
    items = [(k, finite_json(v, f"{path}.{k}" if path else str(k))) for k, v in obj.items()]
    return {k: v for k, (v, _) in items}, [p for _, (_, ps) in items for p in ps]
  if isinstance(obj, (list, tuple)):
    items = [finite_json(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    return [v for v, _ in items], [p for _, ps in items for p in ps]
  return obj, []


def write_results(out: pathlib.Path, report: dict, markdown: str | Callable[[dict], str], *,
                  indent: int | None = 1, compress: bool = False) -> list[str]:
  """Writes OUT/results.json (results.json.gz with `compress`) and OUT/results.md atomically.

  `markdown` is the text, or a function that makes it from the written report (non-finite values
  already None, their paths under "nonfinite"). Returns those paths. `indent=None` writes compact JSON.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  clean, nonfinite = finite_json({k: v for k, v in report.items() if k != "nonfinite"})
  clean["nonfinite"] = nonfinite
  separators = (",", ":") if indent is None else None
  text = json.dumps(clean, indent=indent, separators=separators, allow_nan=False)
  name, stale = ("results.json.gz", "results.json") if compress else ("results.json", "results.json.gz")
  write_atomic(out / name, gzip.compress(text.encode(), mtime=0) if compress else text)
  (out / stale).unlink(missing_ok=True)  # only after the new file is complete
  write_atomic(out / "results.md", markdown(clean) if callable(markdown) else markdown)
  return nonfinite


def read_results(directory: pathlib.Path) -> dict:
  """The report written by `write_results` in `directory` (plain or gzipped JSON)."""
  directory = pathlib.Path(directory)
  if (directory / "results.json").exists():
    return json.loads((directory / "results.json").read_text())
  if (directory / "results.json.gz").exists():
    return json.loads(gzip.decompress((directory / "results.json.gz").read_bytes()))
  raise FileNotFoundError(f"no results.json or results.json.gz in {directory}")
