"""Coordinate prediction (paper Table 3): `python -m experiments.coordinate` (see main.py)."""
