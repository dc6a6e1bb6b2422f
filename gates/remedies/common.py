"""What the remedies share: finding the gates and parameter groups they act on, freezing a
group for one step, the gradient RMS the diagnostics use, and saying once when a remedy that
is switched on has nothing to act on (instead of silently contributing nothing)."""
import warnings

from ..contract import GateError


def remedy_cfg(context):
    """cfg.REMEDY of the run, or None for a config built without the remedies plugin."""
    cfg = getattr(context, "cfg", None)
    if cfg is None or "REMEDY" not in cfg:
        return None
    return cfg.REMEDY


def gate_heads(context):
    """The run's gates (gates.AppliedGate; an ungated trainer has none)."""
    if getattr(context, "model", None) is None:
        return []
    return list(getattr(context, "gate_heads", None) or [])


def learnable(head):
    return any(p.requires_grad for p in head.parameters())


def learnable_heads(context):
    """Gate heads with something to train (a parameter-free constant gate has nothing)."""
    return [h for h in gate_heads(context) if learnable(h)]


def group_params(context, name):
    """The tensors of the optimizer's parameter group `name` (none when there is no such group)."""
    groups = getattr(context, "param_groups", None)
    if groups is None:
        return []
    return [p for g in groups if g.get("name") == name for p in g["params"]]


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


def tell_once(context, message):
    """Print and warn `message` once per run (a remedy switched on that changes nothing)."""
    told = context.store.setdefault("remedies_told", set())
    if message in told:
        return
    told.add(message)
    print(f"Warning: {message}")
    warnings.warn(message, stacklevel=3)


def require_groups(context, key, *names):
    """The params of each named group; a trainer without one of them is told (and gets [])."""
    out = []
    for name in names:
        params = group_params(context, name)
        if not params:
            tell_once(context, f"{key} acts on the '{name}' parameter group, which trainer "
                               f"{context.cfg.TRAINER.NAME} does not have: it changes nothing there")
        out.append(params)
    return out


def training_outputs(context):
    """(head, output, logits, activation) for each gate that produced a training output this
    step and is really gating (no constant override from a probe)."""
    rows = []
    for head in gate_heads(context):
        out = head.last_output
        if out is None or not head.training or head.override is not None or not learnable(head):
            continue
        gate = head.gate
        rows.append((head, out, getattr(gate, "last_logits", None), getattr(gate, "activation", None)))
    return rows


def set_gate_logits(head, logit, weight_scale=None, key="REMEDY"):
    """Make the gate start at logit `logit` through the contract's `Gate.set_logits` (free logits
    are set to it; a gate with an output layer gets bias = logit and weight *= weight_scale).
    Raises ValueError naming the remedy's key and the gate when the gate cannot."""
    setter = getattr(head.gate, "set_logits", None)
    if setter is None:
        raise ValueError(f"{key} sets a gate's starting logits, but gate '{head.gate_name}' has no set_logits "
                         "(it does not derive from gates.Gate); switch it off for this gate")
    try:
        setter(logit, weight_scale=weight_scale)
    except GateError as e:
        raise ValueError(f"{key} sets a gate's starting logits, but gate '{head.gate_name}' cannot: {e}; "
                         "switch it off for this gate") from e


def tell_if_no_gate(context, key):
    """One warning when remedy `key` is on but the trainer has no learnable gate to act on."""
    if not learnable_heads(context):
        tell_once(context, f"{key}: trainer {context.cfg.TRAINER.NAME} has no learnable gate; it changes nothing")
