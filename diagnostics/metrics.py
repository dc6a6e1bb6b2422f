"""The diagnostics' metrics: pure functions of tensors and floats.

Every function here reads only its arguments (no trainer, no I/O, no state), does its arithmetic in
float64, and returns plain Python values (float, int, bool, str, list, dict, None) that
`json.dumps` writes as standard JSON. Where a quantity is undefined (no entries, a zero
denominator, a non-finite input) the value is None, never a silent NaN.

The formulas follow the study's released diagnostics (see the "Diagnostics in the released code"
section of the reference notes), so numbers are comparable with the paper; where the study
compares group L2 norms of very different sizes, a per-element (RMS) figure sits beside it.
"""
import math
from itertools import combinations

import torch

from gates.contract import GATE_KINDS

# Bits available for the mask-pattern code in a signed 64-bit integer, keeping it non-negative.
MAX_MASK_BITS = 62


# --------------------------------------------------------------------------- helpers


def finite_or_none(x):
    """float(x) when it is a finite number, else None (keeps NaN/inf out of JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _present(grads):
    """The non-None tensors of `grads`, flattened and detached, in float64.

    A single tensor is accepted as a one-element list, so callers can pass either.
    """
    if isinstance(grads, torch.Tensor):
        grads = [grads]
    return [g.detach().reshape(-1).to(torch.float64) for g in grads if g is not None]


def _as_float64(x, name):
    """`x` (tensor, list or number) as a float64 tensor; a readable error when it is not numeric."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a tensor or a list of numbers, found {type(x).__name__} ({e}); "
                        "pass a torch.Tensor") from e


def _entropy_nats(p, dim=-1):
    """Shannon entropy -sum p ln p along `dim`, with 0 ln 0 = 0 (xlogy is exactly 0 at p = 0)."""
    return -torch.special.xlogy(p, p).sum(dim=dim)


def _binary_entropy_nats(p):
    """Element-wise -(p ln p + (1-p) ln(1-p)), with 0 ln 0 = 0.

    p is clamped to [0, 1] first: gate outputs are in range by contract, but a sigmoid in float16 or a
    sum of softmax terms can land a rounding error outside it, and ln of a negative is NaN.
    """
    p = p.clamp(0.0, 1.0)
    q = 1.0 - p
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(q, q))


def _pearson(x, y):
    """Pearson correlation of two equal-length float64 vectors; None when either is constant."""
    dx = x - x.mean()
    dy = y - y.mean()
    denom = torch.sqrt((dx * dx).sum() * (dy * dy).sum())
    if denom.item() == 0.0:
        return None
    return finite_or_none(((dx * dy).sum() / denom).item())


def _check_gate_matrix(g, kind):
    if kind not in GATE_KINDS:
        raise ValueError(f"gate kind must be one of {GATE_KINDS}, found {kind!r}; "
                         "pass the kind the gate declares (gate.kind)")
    if not isinstance(g, torch.Tensor) or g.dim() != 2:
        shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        raise ValueError(f"gate output must be a tensor of shape (B, K), found {shape}; "
                         "pass gate.last_output (one row per input, one column per option)")


# --------------------------------------------------------------------------- gradients


# Up to this many entries a group's gradients are concatenated and reduced in one pass.
FUSED_MAX_NUMEL = 1 << 22


def _reduction_row(g):
    """[sum of finite g^2, #zeros, #(|g| < 1e-8), #non-finite, min nonzero finite |g|] of a flat
    float64 tensor; counts are exact in float64 up to 2^53 entries."""
    a = g.abs()
    finite = torch.isfinite(g)
    if not a.numel():
        min_abs = torch.tensor(math.inf, dtype=torch.float64, device=g.device)
    else:
        min_abs = torch.where(finite & (g != 0), a, math.inf).min()
    return torch.stack([
        torch.where(finite, g * g, 0.0).sum(),
        (g == 0).sum(dtype=torch.float64),
        (a < 1e-8).sum(dtype=torch.float64),
        (~finite).sum(dtype=torch.float64),
        min_abs,
    ])


def grad_stats(grads):
    """Size and shape of one parameter group's gradient, treating the group as one flat vector.

    grads: a list of gradient tensors (a parameter's `.grad`); None entries (parameters that got no
    gradient) are ignored. With g the concatenation of the present gradients and n = numel(g):
      l2 = ||g||_2 = sqrt(sum g_i^2)
      rms = l2 / sqrt(n)                 (per-element size: removes the parameter-count effect)
      zero_share = #{g_i == 0} / n
      share_below_1e-8 = #{|g_i| < 1e-8} / n   (counts exact zeros too)
      min_abs_nonzero = min{|g_i| : g_i != 0}  (None when every entry is 0)
      dtype = the first present gradient's dtype without "torch." (e.g. "float32"), None if none
      nonfinite_count = #{g_i is NaN or +-inf}
    With no entries (all None, or empty tensors) numel is 0 and every share/norm is None. When any
    entry is non-finite, l2 and rms are None (a NaN norm would be meaningless) and nonfinite_count
    says how many; the shares and min_abs_nonzero are then taken over all n entries / the finite ones.
    """
    if isinstance(grads, torch.Tensor):
        grads = [grads]
    present = [g for g in grads if g is not None]
    dtype = str(present[0].dtype).replace("torch.", "") if present else None
    flat = _present(present)
    numel = sum(int(g.numel()) for g in flat)
    stats = {"l2": None, "rms": None, "numel": numel, "zero_share": None, "dtype": dtype,
             "min_abs_nonzero": None, "share_below_1e-8": None, "nonfinite_count": 0}
    if numel == 0:
        return stats
    # Small groups (gates, CoOp's context): one concatenated vector and one fused reduction, so
    # the per-step cost is a handful of kernel launches whatever the number of tensors. Large
    # groups on several devices, or beyond FUSED_MAX_NUMEL entries, are reduced tensor by tensor
    # (no float64 copy of a 9M-entry prompt gradient is concatenated); either way the host
    # waits for the device a single time.
    same_device = len({g.device for g in flat}) == 1
    parts = [torch.cat(flat)] if same_device and numel <= FUSED_MAX_NUMEL else flat
    table = torch.stack([_reduction_row(g).to(flat[0].device) for g in parts])
    summary = torch.cat([table[:, :4].sum(dim=0), table[:, 4].min().view(1)])
    total_sq, n_zero, n_below, n_nonfinite, min_abs = summary.tolist()
    stats["nonfinite_count"] = int(n_nonfinite)
    stats["zero_share"] = n_zero / numel
    stats["share_below_1e-8"] = n_below / numel
    stats["min_abs_nonzero"] = finite_or_none(min_abs)
    if n_nonfinite == 0:
        stats["l2"] = math.sqrt(total_sq)
        stats["rms"] = stats["l2"] / math.sqrt(numel)
    return stats


