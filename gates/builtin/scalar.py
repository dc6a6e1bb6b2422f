"""`scalar`: one learnable logit per option, the same for every input."""
from yacs.config import CfgNode as CN

import torch
import torch.nn as nn

from ..config_spec import at_least, declare, unchecked
from ..contract import Gate
from .common import check_kind, gate_node, rows


class ScalarGate(Gate):
    """One learnable logit a_k per option, shared by every input:

    mask:    g_k = sigmoid(a_k);
    simplex: g_k = exp(a_k) / sum_j exp(a_j).
    The a_k start at `init`, plus N(0, init_std^2) noise when init_std > 0.
    """

    input_dependent = False

    def __init__(self, num_options, cond_dim, kind, init=0.0, init_std=0.0):
        super().__init__(num_options, cond_dim)
        self.kind = check_kind(kind, type(self).__name__)
        self.activation = "sigmoid" if kind == "mask" else "softmax"
        logits = torch.full((num_options,), float(init))
        if init_std > 0:
            logits += torch.randn(num_options) * init_std
        self.logits = nn.Parameter(logits)

    def forward(self, cond):
        logits = rows(self.logits, cond.shape[0])
        out = torch.sigmoid(logits) if self.kind == "mask" else torch.softmax(logits, dim=-1)
        return self.remember(out, logits)

    def extra_repr(self):
        return f"kind={self.kind}, num_options={self.num_options}"


def add_config(gate_cfg):
    gate_cfg.SCALAR = CN()
    gate_cfg.SCALAR.INIT = 0.0  # initial logit of every option (mask: sigmoid(0) = 0.5; simplex: uniform)
    gate_cfg.SCALAR.INIT_STD = 0.0  # > 0: add N(0, INIT_STD^2) to each initial logit
    declare(gate_cfg.SCALAR, INIT=unchecked("any initial logit"), INIT_STD=at_least(0))


def build(cfg, num_options, cond_dim, kind):
    node = gate_node(cfg, "SCALAR")
    return ScalarGate(num_options, cond_dim, kind, init=node.INIT, init_std=node.INIT_STD)
