"""OT solver comparison on ROT's self-transport problems: `python -m experiments.compare_solvers` (see main.py)."""