def rms(grads):
    """||g||_2 / sqrt(numel(g)) of the concatenation of the present tensors (None entries ignored):
    grad_stats' "rms" alone, for the per-step figures that need nothing else. None when there
    are no entries or an entry is not finite."""
    present = [g.detach() for g in ([grads] if isinstance(grads, torch.Tensor) else grads) if g is not None]
    numel = sum(int(g.numel()) for g in present)
    if numel == 0:
        return None
    squares = sum(float(torch.linalg.vector_norm(g, dtype=torch.float64)) ** 2 for g in present)
    return math.sqrt(squares / numel) if math.isfinite(squares) else None


def ratio(num, den):
    """num / den; None when den is 0 or None, num is None, or the result is not finite.

    The study's per-element imbalance is rho = ratio(rms_gate, rms_prompt).
    """
    num, den = finite_or_none(num), finite_or_none(den)
    if num is None or den is None or den == 0.0:
        return None
    return finite_or_none(num / den)


def magnitude_gap(l2_prompt, l2_gate):
    """The study's gradient magnitude gap: log10(l2_prompt / l2_gate) from group L2 norms.

    > 2 (GAP_SEVERE) is what the study calls severe; it reported 2.60 on its main testbed. None when
    either norm is 0, negative or None. Group norms grow with sqrt(parameter count), so read it
    beside the per-element rho.
    """
    p, g = finite_or_none(l2_prompt), finite_or_none(l2_gate)
    if p is None or g is None or p <= 0.0 or g <= 0.0:
        return None
    return math.log10(p) - math.log10(g)


def relative_update(before, after):
    """Size of the step the optimizer applied to a group: ||after - before||_2 / ||before||_2.

    before, after: lists of tensors (the group's parameters before and after `optimizer.step()`),
    paired by position and taken together as one flat vector. None when ||before|| is 0 (a group
    that starts at zero, e.g. a zero-initialised bias, has no relative scale) or when there are no
    entries.
    """
    before = [t.detach().reshape(-1) for t in before if t is not None]
    after = [t.detach().reshape(-1) for t in after if t is not None]
    if len(before) != len(after):
        raise ValueError(f"relative_update: {len(before)} tensors before the step but {len(after)} after; "
                         "pass the same parameters, in the same order, to both")
    for i, (b, a) in enumerate(zip(before, after)):
        if b.numel() != a.numel():
            raise ValueError(f"relative_update: tensor {i} has {b.numel()} entries before the step and "
                             f"{a.numel()} after; pass copies of the same parameters")
    if not before:
        return None
    # Per tensor a norm accumulated in float64 (the difference of two nearby floats is exact in
    # their dtype), then one transfer to the host: this runs at every logged step.
    device = before[0].device
    diff = torch.stack([torch.linalg.vector_norm(a.to(b.device) - b, dtype=torch.float64).to(device)
                        for b, a in zip(before, after)])
    base = torch.stack([torch.linalg.vector_norm(b, dtype=torch.float64).to(device) for b in before])
    diff_sq, base_sq = torch.stack([(diff * diff).sum(), (base * base).sum()]).tolist()
    if base_sq == 0.0:
        return None
    return finite_or_none(math.sqrt(diff_sq) / math.sqrt(base_sq))


def fp16_underflow(grads, min_threshold=1e-7, tiny=1e-8, share=0.2):
    """The study's fp16 underflow check on a gradient (usually the gate's).

    min_abs_nonzero = min{|g_i| : g_i != 0}  (None when all are zero)
    share_tiny = #{|g_i| < tiny} / n          (exact zeros count)
    underflow = min_abs_nonzero < min_threshold  or  share_tiny > share
    No entries: both None and underflow False. An all-zero gradient has share_tiny 1 and so reads
    as underflow, as in the study; grad_stats' zero_share and dtype tell it apart from a gradient
    that never arrives (e.g. parameters trained by a surrogate loss).
    """
    flat = _present(grads)
    n = sum(int(g.numel()) for g in flat)
    if n == 0:
        return {"min_abs_nonzero": None, "share_tiny": None, "underflow": False}
    n_tiny = sum(int((g.abs() < tiny).sum()) for g in flat)
    nonzero = [g.abs()[(g != 0) & torch.isfinite(g)] for g in flat]
    nonzero = [t for t in nonzero if t.numel()]
    min_abs = min(float(t.min()) for t in nonzero) if nonzero else None
    share_tiny = n_tiny / n
    underflow = (min_abs is not None and min_abs < min_threshold) or share_tiny > share
    return {"min_abs_nonzero": min_abs, "share_tiny": share_tiny, "underflow": bool(underflow)}


def fp16_underflow_of_stats(stats, min_threshold=1e-7, share=0.2):
    """fp16_underflow (with tiny 1e-8) read from grad_stats of the same gradients, whose
    min_abs_nonzero and share_below_1e-8 are the same figures: no second pass over them (this runs
    at every logged step)."""
    if not stats.get("numel"):
        return {"min_abs_nonzero": None, "share_tiny": None, "underflow": False}
    min_abs, share_tiny = stats["min_abs_nonzero"], stats["share_below_1e-8"]
    underflow = (min_abs is not None and min_abs < min_threshold) or share_tiny > share
    return {"min_abs_nonzero": min_abs, "share_tiny": share_tiny, "underflow": bool(underflow)}


