"""L_ot value_and_grad benchmark: `python -m experiments.bench` (see main.py)."""
import sys

from experiments.bench.main import run

sys.exit(run())
