"""`REMEDY.BALANCE`: a load-balancing / importance loss on the gate's options.

Failure mode targeted: **option collapse** (the rich get richer): one option, or one pattern of
options, is used for every input, the others get no gradient and are never tried again.

Over the training batch X (B rows) of a gate with K options, g(x) its output:

    importance: w * CV(I)^2,  I_k = sum_x g_k(x),  CV(v)^2 = Var(v) / (mean(v)^2 + 1e-10)
                (population variance over the K options; Shazeer et al. 2017); any gate kind.
    switch:     w * K * sum_k f_k P_k,  f_k = #{x : argmax g(x) = k} / B (no gradient),
                P_k = mean_x g_k(x)  (Switch Transformer); simplex gates only. Equals w when
                the routing is uniform, w * K when every input goes to one option.

Summed over the gates; added to the loss as "remedy_balance".
"""
from yacs.config import CfgNode as CN

import torch

from ..config_spec import at_least, declare, one_of
from .common import tell_if_no_gate, training_outputs

KINDS = ("importance", "switch")


def add_config(remedy_cfg):
    remedy_cfg.BALANCE = CN()
    remedy_cfg.BALANCE.WEIGHT = 0.0  # w; 0 = off
    remedy_cfg.BALANCE.KIND = "importance"  # importance | switch
    declare(remedy_cfg.BALANCE, WEIGHT=at_least(0, "0: off"), KIND=one_of(*KINDS))


def importance_cv2(output, eps=1e-10):
    importance = output.sum(dim=0)
    return importance.var(unbiased=False) / (importance.mean() ** 2 + eps)


def switch_loss(output):
    num_options = output.shape[-1]
    chosen = torch.nn.functional.one_hot(output.detach().argmax(dim=-1), num_options).to(output.dtype)
    return num_options * (chosen.mean(dim=0) * output.mean(dim=0)).sum()


def before_train(context, cfg):
    if cfg.BALANCE.WEIGHT:
        tell_if_no_gate(context, "REMEDY.BALANCE")


def gate_losses(context, cfg):
    node = cfg.BALANCE
    if node.WEIGHT == 0:
        return {}
    terms = []
    for head, output, _, _ in training_outputs(context):
        if node.KIND == "switch":
            if head.kind != "simplex":
                raise ValueError(f"REMEDY.BALANCE.KIND switch needs a simplex gate (one choice per input); gate "
                                 f"'{head.gate_name}' on '{head.name}' is a {head.kind} gate: use KIND importance")
            terms.append(switch_loss(output))
        else:
            terms.append(importance_cv2(output))
    return {"balance": node.WEIGHT * sum(terms)} if terms else {}
