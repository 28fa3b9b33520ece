import sys

from experiments.coordinate.main import run

sys.exit(run())
