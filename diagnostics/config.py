"""The `DIAGNOSTICS` config node (added through the plugin's gatescope_add_config hook)."""
from yacs.config import CfgNode as CN

from gates.config_spec import above, at_least, between, declare, each

from .verdict import DEFAULT_THRESHOLDS


def add_diagnostics_config(cfg):
    d = cfg.DIAGNOSTICS = CN()
    d.ENABLED = True  # on for every trainer with a gate; measuring never changes the training run
    d.LOG_EVERY = 1  # measure every N-th training step
    d.EPS = 0.01  # a gate value within EPS of 0 or 1 counts as saturated
    # Verdict thresholds (the README explains each):
    d.RHO_MIN = DEFAULT_THRESHOLDS["RHO_MIN"]  # imbalanced: median RMS_gate / RMS_prompt below this
    d.STD_MIN = DEFAULT_THRESHOLDS["STD_MIN"]  # degraded: input sensitivity (std across inputs) below this
    d.SAT_MAX = DEFAULT_THRESHOLDS["SAT_MAX"]  # degraded: share of saturated gate values above this
    d.EFF_MIN = DEFAULT_THRESHOLDS["EFF_MIN"]  # degraded (simplex): effective number of options below this
    d.DELTA_MIN = DEFAULT_THRESHOLDS["DELTA_MIN"]  # collapsed: |counterfactual accuracy change| below this (points)
    d.WINDOW = DEFAULT_THRESHOLDS["WINDOW"]  # share of training (the last steps) the medians are taken over
    d.GAP_SEVERE = DEFAULT_THRESHOLDS["GAP_SEVERE"]  # the study's log10 gradient gap called severe
    # Probes at evaluation and at chosen epochs (1-based epoch numbers, the study used 1, 4, 9):
    d.COUNTERFACTUAL = True  # at each evaluation: the gate replaced by its training-set mean
    d.EMBEDDING = True  # at each evaluation: image-text alignment, class separation, silhouette, text drift
    d.INPUT_TESTS = True  # at each evaluation: conditioning shuffled across the batch, and noise
    d.PROBE_EPOCHS = []  # fixed schedules, random gates, per-layer mean, noise on logits, loss competition
    d.PROBE_BATCHES = 4  # test batches used by the per-epoch probes (0: the whole test set)
    d.NOISE_SIGMAS = [0.1, 0.5, 1.0]  # Gaussian noise on gate logits (the study's sensitivity test)
    d.PLOTS = True  # grad_norms.png and gate_outputs.png
    declare(d, LOG_EVERY=at_least(1), EPS=between(0, 0.5, lo_open=True), RHO_MIN=at_least(0), STD_MIN=at_least(0),
            SAT_MAX=between(0, 1), EFF_MIN=at_least(1, "exp(entropy) of one option"), DELTA_MIN=at_least(0),
            WINDOW=between(0, 1, lo_open=True), GAP_SEVERE=at_least(0),
            PROBE_EPOCHS=each(at_least(1, "1-based epoch numbers")), PROBE_BATCHES=at_least(0, "0: the whole test set"),
            NOISE_SIGMAS=each(above(0)))
    return cfg
