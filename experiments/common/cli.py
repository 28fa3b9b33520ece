"""Argument checks shared by the experiments' command lines: every argument and the output folder are
checked before any work starts, and a bad one exits with a usage message (argparse's exit status 2),
not with a traceback after minutes of training."""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from collections.abc import Callable, Sequence


def positive_int(text: str) -> int:
  value = _parse(int, text, "an integer")
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


def positive_float(text: str) -> float:
  value = _parse(float, text, "a number")
  if not value > 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
  return value


def nonnegative_float(text: str) -> float:
  value = _parse(float, text, "a number")
  if not value >= 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
  return value


def comma_list(item: Callable[[str], object], *, choices: Sequence | None = None) -> Callable[[str], list]:
  """An argparse type for a non-empty comma-separated list of `item`s (from `choices` if given)."""
  def parse(text: str) -> list:
    values = [item(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
      raise argparse.ArgumentTypeError(f"needs at least one value, got {text!r}")
    bad = [v for v in values if choices is not None and v not in choices]
    if bad:
      raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(map(str, choices))}")
    return values
  return parse


def _parse(kind, text: str, what: str):
  try:
    return kind(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def check_out_dir(parser: argparse.ArgumentParser, path: pathlib.Path) -> pathlib.Path:
  """Creates `path` if needed and proves it writable (a temporary file), or exits with a usage error."""
  path = pathlib.Path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=path)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    parser.error(f"--out {path}: cannot write there ({e.strerror or e})")
  return path


def exit_status(report: dict) -> int:
  """A command's exit status: 1 if the report holds non-finite numbers (written as null; listed on
  stderr), else 0."""
  if report.get("nonfinite"):
    print(f"non-finite values (written as null): {', '.join(report['nonfinite'])}", file=sys.stderr)
    return 1
  return 0
