"""`softmax`: an input-conditioned distribution over the options."""
from yacs.config import CfgNode as CN

import torch

from ..config_spec import above, at_least, declare
from ..contract import Gate
from .common import check_positive, conditioned_head, gate_node


class SoftmaxGate(Gate):
    """g(x) = softmax(z(x) / T), with z(x) = W x + b, or an MLP W2 relu(W1 x + b1) + b2 when
    hidden > 0. `temperature` is a plain attribute read at every forward, so a schedule may
    anneal it; `last_logits` keeps z / T, the softmax's actual input.
    """

    kind = "simplex"
    activation = "softmax"

    def __init__(self, num_options, cond_dim, temperature=1.0, hidden=0):
        super().__init__(num_options, cond_dim)
        self.temperature = float(check_positive(temperature, "GATE.SOFTMAX.TEMPERATURE"))
        self.net = conditioned_head(cond_dim, num_options, hidden)

    def output_layer(self):
        return self.net[-1]

    def forward(self, cond):
        logits = self.net(cond.to(self.net[-1].weight.dtype)) / self.temperature
        return self.remember(torch.softmax(logits, dim=-1), logits)

    def extra_repr(self):
        return f"temperature={self.temperature}"


def add_config(gate_cfg):
    gate_cfg.SOFTMAX = CN()
    gate_cfg.SOFTMAX.TEMPERATURE = 1.0  # T in softmax(z / T); lower is sharper
    gate_cfg.SOFTMAX.HIDDEN = 0  # 0: linear logits; > 0: an MLP with this hidden width
    declare(gate_cfg.SOFTMAX, TEMPERATURE=above(0), HIDDEN=at_least(0, "0: linear logits"))


def build(cfg, num_options, cond_dim, kind):
    node = gate_node(cfg, "SOFTMAX")
    return SoftmaxGate(num_options, cond_dim, temperature=node.TEMPERATURE, hidden=node.HIDDEN)
