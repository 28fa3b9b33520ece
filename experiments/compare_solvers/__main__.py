import sys

from experiments.compare_solvers.main import run

sys.exit(run())
