"""`sigmoid`: free per-task logits through a sigmoid (the study's length and depth gates)."""
from yacs.config import CfgNode as CN

from ..config_spec import at_least, declare, unchecked
from .common import gate_node
from .scalar import ScalarGate


class SigmoidGate(ScalarGate):
    """g_k = sigmoid(a_k), one learnable logit a_k per option shared by every input; a mask
    gate only. a_k starts at INIT_LOGIT (1.0, as in the study: g = 0.73, every option mostly on),
    plus N(0, INIT_STD^2) noise when INIT_STD > 0 (the study's static CoCoOp gates: logit 0, std 0.02).
    """

    def __init__(self, num_options, cond_dim, init_logit=1.0, init_std=0.0):
        super().__init__(num_options, cond_dim, "mask", init=init_logit, init_std=init_std)


def add_config(gate_cfg):
    gate_cfg.SIGMOID = CN()
    gate_cfg.SIGMOID.INIT_LOGIT = 1.0  # initial logit of every option: sigmoid(1) = 0.731
    gate_cfg.SIGMOID.INIT_STD = 0.0  # > 0: add N(0, INIT_STD^2) to each initial logit
    declare(gate_cfg.SIGMOID, INIT_LOGIT=unchecked("any initial logit"), INIT_STD=at_least(0))


def build(cfg, num_options, cond_dim, kind):
    # A mask gate whatever `kind` asks for; validate_gate names the mismatch if there is one.
    node = gate_node(cfg, "SIGMOID")
    return SigmoidGate(num_options, cond_dim, init_logit=node.INIT_LOGIT, init_std=node.INIT_STD)
