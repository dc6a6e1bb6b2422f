"""`REMEDY.CLUSTER_INIT`: start a router at a k-means clustering of its conditioning.

Failure mode targeted: **mixed early routing**. A router that starts near uniform, or split at
random, sends every prompt of a pool images of every domain; when the domains' label mappings
conflict, the prompts first learn a compromise (on the demo backbone often a collapse to uniform
predictions, loss ln C) before the router has learnt anything, and a collapsed prompt gets no
gradient to recover. Domain discovery first: before training, the conditioning the gate reads
is collected for every training image and clustered with k-means into K clusters (K = the
gate's options), and the router starts choosing the nearest centroid, so that from the first
step each prompt sees one cluster; training then fine-tunes the router. It helps only where the
domain is the dominant structure of the conditioning (k-means finds it), e.g. the patch
statistics (GATE.COND patch_mean) of tinted or light/dark backgrounds, not the last image
feature of a CLIP trained on shapes (its clusters are shapes); elsewhere it locks in another
split. With well-separated clusters, SCALE 1 gives logit gaps of |c_j - c_k|^2 / (2 s2) at a centroid (11.9
for the multi-domain task's patch statistics): the router starts saturated and hardly moves, i.e. one prompt
per cluster; a smaller SCALE leaves the router room to learn.

For a gate whose logits are linear in the conditioning x, z = W x + b (softmax with HIDDEN 0,
gumbel), with centroids c_k and s2 the mean squared distance of a point to its centroid:

    W_k = SCALE * c_k / s2,   b_k = -SCALE * |c_k|^2 / (2 s2)
    so z_j - z_k = SCALE * (|x - c_k|^2 - |x - c_j|^2) / (2 s2): argmax_k z_k = the nearest centroid.

Applied once at the start of training (start_epoch 0; a resumed run keeps its checkpoint's
router). k-means: Lloyd's algorithm from k-means++ seeds (Arthur and Vassilvitskii 2007), the
best of N_INIT starts by inertia, seeded by cfg.SEED.
"""
from yacs.config import CfgNode as CN

import torch
import torch.nn as nn

from ..config_spec import above, at_least, declare, declare_rule
from ..plumbing import fork_rng
from .common import learnable_heads, tell_once

MAX_ITERS = 100


def add_config(remedy_cfg):
    remedy_cfg.CLUSTER_INIT = CN()
    remedy_cfg.CLUSTER_INIT.ENABLED = False
    remedy_cfg.CLUSTER_INIT.SCALE = 1.0  # sharpness: logit gap per within-cluster variance (formula above)
    remedy_cfg.CLUSTER_INIT.N_INIT = 10  # k-means restarts; the lowest inertia wins
    declare(remedy_cfg.CLUSTER_INIT, SCALE=above(0), N_INIT=at_least(1))
    declare_rule(remedy_cfg.CLUSTER_INIT, one_starting_router)


def one_starting_router(cfg):
    node = cfg.REMEDY
    if not node.CLUSTER_INIT.ENABLED:
        return None
    for other, on in (("REMEDY.INIT.ENABLED", node.INIT.ENABLED), ("REMEDY.FREEZE.ALWAYS", node.FREEZE.ALWAYS)):
        if on:
            return "REMEDY.CLUSTER_INIT.ENABLED", (f"REMEDY.CLUSTER_INIT and {other} both set the gate's starting "
                                                   "logits; switch one of them off")
    return None


