"""What every gated trainer shares: building its gate from GATE.* (placed in a
`gates.AppliedGate`), the gate's parameter group, its auxiliary loss, and reporting its output
to the gate_output hook.

A gated trainer is its ungated parent plus `GatedTrainer` (listed first in its bases) and a
prompt learner that calls `self.gate(cond)`. It declares `TARGETS` ({target: gate kind}),
`CONDS` (conditioning signals) and the defaults used when GATE.NAME / TARGET / COND are empty.
"""
from gates.applied import AppliedGate
from gates.config_spec import check_choice

from .prompt_trainer import check_param_groups


class GatedTrainer:
    """Mixin for gated trainers (put it before the parent trainer in the bases)."""

    TARGETS = {}
    CONDS = ()
    DEFAULT_GATE = "mlp"
    DEFAULT_TARGET = None
    DEFAULT_COND = "image_feature"
    DEFAULT_TEST_MODE = "soft"  # used when GATE.TEST_MODE is ""

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

    @property
    def gate_test_mode(self):
        """GATE.TEST_MODE, or the trainer's DEFAULT_TEST_MODE when it is "" (the study's adaptive
        trainers threshold their gates at test; the others keep the soft values)."""
        return self.cfg.GATE.TEST_MODE or self.DEFAULT_TEST_MODE

    def build_gate(self, num_options, cond_dim, target=None):
        """The AppliedGate for `target` (default GATE.TARGET), checked against the gate contract."""
        target = target or self.gate_target
        kind = self.TARGETS[target]
        gate = self.plugins.build_gate(self.cfg, self.gate_name, num_options, cond_dim, kind)
        print(f"Gate '{self.gate_name}' ({kind}, {num_options} options) on target '{target}', "
              f"conditioned on '{self.gate_cond}'")
        head = AppliedGate(gate, target, kind, self.gate_test_mode, self.cfg.GATE.THRESHOLD, self.gate_name)
        if self.cfg.GATE.EQUALIZE_GRAD:
            head.alpha_max = self.cfg.GATE.ALPHA_MAX
        return head

    def build_model(self):
        super().build_model()
        for head in self.gate_heads:
            head.listener = self.gate_listener

    @property
    def gate_heads(self):
        return [m for m in self.model.prompt_learner.modules() if isinstance(m, AppliedGate)]

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
