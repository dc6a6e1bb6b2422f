"""The study's controls and its improved trainer: AdaptiveBiDirMaPLe plus remedies' settings.

Each is the study's AdaptiveBiDirMaPLe model (trainers/adaptive_maple.py) with its own key node,
as in the study's code, and the control it stands for expressed as a gatescope remedy
(gates/remedies/), set from that node when the config is resolved:

| trainer | node | becomes |
|---|---|---|
| AdaptiveTrain | ADAPTIVE_TRAIN | the model alone (gates trained throughout) |
| AdaptiveFreezeEarly | ADAPTIVE_FREEZE_EARLY | REMEDY.FREEZE.AFTER_EPOCH = FREEZE_EPOCH |
| AdaptiveAlwaysFrozen | ADAPTIVE_ALWAYS_FROZEN | REMEDY.FREEZE.{ALWAYS True, LOGIT GATE_LOGIT} |
| AdaptiveExplicitReg | ADAPTIVE_EXPLICIT_REG | REMEDY.EXPLICIT_REG.{CTX_DROPOUT DROPOUT_RATE, WEIGHT_DECAY} |
| ImprovedAdaptiveBiDirMaPLe | ADAPTIVE_BIDIR_MAPLE | REMEDY.WARMUP 2 epochs fix_gate, and the keys below |

On the ADAPTIVE_BIDIR_MAPLE node (AdaptiveBiDirMaPLe and ImprovedAdaptiveBiDirMaPLe):
USE_GRADIENT_SCALING -> GATE.EQUALIZE_GRAD with GATE.ALPHA_MAX = GRADIENT_SCALE_MAX (the gates'
gradient times min(1 / (g (1 - g)), max)); USE_ENTROPY_REG -> REMEDY.ENTROPY {WEIGHT
LAMBDA_ENTROPY, DIRECTION flatten, REDUCTION sum} (the study's - lambda * sum h(g), which pushes
the gates towards 0.5); GATE_WARMUP_EPOCHS -> REMEDY.WARMUP {EPOCHS, MODE fix_gate}; NESTEROV ->
OPTIM.SGD_NESTEROV (the study builds this trainer's SGD with Nesterov momentum); GRAD_CLIP ->
OPTIM.GRAD_CLIP (the study clips the gradient norm to 1 in both trainers, not in the controls).

The four controls differ from AdaptiveBiDirMaPLe's model in one place, as in the study's code:
their text encoder also applies the depth gates (DEPTH_GATES_TEXT). A remedy's setting the user
also set to another value stops the run naming both keys (set_study_key). Where the study's code
for a control did something else than its name says, the fixed behaviour is used and
docs/coming_from_the_study.md says what changed.
"""
from yacs.config import CfgNode as CN

from gates.config_spec import at_least, between, declare, unchecked

from .adaptive_maple import AdaptiveBiDirMaPLe, add_bidir_keys, add_gated_keys
from .engine import TRAINER_REGISTRY
from .study_keys import apply_study_grad_clip, set_study_key

IMPROVED_GATE_WARMUP_EPOCHS = 2  # the study's ImprovedAdaptiveBiDirMaPLe: gates fixed in epochs 0 and 1


def add_control_keys(node):
    add_gated_keys(node)
    add_bidir_keys(node)


@TRAINER_REGISTRY.register()
class AdaptiveTrain(AdaptiveBiDirMaPLe):
    """The study's experiment B-1 baseline: AdaptiveBiDirMaPLe's model, gates trained throughout,
    plain SGD (keys TRAINER.ADAPTIVE_TRAIN; the study's code reads that node but never defines it)."""

    CFG_NODE = "ADAPTIVE_TRAIN"
    DEPTH_GATES_TEXT = True

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ADAPTIVE_TRAIN = CN()
        add_control_keys(cfg.TRAINER.ADAPTIVE_TRAIN)


@TRAINER_REGISTRY.register()
class AdaptiveFreezeEarly(AdaptiveTrain):
    """Gates frozen from epoch FREEZE_EPOCH (from 0) on: does the gate learn anything after that?"""

    CFG_NODE = "ADAPTIVE_FREEZE_EARLY"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ADAPTIVE_FREEZE_EARLY = CN()
        add_control_keys(cfg.TRAINER.ADAPTIVE_FREEZE_EARLY)
        cfg.TRAINER.ADAPTIVE_FREEZE_EARLY.FREEZE_EPOCH = 1
        declare(cfg.TRAINER.ADAPTIVE_FREEZE_EARLY, FREEZE_EPOCH=at_least(0, "0-based epoch"))


@TRAINER_REGISTRY.register()
class AdaptiveAlwaysFrozen(AdaptiveTrain):
    """Gates fixed at logit GATE_LOGIT (sigmoid(5) = 0.993) from the start: are learnt gates any better?"""

    CFG_NODE = "ADAPTIVE_ALWAYS_FROZEN"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ADAPTIVE_ALWAYS_FROZEN = CN()
        add_control_keys(cfg.TRAINER.ADAPTIVE_ALWAYS_FROZEN)
        cfg.TRAINER.ADAPTIVE_ALWAYS_FROZEN.GATE_LOGIT = 5.0
        declare(cfg.TRAINER.ADAPTIVE_ALWAYS_FROZEN, GATE_LOGIT=unchecked("any logit"))


