"""rtjax: tighter deep-regression representations in JAX (ROT-Reg and Multiple Targets, ICLR 2025)."""
from rtjax.costs import pairwise_distance
from rtjax.heads import MultiTargetHead, mt_loss, mt_predict
from rtjax.ot import SelfTransport, self_transport
from rtjax.pixels import pixel_rot_loss, sample_valid_pixels
from rtjax.rot import RotDiagnostics, RotPotentials, RotTargets, prepare_targets, rot_loss
from rtjax.sinkhorn import SolveInfo, SolverOptions

__version__ = "0.2.0"

__all__ = [
    "MultiTargetHead", "RotDiagnostics", "RotPotentials", "RotTargets", "SelfTransport", "SolveInfo",
    "SolverOptions", "mt_loss", "mt_predict", "pairwise_distance", "pixel_rot_loss", "prepare_targets",
    "rot_loss", "sample_valid_pixels", "self_transport",
]