def activation_slope(logits, activation):
    """Mean local slope of the gate's nonlinearity at its pre-activations `logits`.

    The gate's gradient is dL/dz = dL/dg * dg/dz; this is the second factor, averaged, so a starving
    gate can be told apart: small dL/dg (its output does not matter) or small slope (it saturated).
      "sigmoid": mean s(1 - s), s = sigmoid(z)            (at most 0.25, at z = 0)
      "softmax": mean p_k(1 - p_k), p = softmax(z) over the last dim (the Jacobian's diagonal)
      "tanh":    mean 1 - tanh(z)^2
      "relu":    share of z > 0
    None for logits None or empty, or an activation not listed (including None); e.g. "topk_softmax"
    and "argmax" have no single smooth slope and get None.
    """
    if logits is None or activation is None:
        return None
    z = logits.detach().to(torch.float64)
    if z.numel() == 0:
        return None
    if activation == "sigmoid":
        s = torch.sigmoid(z)
        slope = s * (1.0 - s)
    elif activation == "softmax":
        p = torch.softmax(z, dim=-1)
        slope = p * (1.0 - p)
    elif activation == "tanh":
        slope = 1.0 - torch.tanh(z) ** 2
    elif activation == "relu":
        slope = (z > 0).to(torch.float64)
    else:
        return None
    return finite_or_none(slope.mean().item())


def layer_slope(norms):
    """The study's chain-length decay: least-squares slope of log10(norm_l) against layer index l.

    norms: per-layer gradient norms for layers l = 0..L-1 (a list or 1-D tensor; None allowed).
    Layers whose norm is None, non-positive or non-finite are skipped but keep their index. With
    x the kept indices and y = log10(norm):  slope = sum (x - x_mean)(y - y_mean) / sum (x - x_mean)^2,
    in decades per layer (negative: gradients shrink with depth). None with fewer than 2 usable layers.
    """
    if isinstance(norms, torch.Tensor):
        norms = norms.detach().to(torch.float64).reshape(-1).tolist()
    points = [(i, math.log10(v)) for i, v in enumerate(map(finite_or_none, norms)) if v is not None and v > 0]
    if len(points) < 2:
        return None
    x_mean = sum(x for x, _ in points) / len(points)
    y_mean = sum(y for _, y in points) / len(points)
    sxx = sum((x - x_mean) ** 2 for x, _ in points)
    sxy = sum((x - x_mean) * (y - y_mean) for x, y in points)
    return sxy / sxx


def loss_competition(term_grads, regularisers=(), *, conflict_deg=60.0, cancellation_max=0.3,
                     regulariser_share_max=0.5):
    """How the loss terms pull on the gate: the study's loss-competition figures.

    term_grads: {term name: gradient of that term alone w.r.t. the gate parameters} (any shape,
    flattened; None means the term does not reach the gate and counts as a zero vector).
      angles["a|b"] = degrees(acos(<g_a, g_b> / (||g_a|| ||g_b||)))  for each pair in insertion order;
                      None when either vector is zero
      max_angle = max of the defined angles (None if none)
      cancellation = 1 - ||sum_i g_i|| / sum_i ||g_i||   (0: all aligned; 1: they cancel out)
      regulariser_share = sum_{i in regularisers} ||g_i|| / sum_i ||g_i||
                          (names in `regularisers` absent from term_grads contribute 0, so a
                          regulariser switched off by the config needs no special case)
      conflict = max_angle > conflict_deg (60); cancellation_flag = cancellation > cancellation_max
      (0.3); regulariser_flag = regulariser_share > regulariser_share_max (0.5); flags are False when
      their figure is None. Cancellation and share are None when every gradient is zero.
    """
    names = list(term_grads)
    vectors = {}
    size = None
    for name in names:
        g = term_grads[name]
        if g is None:
            vectors[name] = None
            continue
        v = g.detach().reshape(-1).to(torch.float64)
        if size is not None and v.numel() != size[1]:
            raise ValueError(f"loss_competition: term '{name}' has a gate gradient of {v.numel()} entries but "
                             f"'{size[0]}' has {size[1]}; pass each term's gradient w.r.t. the same parameters")
        size = size or (name, v.numel())
        vectors[name] = v
    device = next((v.device for v in vectors.values() if v is not None), None)
    norms = {n: (float(v.norm()) if v is not None else 0.0) for n, v in vectors.items()}

    angles = {}
    for a, b in combinations(names, 2):
        if norms[a] == 0.0 or norms[b] == 0.0:
            angles[f"{a}|{b}"] = None
            continue
        cos = float(vectors[a] @ vectors[b].to(vectors[a].device)) / (norms[a] * norms[b])
        angles[f"{a}|{b}"] = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    defined = [x for x in angles.values() if x is not None]
    max_angle = max(defined) if defined else None

    total = sum(norms.values())
    if total == 0.0:
        cancellation = share = None
    else:
        summed = sum(v.to(device) for v in vectors.values() if v is not None)
        # Clamped: for aligned terms rounding can leave -2e-16 where the value is 0.
        cancellation = max(0.0, 1.0 - float(summed.norm()) / total)
        share = sum(norms.get(n, 0.0) for n in regularisers) / total
    return {"angles": angles, "max_angle": max_angle, "cancellation": cancellation,
            "regulariser_share": share,
            "conflict": max_angle is not None and max_angle > conflict_deg,
            "cancellation_flag": cancellation is not None and cancellation > cancellation_max,
            "regulariser_flag": share is not None and share > regulariser_share_max}


# --------------------------------------------------------------------------- gate outputs


