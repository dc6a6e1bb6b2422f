"""`REMEDY.FREEZE`: the study's frozen-gate controls, freeze-early and always-frozen.

Failure mode targeted: none is repaired; these are **controls** that tell adaptation from
extra parameters or regularisation. If a gate frozen after its first epoch (AFTER_EPOCH 1,
the study's AdaptiveFreezeEarly), or fixed from the start at sigma(LOGIT) (ALWAYS with LOGIT 5,
the study's AdaptiveAlwaysFrozen), does as well as the learnt gate, the gate's learning after
that point contributed nothing.

AFTER_EPOCH E >= 0: the "gate" group is frozen from epoch E (0-based) on. ALWAYS: at the start
of training (not on resume: the checkpoint holds the values) the gate's logits are set to LOGIT
(free logits, as sigmoid and scalar; a gate with an output layer gets bias = LOGIT and weight 0,
so it is the constant sigma(LOGIT) for every input), and the "gate" group is frozen at every
step. Frozen means p.grad = None after backward, as in REMEDY.WARMUP: the tensors never move.
"""
from yacs.config import CfgNode as CN

from ..config_spec import at_least, declare, declare_rule, unchecked
from .common import freeze_for_this_step, learnable_heads, require_groups, set_gate_logits, tell_once


def add_config(remedy_cfg):
    remedy_cfg.FREEZE = CN()
    remedy_cfg.FREEZE.AFTER_EPOCH = -1  # E: gates frozen from epoch E (0-based) on; -1 = off
    remedy_cfg.FREEZE.ALWAYS = False  # gates set to LOGIT at the start and never moved
    remedy_cfg.FREEZE.LOGIT = 5.0  # the always-frozen gates' logit (sigmoid(5) = 0.993)
    declare(remedy_cfg.FREEZE, AFTER_EPOCH=at_least(-1, "-1: off"), LOGIT=unchecked("any logit"))
    declare_rule(remedy_cfg.FREEZE, one_starting_logit)


def one_starting_logit(cfg):
    node = cfg.REMEDY
    if node.FREEZE.ALWAYS and node.INIT.ENABLED:
        return "REMEDY.FREEZE.ALWAYS", (
            "REMEDY.FREEZE.ALWAYS and REMEDY.INIT.ENABLED both set the gate's starting logits "
            f"(to {node.FREEZE.LOGIT} and {node.INIT.LOGIT}); switch one of them off")
    return None


def frozen(cfg, epoch):
    node = cfg.FREEZE
    return bool(node.ALWAYS) or (node.AFTER_EPOCH >= 0 and epoch >= node.AFTER_EPOCH)


def before_train(context, cfg):
    if not cfg.FREEZE.ALWAYS:
        return
    heads = learnable_heads(context)
    if not heads:
        tell_once(context, f"REMEDY.FREEZE.ALWAYS: trainer {context.cfg.TRAINER.NAME} has no learnable gate; "
                           "it changes nothing")
        return
    if getattr(context, "start_epoch", 0) == 0:
        for head in heads:
            set_gate_logits(head, cfg.FREEZE.LOGIT, weight_scale=0.0, key="REMEDY.FREEZE.ALWAYS")


def after_backward(context, cfg):
    if frozen(cfg, context.epoch):
        (params,) = require_groups(context, "REMEDY.FREEZE", "gate")
        freeze_for_this_step(params)
