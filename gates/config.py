"""The core `GATE` config node; each gate adds its own sub-node through `gatescope_add_config`."""
from yacs.config import CfgNode as CN


def add_gate_config(cfg):
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
    return cfg