def kmeans(x, k, n_init=10, seed=0, max_iters=MAX_ITERS):
    """k-means of the rows of x (N, D) into k clusters; returns (centroids (k, D), assignment (N,),
    inertia = sum of squared distances to the assigned centroid). Raises ValueError when N < k."""
    x = x.detach().to(torch.float64)
    if x.dim() != 2 or x.shape[0] < k:
        raise ValueError(f"k-means into {k} clusters needs at least {k} points of shape (N, D), got {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(int(seed))
    best = None
    for _ in range(n_init):
        centroids = _kmeans_pp_seeds(x, k, generator)
        for _ in range(max_iters):
            assignment = torch.cdist(x, centroids).argmin(dim=1)
            updated = torch.stack([x[assignment == j].mean(0) if (assignment == j).any() else centroids[j]
                                   for j in range(k)])
            if torch.equal(updated, centroids):
                break
            centroids = updated
        assignment = torch.cdist(x, centroids).argmin(dim=1)
        inertia = float(((x - centroids[assignment]) ** 2).sum())
        if best is None or inertia < best[2]:
            best = (centroids, assignment, inertia)
    return best


def _kmeans_pp_seeds(x, k, generator):
    """k-means++: the first centre uniformly, each next one with probability proportional to the
    squared distance to the nearest centre chosen so far."""
    centres = [x[torch.randint(x.shape[0], (1,), generator=generator)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(dim=1).values ** 2
        if float(d2.sum()) == 0.0:  # fewer distinct points than clusters: repeat one
            centres.append(centres[-1].clone())
            continue
        centres.append(x[torch.multinomial(d2 / d2.sum(), 1, generator=generator)].squeeze(0))
    return torch.stack(centres)


def linear_router_layer(head):
    """The Linear that maps the conditioning straight to the gate's logits (the gate's
    `output_layer()` when it reads the conditioning itself), or a ValueError naming the gate (an
    MLP router, or a gate without such a layer, cannot be set to nearest-centroid scores)."""
    gate = head.gate
    layer = gate.output_layer() if hasattr(gate, "output_layer") else None
    if isinstance(layer, nn.Linear) and layer.in_features == getattr(gate, "cond_dim", None):
        return layer
    raise ValueError(f"REMEDY.CLUSTER_INIT sets a router's logits to nearest-centroid scores, which needs logits "
                     f"linear in the conditioning; gate '{head.gate_name}' on '{head.name}' has none (use GATE.NAME "
                     "softmax with GATE.SOFTMAX.HIDDEN 0, or gumbel)")


def nearest_centroid_weights(centroids, spread, scale=1.0):
    """(W (K, D), b (K,)) with argmax_k (W x + b)_k = the nearest centroid (formula above)."""
    c = centroids.to(torch.float64)
    return scale * c / spread, -scale * (c * c).sum(dim=1) / (2.0 * spread)


@torch.no_grad()
def training_conditions(context, heads):
    """{head: (N, D) the conditioning each head reads, over the whole training set}, collected in
    eval mode under a forked RNG (the run's random stream is untouched) and without the heads'
    listeners (no hook sees these forward passes)."""
    captured = {head: [] for head in heads}
    saved = {head: (head.cond_transform, head.listener) for head in heads}

    def capture(head):
        def keep(cond):
            captured[head].append(cond.detach().float().cpu())
            return cond
        return keep

    model = context.model
    was_training = model.training
    try:
        for head in heads:
            head.cond_transform, head.listener = capture(head), None
        model.eval()
        with fork_rng():
            for batch in context.train_loader_x:
                images, _ = context.parse_batch_train(batch)
                model(images)
    finally:
        for head, (transform, listener) in saved.items():
            head.cond_transform, head.listener = transform, listener
        model.train(was_training)
    return {head: torch.cat(conds) for head, conds in captured.items() if conds}


def before_train(context, cfg):
    node = cfg.CLUSTER_INIT
    if not node.ENABLED:
        return
    heads = [h for h in learnable_heads(context) if h.kind == "simplex"]
    if not heads:
        tell_once(context, f"REMEDY.CLUSTER_INIT: trainer {context.cfg.TRAINER.NAME} has no learnable simplex gate "
                           "(a router over options); it changes nothing")
        return
    if context.start_epoch != 0:
        return
    layers = {head: linear_router_layer(head) for head in heads}
    for head, conds in training_conditions(context, heads).items():
        k = head.gate.num_options
        centroids, assignment, inertia = kmeans(conds, k, int(node.N_INIT), context.cfg.SEED)
        spread = max(inertia / conds.shape[0], 1e-12)
        weight, bias = nearest_centroid_weights(centroids, spread, float(node.SCALE))
        layer = layers[head]
        with torch.no_grad():
            layer.weight.copy_(weight.to(layer.weight.dtype))
            layer.bias.copy_(bias.to(layer.bias.dtype))
        sizes = torch.bincount(assignment, minlength=k).tolist()
        print(f"REMEDY.CLUSTER_INIT: gate '{head.gate_name}' on '{head.name}' starts at k-means of its conditioning "
              f"({conds.shape[0]} training images, cluster sizes {sizes})")
