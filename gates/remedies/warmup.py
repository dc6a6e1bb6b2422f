"""`REMEDY.WARMUP`: for the first EPOCHS epochs one side does not move at all.

Failure mode targeted: **gate degradation through co-adaptation**. The prompts adapt first
and fastest, and the gate settles on whatever makes the already-fitted prompts work (usually
"everything on"), before it has learnt anything about the input.

MODE "freeze_prompts": the "prompt" group is frozen, so the gate learns against the initial
prompts first; MODE "fix_gate": the "gate" group is frozen, so the prompts learn under the
initial gate first. Frozen means p.grad = None after backward (pluggy trylast, after the
diagnostics read the raw gradient): torch's optimizers then skip the tensor entirely (no
weight decay, no momentum), so it is bit-identical across the warm-up epochs. (The study's
code cleared gradients before they were computed, so its warm-up froze nothing.)
"""
from yacs.config import CfgNode as CN

from ..config_spec import at_least, declare, one_of
from .common import freeze_for_this_step, require_groups

MODES = {"freeze_prompts": "prompt", "fix_gate": "gate"}  # mode -> the group that is frozen


def add_config(remedy_cfg):
    remedy_cfg.WARMUP = CN()
    remedy_cfg.WARMUP.EPOCHS = 0  # N: epochs 0 .. N-1 are the warm-up; 0 = off
    remedy_cfg.WARMUP.MODE = "freeze_prompts"  # freeze_prompts | fix_gate
    declare(remedy_cfg.WARMUP, EPOCHS=at_least(0, "0: off"), MODE=one_of(*MODES))


def frozen_group(cfg, epoch):
    """The group frozen at `epoch` (0-based), or None."""
    node = cfg.WARMUP
    return MODES[node.MODE] if node.EPOCHS > 0 and epoch < node.EPOCHS else None


def after_backward(context, cfg):
    group = frozen_group(cfg, context.epoch)
    if group is not None:
        (params,) = require_groups(context, "REMEDY.WARMUP", group)
        freeze_for_this_step(params)
