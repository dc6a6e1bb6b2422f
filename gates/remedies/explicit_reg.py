"""`REMEDY.EXPLICIT_REG`: the study's explicit-regularisation control (AdaptiveExplicitReg).

Failure mode targeted: none is repaired; this is the **control** for "the gain is
regularisation": if weight decay plus dropout on the context gives the ungated or fixed-gate
model the accuracy the gated one has, the gate's gain was regularisation, not adaptation.

WEIGHT_DECAY >= 0 (the study's: 0.01) is set, at the start of training, as the weight decay of
the "prompt" and "gate" parameter groups (< 0: OPTIM.WEIGHT_DECAY stays). CTX_DROPOUT p > 0
(the study's: 0.1) applies dropout(p) (inverted: kept entries scaled by 1 / (1 - p)) to the
context every prompt template receives, in training only: a forward pre-hook on each
`ClassPromptTemplate` of the prompt learner, so no trainer changes and no checkpoint key is
added. For MaPLe-family trainers this is the text context of the first layer (the deep and
vision prompts are not dropped).
"""
from yacs.config import CfgNode as CN

import torch.nn.functional as F

from ..config_spec import between, declare, unchecked
from .common import tell_once

HOOKS_KEY = "remedy_ctx_dropout_hooks"  # context.store: the forward pre-hooks, installed once per run


def add_config(remedy_cfg):
    remedy_cfg.EXPLICIT_REG = CN()
    remedy_cfg.EXPLICIT_REG.WEIGHT_DECAY = -1.0  # weight decay of the prompt and gate groups; < 0 = off
    remedy_cfg.EXPLICIT_REG.CTX_DROPOUT = 0.0  # dropout probability on the context; 0 = off
    declare(remedy_cfg.EXPLICIT_REG, WEIGHT_DECAY=unchecked("< 0: off"), CTX_DROPOUT=between(0, 1, hi_open=True))


def set_weight_decay(context, value):
    touched = 0
    for group in context.param_groups:
        if group.get("name") in ("prompt", "gate"):
            group["weight_decay"] = float(value)
            touched += 1
    if not touched:
        tell_once(context, "REMEDY.EXPLICIT_REG.WEIGHT_DECAY: the optimizer has no 'prompt' or 'gate' group; "
                           "it changes nothing")


def context_dropout_hook(p):
    def drop_context(module, args, kwargs):
        if not module.training:
            return None
        if args:
            return (F.dropout(args[0], p, training=True), *args[1:]), kwargs
        return args, {**kwargs, "ctx": F.dropout(kwargs["ctx"], p, training=True)}
    return drop_context


def install_context_dropout(context, p):
    if context.store.get(HOOKS_KEY) is not None:
        return  # installed by an earlier train() of this trainer
    templates = getattr(context, "prompt_templates", [])
    if not templates:
        raise ValueError(f"REMEDY.EXPLICIT_REG.CTX_DROPOUT drops the context a ClassPromptTemplate receives, but "
                         f"trainer {context.cfg.TRAINER.NAME} has none (no text context); set it to 0")
    context.store[HOOKS_KEY] = [t.register_forward_pre_hook(context_dropout_hook(p), with_kwargs=True)
                                for t in templates]


def before_train(context, cfg):
    node = cfg.EXPLICIT_REG
    if node.WEIGHT_DECAY >= 0:
        set_weight_decay(context, node.WEIGHT_DECAY)
    if node.CTX_DROPOUT > 0:
        install_context_dropout(context, float(node.CTX_DROPOUT))
