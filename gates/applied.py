"""The gate contract applied: `AppliedGate`, the module a gated trainer puts where a gate acts.

`contract.py` says what a gate must do and checks it once at build time; `AppliedGate` is what
keeps a built gate to it during the run (its first training output is checked too), and adds
what every trainer needs around a gate and no gate should implement: the test-time mode
(GATE.TEST_MODE), the probes' replacements of its input or output, the constant override of the
counterfactual, the report of each output to the `gate_output` hook, and the study's gradient
equalisation at the logits.
"""
import torch
import torch.nn as nn

from .contract import GateError, apply_test_mode, check_gate_output

__all__ = ["AppliedGate"]


class AppliedGate(nn.Module):
    """A gate placed at one target of a model, with the contract enforced around it.

    The trainer builds one per target (`GatedTrainer.build_gate`); the diagnostics and remedies
    find them as `context.gate_heads`. `gate` is the plugin's module, `name` the target it gates
    (e.g. "length"), `gate_name` the registered gate (GATE.NAME), `kind` mask or simplex.

    In eval mode the output passes through GATE.TEST_MODE (soft, or hard with a threshold).
    `override`, when set to a (K,) or (B, K) tensor, replaces the gate's output (the constant
    gate of the counterfactual test). Each output is reported to `listener` (the trainer's
    gate_output hook) as it is, inside the autograd graph.
    """

    def __init__(self, gate, name, kind, test_mode="soft", threshold=0.5, gate_name=None):
        super().__init__()
        self.gate = gate
        self.name = name  # the gate's role in its trainer (its target), used by the hooks
        self.gate_name = gate_name or name  # the registered gate (GATE.NAME)
        self.kind = kind
        self.test_mode = test_mode
        self.threshold = threshold
        self.override = None
        # Probes of the diagnostics (identity when None): cond_transform replaces the
        # conditioning (shuffled or noise), output_transform the output (noise on its logits,
        # per-layer mean); neither is used in training.
        self.cond_transform = None
        self.output_transform = None
        self.listener = None
        self.alpha_max = None  # set: equalise the gradient at the logits (EQUALIZE_GRAD)
        self.last_output = None
        # The contract is checked at build time on a probe in eval mode; a gate that misbehaves
        # only in training (dropout, noise, a bad train branch) is caught by one more check on
        # its first training output, so it fails in seconds and not after an epoch of NaNs.
        self.checked_in_training = False

    @property
    def input_dependent(self):
        return getattr(self.gate, "input_dependent", True) and self.override is None

    def forward(self, cond):
        if self.override is not None:
            out = self.override.to(cond.dtype).expand(cond.shape[0], -1)
        else:
            if self.cond_transform is not None:
                cond = self.cond_transform(cond)
            out = self.gate(cond)
            if self.training and not self.checked_in_training:
                self.check_first_training_output(out)
            if self.output_transform is not None:
                out = self.output_transform(out)
            if not self.training:
                out = apply_test_mode(out, self.kind, self.test_mode, self.threshold)
            elif self.alpha_max is not None:
                self.equalize_gradient()
        self.last_output = out
        if self.listener is not None:
            self.listener(self.name, out, cond, "train" if self.training else "test")
        return out

    def check_first_training_output(self, out):
        """check_gate_output on the first training batch; a GateError names the gate and its role."""
        num_options = getattr(self.gate, "num_options", out.shape[-1] if out.dim() else 0)
        try:
            check_gate_output(out.detach(), self.gate_name, num_options, self.kind)
        except GateError as e:
            raise GateError(f"{e} at its first training step (target '{self.name}'); in eval mode at build "
                            "time it passed the contract check, so look at what the gate does in training "
                            "mode") from e
        self.checked_in_training = True

    def equalize_gradient(self):
        """dL/dz * clamp(1 / (g (1 - g)), 1, ALPHA_MAX): undo the sigmoid's slope, so a
        saturated gate's logits get the gradient its output gets (the study's remedy)."""
        logits = getattr(self.gate, "last_logits", None)
        if logits is None or not logits.requires_grad or getattr(self.gate, "activation", None) != "sigmoid":
            raise ValueError(f"GATE.EQUALIZE_GRAD needs a sigmoid gate that keeps its logits; "
                             f"gate '{self.gate_name}' does not")
        g = torch.sigmoid(logits.detach())
        scale = (1.0 / (g * (1 - g))).clamp(1.0, self.alpha_max)
        logits.register_hook(lambda grad: grad * scale)

    def aux_loss(self):
        aux = getattr(self.gate, "aux_loss", None)
        return aux() if aux is not None and self.training and self.override is None else None
