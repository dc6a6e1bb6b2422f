"""The study's gate keys on CoOp and CoCoOp, read as configurations of the gated trainers.

Users of the study's code run `--trainer CoOp ... TRAINER.COOP.USE_GATE True`; here that run
becomes CoOpGated with the matching built-in gate, so their scripts and configs work unchanged:

    USE_GATE True          -> CoOpGated / CoCoOpGated
    GATE_TYPE scalar|vector-> GATE.TARGET length (one gate per token) | token_dim (per token and dim)
    GATE_MODE static       -> GATE.NAME sigmoid, per-task logits ~ N(0, GATE_INIT_STD)  (CoCoOp; CoOp is static)
    GATE_MODE conditional  -> GATE.NAME mlp with GATE.MLP.HIDDEN 0: a linear head on the image feature
    GATE_LR_MUL            -> GATE.LR_MULT
    GATE_REG_LAMBDA        -> REMEDY.ENTROPY {WEIGHT lambda, DIRECTION sharpen, REDUCTION sum}: the study's
                              + lambda * sum_k h(g_k), binary entropy summed over the gate's entries,
                              which pushes the gates towards 0/1 (its ImprovedAdaptiveBiDirMaPLe
                              entropy term has the opposite sign: flatten, see adaptive_controls.py)
    EQUALIZE_GRAD, ALPHA_MAX -> GATE.EQUALIZE_GRAD, GATE.ALPHA_MAX
    PARAM_MATCHED True     -> no gate: a zero-initialised additive bias with the gate's parameter
                              count (GATE.NAME constant at 1 plus GATE.PARAM_MATCHED_BIAS)
"""
from yacs.config import CfgNode as CN

from gates.config import add_gate_config
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
    if c.GATE_REG_LAMBDA > 0:
        source = f"TRAINER.{node_name}.GATE_REG_LAMBDA"
        set_study_key(cfg, "REMEDY.ENTROPY.WEIGHT", float(c.GATE_REG_LAMBDA), source)
        set_study_key(cfg, "REMEDY.ENTROPY.DIRECTION", "sharpen", source)
        set_study_key(cfg, "REMEDY.ENTROPY.REDUCTION", "sum", source)
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
    # any other GATE_MODE is reported by the config check (declared one_of static, conditional)


def default_value(key):
    """The default of a GATE.*, REMEDY.* or OPTIM.* key, from the nodes that define it."""
    from gates.remedies import REMEDY_MODULES

    from .engine import get_cfg_default

    node = get_cfg_default() if key.startswith("OPTIM.") else CN()
    if key.startswith("GATE."):
        add_gate_config(node)
    elif key.startswith("REMEDY."):
        node.REMEDY = CN()
        for module in REMEDY_MODULES:
            module.add_config(node.REMEDY)
    for part in key.split("."):
        node = node[part]
    return node


def set_study_key(cfg, key, value, source):
    """Set `key` (e.g. REMEDY.ENTROPY.WEIGHT) to what the study's `source` key means.

    A user who set `key` to something else as well is told, instead of one silently winning.
    """
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    current = node[leaf]
    if current != value and current != default_value(key):
        raise ValueError(f"{source} sets {key} to {value!r}, but {key} is also set to {current!r}; "
                         f"remove one of the two")
    node[leaf] = value


def apply_study_grad_clip(cfg, node_name):
    """Set OPTIM.GRAD_CLIP from the GRAD_CLIP key of the study trainer's node `node_name` (e.g.
    "TRAINER.BIDIR_MAPLE"; the study clips at 1 in BiDirMaPLe, AdaptiveBiDirMaPLe and
    ImprovedAdaptiveBiDirMaPLe). 0 on the node leaves OPTIM.GRAD_CLIP as it is; a node value and
    another non-zero OPTIM.GRAD_CLIP stop the run naming both."""
    node = cfg
    for part in node_name.split("."):
        node = node[part]
    value = float(node.GRAD_CLIP)
    if not value >= 0:
        raise ValueError(f"{node_name}.GRAD_CLIP must be >= 0 (0: no clipping from this key), got {node.GRAD_CLIP}")
    if value == 0:
        return
    current = float(cfg.OPTIM.GRAD_CLIP)
    if current not in (0.0, value):
        raise ValueError(f"{node_name}.GRAD_CLIP sets OPTIM.GRAD_CLIP to {value}, but OPTIM.GRAD_CLIP is also set to "
                         f"{current}; set {node_name}.GRAD_CLIP {current} instead (or 0 to let OPTIM.GRAD_CLIP "
                         "decide)")
    cfg.OPTIM.GRAD_CLIP = value


# The study's train.py flags -> the key each sets, on TRAINER.COOP and TRAINER.COCOOP alike
# (GATE_MODE on COCOOP only); --gate_lr is absolute and becomes GATE_LR_MUL = gate_lr / OPTIM.LR.
STUDY_GATE_FLAGS = {
    "use_gate": "USE_GATE", "gate_type": "GATE_TYPE", "gate_init_std": "GATE_INIT_STD",
    "gate_reg_lambda": "GATE_REG_LAMBDA", "gate_mode": "GATE_MODE", "param_matched": "PARAM_MATCHED",
    "equalize_grad": "EQUALIZE_GRAD", "alpha_max": "ALPHA_MAX",
}


def apply_study_gate_flags(cfg, args):
    """Set the keys of the study's gate flags given on the command line (after the YAML files,
    before the trailing KEY VALUE options, as the study's reset_cfg)."""
    for flag, key in STUDY_GATE_FLAGS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        for node in ("COOP", "COCOOP"):
            if key in cfg.TRAINER[node]:
                cfg.TRAINER[node][key] = value
    gate_lr = getattr(args, "gate_lr", None)
    if gate_lr is not None:
        if not gate_lr > 0:
            raise ValueError(f"--gate_lr is the gates' learning rate and must be > 0, got {gate_lr}")
        if not cfg.OPTIM.LR > 0:
            raise ValueError(f"--gate_lr is turned into a multiplier of OPTIM.LR, which is {cfg.OPTIM.LR}")
        for node in ("COOP", "COCOOP"):
            cfg.TRAINER[node].GATE_LR_MUL = float(gate_lr) / float(cfg.OPTIM.LR)
