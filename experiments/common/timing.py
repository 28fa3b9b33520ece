"""Timing and memory measurement for benchmarks (never for tests): compile once, then the median of
synchronised repeats; the device and library versions recorded with every result."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def time_call(fn: Callable, *args, sync: Callable[[Any], Any] = jax.block_until_ready,
              min_repeats: int = 3, max_repeats: int = 20, budget_s: float = 5.0) -> tuple[dict, Any]:
  """Times `fn(*args)`: the first call (compilation included) apart, then repeats until `budget_s` is
  spent (between `min_repeats` and `max_repeats`). `sync` waits for the result (JAX dispatch is
  asynchronous; pass e.g. `torch.cuda.synchronize`-based waits for torch on GPU). With
  `min_repeats=0` and no budget the first call is the only one and its time (compilation included)
  is the median: for calls of minutes, where compilation is a small part.

  Returns:
    ({"first_call_s", "median_ms", "min_ms", "repeats"}, the last output).
  """
  start = time.perf_counter()
  out = sync(fn(*args))
  first = time.perf_counter() - start
  times = []
  while len(times) < min_repeats or (len(times) < max_repeats and sum(times) < budget_s):
    start = time.perf_counter()
    out = sync(fn(*args))
    times.append(time.perf_counter() - start)
  repeats = len(times)
  times = times or [first]
  return {"first_call_s": first, "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
          "repeats": repeats}, out


def peak_memory_bytes() -> int | None:
  """The device's peak bytes in use so far in this process (None where the backend does not report
  it, e.g. on CPU). JAX cannot reset the counter: run sizes in increasing order."""
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return None if not stats else stats.get("peak_bytes_in_use")


def peak_host_bytes() -> int:
  """This process's peak resident memory so far (Linux ru_maxrss; on CPU the device memory is here)."""
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_name() -> str:
  """e.g. 'cpu (2 cores)' or 'NVIDIA H200'."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"cpu ({os.cpu_count()} cores)"
  return getattr(device, "device_kind", device.platform)


def library_versions() -> dict:
  """Versions of python, jax, ott-jax, rtjax and, where importable, POT and torch."""
  import importlib

  import ott

  import rtjax
  out = {"python": platform.python_version(), "jax": jax.__version__, "ott-jax": ott.__version__,
         "rtjax": rtjax.__version__}
  for name, module in (("pot", "ot"), ("torch", "torch")):
    try:
      out[name] = importlib.import_module(module).__version__
    except ImportError:
      out[name] = None
  return out
