"""The study's gate keys on CoOp and CoCoOp, read as configurations of the gated trainers.

Users of the study's code run `--trainer CoOp ... TRAINER.COOP.USE_GATE True`; here that run
becomes CoOpGated with the matching built-in gate, so their scripts and configs work unchanged:

    USE_GATE True          -> CoOpGated / CoCoOpGated
    GATE_TYPE scalar|vector-> GATE.TARGET length (one gate per token) | token_dim (per token and dim)
    GATE_MODE static       -> GATE.NAME sigmoid, per-task logits ~ N(0, GATE_INIT_STD)  (CoCoOp; CoOp is static)
    GATE_MODE conditional  -> GATE.NAME mlp with GATE.MLP.HIDDEN 0: a linear head on the image feature
    GATE_LR_MUL            -> GATE.LR_MULT
    GATE_REG_LAMBDA        -> GATE.REG_SPARSITY (lambda * sum of gate values, batch mean)
    EQUALIZE_GRAD, ALPHA_MAX -> GATE.EQUALIZE_GRAD, GATE.ALPHA_MAX
    PARAM_MATCHED True     -> no gate: a zero-initialised additive bias with the gate's parameter
                              count (GATE.NAME constant at 1 plus GATE.PARAM_MATCHED_BIAS)
"""
from yacs.config import CfgNode as CN  # noqa: F401  (nodes are created by the trainers)

from gates.config_spec import FLOAT32_MAX, at_least, between, declare, one_of


def add_study_gate_keys(node, with_mode=False):
    node.USE_GATE = False
    node.GATE_TYPE = "scalar"  # scalar: one gate per context token; vector: per token and dimension
    node.GATE_INIT_STD = 0.02
    node.GATE_LR_MUL = 1.0
    node.GATE_REG_LAMBDA = 0.0
    node.PARAM_MATCHED = False
    node.EQUALIZE_GRAD = False
    node.ALPHA_MAX = 10.0
    declare(node, GATE_TYPE=one_of("scalar", "vector"), GATE_INIT_STD=at_least(0),
            GATE_LR_MUL=between(0, FLOAT32_MAX), GATE_REG_LAMBDA=at_least(0), ALPHA_MAX=at_least(1))
    if with_mode:
        node.GATE_MODE = "static"  # static or conditional
        declare(node, GATE_MODE=one_of("static", "conditional"))


def resolve_study_keys(cfg, parent, gated, node_name):
    """Rewrite a `parent` run that sets the study's gate keys into a `gated` run (cfg not frozen)."""
    if cfg.TRAINER.NAME != parent:
        return
    c = cfg.TRAINER[node_name]
    if not (c.USE_GATE or c.PARAM_MATCHED):
        return
    if c.GATE_TYPE not in ("scalar", "vector") or c.get("GATE_MODE", "static") not in ("static", "conditional"):
        return  # left as it is: the config check that follows names the key, with a suggestion
    cfg.TRAINER.NAME = gated
    cfg.GATE.TARGET = "length" if c.GATE_TYPE == "scalar" else "token_dim"
    cfg.GATE.LR_MULT = c.GATE_LR_MUL
    cfg.GATE.REG_SPARSITY = c.GATE_REG_LAMBDA
    cfg.GATE.EQUALIZE_GRAD = c.EQUALIZE_GRAD
    cfg.GATE.ALPHA_MAX = c.ALPHA_MAX
    if c.PARAM_MATCHED:
        cfg.GATE.NAME = "constant"
        cfg.GATE.PARAM_MATCHED_BIAS = True
        return
    mode = c.get("GATE_MODE", "static")
    if mode == "static":
        cfg.GATE.NAME = "sigmoid"
        cfg.GATE.SIGMOID.INIT_LOGIT = 0.0
        cfg.GATE.SIGMOID.INIT_STD = c.GATE_INIT_STD
    else:  # conditional
        cfg.GATE.NAME = "mlp"
        cfg.GATE.MLP.HIDDEN = 0
        cfg.GATE.MLP.INIT_STD = c.GATE_INIT_STD