def gate_output_stats(g, kind, eps=0.01):
    """Degradation figures of a batch of gate outputs g of shape (B, K) (B inputs, K options).

    All kinds:
      per_option_mean[k] = mean_b g[b, k]
      per_option_std[k]  = sqrt(mean_b (g[b, k] - per_option_mean[k])^2)   (population, ddof 0; 0 for B = 1)
      input_std = mean_k per_option_std[k]       (input sensitivity: 0 for a gate that ignores its input)
      saturation = #{g[b, k] <= eps or g[b, k] >= 1 - eps} / (B K)
      mean = mean_{b,k} g[b, k]
    mask kind:
      effective_length = mean_b #{k : g[b, k] > 0.5}
      binary_entropy = mean_{b,k} -(g ln g + (1-g) ln(1-g))   (nats, 0 ln 0 = 0)
    simplex kind (rows are distributions; they are used as given, not renormalised):
      sample_entropy = mean_b -sum_k g[b, k] ln g[b, k]   (nats)
      usage u_k = per_option_mean[k];  usage_entropy = -sum_k u_k ln u_k;  effective_options = exp(usage_entropy)
      top_share = max_k u_k
    Keys of the other kind are None, so every result has the same keys. With B = 0 every value is None.
    """
    _check_gate_matrix(g, kind)
    keys = ("per_option_mean", "per_option_std", "input_std", "saturation", "mean", "effective_length",
            "binary_entropy", "sample_entropy", "usage_entropy", "effective_options", "top_share")
    stats = dict.fromkeys(keys)
    if g.shape[0] == 0 or g.shape[1] == 0:
        return stats
    x = g.detach().to(torch.float64)
    option_mean = x.mean(dim=0)
    option_std = x.std(dim=0, correction=0)
    saturated = (x <= eps) | (x >= 1.0 - eps)
    stats.update(per_option_mean=option_mean.tolist(), per_option_std=option_std.tolist(),
                 input_std=float(option_std.mean()), saturation=float(saturated.to(torch.float64).mean()),
                 mean=float(x.mean()))
    if kind == "mask":
        stats["effective_length"] = float((x > 0.5).sum(dim=1).to(torch.float64).mean())
        stats["binary_entropy"] = float(_binary_entropy_nats(x).mean())
    else:
        usage_entropy = float(_entropy_nats(option_mean.clamp(min=0.0)))
        stats.update(sample_entropy=float(_entropy_nats(x.clamp(min=0.0), dim=1).mean()),
                     usage_entropy=usage_entropy, effective_options=math.exp(usage_entropy),
                     top_share=float(option_mean.max()))
    return {k: ([finite_or_none(x) for x in v] if isinstance(v, list) else finite_or_none(v))
            for k, v in stats.items()}


def choices_from_gate(g, kind):
    """One integer "choice" per input, for the mutual information with labels or domains.

    simplex: argmax_k g[b, k] (the option the input mostly uses).
    mask: the on/off pattern read as a binary number, code_b = sum_k [g[b, k] > 0.5] 2^k, so the MI
      measures whether the pattern depends on the label. For K > 62 the code would overflow int64,
      so the number of open options #{k : g[b, k] > 0.5} is used instead (coarser: patterns with the
      same count look alike).
    Returns a LongTensor of shape (B,) on g's device.
    """
    _check_gate_matrix(g, kind)
    x = g.detach()
    if kind == "simplex":
        return x.argmax(dim=1) if x.shape[1] else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    bits = (x > 0.5).to(torch.long)
    if bits.shape[1] > MAX_MASK_BITS:
        return bits.sum(dim=1)
    weights = 2 ** torch.arange(bits.shape[1], dtype=torch.long, device=bits.device)
    return (bits * weights).sum(dim=1)


def _joint_counts(choices, labels):
    """Contingency table of two integer vectors (rows: distinct choices, columns: distinct labels)."""
    c = torch.as_tensor(choices).detach().reshape(-1).cpu()
    y = torch.as_tensor(labels).detach().reshape(-1).cpu()
    if c.numel() != y.numel():
        raise ValueError(f"mutual information needs one label per choice: {c.numel()} choices but "
                         f"{y.numel()} labels; pass vectors of the same batch")
    if c.numel() == 0:
        return None
    if c.is_floating_point() or y.is_floating_point():
        raise TypeError("mutual information needs integer codes (choices_from_gate(...), class labels), "
                        f"found dtypes {c.dtype} and {y.dtype}; convert with .long()")
    _, ci = torch.unique(c, return_inverse=True)
    _, yi = torch.unique(y, return_inverse=True)
    n_c, n_y = int(ci.max()) + 1, int(yi.max()) + 1
    flat = torch.bincount(ci * n_y + yi, minlength=n_c * n_y)
    return flat.reshape(n_c, n_y).to(torch.float64)


def _mi_and_entropies(choices, labels):
    counts = _joint_counts(choices, labels)
    if counts is None:
        return None
    p = counts / counts.sum()
    pc, py = p.sum(dim=1), p.sum(dim=0)
    # sum p(c,y) ln p(c,y) - sum p(c) ln p(c) - sum p(y) ln p(y) = H(c) + H(y) - H(c, y).
    h_c, h_y = float(_entropy_nats(pc)), float(_entropy_nats(py))
    mi = h_c + h_y - float(_entropy_nats(p.reshape(-1)))
    # Rounding can leave -1e-16 where MI is 0 (independent variables); MI is never negative.
    return max(mi, 0.0), h_c, h_y


def mutual_information(choices, labels):
    """Plug-in mutual information (nats) between two integer vectors of equal length N.

    With the empirical joint p(c, y) = #{i : choices_i = c, labels_i = y} / N:
      MI = sum_{c,y} p(c,y) ln(p(c,y) / (p(c) p(y))) = H(choice) + H(label) - H(choice, label).
    None for N = 0. Biased upwards on small batches (at most ln min(#choices, #labels)); compare
    runs at equal batch sizes.
    """
    result = _mi_and_entropies(choices, labels)
    return None if result is None else result[0]


