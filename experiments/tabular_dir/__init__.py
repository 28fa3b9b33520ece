"""Tabular deep imbalanced regression (DIR): real, skewed, offline data split like AgeDB-DIR (see data.py)."""
