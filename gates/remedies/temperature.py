"""`REMEDY.TEMPERATURE`: anneal the temperature of softmax-type gates over the epochs.

Failure mode targeted: **premature commitment / uniform collapse of simplex gates**. At a fixed
low temperature a softmax or Gumbel gate commits to one option before the options are
distinguishable; at a fixed high one it stays uniform and its choice never matters. Starting
warm and cooling lets it explore first and commit later.

Before epoch e (0-based) of E = OPTIM.MAX_EPOCH epochs, with t = e / (E - 1) (t = 0 when E = 1),
every gate with a `temperature` attribute (softmax, gumbel, keyquery) gets

    geometric: T = START * (END / START) ** t
    linear:    T = START + (END - START) * t

so the first epoch runs at START and the last at END. T is a plain attribute, not a checkpoint
entry: a resumed run recomputes it from its epoch.
"""
from yacs.config import CfgNode as CN

from ..config_spec import above, declare, one_of
from .common import gate_heads, tell_once

SCHEDULES = ("geometric", "linear")


def add_config(remedy_cfg):
    remedy_cfg.TEMPERATURE = CN()
    remedy_cfg.TEMPERATURE.ENABLED = False
    remedy_cfg.TEMPERATURE.START = 5.0  # T of the first epoch
    remedy_cfg.TEMPERATURE.END = 0.5  # T of the last epoch
    remedy_cfg.TEMPERATURE.SCHEDULE = "geometric"  # geometric | linear
    declare(remedy_cfg.TEMPERATURE, START=above(0), END=above(0), SCHEDULE=one_of(*SCHEDULES))


def temperature_at(epoch, max_epoch, start, end, schedule="geometric"):
    """The annealed temperature of 0-based `epoch` out of `max_epoch` (formulas above)."""
    t = epoch / (max_epoch - 1) if max_epoch > 1 else 0.0
    if schedule == "geometric":
        return start * (end / start) ** t
    if schedule == "linear":
        return start + (end - start) * t
    raise ValueError(f"REMEDY.TEMPERATURE.SCHEDULE must be one of {SCHEDULES}, got {schedule!r}")


def tempered_gates(context):
    heads = gate_heads(context)
    gates = [h.gate for h in heads if hasattr(h.gate, "temperature")]
    if heads and not gates:
        raise ValueError(f"REMEDY.TEMPERATURE anneals a gate's `temperature`, but gate '{heads[0].gate_name}' "
                         "has none; use a softmax, gumbel or keyquery gate, or switch it off")
    if not heads:
        tell_once(context, f"REMEDY.TEMPERATURE: trainer {context.cfg.TRAINER.NAME} has no gate; "
                           "it changes nothing")
    return gates


def before_epoch(context, cfg):
    node = cfg.TEMPERATURE
    if not node.ENABLED:
        return
    value = temperature_at(context.epoch, context.max_epoch, float(node.START), float(node.END), node.SCHEDULE)
    for gate in tempered_gates(context):
        gate.temperature = float(value)
