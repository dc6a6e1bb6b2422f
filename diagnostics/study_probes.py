"""The study's diagnostic experiments run on a gatescope run (DIAGNOSTICS.DEFINITIONS study).

At each probe epoch the study's trainer calls `run_diagnostics` (experiments A1, A3, B1-B3,
C1-C3) and, at its later ones, `run_advanced_diagnostics` (D, E). `study_probes` runs them with
the study's definitions (formulas in study_metrics.py) on the run's model, seen through its
HookContext:

- one training batch (the first of a fresh pass over the training loader), train mode: the
  gradient experiments A1, A3, B1-B3, on the loss terms the study's model returns: cls = "ce",
  reg = every other term but the cycle loss and the remedies' (the study's sparsity + depth
  smoothness), cycle = the cycle term divided by its weight (unweighted, as the study's);
  total = cls + reg + weighted cycle;
- the same batch's images, eval mode (hard gates at test for the study's trainers): C1, Gaussian
  noise on each gate's logits, one draw per sigma;
- the validation set (the test set when there is none), at most 50 batches, in train mode (soft
  gates): C2 (fixed schedules on every per-task gate together), D (5 random gates with the
  learned effective length), E (the length gates replaced by their mean logit); C3 reads the
  gates' values.

C2, D and E alter per-task sigmoid mask gates (the study's length and depth gates), through the
gate's `override` (never a parameter: the study's C2 replaced its gate tensors by new
nn.Parameter objects, which the optimizer no longer updates; see docs/coming_from_the_study.md).
Everything runs under probes.quiet_probe (random generators, modes and listeners restored) with
batch-norm running statistics restored as well, so the training run is unchanged.
"""
import contextlib

import torch

from . import study_metrics
from .probes import gate_values, logit_noise, quiet_probe

STUDY_MAX_BATCHES = 50  # the study's _evaluate_accuracy reads at most this many validation batches
RANDOM_TRIALS = 5       # D's n_random_trials


@contextlib.contextmanager
def batchnorm_stats_kept(model):
    """Running statistics of every batch-norm layer restored on exit (a train-mode forward of a
    ResNet backbone would otherwise move them)."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]
    try:
        yield
    finally:
        for m, state in zip(layers, saved):
            m.load_state_dict(state)


@contextlib.contextmanager
def no_equalization(heads):
    """GATE.EQUALIZE_GRAD hooks the gate's logits in training mode; a train-mode evaluation without
    autograd has nothing to hook."""
    saved = [h.alpha_max for h in heads]
    try:
        for h in heads:
            h.alpha_max = None
        yield
    finally:
        for h, a in zip(heads, saved):
            h.alpha_max = a


def study_gates(heads):
    """The heads the study's C2-E experiments alter: per-task sigmoid mask gates (free logits)."""
    return [h for h in heads if not h.input_dependent and h.kind == "mask"
            and getattr(h.gate, "activation", None) == "sigmoid"]


def gate_logits(head):
    """The per-task gate's logits (K,) in float64: its `logits` parameter when it has one, else the
    logit of its values."""
    logits = getattr(head.gate, "logits", None)
    if isinstance(logits, torch.Tensor) and logits.dim() == 1:
        return logits.detach().to(torch.float64).cpu()
    p = gate_values(head).to(torch.float64).clamp(1e-12, 1 - 1e-12)
    return torch.log(p) - torch.log1p(-p)


def study_loss_terms(losses, weights):
    """(total, {"cls", "reg", "cycle"}) from a step's named terms as the study's model returns them
    (module docstring); a term the run does not have is None."""
    cls = losses["ce"]
    weighted_cycle = losses.get("cycle")
    reg_terms = [v for k, v in losses.items() if k not in ("ce", "cycle") and not k.startswith("remedy_")]
    reg = sum(reg_terms) if reg_terms else None
    w = float(weights.get("cycle", 0.0) or 0.0)
    cycle = weighted_cycle / w if weighted_cycle is not None and w > 0 else None
    total = cls + (reg if reg is not None else 0.0) + (weighted_cycle if weighted_cycle is not None else 0.0)
    return total, {"cls": cls, "reg": reg, "cycle": cycle}


def gradient_experiments(context, image, label, heads):
    """A1, A3, B1, B2, B3 on one batch (train mode), by autograd.grad (no .grad is touched)."""
    t = context
    learner = t.model.prompt_learner
    gate_ids = {id(p) for h in heads for p in h.parameters()}
    prompt = [p for n, p in learner.named_parameters()
              if p.requires_grad and id(p) not in gate_ids and ("ctx" in n or "compound_prompts" in n)]
    layers = [p for p in getattr(learner, "compound_prompts_text", []) if p.requires_grad]
    gate_params = {h.name: [p for p in h.parameters() if p.requires_grad] for h in heads}
    t.model.train()
    with torch.enable_grad(), torch.autocast(device_type=t.device.type, enabled=getattr(t, "prec", "fp32") == "amp"):
        losses = t.compute_losses(t.model(image), label)
    total, terms = study_loss_terms(losses, t.loss_weights)
    inputs = list({id(p): p for p in prompt + layers + [p for ps in gate_params.values() for p in ps]}.values())
    where = {id(p): i for i, p in enumerate(inputs)}

    def grads_of(loss):
        if loss is None or not loss.requires_grad:
            return None
        return torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)

    def per_gate(grads):
        if grads is None:
            return {}
        out = {}
        for name, params in gate_params.items():
            parts = [grads[where[id(p)]] for p in params]
            present = [g.reshape(-1) for g in parts if g is not None]
            out[name] = torch.cat(present) if present else None
        return out

    total_grads = grads_of(total)
    term_grads = {k: per_gate(grads_of(v)) for k, v in terms.items()}
    out = {}
    if total_grads is not None:
        out["A1_gradient_ratio"] = study_metrics.gradient_magnitude_ratio(
            [total_grads[where[id(p)]] for p in prompt],
            [total_grads[where[id(p)]] for ps in gate_params.values() for p in ps])
        if layers:
            out["A3_chain_length"] = study_metrics.chain_length([total_grads[where[id(p)]] for p in layers])
    out["B1_gradient_conflict"] = study_metrics.gradient_conflict(term_grads)
    out["B2_gradient_cancellation"] = study_metrics.gradient_cancellation(per_gate(total_grads), term_grads)
    magnitudes = {k: (float(v.detach()) if v is not None else 0.0) for k, v in terms.items()}
    out["B3_reg_dominance"] = study_metrics.regularisation_dominance(term_grads, magnitudes)
    return out


