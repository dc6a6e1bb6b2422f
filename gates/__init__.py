"""Gates: the contract, the module that applies it, the pluggy hookspecs, the hook context, the
plugin manager and the built-in gates (plus `plumbing`, the file and RNG helpers every package
shares). This package imports no other gatescope package."""
from .applied import AppliedGate
from .context import HookContext
from .contract import GATE_KINDS, Gate, GateError, apply_test_mode, check_gate_output, validate_gate
from .hookspecs import hookimpl
from .manager import PluginError

__all__ = ["GATE_KINDS", "AppliedGate", "Gate", "GateError", "HookContext", "PluginError", "apply_test_mode",
           "check_gate_output", "hookimpl", "validate_gate"]
