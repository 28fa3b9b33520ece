"""AgeDB-DIR age estimation (paper Tables 1 and 5): the published protocol and the paper's numbers.

Protocol (YyzHarry/imbalanced-regression agedb-dir, as the paper uses it): ResNet-50 from scratch, 2048-d
features, a linear head (MT: 8 outputs); 224 x 224 inputs (pad-16 random crop, horizontal flip, mean/std
0.5); Adam 1e-3 without weight decay, batch 256, 90 epochs, lr x0.1 at epochs 60 and 80, L1 loss; the
best epoch by validation MAE is tested. Shots by training images per age: many > 100, few < 20. Methods:
L_ot λ 100, γ 0.1 on 200 rows of the batch; MT M 8; RankSim γ 1000, λ_interp 2 (the paper's choice; the
RankSim authors' AgeDB script uses 100); PH-Reg L_t + 0.1 L_d on 128..256 points (its agedb-dir code);
Ordinal Entropy's class-centre form with weight 1 (the paper copies OE's and PH-Reg's published numbers, so
neither weight is given there).
"""
from __future__ import annotations

from experiments.common.dir_methods import TABLE_METHODS, Defaults, ablations, method_table
from experiments.common.dir_training import Schedule

IMAGE_SIZE = 224
DEPTH = 50
WIDTH = 64
SCHEDULE = Schedule(epochs=90, batch_size=256, lr=1e-3, milestones=(60, 80), task_loss="l1", eval_batch_size=256)
SEEDS = tuple(range(10))
MAX_AGE = 101  # ages 0..101: Ordinal Entropy's classes are the integer ages
DEFAULTS = Defaults()
METHODS = method_table(DEFAULTS)
TABLE = TABLE_METHODS
ABLATIONS = ablations(METHODS)

# Paper Table 1 and Table 5 (MAE, mean over 10 runs): all / many / medium / few.
PAPER = {
    "baseline": (7.80, 6.80, 9.11, 13.63),
    "ranksim": (7.62, 6.70, 8.90, 12.74),
    "oe": (7.65, 6.72, 8.77, 13.28),
    "phreg": (7.32, 6.50, 8.38, 12.18),
    "mt": (7.67, 6.72, 8.87, 13.36),
    "ot": (7.36, 6.55, 8.40, 12.14),
    "mt_ot": (7.28, 6.52, 8.26, 11.86),
    "ot_lam1": (7.68, 6.75, 8.81, 13.38),
    "ot_lam10": (7.55, 6.64, 8.71, 12.88),
    "ot_lam1000": (8.80, 7.17, 11.32, 17.26),
    "ot_gamma1": (7.47, 6.61, 8.57, 12.55),
    "ot_gamma10": (7.51, 6.63, 8.60, 12.75),
    "mt2": (7.72, 6.77, 8.92, 13.37),
    "mt4": (7.74, 6.77, 8.96, 13.52),
    "mt16": (7.70, 6.73, 8.93, 13.44),
    "mt32": (7.71, 6.74, 8.96, 13.40),
    "noise": (8.00, 6.91, 9.43, 14.36),
}