@torch.no_grad()
def sensitivity(context, image, heads, sigmas, inert_below):
    """C1: eval mode; for each gate and sigma, N(0, sigma^2) added to the gate's logits (one draw),
    mean |delta class logits| over the batch."""
    t = context
    t.model.eval()
    base = t.model_inference(image).to(torch.float64)
    out = {}
    for head in heads:
        activation = getattr(head.gate, "activation", None)
        if activation not in ("sigmoid", "softmax"):
            continue
        for sigma in sigmas:
            head.output_transform = logit_noise(activation, float(sigma))
            try:
                noisy = t.model_inference(image).to(torch.float64)
            finally:
                head.output_transform = None
            out[f"{head.name}_pert_{float(sigma)}"] = float((noisy - base).abs().mean())
    return {"sensitivities": out, **study_metrics.sensitivity_flags(out, inert_below)}


@torch.no_grad()
def train_mode_accuracy(context, loader, max_batches=STUDY_MAX_BATCHES):
    """Top-1 accuracy (%) in train mode (soft gates), as the study's _evaluate_accuracy after model.train()."""
    t = context
    t.model.train()
    correct = total = 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        image, label = t.parse_batch_test(batch)
        correct += int((t.model(image).argmax(dim=1) == label).sum())
        total += label.numel()
    return 100.0 * correct / total if total else 0.0


def with_overrides(context, loader, values):
    """train_mode_accuracy with each head's output replaced by values[head] (gate values (K,))."""
    try:
        for head, v in values.items():
            head.override = v.to(context.device)
        return train_mode_accuracy(context, loader)
    finally:
        for head in values:
            head.override = None


def gate_experiments(context, heads, trend_min_range, seed):
    """C2, C3, D, E on the per-task sigmoid mask gates `heads`."""
    t = context
    loader = t.val_loader if t.val_loader is not None else t.test_loader
    logits = {h: gate_logits(h) for h in heads}
    out = {"split": "val" if t.val_loader is not None else "test"}
    adaptive = train_mode_accuracy(t, loader)
    accs = {"adaptive": adaptive}
    for name in ("uniform", "full_active", "decay", "increase"):
        accs[name] = with_overrides(t, loader, {h: torch.sigmoid(study_metrics.fixed_schedule_logits(z.numel())[name])
                                                for h, z in logits.items()})
    out["C2_fixed_vs_adaptive"] = study_metrics.fixed_vs_adaptive(accs)
    out["C3_pattern_analysis"] = {h.name: study_metrics.learned_pattern(torch.sigmoid(z), trend_min_range)
                                  for h, z in logits.items()}

    length = next((h for h in heads if h.name == "length"), None)
    length_count = int((torch.sigmoid(logits[length]) > 0.5).sum()) if length is not None else None
    all_on = with_overrides(t, loader, {h: torch.sigmoid(torch.full_like(z, 2.0)) for h, z in logits.items()})
    generator = torch.Generator().manual_seed(seed)
    trials = []
    for _ in range(RANDOM_TRIALS):
        values = {}
        for h, z in logits.items():
            count = length_count if length_count is not None else int((torch.sigmoid(z) > 0.5).sum())
            values[h] = torch.sigmoid(study_metrics.random_gate_logits(z.numel(), count, generator))
        trials.append(with_overrides(t, loader, values))
    out["D_random_gates"] = study_metrics.random_vs_adaptive(
        adaptive, all_on, trials, length_count if length_count is not None else None)

    if length is not None:
        z = logits[length]
        per_layer = with_overrides(t, loader, {length: study_metrics.per_layer_gate(z)})
        out["E_simplified_gate"] = study_metrics.simplified_gate(adaptive, per_layer,
                                                                 study_metrics.per_token_pattern(torch.sigmoid(z)))
    return out


def study_probes(context, sigmas, trend_min_range, inert_below=study_metrics.INERT_BELOW, seed=0):
    """Every experiment of the study's diagnostics on the run now (module docstring). Returns
    {experiment key (the study's, e.g. "A1_gradient_ratio"): figures with the study's flags}."""
    t = context
    heads = list(t.gate_heads)
    with quiet_probe(t), batchnorm_stats_kept(t.model), no_equalization(heads):
        torch.manual_seed(seed)
        batch = next(iter(t.train_loader_x), None)
        if batch is None:
            return {"skipped": "the training loader is empty"}
        image, label = t.parse_batch_train(batch)
        out = gradient_experiments(t, image, label, heads)
        out["C1_sensitivity"] = sensitivity(t, image, heads, sigmas, inert_below)
        chosen = study_gates(heads)
        if chosen:
            out.update(gate_experiments(t, chosen, trend_min_range, seed))
        else:
            out["gate_experiments_skipped"] = ("no per-task sigmoid mask gate (the study's length and depth gates): "
                                               "C2, C3, D and E alter those only")
    return out
