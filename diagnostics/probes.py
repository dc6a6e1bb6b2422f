"""Evaluations with a gate altered: the counterfactual constant gate and the study's probes.

Every probe runs under `quiet_probe`, which keeps the run's random number generators and the
model's train/eval mode as they were and silences the gates' listeners, so that turning the
diagnostics on changes no number of the training run.
"""
import contextlib

import torch

from gates.plumbing import fork_rng

from . import metrics


@contextlib.contextmanager
def quiet_probe(trainer):
    """RNG states, train/eval mode and gate listeners restored on exit; gate probes cleared."""
    heads = trainer.gate_heads
    listeners = [h.listener for h in heads]
    training = trainer.model.training
    with fork_rng():
        try:
            for h in heads:
                h.listener = None
            yield
        finally:
            for h, listener in zip(heads, listeners):
                h.listener = listener
                h.override = h.cond_transform = h.output_transform = None
            trainer.model.train(training)


def test_batches(loader, max_batches):
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            return
        yield batch


@torch.no_grad()
def evaluate(trainer, loader, max_batches=0, keep_logits=False):
    """Top-1 accuracy (%) of the model as it is now configured, in eval mode (and its logits)."""
    trainer.model.eval()
    correct = total = 0
    logits = []
    for batch in test_batches(loader, max_batches):
        image, label = trainer.parse_batch_test(batch)
        output = trainer.model_inference(image)
        correct += (output.argmax(dim=1) == label).sum().item()
        total += label.numel()
        if keep_logits:
            logits.append(output.float().cpu())
    acc = 100.0 * correct / total if total else None
    return (acc, torch.cat(logits) if logits else None) if keep_logits else acc


def shuffled(cond):
    """The conditioning of another image of the batch (a fixed derangement when B > 1)."""
    if cond.shape[0] < 2:
        return cond
    return cond.roll(1, dims=0)


def same_moments_noise(cond):
    """Gaussian noise with the batch's per-feature mean and std: the same statistics, no image."""
    mean = cond.mean(0, keepdim=True)
    std = cond.std(0, keepdim=True, unbiased=False) if cond.shape[0] > 1 else cond.abs().mean().expand_as(mean)
    return mean + std * torch.randn_like(cond)


def logit_noise(activation, sigma):
    """An output transform: the gate's output recomputed with N(0, sigma^2) added to its logits."""
    def transform(g):
        if activation == "softmax":
            return torch.softmax(torch.log(g.clamp_min(1e-12)) + sigma * torch.randn_like(g), dim=-1)
        p = g.clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid(torch.log(p) - torch.log1p(-p) + sigma * torch.randn_like(g))
    return transform


def per_layer_mean(g):
    """Every option of a row set to the row's mean (per-layer instead of per-token gates)."""
    return g.mean(dim=1, keepdim=True).expand_as(g)


def fixed_schedules(num_options):
    """The study's fixed gate schedules, as gate values (sigmoid of the logits it names)."""
    k = num_options
    return {
        "uniform": torch.sigmoid(torch.zeros(k)),
        "full_on": torch.sigmoid(torch.full((k,), 2.0)),
        "decay": torch.sigmoid(torch.linspace(2.0, -2.0, k)),
        "increase": torch.sigmoid(torch.linspace(-2.0, 2.0, k)),
    }


def random_gate(num_options, effective_length, seed=0):
    """A random 0/1 gate with `effective_length` options open (drawn with its own generator)."""
    n = int(round(min(max(effective_length, 0), num_options)))
    order = torch.randperm(num_options, generator=torch.Generator().manual_seed(seed))
    g = torch.zeros(num_options)
    g[order[:n]] = 1.0
    return g


def counterfactual(trainer, loader, head, mean_output):
    """Accuracy with `head`'s output replaced by its training-set mean (a constant gate)."""
    with quiet_probe(trainer):
        head.override = mean_output.to(trainer.device)
        return evaluate(trainer, loader)


