"""The study's diagnostic formulas and flag rules, as its released code computes them.

Source: the study's `diagnostics/diagnostic_experiments.py` (experiments A1, A3, B1-B3, C1-C3),
`diagnostics/advanced_experiments.py` (D: random gates, E: per-layer gate) and `trainers/coop.py`
(`_log_gate_metrics`, the per-step gate figures). Used by DIAGNOSTICS.DEFINITIONS study
(diagnostics/study_probes.py runs the experiments on a run); where gatescope's own definition
differs, the README's table says how and why.

Pure functions: tensors or floats in, plain Python values out (None where the study's code would
produce NaN, so the JSON stays standard). Arithmetic in float64; the study's small constants
(1e-10, 1e-8, 1e-6) are kept because they are part of its numbers.
"""
import math

import torch
import torch.nn.functional as F

from .metrics import finite_or_none

# The study's thresholds, as its reports and warnings use them.
GAP_SEVERE = 2.0           # A1: log10 gap above this is "severe gradient imbalance"
CONFLICT_DEG = 60.0        # B1: cls-vs-reg or cls-vs-cycle angle above this is "strong conflict"
CANCELLATION_MAX = 0.3     # B2: mean cancellation ratio above this is "strong cancellation"
REG_SHARE_MAX = 0.5        # B3: the regulariser's share of the gate gradient above this dominates
INERT_BELOW = 0.01         # C1: largest mean |delta logits| under gate noise below this: inert
UNIFORM_POINTS = 1.0       # C2 warning: |adaptive - uniform| below this is "limited benefit"
BEST_FIXED_POINTS = 2.0    # C2 report: |adaptive - best fixed| below this: no real adaptation
UNIFORM_STD = 0.1          # C3 / E: std of the gate values below this is "uniform"
DECAY_CORR = -0.5          # C3: corr(index, value) below this is "decay"
ALL_ON_POINTS = 1.0        # D: |adaptive - all-on| (or - random mean) below this: gates add little
PER_LAYER_POINTS = 1.0     # E: |per-token - per-layer| below this: per-layer suffices
CLEAR_PATTERN_STD = 0.15   # E: std above this is "a clear pattern"
SELECTIVITY_ENTROPY = 2.0  # E: Shannon entropy of the normalised gate vector above this: low selectivity


def _flat(tensors):
    return [t.detach().reshape(-1).to(torch.float64) for t in tensors if t is not None]


def _l2(tensors):
    """sqrt(sum_i ||t_i||^2) over the present tensors (0.0 when none), as the study sums squared norms."""
    return math.sqrt(sum(float(t.norm()) ** 2 for t in _flat(tensors)))


def gradient_magnitude_ratio(prompt_grads, gate_grads):
    """A1 (test_gradient_magnitude_ratio): one batch's gradients of the prompt group (the study's
    parameters whose names contain "ctx" or "compound_prompts") and of every gate tensor.

      prompt_grad_norm p = sqrt(sum ||g||^2) over the prompt tensors, gate_grad_norm g likewise
      ratio = g / (p + 1e-8);  magnitude_gap = log10(p / (g + 1e-10))
    and, beside them (not in the study's output), the group sizes and the per-element ratio:
      prompt_numel, gate_numel;  rho = (g / sqrt(gate_numel)) / (p / sqrt(prompt_numel))
      count_term = 0.5 log10(prompt_numel / gate_numel): the part of the gap that only says the
      groups differ in size (gap = -log10(rho) + count_term when g > 0).
    None entries are tensors without a gradient (ignored). magnitude_gap is None when p is 0.
    """
    p, g = _l2(prompt_grads), _l2(gate_grads)
    n_p = sum(t.numel() for t in _flat(prompt_grads))
    n_g = sum(t.numel() for t in _flat(gate_grads))
    rho = (g / math.sqrt(n_g)) / (p / math.sqrt(n_p)) if n_p and n_g and p > 0 else None
    return {"prompt_grad_norm": p, "gate_grad_norm": g, "ratio": g / (p + 1e-8),
            "magnitude_gap": math.log10(p / (g + 1e-10)) if p > 0 else None,
            "prompt_numel": n_p, "gate_numel": n_g, "rho": finite_or_none(rho),
            "count_term": 0.5 * math.log10(n_p / n_g) if n_p and n_g else None}


