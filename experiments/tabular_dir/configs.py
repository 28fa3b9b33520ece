"""The offline tabular DIR benchmark's settings: ggplot2 `diamonds` (price), AgeDB-DIR's protocol scaled to
a 2-core CPU, the paper's method settings.

The data (experiments/tabular_dir/data.py): 53,940 stones, price bins of $100 from $300, validation and test
balanced (at most 30 per bin), training keeps the skew; shots by training count per bin (many > 100,
few < 20). The model: a 3-layer MLP encoder (256-256-128, ReLU) on the 9 standardised features and a linear
(MT) head; the prices are trained in $1000s (so the L1 loss is of order 1, as AgeDB's ages are of order 10)
and reported in $.
"""
from __future__ import annotations

from experiments.common.dir_methods import TABLE_METHODS, Defaults, ablations, method_table
from experiments.common.dir_training import Schedule

TARGET_UNIT = 1000.0  # $ per training unit
HIDDEN = (256, 256, 128)  # the last is the feature dimension L_ot, RankSim, OE and PH-Reg act on
# AgeDB-DIR's optimiser (Adam 1e-3, batch 256, L1, x0.1 twice) over 12 epochs instead of 90, so that 10 seeds
# x 7 methods fit in minutes on 2 cores (15 min measured, RankSim half of it). The best validation epoch is
# mostly one of the last three (after the learning-rate drops): longer training could still lower every row.
SCHEDULE = Schedule(epochs=12, batch_size=256, lr=1e-3, milestones=(8, 11), task_loss="l1", eval_batch_size=1024)
SEEDS = tuple(range(10))
# The paper's AgeDB settings, unchanged: lambda 100, gamma 0.1, M 8, L_ot on 200 rows of the batch; RankSim
# gamma 1000 (interpolation 2); Ordinal Entropy weight 1; PH-Reg L_t + 0.1 L_d on 128..256 points.
DEFAULTS = Defaults()
METHODS = method_table(DEFAULTS)
TABLE = TABLE_METHODS
ABLATIONS = ablations(METHODS)
