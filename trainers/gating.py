"""What every gated trainer shares: building its gate from GATE.*, the gate's parameter group,
its test-time mode, its auxiliary loss, and reporting its output to the gate_output hook.

A gated trainer is its ungated parent plus `GatedTrainer` (listed first in its bases) and a
prompt learner that calls `self.gate(cond)`. It declares `TARGETS` ({target: gate kind}),
`CONDS` (conditioning signals) and the defaults used when GATE.NAME / TARGET / COND are empty.
"""
import torch
import torch.nn as nn

from gates.config_spec import check_choice
from gates.contract import GateError, apply_test_mode, check_gate_output

from .prompt_trainer import check_param_groups


class GateHead(nn.Module):
    """A gate plus the trainer-side behaviour around it.

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


class GatedTrainer:
    """Mixin for gated trainers (put it before the parent trainer in the bases)."""

    TARGETS = {}
    CONDS = ()
    DEFAULT_GATE = "mlp"
    DEFAULT_TARGET = None
    DEFAULT_COND = "image_feature"

    @classmethod
    def config_problems(cls, cfg):
        """(key, message) for a GATE.TARGET or GATE.COND this trainer does not have, with the closest
        one; setup_cfg runs this with the config check, before anything is built."""
        yield check_choice("GATE.TARGET", cfg.GATE.TARGET or cls.DEFAULT_TARGET, tuple(cls.TARGETS),
                           f" (the targets of {cls.__name__})")
        yield check_choice("GATE.COND", cfg.GATE.COND or cls.DEFAULT_COND, tuple(cls.CONDS),
                           f" (the conditioning signals of {cls.__name__})")

    @property
    def gate_name(self):
        return self.cfg.GATE.NAME or self.DEFAULT_GATE

    @property
    def gate_target(self):
        target = self.cfg.GATE.TARGET or self.DEFAULT_TARGET
        if target not in self.TARGETS:
            raise ValueError(f"{self.cfg.TRAINER.NAME} cannot gate GATE.TARGET={target!r}; "
                             f"its targets are {', '.join(self.TARGETS)}")
        return target

    @property
    def gate_cond(self):
        cond = self.cfg.GATE.COND or self.DEFAULT_COND
        if cond not in self.CONDS:
            raise ValueError(f"{self.cfg.TRAINER.NAME} has no conditioning signal GATE.COND={cond!r}; "
                             f"choose one of {', '.join(self.CONDS)}")
        return cond

    def build_gate(self, num_options, cond_dim, target=None):
        """The GateHead for `target` (default GATE.TARGET), checked against the gate contract."""
        target = target or self.gate_target
        kind = self.TARGETS[target]
        gate = self.plugins.build_gate(self.cfg, self.gate_name, num_options, cond_dim, kind)
        print(f"Gate '{self.gate_name}' ({kind}, {num_options} options) on target '{target}', "
              f"conditioned on '{self.gate_cond}'")
        head = GateHead(gate, target, kind, self.cfg.GATE.TEST_MODE, self.cfg.GATE.THRESHOLD, self.gate_name)
        if self.cfg.GATE.EQUALIZE_GRAD:
            head.alpha_max = self.cfg.GATE.ALPHA_MAX
        return head

    def build_model(self):
        super().build_model()
        for head in self.gate_heads:
            head.listener = self.gate_listener

    @property
    def gate_heads(self):
        return [m for m in self.model.prompt_learner.modules() if isinstance(m, GateHead)]

    @property
    def gate_head(self):
        """The trainer's gate (the first, for trainers with several)."""
        return self.gate_heads[0]

    def param_groups(self):
        """"gate": the gates' parameters (lr x GATE.LR_MULT); "prompt": every other learnable."""
        gate_params = [p for head in self.gate_heads for p in head.parameters() if p.requires_grad]
        gate_ids = {id(p) for p in gate_params}
        prompt = [p for p in self.model.prompt_learner.parameters() if p.requires_grad and id(p) not in gate_ids]
        groups = [{"name": "prompt", "params": prompt}]
        if gate_params:
            groups.append({"name": "gate", "params": gate_params, "lr_mult": self.cfg.GATE.LR_MULT})
        check_param_groups(self.model, groups)
        return groups

    def compute_losses(self, output, label):
        losses = super().compute_losses(output, label)
        aux = [a for a in (head.aux_loss() for head in self.gate_heads) if a is not None]
        if aux:
            losses["gate_aux"] = sum(aux)
        weight = self.cfg.GATE.REG_SPARSITY
        outputs = [h.last_output for h in self.gate_heads if h.last_output is not None]
        if weight > 0 and outputs:
            # lambda * sum over options of the batch-mean gate value
            losses["gate_sparsity"] = weight * sum(o.mean(0).sum() for o in outputs)
        # Plugins' gate losses (the remedies': balance, entropy, z-loss), as "remedy_<name>".
        for extra in self.call_hook("gatescope_gate_losses"):
            for name, value in (extra or {}).items():
                key = f"remedy_{name}"
                if key in losses:
                    raise ValueError(f"two gatescope_gate_losses implementations return a loss named '{name}'; "
                                     "rename one of them")
                losses[key] = value
        return losses
