"""`REMEDY.ENTROPY`: an entropy regulariser on the gate output, with an explicit direction.

Failure modes targeted: "sharpen" targets **indecision** (a gate stuck near 0.5 / uniform,
where every input is treated alike and a hard test-time gate is a coin flip); "flatten" targets
**saturation** (a gate pinned at 0/1 or one-hot, whose slope, and so gradient, is gone). The
study's code had both, with opposite signs in two trainers and the same name; here the
direction is a required setting.

    sharpen: + w * H   (minimised: towards 0/1, or one-hot)
    flatten: - w * H   (minimised: towards 0.5, or uniform)

H is the entropy of the batch's gate outputs, in nats: for a simplex gate the mean over rows
of -sum_k g_k log g_k; for a mask gate, REDUCTION "mean" (default) is the mean over rows and
options of the binary entropy h(g) = -(g log g + (1 - g) log(1 - g)), and REDUCTION "sum" the
mean over rows of the sum over options of h(g) -- the study's form, whose weight grows with
the number of options (its CoOp GATE_REG_LAMBDA, sharpen, and its ImprovedAdaptiveBiDirMaPLe
LAMBDA_ENTROPY, flatten, both sum over the gate's entries). Taken from the logits when the gate
keeps them (log_softmax / logsigmoid: exact at saturation), else from g clamped to [1e-8, 1].
Summed over the gates; added to the loss as "remedy_entropy".
"""
from yacs.config import CfgNode as CN

import torch
import torch.nn.functional as F

from ..config_spec import at_least, declare, declare_rule, one_of
from .common import tell_if_no_gate, training_outputs

DIRECTIONS = {"sharpen": 1.0, "flatten": -1.0}  # sign of w * H in the loss
REDUCTIONS = ("mean", "sum")  # over a mask gate's options
EPS = 1e-8


def add_config(remedy_cfg):
    remedy_cfg.ENTROPY = CN()
    remedy_cfg.ENTROPY.WEIGHT = 0.0  # w >= 0; 0 = off
    remedy_cfg.ENTROPY.DIRECTION = ""  # sharpen (towards 0/1, one-hot) | flatten (towards 0.5, uniform)
    remedy_cfg.ENTROPY.REDUCTION = "mean"  # mask gates: mean | sum over the options (the study's)
    declare(remedy_cfg.ENTROPY, WEIGHT=at_least(0, "the sign is DIRECTION"), DIRECTION=one_of("", *DIRECTIONS),
            REDUCTION=one_of(*REDUCTIONS))
    declare_rule(remedy_cfg.ENTROPY, direction_is_set)


def direction_is_set(cfg):
    node = cfg.REMEDY.ENTROPY
    if node.WEIGHT > 0 and node.DIRECTION not in DIRECTIONS:
        return "REMEDY.ENTROPY.DIRECTION", (
            f"REMEDY.ENTROPY.DIRECTION must be set to one of {tuple(DIRECTIONS)} when REMEDY.ENTROPY.WEIGHT > 0: "
            "sharpen pushes gates towards 0/1 (one-hot), flatten towards 0.5 (uniform)")
    return None


def mean_entropy(output, kind, logits=None, activation=None, reduction="mean"):
    """H of a (B, K) gate output (formulas above); `reduction` applies to mask gates."""
    if kind == "simplex":
        if logits is not None and activation == "softmax":
            log_p = F.log_softmax(logits, dim=-1)
            return -(log_p.exp() * log_p).sum(dim=-1).mean()
        p = output.clamp(EPS, 1.0)
        return -(output * p.log()).sum(dim=-1).mean()
    if logits is not None and activation == "sigmoid":
        p = torch.sigmoid(logits)
        h = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))
    else:
        p, q = output.clamp(EPS, 1.0), (1 - output).clamp(EPS, 1.0)
        h = -(output * p.log() + (1 - output) * q.log())
    return h.sum(dim=-1).mean() if reduction == "sum" else h.mean()


def before_train(context, cfg):
    if cfg.ENTROPY.WEIGHT:
        tell_if_no_gate(context, "REMEDY.ENTROPY")


def gate_losses(context, cfg):
    node = cfg.ENTROPY
    if node.WEIGHT == 0:
        return {}
    terms = [mean_entropy(out, head.kind, logits, act, node.REDUCTION)
             for head, out, logits, act in training_outputs(context)]
    return {"entropy": DIRECTIONS[node.DIRECTION] * node.WEIGHT * sum(terms)} if terms else {}
