"""What the remedies share: finding the gates and parameter groups they act on, freezing a
group for one step, the gradient RMS the diagnostics use, and saying once when a remedy that
is switched on has nothing to act on (instead of silently contributing nothing)."""
import warnings

import torch
import torch.nn as nn


def remedy_cfg(trainer):
    """cfg.REMEDY of the trainer, or None for a config built without the remedies plugin."""
    cfg = getattr(trainer, "cfg", None)
    if cfg is None or "REMEDY" not in cfg:
        return None
    return cfg.REMEDY


def gate_heads(trainer):
    """The trainer's GateHeads (an ungated trainer has none)."""
    if getattr(trainer, "model", None) is None:
        return []
    return list(getattr(trainer, "gate_heads", None) or [])


def learnable(head):
    return any(p.requires_grad for p in head.parameters())


def learnable_heads(trainer):
    """Gate heads with something to train (a parameter-free constant gate has nothing)."""
    return [h for h in gate_heads(trainer) if learnable(h)]


def group_params(trainer, name):
    """The tensors of the optimizer's parameter group `name` (none when there is no such group)."""
    optim = getattr(trainer, "optim", None)
    if optim is None:
        return []
    return [p for g in optim.param_groups if g.get("name") == name for p in g["params"]]


def freeze_for_this_step(params):
    """p.grad = None: torch's optimizers then skip p entirely this step (no gradient, no weight
    decay, no momentum, no Adam moments), so the tensor stays bit-identical."""
    for p in params:
        p.grad = None


def grad_rms(params):
    """||g||_2 / sqrt(numel(g)) over the present gradients of `params` treated as one vector
    (the diagnostics' per-element size); None when no parameter has a gradient."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    numel = sum(g.numel() for g in grads)
    if numel == 0:
        return None
    sq = sum(float(g.double().pow(2).sum()) for g in grads)
    return (sq / numel) ** 0.5


def tell_once(trainer, message):
    """Print and warn `message` once per trainer (a remedy switched on that changes nothing)."""
    told = trainer.__dict__.setdefault("_remedy_told", set())
    if message in told:
        return
    told.add(message)
    print(f"Warning: {message}")
    warnings.warn(message, stacklevel=3)


def require_groups(trainer, key, *names):
    """The params of each named group; a trainer without one of them is told (and gets [])."""
    out = []
    for name in names:
        params = group_params(trainer, name)
        if not params:
            tell_once(trainer, f"{key} acts on the '{name}' parameter group, which trainer "
                               f"{trainer.cfg.TRAINER.NAME} does not have: it changes nothing there")
        out.append(params)
    return out


def training_outputs(trainer):
    """(head, output, logits, activation) for each gate that produced a training output this
    step and is really gating (no constant override from a probe)."""
    rows = []
    for head in gate_heads(trainer):
        out = head.last_output
        if out is None or not head.training or head.override is not None or not learnable(head):
            continue
        gate = head.gate
        rows.append((head, out, getattr(gate, "last_logits", None), getattr(gate, "activation", None)))
    return rows


def output_layer(gate):
    """The Linear that produces the gate's logits (mlp, softmax: net[-1]; gumbel: net), or None."""
    net = getattr(gate, "net", None)
    if isinstance(net, nn.Sequential) and len(net) and isinstance(net[-1], nn.Linear):
        return net[-1]
    if isinstance(net, nn.Linear):
        return net
    return None


def set_gate_logits(head, logit, weight_scale=None, key="REMEDY"):
    """Make the gate start at logit `logit`: free logits (scalar, sigmoid) are set to it; a gate
    with an output layer gets bias = logit and weight *= weight_scale (None: unchanged).
    Raises for a gate that has neither, naming the gate."""
    gate = head.gate
    with torch.no_grad():
        logits = getattr(gate, "logits", None)
        if isinstance(logits, nn.Parameter):
            logits.fill_(float(logit))
            return
        layer = output_layer(gate)
        if layer is None or layer.bias is None:
            raise ValueError(f"{key} sets a gate's logits, but gate '{head.gate_name}' has neither free logits "
                             "(a `logits` parameter, as scalar and sigmoid) nor an output layer with a bias "
                             "(`net[-1]` or `net`, as mlp, softmax and gumbel); switch it off for this gate")
        layer.bias.fill_(float(logit))
        if weight_scale is not None:
            layer.weight.mul_(float(weight_scale))


def tell_if_no_gate(trainer, key):
    """One warning when remedy `key` is on but the trainer has no learnable gate to act on."""
    if not learnable_heads(trainer):
        tell_once(trainer, f"{key}: trainer {trainer.cfg.TRAINER.NAME} has no learnable gate; it changes nothing")
