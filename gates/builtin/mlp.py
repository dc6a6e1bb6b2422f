"""`mlp`: the usual input-conditioned mask gate, a two-layer MLP on the conditioning feature."""
from yacs.config import CfgNode as CN

import torch

from ..config_spec import at_least, declare, unchecked
from ..contract import Gate
from .common import conditioned_head, gate_node


class MLPGate(Gate):
    """g(x) = sigmoid(W2 relu(W1 x + b1) + b2), W1: (H, D), W2: (K, H); with hidden H = 0 a
    linear head, g(x) = sigmoid(W2 x + b2), W2: (K, D) (the study's conditional gates).

    At init b2 is PyTorch's default plus `init_bias` (e.g. +10 starts the gate saturated at
    g ~ 1), and W2 ~ N(0, init_std^2) when init_std > 0 (PyTorch's default init otherwise).
    """

    kind = "mask"
    activation = "sigmoid"

    def __init__(self, num_options, cond_dim, hidden=32, init_bias=0.0, init_std=0.0):
        super().__init__(num_options, cond_dim)
        if hidden < 0:
            raise ValueError(f"GATE.MLP.HIDDEN must be >= 0 (0 = a linear head), got {hidden}")
        self.net = conditioned_head(cond_dim, num_options, hidden)
        output_layer = self.net[-1]
        with torch.no_grad():
            if init_std > 0:
                output_layer.weight.normal_(0.0, init_std)
            output_layer.bias.add_(init_bias)

    def output_layer(self):
        return self.net[-1]

    def forward(self, cond):
        logits = self.net(cond.to(self.net[-1].weight.dtype))
        return self.remember(torch.sigmoid(logits), logits)


def add_config(gate_cfg):
    gate_cfg.MLP = CN()
    gate_cfg.MLP.HIDDEN = 32  # hidden width H; 0: a linear head sigmoid(W x + b)
    gate_cfg.MLP.INIT_BIAS = 0.0  # added to the output bias at init (+10: start saturated at g ~ 1)
    gate_cfg.MLP.INIT_STD = 0.0  # std of the output weights at init; <= 0: PyTorch's default init
    declare(gate_cfg.MLP, HIDDEN=at_least(0, "0: a linear head"), INIT_BIAS=unchecked("any logit shift"),
            INIT_STD=unchecked("<= 0: PyTorch's default init"))


def build(cfg, num_options, cond_dim, kind):
    node = gate_node(cfg, "MLP")
    return MLPGate(num_options, cond_dim, hidden=node.HIDDEN, init_bias=node.INIT_BIAS, init_std=node.INIT_STD)
