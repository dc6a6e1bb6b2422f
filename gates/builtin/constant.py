"""`constant`: the fixed-prompt baseline, a gate without parameters."""
from yacs.config import CfgNode as CN

import torch

from ..config_spec import between, declare, unchecked
from ..contract import Gate
from .common import check_kind, gate_node, rows


class ConstantGate(Gate):
    """g(x) = c for every input x, where

    mask:    c_k = VALUE for every option k (1.0 keeps everything: the ungated model);
    simplex: c = e_i, one-hot on option i = INDEX (-1 = the last option, by convention the
             full prompt), or c_k = 1 / K when UNIFORM.
    """

    input_dependent = False

    def __init__(self, num_options, cond_dim, kind, value=1.0, index=-1, uniform=False):
        super().__init__(num_options, cond_dim)
        self.kind = check_kind(kind, "constant")
        if kind == "mask":
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"GATE.CONSTANT.VALUE must lie in [0, 1] for a mask gate, got {value}")
            row = torch.full((num_options,), float(value))
        elif uniform:
            row = torch.full((num_options,), 1.0 / num_options)
        else:
            if not -num_options <= index < num_options:
                raise ValueError(f"GATE.CONSTANT.INDEX = {index} but the target has {num_options} options; "
                                 f"use an index in [{-num_options}, {num_options - 1}] (-1 = the last)")
            row = torch.zeros(num_options)
            row[index] = 1.0
        # Derived from the config, so kept out of checkpoints; a buffer so it follows .to(device).
        self.register_buffer("row", row, persistent=False)

    def forward(self, cond):
        return self.remember(rows(self.row.to(cond.dtype), cond.shape[0]))

    def extra_repr(self):
        return f"kind={self.kind}, row={[round(float(v), 4) for v in self.row]}"


def add_config(gate_cfg):
    gate_cfg.CONSTANT = CN()
    gate_cfg.CONSTANT.VALUE = 1.0  # mask: every option's value
    gate_cfg.CONSTANT.INDEX = -1  # simplex: the option of the one-hot (-1 = last = full prompt)
    gate_cfg.CONSTANT.UNIFORM = False  # simplex: 1/K on every option instead of a one-hot
    declare(gate_cfg.CONSTANT, VALUE=between(0, 1),
            INDEX=unchecked("Python's index into the K options; checked against K when the gate is built"))


def build(cfg, num_options, cond_dim, kind):
    node = gate_node(cfg, "CONSTANT")
    return ConstantGate(num_options, cond_dim, kind, value=node.VALUE, index=node.INDEX, uniform=node.UNIFORM)