def normalized_mutual_information(choices, labels):
    """MI / min(H(choice), H(label)), in [0, 1]: 1 when one variable determines the other.

    0.0 when that minimum is 0 (one variable is constant, so it carries no information about the
    other and MI is 0 as well); None for N = 0.
    """
    result = _mi_and_entropies(choices, labels)
    if result is None:
        return None
    mi, h_c, h_y = result
    h_min = min(h_c, h_y)
    if h_min <= 0.0:
        return 0.0
    return min(mi / h_min, 1.0)


def _entropy_of_counts(counts):
    """Plug-in entropy (nats) of a histogram of counts (any shape, flattened) and its number of
    non-empty bins."""
    c = counts.reshape(-1)
    p = c / c.sum()
    return float(_entropy_nats(p)), int((c > 0).sum())


def mutual_information_test(choices, labels, permutations=200, seed=0):
    """MI(choice; label) with a bias correction and a permutation null, so that a value means the
    same at every sample size. choices, labels: integer vectors of equal length N.

      plugin       = H(c) + H(y) - H(c, y) with plug-in entropies (nats), as mutual_information
      miller_madow = the same with each entropy corrected by Miller and Madow's (m - 1) / (2 N),
                     m the number of non-empty bins (Miller 1955; Paninski 2003, Neural Computation
                     15(6), eq. 4): plugin + ((m_c - 1) + (m_y - 1) - (m_cy - 1)) / (2 N). It can be
                     slightly negative when the true MI is 0.
      null_mean, null_p95 = mean and 95th percentile of the plug-in MI of the same choices with the
                     labels shuffled by `permutations` random permutations (generator seeded with
                     `seed`): what independent choices read at this N and these marginals
      excess       = plugin - null_mean (nats)
      p_value      = (1 + #{null >= plugin}) / (1 + permutations)   (Phipson and Smyth 2010)
      n            = N
    Every figure is None for N = 0; with permutations = 0 the null figures are None.
    """
    counts = _joint_counts(choices, labels)
    keys = ("plugin", "miller_madow", "null_mean", "null_p95", "excess", "p_value", "n")
    if counts is None:
        return dict.fromkeys(keys)
    n = float(counts.sum())
    h_c, m_c = _entropy_of_counts(counts.sum(dim=1))
    h_y, m_y = _entropy_of_counts(counts.sum(dim=0))
    h_cy, m_cy = _entropy_of_counts(counts)
    plugin = max(h_c + h_y - h_cy, 0.0)
    miller_madow = plugin + ((m_c - 1) + (m_y - 1) - (m_cy - 1)) / (2.0 * n)
    result = dict(plugin=plugin, miller_madow=miller_madow, null_mean=None, null_p95=None, excess=None,
                  p_value=None, n=int(n))
    if permutations <= 0:
        return result
    c = torch.as_tensor(choices).detach().reshape(-1).cpu()
    y = torch.as_tensor(labels).detach().reshape(-1).cpu()
    _, ci = torch.unique(c, return_inverse=True)
    _, yi = torch.unique(y, return_inverse=True)
    n_c, n_y, size = int(ci.max()) + 1, int(yi.max()) + 1, ci.numel()
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.argsort(torch.rand(permutations, size, generator=generator), dim=1)
    shuffled = yi[order]  # (R, N): each row a random permutation of the labels
    cells = (torch.arange(permutations).unsqueeze(1) * (n_c * n_y) + ci.unsqueeze(0) * n_y + shuffled).reshape(-1)
    joint = torch.bincount(cells, minlength=permutations * n_c * n_y).reshape(permutations, n_c * n_y)
    p = joint.to(torch.float64) / size
    # The marginals do not change under a permutation, so only H(c, y) differs between draws.
    null = (h_c + h_y - _entropy_nats(p, dim=1)).clamp(min=0.0)
    result.update(null_mean=float(null.mean()), null_p95=float(torch.quantile(null, 0.95)),
                  excess=plugin - float(null.mean()),
                  p_value=(1 + int((null >= plugin - 1e-12).sum())) / (1 + permutations))
    return result


def choice_top_share(choices):
    """Share of the N choices equal to the most common one (1.0: every input gets the same option or
    on/off pattern); None for N = 0."""
    c = torch.as_tensor(choices).detach().reshape(-1).cpu()
    if c.numel() == 0:
        return None
    _, counts = torch.unique(c, return_counts=True)
    return float(counts.max()) / c.numel()


def pattern_stats(values, *, uniform_std=0.1, decay_corr=-0.5, trend_min_range=0.01):
    """The study's pattern figures for a 1-D vector v of gate values in [0, 1].

    v is e.g. sigma(g) of a per-task length/depth gate, or a gate's per-option means.
      std = sqrt(mean (v_i - mean v)^2)    (population, ddof 0)
      uniform = std < uniform_std (0.1)
      binary_entropy = mean_i -(v_i ln v_i + (1-v_i) ln(1-v_i))   (nats, 0 ln 0 = 0)
      effective_length = #{i : v_i > 0.5}     (an int)
      depth_monotonicity = Pearson corr(i, v_i) over i = 0..n-1   (None if v is constant or n < 2)
      range = max v - min v
      decay = depth_monotonicity < decay_corr (-0.5) and range >= trend_min_range (0.01, the
              DIAGNOSTICS.TREND_MIN_RANGE): a correlation does not depend on the scale, so values
              that differ by 1e-5 (a gate that barely moved from a constant init) would otherwise
              be called a trend
    Flags are False when their figure is None; for an empty vector every figure is None.
    """
    v = _as_float64(values, "pattern_stats").reshape(-1)
    if v.numel() == 0:
        return {"std": None, "uniform": False, "binary_entropy": None, "effective_length": None,
                "depth_monotonicity": None, "range": None, "decay": False}
    std = finite_or_none(v.std(correction=0).item())
    corr = _pearson(torch.arange(v.numel(), dtype=torch.float64), v) if v.numel() >= 2 else None
    spread = finite_or_none((v.max() - v.min()).item())
    return {"std": std, "uniform": std is not None and std < uniform_std,
            "binary_entropy": finite_or_none(_binary_entropy_nats(v).mean().item()),
            "effective_length": int((v > 0.5).sum()),
            "depth_monotonicity": corr, "range": spread,
            "decay": corr is not None and corr < decay_corr and spread is not None and spread >= trend_min_range}


