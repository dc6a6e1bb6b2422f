"""`keyquery`: prompt-pool selection by key-query matching (as in L2P, Wang et al. 2022)."""
from yacs.config import CfgNode as CN

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config_spec import above, at_least, declare, one_of
from ..contract import Gate
from .common import check_positive, gate_node

KEY_INITS = ("uniform", "normal")


class KeyQueryGate(Gate):
    """K learnable keys k_j (K, D), scored against the conditioning feature x:

        s_j(x) = cos(x, k_j) = <x, k_j> / (|x| |k_j|)
        soft: g(x) = softmax(s(x) / T)
        hard: g(x) = one_hot(argmax_j s_j(x))   (no gradient reaches the keys through g)
        aux  = w * mean_x (1 - s_{j*(x)}(x)),  j*(x) = argmax_j s_j(x)

    aux is L2P's surrogate loss: it pulls each input's selected key towards it, and is what
    trains the keys in hard mode (hence no_task_grad_params = ("keys",) there). Keys start
    uniform(-1, 1) or N(0, 1).
    """

    kind = "simplex"

    def __init__(self, num_options, cond_dim, temperature=0.1, hard=False, surrogate_weight=0.1,
                 key_init="uniform"):
        super().__init__(num_options, cond_dim)
        self.temperature = float(check_positive(temperature, "GATE.KEYQUERY.TEMPERATURE"))
        self.hard = bool(hard)
        self.surrogate_weight = float(surrogate_weight)
        self.activation = "argmax" if self.hard else "softmax"
        if self.hard:
            self.no_task_grad_params = ("keys",)
        if key_init == "uniform":
            keys = torch.empty(num_options, cond_dim).uniform_(-1.0, 1.0)
        elif key_init == "normal":
            keys = torch.randn(num_options, cond_dim)
        else:
            raise ValueError(f"GATE.KEYQUERY.KEY_INIT must be one of {KEY_INITS}, got {key_init!r}")
        self.keys = nn.Parameter(keys)
        self._selected_similarity = None

    def similarity(self, cond):
        """s (B, K): cosine similarity of each input to each key."""
        return F.normalize(cond.to(self.keys.dtype), dim=-1) @ F.normalize(self.keys, dim=-1).t()

    def forward(self, cond):
        scores = self.similarity(cond)
        best = scores.argmax(dim=-1, keepdim=True)
        self._selected_similarity = scores.gather(-1, best).squeeze(-1)
        logits = scores / self.temperature
        if self.hard:
            out = torch.zeros_like(scores).scatter(-1, best, 1.0).detach()
        else:
            out = torch.softmax(logits, dim=-1)
        return self.remember(out, logits)

    def aux_loss(self):
        if self._selected_similarity is None:
            return None
        return self.surrogate_weight * (1.0 - self._selected_similarity).mean()

    def extra_repr(self):
        return f"num_keys={self.num_options}, temperature={self.temperature}, hard={self.hard}"


def add_config(gate_cfg):
    gate_cfg.KEYQUERY = CN()
    gate_cfg.KEYQUERY.TEMPERATURE = 0.1  # T in softmax(cos / T)
    gate_cfg.KEYQUERY.HARD = False  # True: one-hot on the best key (keys trained by the surrogate only)
    gate_cfg.KEYQUERY.SURROGATE_WEIGHT = 0.1  # w of the surrogate loss w * mean(1 - cos(x, selected key))
    gate_cfg.KEYQUERY.KEY_INIT = "uniform"  # uniform(-1, 1) or normal N(0, 1)
    declare(gate_cfg.KEYQUERY, TEMPERATURE=above(0), SURROGATE_WEIGHT=at_least(0), KEY_INIT=one_of(*KEY_INITS))


def build(cfg, num_options, cond_dim, kind):
    node = gate_node(cfg, "KEYQUERY")
    return KeyQueryGate(num_options, cond_dim, temperature=node.TEMPERATURE, hard=node.HARD,
                        surrogate_weight=node.SURROGATE_WEIGHT, key_init=node.KEY_INIT)
