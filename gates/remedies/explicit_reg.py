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

HOOKS_ATTR = "_remedy_ctx_dropout_hooks"


def add_config(remedy_cfg):
    remedy_cfg.EXPLICIT_REG = CN()
    remedy_cfg.EXPLICIT_REG.WEIGHT_DECAY = -1.0  # weight decay of the prompt and gate groups; < 0 = off
    remedy_cfg.EXPLICIT_REG.CTX_DROPOUT = 0.0  # dropout probability on the context; 0 = off
    declare(remedy_cfg.EXPLICIT_REG, WEIGHT_DECAY=unchecked("< 0: off"), CTX_DROPOUT=between(0, 1, hi_open=True))


def set_weight_decay(trainer, value):
    touched = 0
    for group in trainer.optim.param_groups:
        if group.get("name") in ("prompt", "gate"):
            group["weight_decay"] = float(value)
            touched += 1
    if not touched:
        tell_once(trainer, "REMEDY.EXPLICIT_REG.WEIGHT_DECAY: the optimizer has no 'prompt' or 'gate' group; "
                           "it changes nothing")


def prompt_templates(trainer):
    from trainers.prompting import ClassPromptTemplate  # the prompt learners' context consumer

    learner = getattr(trainer.model, "prompt_learner", None)
    return [m for m in learner.modules() if isinstance(m, ClassPromptTemplate)] if learner is not None else []


def context_dropout_hook(p):
    def drop_context(module, args, kwargs):
        if not module.training:
            return None
        if args:
            return (F.dropout(args[0], p, training=True), *args[1:]), kwargs
        return args, {**kwargs, "ctx": F.dropout(kwargs["ctx"], p, training=True)}
    return drop_context


def install_context_dropout(trainer, p):
    if getattr(trainer, HOOKS_ATTR, None) is not None:
        return  # installed by an earlier train() of this trainer
    templates = prompt_templates(trainer)
    if not templates:
        raise ValueError(f"REMEDY.EXPLICIT_REG.CTX_DROPOUT drops the context a ClassPromptTemplate receives, but "
                         f"trainer {trainer.cfg.TRAINER.NAME} has none (no text context); set it to 0")
    setattr(trainer, HOOKS_ATTR, [t.register_forward_pre_hook(context_dropout_hook(p), with_kwargs=True)
                                  for t in templates])


def before_train(trainer, cfg):
    node = cfg.EXPLICIT_REG
    if node.WEIGHT_DECAY >= 0:
        set_weight_decay(trainer, node.WEIGHT_DECAY)
    if node.CTX_DROPOUT > 0:
        install_context_dropout(trainer, float(node.CTX_DROPOUT))
