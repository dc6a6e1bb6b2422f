"""Pieces the built-in gates share: reading their config node, checking values, heads."""
import torch.nn as nn

from ..contract import GATE_KINDS


def gate_node(cfg, key):
    """cfg.GATE.<key>, or an error saying how the config should have been built."""
    gate_cfg = getattr(cfg, "GATE", None)
    if gate_cfg is None or key not in gate_cfg:
        raise KeyError(f"cfg.GATE.{key} is missing: the built-in gates read their settings from it. "
                       "Build the config with gatescope's setup (it calls every plugin's "
                       "gatescope_add_config) or call gates.builtin.gatescope_add_config(cfg) yourself")
    return gate_cfg[key]


def check_kind(kind, gate_name):
    if kind not in GATE_KINDS:
        raise ValueError(f"gate '{gate_name}' was asked for kind {kind!r}; expected one of {GATE_KINDS}")
    return kind


def check_positive(value, key):
    if not value > 0:
        raise ValueError(f"{key} must be > 0, got {value!r}")
    return value


def conditioned_head(cond_dim, num_options, hidden=0):
    """Linear(D, K) when hidden == 0, else Linear(D, H)-ReLU-Linear(H, K); the last module is
    always the output layer (gates initialise it)."""
    if hidden < 0:
        raise ValueError(f"hidden width must be >= 0 (0 = a single linear layer), got {hidden}")
    if hidden == 0:
        return nn.Sequential(nn.Linear(cond_dim, num_options))
    return nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, num_options))


def rows(vector, batch_size):
    """A (K,) vector as (B, K) identical rows: a view, so every row shares one gradient path."""
    return vector.unsqueeze(0).expand(batch_size, -1)
