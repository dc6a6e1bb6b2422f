"""`REMEDY.GRADNORM`: rescale the gate group's gradient to the prompt group's per-element size.

Failure mode targeted: **gradient magnitude imbalance**. The gate's parameters receive a
gradient orders of magnitude smaller per element than the prompts' (rho = RMS(gate) / RMS(prompt)
<< 1), so at a shared learning rate the gate hardly moves and stays where it was initialised.

After backward (and after every listener: pluggy trylast, so the diagnostics record the raw
gradient first), every gate gradient is multiplied by

    s = clamp(RMS(g_prompt) / RMS(g_gate), FLOOR, CAP),   RMS(g) = ||g||_2 / sqrt(numel(g))

so the optimizer receives rho = 1 unless the cap binds. FLOOR 1 (default) only ever scales up:
a gate whose gradient is already larger than the prompts' is left alone. With Adam the step is
nearly scale-free, so this matters for SGD (the study's optimizer). The last factor is kept in
`context.store["remedy_gradnorm_factor"]` (None when nothing was scaled).
"""
from yacs.config import CfgNode as CN

from ..config_spec import above, declare, declare_rule
from .common import grad_rms, require_groups


def add_config(remedy_cfg):
    remedy_cfg.GRADNORM = CN()
    remedy_cfg.GRADNORM.ENABLED = False
    remedy_cfg.GRADNORM.CAP = 1e3  # largest factor applied to the gate gradient
    remedy_cfg.GRADNORM.FLOOR = 1.0  # smallest factor (1: never shrink the gate gradient)
    declare(remedy_cfg.GRADNORM, CAP=above(0), FLOOR=above(0))
    declare_rule(remedy_cfg.GRADNORM, floor_below_cap)


def floor_below_cap(cfg):
    node = cfg.REMEDY.GRADNORM
    if node.FLOOR > node.CAP:
        return "REMEDY.GRADNORM.FLOOR", f"REMEDY.GRADNORM needs FLOOR <= CAP, got FLOOR={node.FLOOR}, CAP={node.CAP}"
    return None


def scale_factor(prompt_rms, gate_rms, floor, cap):
    """clamp(prompt_rms / gate_rms, floor, cap); None when either is missing or gate_rms is 0."""
    if prompt_rms is None or gate_rms is None or gate_rms == 0.0:
        return None
    return min(max(prompt_rms / gate_rms, floor), cap)


def after_backward(context, cfg):
    node = cfg.GRADNORM
    if not node.ENABLED:
        return
    prompt, gate = require_groups(context, "REMEDY.GRADNORM", "prompt", "gate")
    factor = scale_factor(grad_rms(prompt), grad_rms(gate), float(node.FLOOR), float(node.CAP))
    context.store["remedy_gradnorm_factor"] = factor
    if factor is None:
        return
    for p in gate:
        if p.grad is not None:
            p.grad.mul_(factor)
