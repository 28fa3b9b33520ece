#!/usr/bin/env bash
# The GPU check: the benchmark and the coordinate Table-3 grid on a lent NVIDIA H100/H200, in one
# run of at most GPU_CHECK_BUDGET_S seconds (default 300), from a copy of this working tree.
#
#   bash experiments/bench/make_gpu_wheels.sh /path/gpu_wheels        # here, with PyPI: the wheels
#   bash experiments/bench/gpu_check.sh [WHEELS]                       # there; WHEELS default gpu_wheels/
#   GPU_CHECK_TINY=1 OUT=/tmp/check bash experiments/bench/gpu_check.sh   # CPU dry run, ~3 min here
#
# Steps (each under `timeout`; one that fails or times out is recorded and the next runs):
#   1. install  the wheels of WHEELS (ott-jax, jaxopt, lineax, equinox, jaxtyping, wadler-lindig, pot,
#               tqdm, matplotlib: see make_gpu_wheels.sh) with pip --no-index, unless all already
#               import; rtjax itself runs from this tree (PYTHONPATH), after an offline editable
#               install where it is not importable otherwise. A failure stops the check.
#   2. jax      prints jax, jaxlib and the devices and checks jax against rtjax's supported range,
#               read from pyproject.toml's `jax` dependency: outside it the check stops (exit 3)
#               unless GPU_CHECK_ANY_JAX=1; without a GPU backend it stops too (exit 4; not in tiny mode).
#   3. gpu      nvidia-smi --query-gpu=name,... into OUT/nvidia-smi.csv.
#   4. blocked  the benchmark, blocked path only, n = 16384 and 65536 (d = 128; gaussian and
#               clustered): OUT/bench/blocked. First, as the GPU goal's rows (n = 65,536 blocked
#               value_and_grad within 3x of its compute floor x passes).
#   5. dense    the benchmark at 200x2048, 1000x2048, 4096x512 (all kinds): OUT/bench/dense.
#   6. coordinate  python -m experiments.coordinate --full --no-progress: OUT/coordinate.
# Steps 4 and 5 may take 30 % of the budget each (GPU_CHECK_BLOCKED_S, GPU_CHECK_DENSE_S override),
# step 6 the rest; within a step sizes run in the order given, kinds in the order gaussian,
# clustered, trained. Results are written atomically
# after every row / unit, so a step stopped by its timeout keeps what it measured.
#
# Writes under OUT (the device tool's $OUT; default runs/gpu_check): gpu_check.log (everything
# printed), jax.txt, nvidia-smi.csv, steps.tsv (step, exit status, seconds, limit; 124 = timed
# out), bench/, coordinate/. Exit status 0 if every step succeeded, else 1 (3, 4 as above; 2 for a
# failed install).
#
# Environment:
#   OUT                 results folder (default runs/gpu_check)
#   PYTHON              interpreter with jax (default: python3, else python)
#   GPU_CHECK_BUDGET_S  total seconds (default 300; 900 in tiny mode, which compiles as much on a CPU)
#   GPU_CHECK_TINY=1    dry run of the same steps on any machine: tiny sizes (blocked 256x8 with
#                       blocks of 64 rows, dense 48x16), --budget 0, coordinate --epochs 200 --seeds 1;
#                       no GPU or nvidia-smi needed. Tests the script's logic, measures nothing.
#   GPU_CHECK_ANY_JAX=1 go on (with a warning) when jax is outside rtjax's range
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
resolve() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
WHEELS="$(resolve "${1:-$ROOT/gpu_wheels}")"
OUT="$(resolve "${OUT:-$ROOT/runs/gpu_check}")"
if [ -z "${PYTHON:-}" ]; then  # the first of python3, python that has jax
  for PYTHON in python3 python; do "$PYTHON" -c "import jax" 2>/dev/null && break; done
fi
TINY="${GPU_CHECK_TINY:-0}"
BUDGET="${GPU_CHECK_BUDGET_S:-$([ "$TINY" = 1 ] && echo 900 || echo 300)}"  # tiny: a slow shared CPU
cd "$ROOT" || exit 2
mkdir -p "$OUT" || exit 2
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
printf 'step\tstatus\tseconds\tlimit_s\n' > "$OUT/steps.tsv"

if [ "$TINY" = 1 ]; then
  BLOCKED=(--sizes 256x8 --dense-max-n 64 --budget 0)
  DENSE=(--sizes 48x16 --budget 0)
  COORDINATE=(--epochs 200 --seeds 1)
else
  BLOCKED=(--sizes 16384x128,65536x128 --dense-max-n 4096 --budget 1)
  DENSE=(--sizes 200x2048,1000x2048,4096x512 --dense-max-n 4096 --budget 1)
  COORDINATE=()
