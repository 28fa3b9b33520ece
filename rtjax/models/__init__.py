"""Networks."""
from rtjax.models.mlp import MLPRegressor

__all__ = ["MLPRegressor"]
