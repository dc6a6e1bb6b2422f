"""`REMEDY.INIT`: start the gate away from saturation.

Failure mode targeted: **saturation**. A sigmoid gate's logit gradient is dL/dg * g (1 - g):
started at a large |logit| (e.g. GATE.MLP.INIT_BIAS 10, or the study's logit 1 followed by a
drift upwards) the slope is near 0, and the gate cannot leave where it started.

At the start of training (start_epoch 0; a resumed run keeps its checkpoint's values) each
learnable gate's logits are set to LOGIT (default 0: g = 0.5, the sigmoid's steepest point;
a softmax gate starts uniform): free logits (scalar, sigmoid) are set to it, a gate with an
output layer (mlp, softmax, gumbel) gets bias = LOGIT and its output weights multiplied by
WEIGHT_SCALE (< 1 keeps the input-dependent part of the logit small at the start). A learnable
gate with neither (topk, keyquery) is an error, not a silent no-op.
"""
from yacs.config import CfgNode as CN

from ..config_spec import at_least, declare, unchecked
from .common import learnable_heads, set_gate_logits, tell_once


def add_config(remedy_cfg):
    remedy_cfg.INIT = CN()
    remedy_cfg.INIT.ENABLED = False
    remedy_cfg.INIT.LOGIT = 0.0  # the starting logit (0: sigmoid 0.5, softmax uniform)
    remedy_cfg.INIT.WEIGHT_SCALE = 1.0  # output weights are multiplied by this (1: unchanged)
    declare(remedy_cfg.INIT, LOGIT=unchecked("any starting logit"), WEIGHT_SCALE=at_least(0))


def before_train(context, cfg):
    node = cfg.INIT
    if not node.ENABLED:
        return
    heads = learnable_heads(context)
    if not heads:
        tell_once(context, f"REMEDY.INIT: trainer {context.cfg.TRAINER.NAME} has no learnable gate; "
                           "it changes nothing")
        return
    if getattr(context, "start_epoch", 0) != 0:
        return
    for head in heads:
        set_gate_logits(head, node.LOGIT, weight_scale=node.WEIGHT_SCALE, key="REMEDY.INIT")
