"""Gates: the contract, the pluggy hookspecs, the plugin manager and the built-in gates."""
from .contract import GATE_KINDS, Gate, GateError, apply_test_mode, check_gate_output, validate_gate
from .hookspecs import hookimpl
from .manager import PluginError, get_plugins

__all__ = ["GATE_KINDS", "Gate", "GateError", "PluginError", "apply_test_mode", "check_gate_output",
           "get_plugins", "hookimpl", "validate_gate"]
