"""A third-party gate for gatescope: g = sigmoid(U V x + b), with V of rank GATE.LOWRANK.RANK.

Installed with `pip install ./tests/example_plugin`, it is found through the entry-point group
"gatescope" and selected with `GATE.NAME lowrank`; nothing in gatescope changes. Its lifecycle
hook reads the run through `context` (gates.HookContext), the only surface a plugin uses.
"""
import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from gates import Gate, hookimpl


class LowRankGate(Gate):
    kind = "mask"
    activation = "sigmoid"

    def __init__(self, num_options, cond_dim, rank, init_bias):
        super().__init__(num_options, cond_dim)
        self.down = nn.Linear(cond_dim, rank, bias=False)
        self.up = nn.Linear(rank, num_options)
        nn.init.constant_(self.up.bias, init_bias)

    def forward(self, cond):
        logits = self.up(self.down(cond))
        return self.remember(torch.sigmoid(logits), logits)


@hookimpl
def gatescope_add_config(cfg):
    cfg.GATE.LOWRANK = CN()
    cfg.GATE.LOWRANK.RANK = 4  # rank of the conditioning projection
    cfg.GATE.LOWRANK.INIT_BIAS = 2.0  # start mostly open: sigmoid(2) = 0.88


@hookimpl
def gatescope_register_gates(register):
    def build(cfg, num_options, cond_dim, kind):
        return LowRankGate(num_options, cond_dim, cfg.GATE.LOWRANK.RANK, cfg.GATE.LOWRANK.INIT_BIAS)
    register("lowrank", build)


@hookimpl
def after_epoch(context):
    # TensorBoard: the size of each low-rank projection, epoch by epoch.
    for head in context.gate_heads:
        if isinstance(head.gate, LowRankGate):
            norm = head.gate.down.weight.norm().item()
            context.write_scalar(f"lowrank/{head.name}/down_norm", norm, context.epoch + 1)