@TRAINER_REGISTRY.register()
class AdaptiveExplicitReg(AdaptiveTrain):
    """Dropout DROPOUT_RATE on the context and weight decay WEIGHT_DECAY: is the gain regularisation?"""

    CFG_NODE = "ADAPTIVE_EXPLICIT_REG"

    @staticmethod
    def add_config(cfg):
        cfg.TRAINER.ADAPTIVE_EXPLICIT_REG = CN()
        add_control_keys(cfg.TRAINER.ADAPTIVE_EXPLICIT_REG)
        cfg.TRAINER.ADAPTIVE_EXPLICIT_REG.DROPOUT_RATE = 0.1
        cfg.TRAINER.ADAPTIVE_EXPLICIT_REG.WEIGHT_DECAY = 0.01  # the study's code sets 0.01 for every tensor
        declare(cfg.TRAINER.ADAPTIVE_EXPLICIT_REG, DROPOUT_RATE=between(0, 1, hi_open=True),
                WEIGHT_DECAY=at_least(0))


@TRAINER_REGISTRY.register()
class ImprovedAdaptiveBiDirMaPLe(AdaptiveBiDirMaPLe):
    """AdaptiveBiDirMaPLe with the study's attempted fixes: gradient scaling and/or entropy
    regularisation on the gates (USE_GRADIENT_SCALING, USE_ENTROPY_REG), after a 2-epoch gate
    warm-up freeze. Same key node as AdaptiveBiDirMaPLe, as in the study."""


def resolve_study_controls(cfg):
    """Turn the study's control keys of the trainer named in cfg into remedies' settings (cfg not frozen)."""
    name = cfg.TRAINER.NAME
    if name in ("AdaptiveBiDirMaPLe", "ImprovedAdaptiveBiDirMaPLe"):
        resolve_adaptive_bidir(cfg, improved=name == "ImprovedAdaptiveBiDirMaPLe")
    elif name == "AdaptiveFreezeEarly":
        c = cfg.TRAINER.ADAPTIVE_FREEZE_EARLY
        set_study_key(cfg, "REMEDY.FREEZE.AFTER_EPOCH", int(c.FREEZE_EPOCH),
                      "TRAINER.ADAPTIVE_FREEZE_EARLY.FREEZE_EPOCH")
    elif name == "AdaptiveAlwaysFrozen":
        source = "TRAINER.ADAPTIVE_ALWAYS_FROZEN"
        set_study_key(cfg, "REMEDY.FREEZE.ALWAYS", True, source)
        set_study_key(cfg, "REMEDY.FREEZE.LOGIT", float(cfg.TRAINER.ADAPTIVE_ALWAYS_FROZEN.GATE_LOGIT),
                      f"{source}.GATE_LOGIT")
    elif name == "AdaptiveExplicitReg":
        c = cfg.TRAINER.ADAPTIVE_EXPLICIT_REG
        set_study_key(cfg, "REMEDY.EXPLICIT_REG.CTX_DROPOUT", float(c.DROPOUT_RATE),
                      "TRAINER.ADAPTIVE_EXPLICIT_REG.DROPOUT_RATE")
        set_study_key(cfg, "REMEDY.EXPLICIT_REG.WEIGHT_DECAY", float(c.WEIGHT_DECAY),
                      "TRAINER.ADAPTIVE_EXPLICIT_REG.WEIGHT_DECAY")


def resolve_adaptive_bidir(cfg, improved):
    c = cfg.TRAINER.ADAPTIVE_BIDIR_MAPLE
    node = "TRAINER.ADAPTIVE_BIDIR_MAPLE"
    if c.USE_GRADIENT_SCALING:
        set_study_key(cfg, "GATE.EQUALIZE_GRAD", True, f"{node}.USE_GRADIENT_SCALING")
        set_study_key(cfg, "GATE.ALPHA_MAX", float(c.GRADIENT_SCALE_MAX), f"{node}.GRADIENT_SCALE_MAX")
    if c.USE_ENTROPY_REG and c.LAMBDA_ENTROPY > 0:
        source = f"{node}.USE_ENTROPY_REG"
        set_study_key(cfg, "REMEDY.ENTROPY.WEIGHT", float(c.LAMBDA_ENTROPY), source)
        set_study_key(cfg, "REMEDY.ENTROPY.DIRECTION", "flatten", source)
        set_study_key(cfg, "REMEDY.ENTROPY.REDUCTION", "sum", source)
    warmup = c.GATE_WARMUP_EPOCHS
    if warmup == -1:
        warmup = IMPROVED_GATE_WARMUP_EPOCHS if improved else 0
    if warmup > 0:
        set_study_key(cfg, "REMEDY.WARMUP.EPOCHS", int(warmup), f"{node}.GATE_WARMUP_EPOCHS")
        set_study_key(cfg, "REMEDY.WARMUP.MODE", "fix_gate", f"{node}.GATE_WARMUP_EPOCHS")
    if c.NESTEROV and cfg.OPTIM.NAME == "sgd":
        cfg.OPTIM.SGD_NESTEROV = True
    apply_study_grad_clip(cfg, node)
