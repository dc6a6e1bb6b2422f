"""The gate contract: what a gated trainer may rely on, and the one check that enforces it.

A gate is an `nn.Module` built by a factory `factory(cfg, num_options, cond_dim, kind)`:
- `forward(cond)` maps the conditioning tensor (B, cond_dim) to gate values (B, num_options);
- `kind` is "mask" (every value in [0, 1], options independent) or "simplex" (each row is a
  distribution over the options); the trainer asks for the kind its target needs and the
  factory returns a gate of that kind (or one that cannot serve it, which the check rejects);
- `input_dependent` (default True) says whether rows can differ: a per-task gate
  (constant, scalar, sigmoid) sets it False, and trainers then encode prompts once per step
  instead of once per image;
- optional `aux_loss()` returns an auxiliary loss for the last forward pass, or None;
- after each forward the gate keeps `last_output` (B, K) and, when it has them, `last_logits`
  (the pre-activation) with `activation` naming the nonlinearity ("sigmoid", "softmax", ...),
  so the diagnostics can split the gate's gradient into dL/dg and the local slope;
- `no_task_grad_params` lists parameter names that by design receive no task-loss gradient
  (e.g. the keys of a hard key-query selector, trained by a surrogate loss);
- `set_logits(logit, weight_scale=None)` makes the gate start at `logit` for every input (the
  remedies' initialisation and frozen controls call it); `Gate` implements it for free logits
  (a `logits` parameter) and for gates whose `output_layer()` returns the Linear producing the
  logits; any other gate raises GateError from it.

`AppliedGate` (applied.py) is what enforces this around a gate during a run.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .plumbing import fork_rng

GATE_KINDS = ("mask", "simplex")
TEST_MODES = ("soft", "hard")


class GateError(ValueError):
    """A gate that breaks the contract, named in the message."""


class Gate(nn.Module):
    """Convenience base class; any nn.Module with the attributes above is a gate."""

    kind = "mask"
    input_dependent = True
    activation = None
    no_task_grad_params = ()

    def __init__(self, num_options, cond_dim):
        super().__init__()
        self.num_options = num_options
        self.cond_dim = cond_dim
        self.last_output = None
        self.last_logits = None

    def remember(self, output, logits=None):
        self.last_output = output
        self.last_logits = logits
        return output

    def aux_loss(self):
        return None

    def output_layer(self):
        """The nn.Linear whose output is the gate's logits, or None (free logits, no layer).
        Gates computing their logits with a final Linear return it, so `set_logits` can set it."""
        return None

    @torch.no_grad()
    def set_logits(self, logit, weight_scale=None):
        """Make the gate's logits start at `logit` for every input.

        Free logits (a `logits` nn.Parameter, as scalar and sigmoid) are filled with `logit`; a gate
        with an `output_layer()` gets bias = `logit` and its weights multiplied by `weight_scale`
        (None: unchanged; 0: the same logit for every input). Raises GateError for a gate with
        neither, naming its class.
        """
        logits = getattr(self, "logits", None)
        if isinstance(logits, nn.Parameter):
            logits.fill_(float(logit))
            return
        layer = self.output_layer()
        if layer is None or layer.bias is None:
            raise GateError(f"{type(self).__name__} has neither free logits (a `logits` parameter) nor an "
                            "output layer with a bias (`output_layer()`), so its starting logits cannot be set")
        layer.bias.fill_(float(logit))
        if weight_scale is not None:
            layer.weight.mul_(float(weight_scale))


def validate_gate(gate, name, num_options, cond_dim, kind, device="cpu", dtype=torch.float32):
    """Check kind, shape and range once, when the model is built; raise GateError naming the gate.

    The probe forward runs in eval mode on fixed random conditioning, inside a forked RNG, so
    validating a gate changes neither its state nor the run's random numbers.
    """
    gate_kind = getattr(gate, "kind", None)
    if gate_kind not in GATE_KINDS:
        raise GateError(f"gate '{name}' declares kind {gate_kind!r}; a gate's kind must be one of {GATE_KINDS}")
    if gate_kind != kind:
        raise GateError(f"gate '{name}' is a {gate_kind} gate but this target needs a {kind} gate")
    was_training = gate.training
    gate.eval()
    try:
        with fork_rng(seed=0), torch.no_grad():
            probe = torch.randn(3, cond_dim, device=device, dtype=dtype)
            out = gate(probe)
    except GateError:
        raise
    except Exception as e:
        raise GateError(f"gate '{name}' failed on a probe input of shape (3, {cond_dim}): "
                        f"{type(e).__name__}: {e}") from e
    finally:
        gate.train(was_training)
    check_gate_output(out, name, num_options, kind, batch=3)


def check_gate_output(out, name, num_options, kind, batch=None):
    """Shape (B, K), finite, in [0, 1]; simplex rows sum to 1. Raises GateError naming the gate."""
    if not isinstance(out, torch.Tensor):
        raise GateError(f"gate '{name}' returned {type(out).__name__}; expected a tensor of shape (B, {num_options})")
    expected = (batch if batch is not None else out.shape[0], num_options)
    if tuple(out.shape) != expected:
        raise GateError(f"gate '{name}' returned shape {tuple(out.shape)}; expected (B, K) = {expected}")
    if not torch.isfinite(out).all():
        raise GateError(f"gate '{name}' returned NaN or Inf values")
    lo, hi = float(out.min()), float(out.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise GateError(f"gate '{name}' returned values in [{lo:.4g}, {hi:.4g}]; a {kind} gate's values lie in [0, 1]")
    if kind == "simplex":
        sums = out.sum(dim=-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            raise GateError(f"gate '{name}' is a simplex gate but its rows sum to "
                            f"{[round(float(s), 4) for s in sums[:4]]}, not 1")


def apply_test_mode(output, kind, mode="soft", threshold=0.5):
    """GATE.TEST_MODE: soft keeps the values; hard thresholds a mask (g > threshold) and turns a
    simplex row into a one-hot vector on its largest option."""
    if mode == "soft":
        return output
    if mode != "hard":
        raise ValueError(f"GATE.TEST_MODE must be one of {TEST_MODES}, got {mode!r}")
    if kind == "mask":
        return (output > threshold).to(output.dtype)
    return F.one_hot(output.argmax(dim=-1), output.shape[-1]).to(output.dtype)