fi
FAILED=0

# step NAME CAP_SECONDS COMMAND...: runs COMMAND under the smaller of CAP and the budget left.
step() {
  local name="$1" cap="$2" left=$((BUDGET - SECONDS)) start=$SECONDS status
  shift 2
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 5 ]; then
    echo "== $name: skipped, budget spent"
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$OUT/steps.tsv"
    FAILED=1
    return 1
  fi
  echo "== $name (at most ${limit}s): $*"
  timeout --kill-after=15 "$limit" "$@"
  status=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$limit" >> "$OUT/steps.tsv"
  [ "$status" -eq 0 ] || FAILED=1
  return "$status"
}

install() {
  if "$PYTHON" -c "import ott, jaxopt, lineax, equinox, jaxtyping, ot, tqdm, matplotlib" 2>/dev/null; then
    echo "ott-jax, lineax, equinox, jaxtyping, POT, tqdm, matplotlib already import: nothing to install"
  elif [ ! -d "$WHEELS" ]; then
    echo "no wheels folder $WHEELS: run experiments/bench/make_gpu_wheels.sh where PyPI is reachable and carry it"
    return 2
  else  # PIP_BREAK_SYSTEM_PACKAGES: a lent machine's system Python may be marked externally managed
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --no-index --find-links "$WHEELS" \
      ott-jax lineax equinox jaxtyping pot tqdm matplotlib || return 2
  fi
  if ! (cd / && "$PYTHON" -c "import rtjax") 2>/dev/null; then  # setuptools >= 77 comes from WHEELS
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps -e . ||
      echo "editable install of rtjax failed: rtjax runs from PYTHONPATH=$ROOT"
  fi
}

check_jax() {
  "$PYTHON" - "$TINY" "${GPU_CHECK_ANY_JAX:-0}" <<'PY' | tee "$OUT/jax.txt"
import re, sys, tomllib
import jax, jaxlib
try:
  from packaging.specifiers import SpecifierSet
except ImportError:  # pip carries its own copy
  from pip._vendor.packaging.specifiers import SpecifierSet
tiny, any_jax = sys.argv[1] == "1", sys.argv[2] == "1"
with open("pyproject.toml", "rb") as f:
  deps = tomllib.load(f)["project"]["dependencies"]
spec = SpecifierSet(next(re.sub(r"^jax\s*", "", d) for d in deps if re.match(r"jax\s*[<>=!~]", d)))
devices = jax.devices()
print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, devices {devices}")
inside = spec.contains(jax.__version__, prereleases=True)
print(f"rtjax supports jax{spec} (pyproject.toml): jax {jax.__version__} is {'inside' if inside else 'OUTSIDE'}")
if not inside and not any_jax:
  print(f"FAIL: jax {jax.__version__} is outside rtjax's range jax{spec}; GPU_CHECK_ANY_JAX=1 goes on anyway")
  sys.exit(3)
if devices[0].platform != "gpu" and not tiny:
  print(f"FAIL: jax sees no GPU ({devices}): a CPU-only jaxlib would time the CPU")
  sys.exit(4)
PY
  return "${PIPESTATUS[0]}"
}

gpu_name() {
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.csv"
  else
    echo "nvidia-smi: not found" | tee "$OUT/nvidia-smi.csv"
    [ "$TINY" = 1 ]
  fi
}

# Steps run under `timeout`, which runs programs: the functions go through a child bash.
export -f install check_jax gpu_name
export PYTHON WHEELS OUT TINY
echo "gpu_check.sh: budget ${BUDGET}s, tiny=$TINY, wheels $WHEELS, out $OUT, $(date -u +%FT%TZ)"
step install "$BUDGET" bash -c install || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
step jax 120 bash -c check_jax
status=$?
[ "$status" -eq 0 ] || exit "$status"
step gpu 30 bash -c gpu_name
note="gpu_check.sh $(date -u +%F)"
step blocked "${GPU_CHECK_BLOCKED_S:-$((BUDGET * 3 / 10))}" "$PYTHON" -m experiments.bench "${BLOCKED[@]}" --kinds gaussian,clustered \
  --out "$OUT/bench/blocked" --note "$note"
step dense "${GPU_CHECK_DENSE_S:-$((BUDGET * 3 / 10))}" "$PYTHON" -m experiments.bench "${DENSE[@]}" --out "$OUT/bench/dense" --note "$note"
step coordinate "$BUDGET" "$PYTHON" -m experiments.coordinate --full "${COORDINATE[@]}" --out "$OUT/coordinate" --no-progress
echo "== steps (status 124: stopped by its timeout)"
column -t "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
exit "$FAILED"
