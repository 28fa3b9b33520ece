"""rtjax: tighter deep-regression representations in JAX (ROT-Reg and Multiple Targets, ICLR 2025), with
the paper's peer regularizers and its tightness diagnostics."""
from rtjax.costs import pairwise_distance
from rtjax.diagnostics import TightnessDiagnostics, kendall_tau, spearman_correlation, tightness_diagnostics
from rtjax.heads import MultiTargetHead, mt_loss, mt_predict
from rtjax.information_dropout import InformationDropout, information_dropout_loss
from rtjax.mesh import data_mesh, replicate, shard_batch
from rtjax.ordinal_entropy import ordinal_entropy_centres_loss, ordinal_entropy_loss
from rtjax.ot import SelfTransport, self_transport
from rtjax.pixels import pixel_rot_loss, sample_valid_pixels
from rtjax.ranksim import blackbox_rank, ranksim_loss
from rtjax.rot import RotDiagnostics, RotPotentials, RotTargets, prepare_targets, rot_loss
from rtjax.shots import bin_shots, depth_metrics, label_bins, shot_counts, shot_index, shot_metrics
from rtjax.sinkhorn import SolveInfo, SolverOptions
from rtjax.topology import minimum_spanning_tree, ph_dimension_loss, ph_reg_loss, topological_loss, tree_edge_lengths

__version__ = "0.4.0"

__all__ = [
    "InformationDropout", "MultiTargetHead", "RotDiagnostics", "RotPotentials", "RotTargets", "SelfTransport",
    "SolveInfo", "SolverOptions", "TightnessDiagnostics", "bin_shots", "blackbox_rank", "data_mesh", "depth_metrics",
    "information_dropout_loss", "kendall_tau", "label_bins", "minimum_spanning_tree", "mt_loss", "mt_predict",
    "ordinal_entropy_centres_loss", "ordinal_entropy_loss", "pairwise_distance", "ph_dimension_loss", "ph_reg_loss",
    "pixel_rot_loss", "prepare_targets", "ranksim_loss", "replicate", "rot_loss", "sample_valid_pixels",
    "self_transport", "shard_batch", "shot_counts", "shot_index", "shot_metrics", "spearman_correlation",
    "tightness_diagnostics", "topological_loss", "tree_edge_lengths",
]
