"""rtjax: tighter deep-regression representations in JAX (ROT-Reg and Multiple Targets, ICLR 2025)."""
from rtjax.blocked import blocked_rot_loss, blocked_rot_loss_with_diagnostics
from rtjax.heads import MultiTargetHead, mt_loss, mt_predict
from rtjax.ot import SelfTransport, SolverOptions, self_transport, self_transport_plan
from rtjax.rot import (RotDiagnostics, RotPotentials, dense_rot_loss, dense_rot_loss_with_diagnostics,
                       pairwise_distance, rot_loss, rot_loss_with_diagnostics, sample_valid_pixels)

__version__ = "0.1.0"

__all__ = [
    "blocked_rot_loss", "blocked_rot_loss_with_diagnostics", "MultiTargetHead", "RotDiagnostics", "RotPotentials", "SelfTransport", "SolverOptions", "dense_rot_loss",
    "dense_rot_loss_with_diagnostics", "mt_loss", "mt_predict", "pairwise_distance", "rot_loss",
    "rot_loss_with_diagnostics", "sample_valid_pixels", "self_transport", "self_transport_plan",
]
