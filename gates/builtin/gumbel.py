"""`gumbel`: a Gumbel-softmax sample over input-conditioned logits."""
from yacs.config import CfgNode as CN

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config_spec import above, declare
from ..contract import Gate
from .common import check_positive, gate_node


class GumbelSoftmaxGate(Gate):
    """z(x) = W x + b;

    training: y = softmax((z + G) / T), G_k = -log(E_k), E_k ~ Exp(1) (i.e. G ~ Gumbel(0, 1));
              straight-through: the forward value is one_hot(argmax y), the gradient is dy;
    eval:     g = softmax(z / T), no noise (a hard test mode is the trainer's GATE.TEST_MODE).

    `temperature` is a plain attribute read at every forward, so a schedule may anneal it;
    `last_logits` keeps the softmax's input ((z + G) / T in training, z / T at eval).
    """

    kind = "simplex"
    activation = "softmax"

    def __init__(self, num_options, cond_dim, temperature=1.0, straight_through=False):
        super().__init__(num_options, cond_dim)
        self.temperature = float(check_positive(temperature, "GATE.GUMBEL.TEMPERATURE"))
        self.straight_through = bool(straight_through)
        self.net = nn.Linear(cond_dim, num_options)

    def output_layer(self):
        return self.net

    def sample_gumbel(self, like):
        """G ~ Gumbel(0, 1) of the shape of `like` (a method so tests can fix the noise)."""
        return -torch.empty_like(like).exponential_().log()

    def forward(self, cond):
        z = self.net(cond.to(self.net.weight.dtype))
        if not self.training:
            logits = z / self.temperature
            return self.remember(torch.softmax(logits, dim=-1), logits)
        logits = (z + self.sample_gumbel(z)) / self.temperature
        soft = torch.softmax(logits, dim=-1)
        if not self.straight_through:
            return self.remember(soft, logits)
        hard = F.one_hot(soft.argmax(dim=-1), self.num_options).to(soft.dtype)
        # Forward value `hard`, gradient of `soft`.
        return self.remember(hard - soft.detach() + soft, logits)

    def extra_repr(self):
        return f"temperature={self.temperature}, straight_through={self.straight_through}"


def add_config(gate_cfg):
    gate_cfg.GUMBEL = CN()
    gate_cfg.GUMBEL.TEMPERATURE = 1.0  # T of the Gumbel-softmax (and of the eval softmax)
    gate_cfg.GUMBEL.STRAIGHT_THROUGH = False  # True: one-hot forward, soft gradient
    declare(gate_cfg.GUMBEL, TEMPERATURE=above(0))


def build(cfg, num_options, cond_dim, kind):
    node = gate_node(cfg, "GUMBEL")
    return GumbelSoftmaxGate(num_options, cond_dim, temperature=node.TEMPERATURE,
                             straight_through=node.STRAIGHT_THROUGH)
