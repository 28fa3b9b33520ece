#!/usr/bin/env bash
# Downloads, here (where PyPI is reachable), the wheels that experiments/bench/gpu_check.sh installs
# on the lent GPU machine, which has jax, jaxlib, flax, optax and chex (hence numpy, scipy,
# typing_extensions, absl-py) but nothing else and no network.
#
#   bash experiments/bench/make_gpu_wheels.sh [DEST]      # DEST defaults to gpu_wheels/ (git-ignored)
#
# The set, with the versions tested here (jax 0.10.2; PyPI holds nothing newer of these):
#   ott-jax 0.6.0      needs jax, jaxopt >= 0.8, lineax >= 0.0.7, numpy, optax
#   jaxopt 0.8.5       needs jax, jaxlib, numpy, scipy          (missing from a list of ott's needs
#                                                                that forgets it: ott imports it)
#   lineax 0.1.1       needs jax >= 0.10, equinox >= 0.11.10, jaxtyping >= 0.2.24, typing-extensions
#   equinox 0.13.8     needs jax, jaxtyping >= 0.2.20, typing-extensions, wadler-lindig >= 0.1
#   jaxtyping 0.3.11   needs wadler-lindig >= 0.1.3
#   wadler-lindig 0.1.8
#   pot 0.9.6.post1    needs numpy, scipy (compiled, cp312; 1.5 MB where 0.9.7.post1 is 33 MB and
#                      would fill half of what a device run carries; POT is the torch peer's solver)
#   tqdm 4.70.1        rtjax's own dependency; experiments.coordinate imports it
#   matplotlib 3.11.2 and its needs (contourpy, cycler, fonttools, kiwisolver, packaging, pillow,
#                      pyparsing, python-dateutil, tzdata): experiments.coordinate draws a figure
#                      per data set; installed there only where missing
#   setuptools 84.2.1  only to build rtjax's editable install offline (pyproject needs >= 77)
# None of them bounds jax from above; whether equinox 0.13.8 and lineax 0.1.1 run on jax 0.11/0.12
# is what the GPU check finds out (an import error there names the package).
#
# Environment: PYTHON (default python3), GPU_PYTHON_VERSION (default 3.12, the GPU machine's Python).
set -euo pipefail

DEST="${1:-gpu_wheels}"
PYTHON="${PYTHON:-python3}"
PY_VERSION="${GPU_PYTHON_VERSION:-3.12}"

OT_STACK=(ott-jax==0.6.0 jaxopt==0.8.5 lineax==0.1.1 equinox==0.13.8 jaxtyping==0.3.11
          wadler-lindig==0.1.8 pot==0.9.6.post1 tqdm==4.70.1 setuptools==84.2.1)
PLOTS=(matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1
       packaging==26.4 pillow==13.0.0 pyparsing==3.3.3 python-dateutil==4.0.0 tzdata==2026.6)

mkdir -p "$DEST"
# --no-deps: the list above is the whole set (pip would otherwise fetch jax, numpy, scipy again).
"$PYTHON" -m pip download --only-binary=:all: --no-deps --python-version "$PY_VERSION" \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$DEST" \
  "${OT_STACK[@]}" "${PLOTS[@]}"
echo "wheels for Python $PY_VERSION in $DEST ($(du -sh "$DEST" | cut -f1)):"
ls "$DEST"
