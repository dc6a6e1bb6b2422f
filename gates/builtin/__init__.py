"""The built-in gates, as one pluggy plugin: registered through the same hooks as any
third-party gate (gates/hookspecs.py), one module per gate.

Each gate module provides `add_config(gate_cfg)` (its own cfg.GATE.<NAME> node) and
`build(cfg, num_options, cond_dim, kind)` (the factory).
"""
from ..hookspecs import hookimpl
from . import constant, gumbel, keyquery, mlp, scalar, sigmoid, softmax, topk
from .constant import ConstantGate
from .gumbel import GumbelSoftmaxGate
from .keyquery import KeyQueryGate
from .mlp import MLPGate
from .scalar import ScalarGate
from .sigmoid import SigmoidGate
from .softmax import SoftmaxGate
from .topk import NoisyTopKGate

# Name (as typed in GATE.NAME) -> module.
GATE_MODULES = {
    "constant": constant,
    "scalar": scalar,
    "sigmoid": sigmoid,
    "mlp": mlp,
    "softmax": softmax,
    "topk": topk,
    "gumbel": gumbel,
    "keyquery": keyquery,
}


@hookimpl
def gatescope_register_gates(register):
    for name, module in GATE_MODULES.items():
        register(name, module.build)


@hookimpl
def gatescope_add_config(cfg):
    if "GATE" not in cfg:
        raise KeyError("cfg.GATE is missing: the core config (gates.config.add_gate_config) creates it "
                       "before plugins add their gate nodes")
    for module in GATE_MODULES.values():
        module.add_config(cfg.GATE)


__all__ = ["ConstantGate", "GATE_MODULES", "GumbelSoftmaxGate", "KeyQueryGate", "MLPGate", "NoisyTopKGate",
           "ScalarGate", "SigmoidGate", "SoftmaxGate", "gatescope_add_config", "gatescope_register_gates"]
