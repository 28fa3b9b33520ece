"""NYUD2-DIR depth estimation (paper Tables 2 and 4): the published protocol and the paper's numbers.

Protocol (YyzHarry/imbalanced-regression nyud2-dir, as the paper uses it): Hu et al.'s network on a
ResNet-50 encoder (ImageNet weights where the user has them: --encoder-weights), 228 x 304 inputs, training
depth 114 x 152; MSE on all pixels; Adam 1e-4 with weight decay 1e-4 (torch's: added to the gradient), batch
32, 10 epochs, lr x0.1 every 5; the final model is tested (no validation split) on the balanced test mask,
the prediction upsampled bilinearly (align_corners=True, as test.py) to 228 x 304. Methods: L_ot λ 10, γ
0.05 per image on the last hidden feature map at stride 8, 200 valid pixels (depth > 1e-3) drawn per image;
MT M 8. The peers act on the same 200 sampled pixels per image (our adaptation: the paper names no setting
for them but "the suggested hyper-parameters" and, for RankSim, the best γ of 1..1000): RankSim γ 100,
Ordinal Entropy (pairwise form) weight 1, PH-Reg L_t + 0.1 L_d on 32..128 points by 16.
"""
from __future__ import annotations

from experiments.common.dir_methods import TABLE_METHODS, Defaults, ablations, method_table
from experiments.common.dir_training import Schedule

SCALE = 240
DEPTH = 50
WIDTH = 64
STRIDE = 8
PIXELS = 200
MIN_DEPTH = 1e-3
SCHEDULE = Schedule(epochs=10, batch_size=32, lr=1e-4, milestones=(5,), lr_decay=0.1, weight_decay=1e-4,
                    task_loss="mse", eval_batch_size=32, select_best=False)
SEEDS = tuple(range(10))
DEFAULTS = Defaults(lam=10.0, epsilon=0.05, num_targets=8, rot_samples=PIXELS, ranksim_weight=100.0,
                    oe_weight=1.0, phreg_weights=(1.0, 0.1), phreg_points=(32, 128, 16))
METHODS = method_table(DEFAULTS)
TABLE = TABLE_METHODS
ABLATIONS = ablations(METHODS)
DIAGNOSTIC_IMAGES = 8  # Table 4: 1000 pixels from a batch of 8 test images
DIAGNOSTIC_PIXELS = 1000

# Paper Table 2: RMSE and δ1, all / many / medium / few.
PAPER_RMSE = {
    "baseline": (1.477, 0.591, 0.952, 2.123), "ranksim": (1.522, 0.565, 0.889, 2.213),
    "oe": (1.419, 0.671, 0.925, 2.005), "phreg": (1.450, 0.789, 0.911, 2.002),
    "mt": (1.367, 0.605, 0.854, 1.952), "ot": (1.353, 0.654, 0.934, 1.899), "mt_ot": (1.321, 0.685, 0.951, 1.829),
}
PAPER_DELTA1 = {
    "baseline": (0.677, 0.777, 0.693, 0.570), "ranksim": (0.666, 0.791, 0.735, 0.513),
    "oe": (0.668, 0.727, 0.702, 0.596), "phreg": (0.620, 0.621, 0.680, 0.596),
    "mt": (0.715, 0.776, 0.759, 0.636), "ot": (0.689, 0.736, 0.697, 0.638), "mt_ot": (0.701, 0.731, 0.689, 0.675),
}