def logit_sensitivity(base_logits, noisy_logits_by_sigma, *, inert_below=0.01):
    """The study's sensitivity test: how much the class logits move when the gate logits get noise.

    noisy_logits_by_sigma: {sigma: class logits with N(0, sigma^2) noise added to the gate logits}
    (the study uses sigma 0.1, 0.5, 1.0), each the same shape as base_logits.
      per_sigma[sigma] = mean |noisy - base|     (keys kept as given)
      max = max over sigmas (None when there are none)
      inert = max < inert_below (0.01)            (False when max is None)
    """
    base = base_logits.detach().to(torch.float64)
    per_sigma = {}
    for sigma, noisy in noisy_logits_by_sigma.items():
        if tuple(noisy.shape) != tuple(base.shape):
            raise ValueError(f"logit_sensitivity: logits for sigma {sigma} have shape {tuple(noisy.shape)}, "
                             f"the base logits {tuple(base.shape)}; evaluate both on the same batch")
        diff = (noisy.detach().to(torch.float64).to(base.device) - base).abs()
        per_sigma[sigma] = finite_or_none(diff.mean().item()) if diff.numel() else None
    defined = [x for x in per_sigma.values() if x is not None]
    top = max(defined) if defined else None
    return {"per_sigma": per_sigma, "max": top, "inert": top is not None and top < inert_below}


# --------------------------------------------------------------------------- summaries over steps


def median(values):
    """The median of the defined entries (None and NaN ignored): the middle value, or the mean of
    the two middle values for an even count. None when no entry is defined."""
    xs = sorted(float(v) for v in values if v is not None and not math.isnan(float(v)))
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2.0


def tail(values, share):
    """The last ceil(share * n) entries of `values` as a list (at least 1 when n > 0; all when share >= 1).

    Used for the verdict's WINDOW (the last half of training by default). A 1e-9 tolerance keeps
    float products such as 0.28 * 25 = 7.000000000000001 from rounding up to 8.
    """
    values = list(values)
    if not values:
        return []
    count = min(len(values), max(1, math.ceil(share * len(values) - 1e-9)))
    return values[-count:]


# --------------------------------------------------------------------------- embedding stability


def _class_cosines(image, text):
    """(N, C) cosines of unit image features (N, D) with unit class text features (C, D) or,
    instance-conditioned, (N, C, D)."""
    image, text = image.to(torch.float64), text.to(torch.float64)
    if text.dim() == 2:
        return image @ text.t()
    return torch.einsum("nd,ncd->nc", image, text)


def embedding_alignment(image, text, labels):
    """The study's embedding figures from unit-norm features of an evaluation.

      alignment  = mean_i cos(x_i, t_{y_i})                      (image-text alignment)
      separation = mean_i [cos(x_i, t_{y_i}) - max_{c != y_i} cos(x_i, t_c)]   (class separation margin)
    image (N, D), text (C, D) or (N, C, D), labels (N,). None for N == 0 or a single class.
    """
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() == 0:
        return {"alignment": None, "separation": None}
    cos = _class_cosines(image, text)
    own = cos.gather(1, labels.view(-1, 1)).squeeze(1)
    if cos.shape[1] < 2:
        return {"alignment": finite_or_none(own.mean()), "separation": None}
    others = cos.scatter(1, labels.view(-1, 1), float("-inf")).max(dim=1).values
    return {"alignment": finite_or_none(own.mean()), "separation": finite_or_none((own - others).mean())}


def silhouette(features, labels):
    """Mean silhouette of the features grouped by label, cosine distance d = 1 - cos:
    s_i = (b_i - a_i) / max(a_i, b_i), a_i the mean distance to the other members of i's class,
    b_i the smallest mean distance to another class; s_i = 0 for a class of one. None when fewer
    than 2 classes or no features."""
    labels = torch.as_tensor(labels).long().reshape(-1)
    classes = labels.unique()
    if labels.numel() == 0 or classes.numel() < 2:
        return None
    x = torch.nn.functional.normalize(features.to(torch.float64), dim=-1)
    dist = 1.0 - x @ x.t()
    scores = []
    for i in range(labels.numel()):
        same = labels == labels[i]
        n_same = int(same.sum()) - 1
        if n_same == 0:
            scores.append(0.0)
            continue
        a = float(dist[i][same].sum() / n_same)  # d(i, i) = 0 adds nothing
        b = min(float(dist[i][labels == c].mean()) for c in classes if c != labels[i])
        scores.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return finite_or_none(sum(scores) / len(scores))


def text_drift(previous, current):
    """1 - mean_c cos(t_c before, t_c now) between two evaluations' class text features (C, D)
    (instance-conditioned ones averaged over images first). None when either is missing."""
    if previous is None or current is None:
        return None
    a = torch.nn.functional.normalize(previous.to(torch.float64), dim=-1)
    b = torch.nn.functional.normalize(current.to(torch.float64), dim=-1)
    if a.shape != b.shape:
        return None
    return finite_or_none(1.0 - (a * b).sum(-1).mean())


# --------------------------------------------------------------------------- functional effect