def chain_length(layer_grads):
    """A3 (test_gradient_chain_length): the deep text prompts' gradients (compound_prompts_text,
    the shallow context excluded), in layer order; None for a layer without a gradient (left out,
    and the remaining layers renumbered 0..n-1, as the study's dict of present layers is).

      depth_grads["layer_<i>"] = {"norm": ||g_i||, "mean": mean g_i}  (i: the layer's own index)
      decay_rate = least-squares slope of ln(norm + 1e-10) against 0..n-1 (np.polyfit degree 1,
                   natural log); 0 with fewer than 2 layers
    """
    depth_grads = {}
    for i, g in enumerate(layer_grads):
        if g is not None:
            x = g.detach().to(torch.float64)
            depth_grads[f"layer_{i}"] = {"norm": float(x.norm()), "mean": float(x.mean())}
    norms = [v["norm"] for v in depth_grads.values()]
    return {"depth_grads": depth_grads, "decay_rate": least_squares_slope([math.log(n + 1e-10) for n in norms])}


def least_squares_slope(y):
    """Slope of the least-squares line through (i, y_i), i = 0..n-1 (np.polyfit(range(n), y, 1)[0]);
    0.0 with fewer than 2 points (the study's value then)."""
    n = len(y)
    if n < 2:
        return 0.0
    x_mean, y_mean = (n - 1) / 2.0, sum(y) / n
    return sum((i - x_mean) * (v - y_mean) for i, v in enumerate(y)) / sum((i - x_mean) ** 2 for i in range(n))


