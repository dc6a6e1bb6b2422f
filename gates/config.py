"""The core `GATE` config node; each gate adds its own sub-node through `gatescope_add_config`."""
from yacs.config import CfgNode as CN

from .config_spec import FLOAT32_MAX, at_least, between, declare, declare_rule, one_of, registered, unchecked
from .contract import TEST_MODES


def add_gate_config(cfg, gate_names=None):
    """Add the GATE node to `cfg`. gate_names() -> the registered gates' names, for checking
    GATE.NAME (the caller passes its plugin manager's; gates/ names no manager instance, so that
    it imports nothing of trainers/); None leaves GATE.NAME to the gated trainer's build."""
    cfg.GATE = CN()
    cfg.GATE.NAME = ""  # a registered gate (gatescope plugins lists them); "" = the trainer's default
    cfg.GATE.TARGET = ""  # what the gate controls; each gated trainer lists its targets; "" = default
    cfg.GATE.COND = ""  # conditioning signal; each gated trainer lists its own; "" = default
    cfg.GATE.LR_MULT = 1.0  # learning-rate multiplier of the "gate" parameter group
    # soft: gate values as trained; hard: thresholded / one-hot; "" = the trainer's default (soft,
    # except the study's adaptive trainers: hard, as the study's code)
    cfg.GATE.TEST_MODE = ""
    cfg.GATE.THRESHOLD = 0.5  # hard mode: a mask value above this keeps its option
    cfg.GATE.POOL_SIZE = 4  # number of prompts of a "pool" target
    cfg.GATE.REG_SPARSITY = 0.0  # lambda * sum of gate values (batch mean) added to the loss
    cfg.GATE.EQUALIZE_GRAD = False  # scale dL/dlogit by 1 / (g (1 - g)), clamped to [1, ALPHA_MAX]
    cfg.GATE.ALPHA_MAX = 10.0
    cfg.GATE.PARAM_MATCHED_BIAS = False  # CoOp/CoCoOp: add a zero-initialised bias shaped like the gate
    cfg.GATE.ENCODE_MEMORY_MB = 4096  # activation cap (MiB) of one chunk of per-input prompt encodings
    name = (registered("gate", gate_names, empty_means="the trainer's default gate") if gate_names is not None
            else unchecked("checked when the gated trainer builds its gate"))
    declare(cfg.GATE, NAME=name,
            TARGET=unchecked("the gated trainer checks its own targets (GatedTrainer.config_problems)"),
            COND=unchecked("the gated trainer checks its own signals (GatedTrainer.config_problems)"),
            LR_MULT=between(0, FLOAT32_MAX), TEST_MODE=one_of("", *TEST_MODES), THRESHOLD=between(0, 1),
            POOL_SIZE=at_least(1), REG_SPARSITY=at_least(0), ALPHA_MAX=at_least(1), ENCODE_MEMORY_MB=at_least(1))
    declare_rule(cfg.GATE, gate_lr_is_finite)
    return cfg


def gate_lr_is_finite(cfg):
    """OPTIM.LR x GATE.LR_MULT, the "gate" group's rate, must be a finite float32 (the dtype of
    the learnable tensors): 1e38 x 10 overflows, and the optimizer would fail on its first step."""
    lr = cfg.OPTIM.LR * cfg.GATE.LR_MULT
    if lr > FLOAT32_MAX:
        return "GATE.LR_MULT", (f"OPTIM.LR x GATE.LR_MULT = {cfg.OPTIM.LR:g} x {cfg.GATE.LR_MULT:g} = {lr:g} "
                                f"overflows float32 (largest {FLOAT32_MAX:.4g}), the dtype of the learnable "
                                "tensors; lower one of them")
    return None
