"""`REMEDY.ZLOSS`: a z-loss on the gate logits (ST-MoE, Zoph et al. 2022).

Failure mode targeted: **logit drift into saturation**: logits grow without bound (the softmax
or sigmoid then has no slope left and the gate no gradient; in low precision they overflow).

    softmax-type gates: w * mean_x (logsumexp_k z_k(x))^2
    sigmoid (mask) gates: w * mean_{x,k} z_k(x)^2

z is the gate's `last_logits` (the activation's actual input, so z / T for a tempered softmax).
Summed over the gates; added to the loss as "remedy_zloss". A learnable gate that does not keep
its logits is an error.
"""
from yacs.config import CfgNode as CN

import torch

from ..config_spec import at_least, declare
from .common import tell_if_no_gate, training_outputs


def add_config(remedy_cfg):
    remedy_cfg.ZLOSS = CN()
    remedy_cfg.ZLOSS.WEIGHT = 0.0  # w; 0 = off
    declare(remedy_cfg.ZLOSS, WEIGHT=at_least(0, "0: off"))


def z_loss(logits, activation, kind="simplex"):
    if activation == "sigmoid" or kind == "mask":
        return logits.pow(2).mean()
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def before_train(context, cfg):
    if cfg.ZLOSS.WEIGHT:
        tell_if_no_gate(context, "REMEDY.ZLOSS")


def gate_losses(context, cfg):
    weight = cfg.ZLOSS.WEIGHT
    if weight == 0:
        return {}
    terms = []
    for head, _, logits, activation in training_outputs(context):
        if logits is None:
            raise ValueError(f"REMEDY.ZLOSS needs the gate's logits, but gate '{head.gate_name}' keeps no "
                             "`last_logits` (see gates/contract.py); switch it off for this gate")
        terms.append(z_loss(logits, activation, head.kind))
    return {"zloss": weight * sum(terms)} if terms else {}
