"""Remedies for collapsed gating, as one built-in pluggy plugin (one module per remedy).

Each remedy has its own node under `REMEDY.*`, is off by default, and names in its docstring
the failure mode it targets. They work with any gate that has what they act on, and say so
(an error, or a one-time warning for a trainer without gates) instead of silently doing nothing.

Remedy (module): keys -- failure mode targeted

- gradnorm: REMEDY.GRADNORM.{ENABLED, CAP, FLOOR} -- gradient magnitude imbalance (rho << 1)
- balance: REMEDY.BALANCE.{WEIGHT, KIND importance|switch} -- option collapse (one option for all)
- entropy: REMEDY.ENTROPY.{WEIGHT, DIRECTION sharpen|flatten, REDUCTION mean|sum} -- sharpen: indecision at 0.5 /
  uniform; flatten: saturation at 0/1 / one-hot
- zloss: REMEDY.ZLOSS.WEIGHT -- logits drifting into saturation
- temperature: REMEDY.TEMPERATURE.{ENABLED, START, END, SCHEDULE} -- softmax-type gates
  committing too early, or staying uniform
- warmup: REMEDY.WARMUP.{EPOCHS, MODE freeze_prompts|fix_gate} -- gate degradation by
  co-adaptation with the faster prompts
- initialization: REMEDY.INIT.{ENABLED, LOGIT, WEIGHT_SCALE} -- saturation from the start
- cluster_init: REMEDY.CLUSTER_INIT.{ENABLED, SCALE, N_INIT} -- mixed early routing: a router
  starts at a k-means clustering of its conditioning (domain discovery), then is fine-tuned
- freeze (study control): REMEDY.FREEZE.{AFTER_EPOCH, ALWAYS, LOGIT} -- is the learnt gate
  better than a frozen one?
- explicit_reg (study control): REMEDY.EXPLICIT_REG.{WEIGHT_DECAY, CTX_DROPOUT} -- is the gain
  regularisation?
- (core) GATE.LR_MULT -- gradient imbalance, by a larger learning rate for the "gate" group
- (core) gradient equalisation, GATE.{EQUALIZE_GRAD, ALPHA_MAX} -- the sigmoid's vanishing
  slope: dL/dz * clamp(1 / (g (1 - g)), 1, ALPHA_MAX), a tensor hook on the logits in
  gates/applied.py (AppliedGate.equalize_gradient); the study's gradient equalisation
- (gate) an input-conditioned gate (mlp, softmax, ...) instead of a per-task one: the study's
  attempt to revive adaptation is a choice of GATE.NAME, not a remedy module

Losses (balance, entropy, zloss) are returned by the `gatescope_gate_losses` hook and added by
GatedTrainer.compute_losses as "remedy_<name>", so the diagnostics' loss competition sees them.
Gradient edits (gradnorm, then the freezes of warmup and freeze) run in `after_backward` with
pluggy's trylast, after every other listener: the diagnostics record the raw gradient first
(they are tryfirst) and what the optimizer received in after_step.
"""
from ..hookspecs import hookimpl
from . import (balance, cluster_init, entropy, explicit_reg, freeze, gradnorm, initialization, temperature, warmup,
               zloss)
from .common import remedy_cfg

# Order matters in after_backward: gradnorm reads both groups' raw gradients before a freeze
# removes one of them.
REMEDY_MODULES = (gradnorm, balance, entropy, zloss, temperature, warmup, initialization, cluster_init, freeze,
                  explicit_reg)


def _each(stage):
    return [getattr(m, stage) for m in REMEDY_MODULES if hasattr(m, stage)]


@hookimpl
def gatescope_add_config(cfg):
    from yacs.config import CfgNode as CN

    if "REMEDY" not in cfg:
        cfg.REMEDY = CN()
    for module in REMEDY_MODULES:
        module.add_config(cfg.REMEDY)


@hookimpl
def before_train(context):
    cfg = remedy_cfg(context)
    if cfg is None:
        return
    for step in _each("before_train"):
        step(context, cfg)


@hookimpl
def before_epoch(context):
    cfg = remedy_cfg(context)
    if cfg is not None:
        for step in _each("before_epoch"):
            step(context, cfg)


@hookimpl(trylast=True)
def after_backward(context):
    cfg = remedy_cfg(context)
    if cfg is not None:
        for step in _each("after_backward"):
            step(context, cfg)


@hookimpl
def gatescope_gate_losses(context):
    cfg = remedy_cfg(context)
    if cfg is None:
        return None
    losses = {}
    for compute in _each("gate_losses"):
        losses.update(compute(context, cfg))
    return losses or None


__all__ = ["REMEDY_MODULES", "after_backward", "before_epoch", "before_train", "gatescope_add_config",
           "gatescope_gate_losses"]