def _angle(a, b):
    """Degrees of arccos(clip(cosine_similarity(a, b), -1, 1)), torch's cosine (eps 1e-8), as the study."""
    cos = float(F.cosine_similarity(a.unsqueeze(0), b.unsqueeze(0)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def gradient_conflict(term_grads):
    """B1 (test_gradient_conflict). term_grads: {"cls", "reg", "cycle": {gate tensor name: flat
    gradient of that loss term alone, or None where it does not reach the tensor}} (a term absent
    from the run: an empty dict). The study's cycle term is unweighted; angles do not depend on it.

      angles[name] = {"cls_vs_reg", "cls_vs_cycle", "reg_vs_cycle"} in degrees, for each tensor
                     that all three terms reach (a zero vector gives 90, torch's cosine being 0)
      strong_conflict = some tensor has cls_vs_reg > 60 or cls_vs_cycle > 60 (the study's report)
    """
    cls, reg, cycle = (term_grads.get(k) or {} for k in ("cls", "reg", "cycle"))
    angles = {}
    for name, g_cls in cls.items():
        g_reg, g_cycle = reg.get(name), cycle.get(name)
        if g_cls is None or g_reg is None or g_cycle is None:
            continue
        a, b, c = (t.detach().reshape(-1).to(torch.float64) for t in (g_cls, g_reg, g_cycle))
        angles[name] = {"cls_vs_reg": _angle(a, b), "cls_vs_cycle": _angle(a, c), "reg_vs_cycle": _angle(b, c)}
    conflict = any(v["cls_vs_reg"] > CONFLICT_DEG or v["cls_vs_cycle"] > CONFLICT_DEG for v in angles.values())
    return {"angles": angles, "strong_conflict": conflict}


def gradient_cancellation(total_grads, term_grads):
    """B2 (test_gradient_cancellation). total_grads: {gate tensor name: gradient of the total loss
    ce + reg + w * cycle}; term_grads as gradient_conflict (cycle unweighted, as the study's).

      per tensor: total_norm = ||g_total||, component_sum = sum over the terms reaching it of
                  ||g_term||, cancellation_ratio = 1 - total_norm / (component_sum + 1e-10)
      mean_cancellation = mean over tensors; strong_cancellation = mean > 0.3 (the study's warning)
    """
    per_tensor = {}
    for name, g in total_grads.items():
        if g is None:
            continue
        total = float(g.detach().to(torch.float64).norm())
        parts = sum(float(grads[name].detach().to(torch.float64).norm())
                    for grads in term_grads.values() if grads and grads.get(name) is not None)
        per_tensor[name] = {"total_norm": total, "component_sum": parts,
                            "cancellation_ratio": 1.0 - total / (parts + 1e-10)}
    ratios = [v["cancellation_ratio"] for v in per_tensor.values()]
    mean = sum(ratios) / len(ratios) if ratios else None
    return {"tensors": per_tensor, "mean_cancellation": mean,
            "strong_cancellation": mean is not None and mean > CANCELLATION_MAX}


def regularisation_dominance(term_grads, loss_magnitudes=None):
    """B3 (test_regularization_dominance). term_grads as gradient_conflict.

      contribution[term] = sum over the tensors it reaches of mean |g| / (their count + 1e-10)
      reg_dominance = contribution["reg"] / (sum of the contributions + 1e-10)
      reg_dominates = reg_dominance > 0.5
    loss_magnitudes ({"cls", "reg", "cycle": float}, the cycle unweighted) is passed through.
    """
    contributions = {}
    for term in ("cls", "reg", "cycle"):
        grads = [g for g in (term_grads.get(term) or {}).values() if g is not None]
        contributions[term] = sum(float(g.detach().to(torch.float64).abs().mean()) for g in grads) / (len(grads) + 1e-10)
    dominance = contributions["reg"] / (sum(contributions.values()) + 1e-10)
    return {"loss_magnitudes": dict(loss_magnitudes or {}), "gate_grad_contributions": contributions,
            "reg_dominance": dominance, "reg_dominates": dominance > REG_SHARE_MAX}


def sensitivity_flags(sensitivities, inert_below=INERT_BELOW):
    """C1 (test_gate_sensitivity) summary: {"<gate>_pert_<sigma>": mean |delta logits|} -> max
    over them and inert = max < inert_below (the study's report: < 0.01 is "inert")."""
    values = [v for v in sensitivities.values() if v is not None]
    top = max(values) if values else None
    return {"max_sensitivity": top, "inert": top is not None and top < inert_below}


def fixed_schedule_logits(num_options):
    """C2 (test_fixed_vs_adaptive): the logits the study writes into every gate tensor:
    uniform 0, full_active 2, decay linspace(2, -2), increase linspace(-2, 2)."""
    k = num_options
    return {"uniform": torch.zeros(k, dtype=torch.float64), "full_active": torch.full((k,), 2.0, dtype=torch.float64),
            "decay": torch.linspace(2.0, -2.0, k, dtype=torch.float64),
            "increase": torch.linspace(-2.0, 2.0, k, dtype=torch.float64)}


def fixed_vs_adaptive(accuracies):
    """C2 figures from the accuracies (%) of "adaptive", "uniform", "full_active", "decay",
    "increase": performance_gap (adaptive minus each, best_fixed, adaptive_vs_best_fixed),
    best_fixed_config, and the study's flags limited_benefit (|adaptive - uniform| < 1, its
    warning) and no_real_adaptation (|adaptive - best fixed| < 2, its report)."""
    a = accuracies["adaptive"]
    fixed = {k: accuracies[k] for k in ("uniform", "full_active", "decay", "increase")}
    best_name = max(fixed, key=fixed.get)
    gap = {"adaptive_vs_uniform": a - fixed["uniform"], "adaptive_vs_full": a - fixed["full_active"],
           "adaptive_vs_decay": a - fixed["decay"], "adaptive_vs_increase": a - fixed["increase"],
           "best_fixed": fixed[best_name], "adaptive_vs_best_fixed": a - fixed[best_name]}
    return {**accuracies, "performance_gap": gap, "best_fixed_config": best_name,
            "limited_benefit": abs(gap["adaptive_vs_uniform"]) < UNIFORM_POINTS,
            "no_real_adaptation": abs(gap["adaptive_vs_best_fixed"]) < BEST_FIXED_POINTS}


def _corr(values):
    """np.corrcoef(range(n), v)[0, 1]; None where numpy gives NaN (a constant vector, n < 2)."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() < 2:
        return None
    x = torch.arange(v.numel(), dtype=torch.float64)
    dx, dv = x - x.mean(), v - v.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dv * dv).sum()))
    return float((dx * dv).sum()) / denom if denom > 0 else None


def learned_pattern(values, trend_min_range=0.01):
    """C3 (test_learned_pattern_analysis) for one gate's values v = sigmoid(logits):

      mean, std (population, numpy's default), entropy = mean_i -(v ln(v + 1e-10) + (1 - v) ln(1 - v + 1e-10)),
      effective_length = #{v > 0.5}, pattern = "uniform" if std < 0.1 else "varied" (the study's
      length-gate label), monotonicity = corr(index, v) (the study's depth-gate figure), range =
      max - min, trend = "decay" if monotonicity < -0.5 and range >= trend_min_range else "none"
      (the study labels its depth gates "decay" or "uniform" from the correlation alone; a
      correlation of values that differ by less than trend_min_range is rounding, not a trend).
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() == 0:
        return {"values": [], "mean": None, "std": None, "entropy": None, "effective_length": 0,
                "pattern": None, "monotonicity": None, "range": None, "trend": "none"}
    std = float(v.std(correction=0))
    entropy = float(-(v * torch.log(v + 1e-10) + (1 - v) * torch.log(1 - v + 1e-10)).sum()) / v.numel()
    corr = _corr(v)
    spread = float(v.max() - v.min())
    decay = corr is not None and corr < DECAY_CORR and spread >= trend_min_range
    return {"values": v.tolist(), "mean": float(v.mean()), "std": std, "entropy": entropy,
            "effective_length": int((v > 0.5).sum()), "pattern": "uniform" if std < UNIFORM_STD else "varied",
            "monotonicity": corr, "range": spread, "trend": "decay" if decay else "none"}


def random_gate_logits(num_options, effective_length, generator):
    """D (generate_random_gates_matching_length): logits -2 everywhere, +2 on the first
    `effective_length` entries of a random permutation, plus N(0, 0.5^2) noise per entry
    (drawn from `generator`: the permutation first, then the noise, as the study)."""
    order = torch.randperm(num_options, generator=generator)
    logits = torch.full((num_options,), -2.0, dtype=torch.float64)
    logits[order[:int(effective_length)]] = 2.0
    return logits + torch.randn(num_options, generator=generator, dtype=torch.float64) * 0.5


def random_vs_adaptive(adaptive, all_on, random_accs, effective_length):
    """D (test_random_vs_adaptive) figures from the accuracies (%): the trials, their mean, std
    (population, numpy's default), min and max, and the study's analysis and flags:
    all_on_equivalent (|adaptive - all_on| < 1), all_on_better (all_on > adaptive + 1),
    near_random (|adaptive - random mean| < 1), random_best_better (random max > adaptive)."""
    n = len(random_accs)
    mean = sum(random_accs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in random_accs) / n)
    return {"adaptive": adaptive, "adaptive_effective_length": effective_length, "fixed_all_on": all_on,
            "fixed_random_trials": list(random_accs), "fixed_random_mean": mean, "fixed_random_std": std,
            "fixed_random_min": min(random_accs), "fixed_random_max": max(random_accs),
            "analysis": {"adaptive_vs_all_on": adaptive - all_on, "adaptive_vs_random_mean": adaptive - mean,
                         "adaptive_vs_random_best": adaptive - max(random_accs),
                         "random_covers_adaptive": min(random_accs) <= adaptive <= max(random_accs),
                         "all_on_equivalent": abs(adaptive - all_on) < ALL_ON_POINTS,
                         "all_on_better": all_on > adaptive + ALL_ON_POINTS,
                         "near_random": abs(adaptive - mean) < ALL_ON_POINTS,
                         "random_best_better": max(random_accs) > adaptive}}


def per_layer_gate(logits):
    """E (create_per_layer_gate_model): every length gate set to the mean of the logits, as gate
    values sigmoid(mean_k a_k) (K,). gatescope's per-layer probe averages the gate values instead
    (probes.per_layer_mean), which differs where the sigmoid bends."""
    z = torch.as_tensor(logits, dtype=torch.float64).reshape(-1)
    return torch.sigmoid(torch.full_like(z, float(z.mean())))


def per_token_pattern(values):
    """E (test_simplified_gate) pattern of the length gates v = sigmoid(logits): mean, std
    (population), entropy = scipy.stats.entropy(v + 1e-10), i.e. the Shannon entropy (nats) of the
    vector normalised to sum 1 (not a binary entropy), monotonicity = corr(index, v) (0.0 for one
    gate, as the study), has_clear_pattern = std > 0.15."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    q = (v + 1e-10) / (v + 1e-10).sum()
    std = float(v.std(correction=0))
    return {"values": v.tolist(), "mean": float(v.mean()), "std": std, "entropy": float(-(q * q.log()).sum()),
            "monotonicity": _corr(v) if v.numel() > 1 else 0.0, "has_clear_pattern": std > CLEAR_PATTERN_STD}


def simplified_gate(per_token_acc, per_layer_acc, pattern):
    """E analysis: performance_gap = per-token minus per-layer accuracy (points);
    per_layer_sufficient = |gap| < 1; token_level_redundant = std < 0.1; low_selectivity =
    entropy > 2.0 (the study's conclusions)."""
    gap = per_token_acc - per_layer_acc
    return {"per_token_acc": per_token_acc, "per_layer_fixed_acc": per_layer_acc, "per_token_pattern": pattern,
            "analysis": {"performance_gap": gap, "per_layer_sufficient": abs(gap) < PER_LAYER_POINTS,
                         "token_level_redundant": pattern["std"] < UNIFORM_STD,
                         "low_selectivity": pattern["entropy"] > SELECTIVITY_ENTROPY}}


def gate_step_figures(p, grads):
    """The study's per-step gate figures (trainers/coop.py `_log_gate_metrics`, TensorBoard tags
    gate/*), for a sigmoid gate's values p (any shape; for a gate that reads the input, the batch
    mean) and the gradients its parameters hold before the step (after equalisation):

      d_eff = sum p;  mean_p = mean p;  std_p = std p with Bessel's correction (None for one value)
      entropy = sum -(p ln(p + 1e-6) + (1 - p) ln(1 - p + 1e-6))   (a sum, not a mean; nats)
      grad_norm = sqrt(sum ||grad||^2) / (number of parameter entries)   (0.0 with no gradient)
    plus max_p and min_p (the study's AdaptiveBiDirMaPLe logs the max and min depth gate per step).
    """
    x = torch.as_tensor(p).detach().to(torch.float64).reshape(-1)
    entropy = -(x * torch.log(x + 1e-6) + (1 - x) * torch.log(1 - x + 1e-6)).sum()
    std = x.std(correction=1) if x.numel() > 1 else x.new_tensor(math.nan)
    # One host transfer for the six figures (this runs at every logged step).
    d_eff, mean_p, std_p, entropy, max_p, min_p = torch.stack(
        [x.sum(), x.mean(), std, entropy, x.max(), x.min()]).tolist()
    return {"d_eff": d_eff, "mean_p": mean_p, "std_p": finite_or_none(std_p), "entropy": entropy,
            "grad_norm": gate_grad_norm(grads), "max_p": max_p, "min_p": min_p}


def gate_grad_norm(grads):
    """sqrt(sum ||grad||^2) / (number of entries of the present gradients); 0.0 with none, as the
    study's `_get_gate_grad_norm` (None when not finite)."""
    present = _flat(grads)
    numel = sum(t.numel() for t in present)
    if not numel:
        return 0.0
    squares = torch.stack([(t * t).sum() for t in present]).sum() if len(present) > 1 else (present[0] ** 2).sum()
    return finite_or_none(math.sqrt(float(squares)) / numel)