def input_tests(trainer, loader, head, seed=0):
    """Accuracy with the conditioning shuffled across the batch, and replaced by noise."""
    out = {}
    with quiet_probe(trainer):
        torch.manual_seed(seed)
        head.cond_transform = shuffled
        out["acc_shuffled_cond"] = evaluate(trainer, loader)
        head.cond_transform = same_moments_noise
        out["acc_noise_cond"] = evaluate(trainer, loader)
    return out


def schedule_probes(trainer, loader, head, effective_length, max_batches):
    """The study's comparisons for a mask gate: fixed schedules, a random gate with the same
    effective length, and per-layer (mean) gates; accuracy of each beside the learned gate's."""
    out = {}
    with quiet_probe(trainer):
        out["learned"] = evaluate(trainer, loader, max_batches)
        for name, g in fixed_schedules(head.gate.num_options if hasattr(head.gate, "num_options")
                                       else head.last_output.shape[1]).items():
            head.override = g.to(trainer.device)
            out[name] = evaluate(trainer, loader, max_batches)
        k = head.last_output.shape[1]
        head.override = random_gate(k, effective_length).to(trainer.device)
        out["random_same_length"] = evaluate(trainer, loader, max_batches)
        head.override = None
        head.output_transform = per_layer_mean
        out["per_layer_mean"] = evaluate(trainer, loader, max_batches)
    return out


def sensitivity_probe(trainer, loader, head, sigmas, max_batches, seed=0):
    """Mean |change of the model's logits| with Gaussian noise of each sigma on the gate logits."""
    activation = getattr(head.gate, "activation", None)
    if activation not in ("sigmoid", "softmax"):
        return None
    with quiet_probe(trainer):
        torch.manual_seed(seed)
        _, base = evaluate(trainer, loader, max_batches, keep_logits=True)
        noisy = {}
        for sigma in sigmas:
            head.output_transform = logit_noise(activation, float(sigma))
            noisy[float(sigma)] = evaluate(trainer, loader, max_batches, keep_logits=True)[1]
    return metrics.logit_sensitivity(base, noisy)


def loss_competition_probe(trainer, batch):
    """Per-loss-term gradients on each gate's parameters for one training batch (train mode)."""
    out = {}
    with quiet_probe(trainer):
        trainer.model.train()
        image, label = trainer.parse_batch_train(batch)
        losses = trainer.compute_losses(trainer.model(image), label)
        for head in trainer.gate_heads:
            params = [p for p in head.parameters() if p.requires_grad]
            if not params:
                continue
            term_grads = {}
            for name, loss in losses.items():
                if not loss.requires_grad:
                    term_grads[name] = None
                    continue
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                flat = [g.reshape(-1) for g in grads if g is not None]
                term_grads[name] = torch.cat(flat) if flat else None
            out[head.name] = metrics.loss_competition(term_grads, [n for n in losses if n != "ce"])
    return out


@torch.no_grad()
def embedding_probe(trainer, loader, previous_text=None, max_images=2000):
    """The study's embedding figures on an evaluation split: image-text alignment, class
    separation margin, silhouette of the image features by class, and the drift of the class
    text features since `previous_text` (the last evaluation's). Returns (figures, class text (C, D))."""
    images, texts, labels = [], [], []
    with quiet_probe(trainer):
        trainer.model.eval()
        with trainer.capture_embeddings() as sink:
            for batch in loader:
                image, label = trainer.parse_batch_test(batch)
                start = len(sink)
                trainer.model_inference(image)
                if len(sink) == start:
                    continue
                img, txt = sink[-1]
                images.append(img.float().cpu())
                texts.append(txt.float().cpu())
                labels.append(label.cpu())
                del sink[:]
                if sum(x.shape[0] for x in images) >= max_images:
                    break
    if not images:
        return None, None
    image, label = torch.cat(images), torch.cat(labels)
    per_image = texts[0].dim() == 3
    text = torch.cat(texts) if per_image else texts[0]
    class_text = text.mean(0) if per_image else text
    figures = metrics.embedding_alignment(image, text, label)
    figures["silhouette"] = metrics.silhouette(image, label)
    figures["text_drift"] = metrics.text_drift(previous_text, class_text)
    return figures, class_text
