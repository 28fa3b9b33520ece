"""Speed of L_ot's value_and_grad against the published torch + POT formulation:
`python -m experiments.bench` (see main.py)."""