def per_example_change(base_logits, other_logits, labels):
    """How each prediction changes between two versions of a model on the same N inputs.

    base_logits, other_logits: class logits (N, C), e.g. with the learned gate and with the gate
    replaced by a constant; labels (N,). Per example n (float64 tensors of shape (N,)):
      abs_logit_delta[n] = mean_c |other[n, c] - base[n, c]|          (logit units)
      kl[n] = KL(p_base(n) || p_other(n)) = sum_c p_base ln(p_base / p_other),  p = softmax(logits)  (nats)
      changed[n] = 1.0 if argmax base[n] != argmax other[n] else 0.0
      loss_base[n], loss_other[n] = cross-entropy -ln p(labels[n]) of each (nats)
      correct_base[n], correct_other[n] = 1.0 if the argmax is the label else 0.0
    Kept per example so that batches can be concatenated and summarised (summarise_change) without
    holding every logit. Raises ValueError when the shapes differ.
    """
    base = base_logits.detach().to(torch.float64)
    other = other_logits.detach().to(torch.float64).to(base.device)
    labels = torch.as_tensor(labels).reshape(-1).long().to(base.device)
    if base.shape != other.shape or base.dim() != 2 or labels.numel() != base.shape[0]:
        raise ValueError(f"per_example_change needs logits of equal shape (N, C) and N labels, found "
                         f"{tuple(base.shape)}, {tuple(other.shape)} and {labels.numel()} labels; "
                         "evaluate both versions on the same batch")
    log_p, log_q = torch.log_softmax(base, dim=1), torch.log_softmax(other, dim=1)
    pred_base, pred_other = base.argmax(dim=1), other.argmax(dim=1)
    return {
        "abs_logit_delta": (other - base).abs().mean(dim=1),
        "kl": (log_p.exp() * (log_p - log_q)).sum(dim=1).clamp(min=0.0),  # rounding can leave -1e-17
        "changed": (pred_base != pred_other).to(torch.float64),
        "loss_base": -log_p.gather(1, labels.view(-1, 1)).squeeze(1),
        "loss_other": -log_q.gather(1, labels.view(-1, 1)).squeeze(1),
        "correct_base": (pred_base == labels).to(torch.float64),
        "correct_other": (pred_other == labels).to(torch.float64),
    }


