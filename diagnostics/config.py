"""The `DIAGNOSTICS` config node (added through the plugin's gatescope_add_config hook)."""
from yacs.config import CfgNode as CN

from gates.config_spec import above, at_least, between, declare, declare_rule, each, one_of

from .verdict import DEFAULT_THRESHOLDS


def add_diagnostics_config(cfg):
    d = cfg.DIAGNOSTICS = CN()
    d.ENABLED = True  # on for every trainer with a gate; measuring never changes the training run
    d.LOG_EVERY = 1  # measure every N-th training step
    d.EPS = 0.01  # a gate value within EPS of 0 or 1 counts as saturated
    # Verdict thresholds (diagnostics/verdict.py and the README explain each):
    for key, value in DEFAULT_THRESHOLDS.items():
        d[key] = value
    # Functional measures, at each evaluation (never per training step):
    d.COUNTERFACTUAL = True  # the gate replaced by its reference (training mean; per-task: initial values, all-on)
    d.INPUT_TESTS = True  # the conditioning shuffled across the batch (a random permutation), and noise
    d.TRAIN_SET = True  # at test evaluations: the counterfactual on the training set, the linear probes
    d.TRAIN_BATCHES = 0  # training batches those use (0: the whole training set)
    d.GRAD_BATCHES = 4  # at test evaluations: training batches for rho of the task loss alone (0: none)
    d.BOOTSTRAP = 1000  # resamples of the accuracy delta's bootstrap interval
    d.PERMUTATIONS = 200  # shuffles of the labels / domains for the MI permutation null
    d.EMBEDDING = True  # at each evaluation: image-text alignment, class separation, silhouette, text drift
    # Probes at chosen epochs (1-based epoch numbers; with DEFINITIONS study 0-based, as the study's 1, 4, 9):
    d.PROBE_EPOCHS = []  # fixed schedules, random gates, per-layer mean, noise on logits, loss competition
    d.PROBE_BATCHES = 4  # test batches used by the per-epoch probes (0: the whole test set)
    d.NOISE_SIGMAS = [0.1, 0.5, 1.0]  # Gaussian noise on gate logits (the study's sensitivity test)
    # Whose definitions the probes use: "gatescope" (the README's), or "study": PROBE_EPOCHS are then
    # 0-based epochs (the study's self.epoch) and each probe epoch also runs the study's experiments
    # with its own definitions (diagnostics/study_probes.py) beside gatescope's. One of gatescope, study.
    d.DEFINITIONS = "gatescope"
    # A gate pattern is called a trend ("decay") only when its values span at least this much
    # (max - min); a float >= 0. Correlations of values that differ by 1e-5 are rounding.
    d.TREND_MIN_RANGE = 0.01
    # True: validate every epoch (the study's trainers do) and write the study's per-epoch metrics
    # file (AdaptiveMaPLe: visualizations/training_metrics.json; AdaptiveBiDirMaPLe and
    # ImprovedAdaptiveBiDirMaPLe: visualizations_adaptive_bidir/training_metrics_adaptive_bidir.json).
    d.STUDY_METRICS_FILE = False
    d.PLOTS = True  # grad_norms.png and gate_outputs.png
    # Accuracy moves in steps of 100 / N points, so a minimum accuracy change (0.5 points, below one
    # image of a 160-image test set) no longer decides; the functional test reads a KL in nats.
    cfg.register_renamed_key("DIAGNOSTICS.DELTA_MIN", "DIAGNOSTICS.KL_MIN", message=(
        "the verdict no longer reads a minimum accuracy change: whether a gate is functional is the KL "
        "between predictions with the learned and the reference gate (nats, default 0.001); the accuracy "
        "change is reported with its bootstrap interval"))
    declare(d, LOG_EVERY=at_least(1), EPS=between(0, 0.5, lo_open=True), RHO_MIN=at_least(0), STD_MIN=at_least(0),
            SAT_MAX=between(0, 1), EFF_MIN=at_least(1, "exp(entropy) of one option"), MOVE_MIN=at_least(0),
            KL_MIN=at_least(0, "nats"), FLIP_MIN=between(0, 1, "a share of the inputs"),
            GAIN_MIN=between(0, 1, "a share of the cross-entropy"),
            SENSITIVITY_MIN=at_least(0), SCHEDULE_GAIN_MIN=at_least(0, "accuracy points"),
            PROBE_MARGIN=between(0, 100, "accuracy points"), MI_P_MAX=between(0, 1, lo_open=True),
            WINDOW=between(0, 1, lo_open=True), GAP_SEVERE=at_least(0),
            TRAIN_BATCHES=at_least(0, "0: the whole training set"), GRAD_BATCHES=at_least(0, "0: none"),
            BOOTSTRAP=at_least(1), PERMUTATIONS=at_least(1),
            PROBE_EPOCHS=each(at_least(0, "epoch numbers: from 1, or from 0 with DEFINITIONS study")),
            PROBE_BATCHES=at_least(0, "0: the whole test set"), NOISE_SIGMAS=each(above(0)),
            DEFINITIONS=one_of(*DEFINITIONS), TREND_MIN_RANGE=at_least(0, "gate-value units"))
    declare_rule(d, _probe_epochs_count_as_defined)
    return cfg


DEFINITIONS = ("gatescope", "study")  # DIAGNOSTICS.DEFINITIONS (recorder.py reads the choice)


def _probe_epochs_count_as_defined(cfg):
    """Epoch 0 exists only where PROBE_EPOCHS count from 0 (DEFINITIONS study)."""
    d = cfg.DIAGNOSTICS
    if d.DEFINITIONS != "study" and any(int(e) < 1 for e in d.PROBE_EPOCHS):
        return "DIAGNOSTICS.PROBE_EPOCHS", (
            f"DIAGNOSTICS.PROBE_EPOCHS {list(d.PROBE_EPOCHS)} holds an epoch below 1, but with DIAGNOSTICS.DEFINITIONS "
            f"{d.DEFINITIONS} epochs are numbered from 1 (the first epoch is 1); number them from 1, or set "
            "DIAGNOSTICS.DEFINITIONS study to count from 0 as the study's code does")
    return None