def concat_examples(parts):
    """per_example_change results of several batches joined into one (None when there are none)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}


def bootstrap_mean_ci(values, resamples=1000, level=0.95, seed=0):
    """Percentile bootstrap interval of the mean of `values` (N,) (Efron and Tibshirani 1993, ch. 13):
    the (1 - level) / 2 and (1 + level) / 2 quantiles of the mean over `resamples` resamples of N
    values drawn with replacement (generator seeded with `seed`). Returns (low, high); (None, None)
    for N = 0 or resamples = 0."""
    v = _as_float64(values, "bootstrap_mean_ci").reshape(-1).cpu()
    if v.numel() == 0 or resamples <= 0:
        return None, None
    generator = torch.Generator().manual_seed(int(seed))
    index = torch.randint(v.numel(), (int(resamples), v.numel()), generator=generator)
    means = v[index].mean(dim=1)
    tail_share = (1.0 - level) / 2.0
    return float(torch.quantile(means, tail_share)), float(torch.quantile(means, 1.0 - tail_share))


def summarise_change(examples, resamples=1000, level=0.95, seed=0):
    """The functional figures of one comparison, from per-example tensors (per_example_change,
    possibly concatenated over batches):

      n                   = number of examples
      mean_abs_logit_delta = mean_n abs_logit_delta[n]               (logit units)
      kl                  = mean_n KL(p_base || p_other)              (nats; not quantised by N)
      changed_share       = mean_n changed[n]                         (share of predictions that change)
      loss_base, loss_other = mean cross-entropy of each (nats)
      loss_change         = loss_other - loss_base   (> 0: the base, e.g. the learned gate, has the lower loss)
      acc_base, acc_other = accuracy of each (%)
      acc_delta           = acc_base - acc_other (points)
      acc_delta_ci        = [low, high]: paired percentile bootstrap interval at `level` of acc_delta
                            (resampling examples, so both versions are judged on the same draws)
    Every value is None when there are no examples.
    """
    keys = ("n", "mean_abs_logit_delta", "kl", "changed_share", "loss_base", "loss_other", "loss_change",
            "acc_base", "acc_other", "acc_delta", "acc_delta_ci")
    if not examples or examples["kl"].numel() == 0:
        return dict.fromkeys(keys)
    mean = {k: float(v.mean()) for k, v in examples.items()}
    low, high = bootstrap_mean_ci(100.0 * (examples["correct_base"] - examples["correct_other"]),
                                  resamples, level, seed)
    return {"n": int(examples["kl"].numel()), "mean_abs_logit_delta": mean["abs_logit_delta"], "kl": mean["kl"],
            "changed_share": mean["changed"], "loss_base": mean["loss_base"], "loss_other": mean["loss_other"],
            "loss_change": mean["loss_other"] - mean["loss_base"], "acc_base": 100.0 * mean["correct_base"],
            "acc_other": 100.0 * mean["correct_other"],
            "acc_delta": 100.0 * (mean["correct_base"] - mean["correct_other"]),
            "acc_delta_ci": None if low is None else [low, high]}


def input_dependence(first, second=None, resamples=1000, seed=0):
    """How much a gate's output depends on its input, with the call-to-call noise taken out.

    first, second: gate outputs (N, K) of two calls on the same N inputs (second None, or equal to
    first: the gate is deterministic). Per option k, over inputs n:
      total_var[k]  = mean_n (first[n, k] - mean_n first[n, k])^2   (population variance)
      repeat_var[k] = mean_n (first[n, k] - second[n, k])^2 / 2     (noise variance: with
                      y = f(x) + e, Var(y1 - y2) = 2 Var(e))
      input_std  = mean_k sqrt(total_var[k])              (what gate_output_stats calls input_std)
      repeat_std = mean_k sqrt(repeat_var[k])             (0 for a deterministic gate)
      signal_std = mean_k sqrt(max(total_var[k] - repeat_var[k], 0))   (the part the input explains)
      signal_std_low = sqrt(max(low, 0)), low the lower end of the 95 % bootstrap interval
                      (bootstrap_mean_ci over inputs) of the mean over n of
                      d[n] = mean_k [(first[n, k] - mean first[., k])^2 - (first[n, k] - second[n, k])^2 / 2];
                      None for a deterministic gate, which needs no interval
    A gate that outputs fresh noise has input_std > 0, signal_std near 0 (a square root magnifies
    the sampling error of a variance near 0, hence the interval) and signal_std_low 0. Values are None for N = 0.
    """
    _check_gate_matrix(first, "mask")
    keys = ("input_std", "repeat_std", "signal_std", "signal_std_low")
    x = first.detach().to(torch.float64)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return dict.fromkeys(keys)
    centred = (x - x.mean(dim=0)) ** 2
    total = centred.mean(dim=0)
    if second is None or torch.equal(second.detach().to(torch.float64).to(x.device), x):
        return {"input_std": float(total.sqrt().mean()), "repeat_std": 0.0,
                "signal_std": float(total.sqrt().mean()), "signal_std_low": None}
    y = second.detach().to(torch.float64).to(x.device)
    if y.shape != x.shape:
        raise ValueError(f"input_dependence: the two calls' outputs have shapes {tuple(x.shape)} and "
                         f"{tuple(y.shape)}; pass outputs of the same inputs")
    noise = (x - y) ** 2 / 2.0
    repeat = noise.mean(dim=0)
    low, _ = bootstrap_mean_ci((centred - noise).mean(dim=1), resamples, 0.95, seed)
    return {"input_std": float(total.sqrt().mean()), "repeat_std": float(repeat.sqrt().mean()),
            "signal_std": float((total - repeat).clamp(min=0.0).sqrt().mean()),
            "signal_std_low": math.sqrt(max(low, 0.0)) if low is not None else None}


def functional_effect(reference_kl, repeat_kl=None, resamples=1000, seed=0):
    """The reproducible effect of replacing a gate by its reference, with a 95 % bootstrap interval.

    reference_kl (N,): per input, KL(p with the learned gate || p with the reference gate) (nats);
    repeat_kl (N,) or None: per input, KL between two calls of the learned gate (None or all 0 for a
    deterministic gate). With y = f(x) + e and a reference c, for small changes E KL(y1 || c) ~
    d^2 + s^2 and E KL(y1 || y2) ~ 2 s^2 (second-order expansion of KL, d the reproducible change,
    s the noise), so per input e[n] = reference_kl[n] - repeat_kl[n] / 2 estimates d^2:
      effect = mean_n e[n];  effect_low, effect_high = bootstrap_mean_ci(e) (resampling inputs)
    For a deterministic gate e = reference_kl. All None for N = 0.
    """
    ref = _as_float64(reference_kl, "functional_effect").reshape(-1).cpu()
    if ref.numel() == 0:
        return {"effect": None, "effect_low": None, "effect_high": None}
    e = ref if repeat_kl is None else ref - _as_float64(repeat_kl, "functional_effect").reshape(-1).cpu() / 2.0
    low, high = bootstrap_mean_ci(e, resamples, 0.95, seed)
    return {"effect": float(e.mean()), "effect_low": low, "effect_high": high}


# --------------------------------------------------------------------------- linear probe


def linear_probe(train_x, train_y, test_x, test_y, weight_decay=1e-3, max_iter=100):
    """Is a label linearly decodable from features? A multinomial logistic regression fitted on the
    training set, scored on held-out data (the linear probe of Alain and Bengio 2016).

    train_x (N, D), train_y (N,) integer labels; test_x (M, D), test_y (M,). Features are
    standardised with the training set's per-feature mean and std; W (D, C) and b (C,) start at 0 and
    minimise mean cross-entropy + weight_decay * ||W||^2 / 2 by L-BFGS (float64, at most max_iter
    iterations; deterministic). Returns
      accuracy        = held-out accuracy (%)
      train_accuracy  = accuracy on the training set (%)
      chance          = held-out accuracy (%) of always answering the training set's most common label
      margin          = accuracy - chance (points)
      classes, n_train, n_test
    A test label absent from the training set counts as an error. None when the training set is
    empty or holds a single label (nothing to tell apart), or the test set is empty.
    """
    x = _as_float64(train_x, "linear_probe train_x").cpu()
    xt = _as_float64(test_x, "linear_probe test_x").cpu()
    y = torch.as_tensor(train_y).reshape(-1).long().cpu()
    yt = torch.as_tensor(test_y).reshape(-1).long().cpu()
    if x.dim() != 2 or xt.dim() != 2 or x.shape[0] != y.numel() or xt.shape[0] != yt.numel() or \
            (x.shape[0] and xt.shape[0] and x.shape[1] != xt.shape[1]):
        raise ValueError(f"linear_probe needs features (N, D), (M, D) with one label each; found "
                         f"{tuple(x.shape)} with {y.numel()} labels and {tuple(xt.shape)} with {yt.numel()}")
    classes, yi = torch.unique(y, return_inverse=True)
    if y.numel() == 0 or classes.numel() < 2 or yt.numel() == 0:
        return None
    mean, std = x.mean(dim=0), x.std(dim=0, correction=0).clamp(min=1e-12)
    z, zt = (x - mean) / std, (xt - mean) / std
    weight = torch.zeros(x.shape[1], classes.numel(), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes.numel(), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=int(max_iter), line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, yi) + 0.5 * weight_decay * (weight ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = classes[(zt @ weight + bias).argmax(dim=1)]
        train_predicted = classes[(z @ weight + bias).argmax(dim=1)]
    majority = classes[torch.bincount(yi).argmax()]
    accuracy = 100.0 * float((predicted == yt).to(torch.float64).mean())
    chance = 100.0 * float((yt == majority).to(torch.float64).mean())
    return {"accuracy": accuracy, "train_accuracy": 100.0 * float((train_predicted == y).to(torch.float64).mean()),
            "chance": chance, "margin": accuracy - chance, "classes": int(classes.numel()),
            "n_train": int(y.numel()), "n_test": int(yt.numel())}
