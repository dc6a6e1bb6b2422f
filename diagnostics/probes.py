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
    """The conditioning of other images of the batch: a random permutation of its rows (torch's
    global generator, seeded by the probe). A real permutation, not a shift: in a test set ordered
    by class or domain a neighbour mostly shares both, so a shift by one barely shuffles."""
    if cond.shape[0] < 2:
        return cond
    return cond[torch.randperm(cond.shape[0], device=cond.device)]


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


def _reset(head):
    head.override = head.cond_transform = head.output_transform = None


@torch.no_grad()
def functional_pass(trainer, loader, head, alternatives, max_batches=0, seed=0):
    """The model with `head`'s learned gate against the same model with the gate altered, batch by
    batch on the same inputs (so a shuffling training loader is fine), in eval mode.

    alternatives: {name: configure(head)}, each setting the head's `override` (a constant gate),
    `cond_transform` (shuffled or noise conditioning) or `output_transform`. Per batch: the learned
    model's logits, the gate's output and conditioning (through a listener), a second call of the
    gate on the same conditioning (a gate that draws fresh noise at evaluation answers differently;
    the model is then run with that second answer: the call-to-call baseline), and each
    alternative's logits.
    Returns {"changes": {name: per-example changes (metrics.per_example_change, concatenated)},
    "repeat": the learned model against itself run again (None for a deterministic gate),
    "gate", "gate_repeat": the gate's outputs of both calls (rows, K), "cond": its conditioning,
    "labels", "domains" (None when the loader gives none)}; gate rows equal the inputs only for a
    gate that reads each input (per-task gates give one row per forward).
    """
    changes = {name: [] for name in alternatives}
    repeat, gates, again_all, conds, labels, domains = [], [], [], [], [], []
    stochastic = False
    with quiet_probe(trainer):
        torch.manual_seed(seed)
        trainer.model.eval()
        for batch in test_batches(loader, max_batches):
            image, label = trainer.parse_batch_test(batch)
            sink = []
            head.listener = lambda name, output, cond, phase: sink.append((output.detach(), cond.detach()))
            base = trainer.model_inference(image)
            head.listener = None
            if not sink:
                raise RuntimeError(f"gate '{head.name}' was not called by the model's forward; the functional "
                                   "probes need the gate in the path from image to logits")
            output, cond = sink[0]
            again = head(cond)
            if torch.equal(again, output):
                repeat.append(metrics.per_example_change(base, base, label))  # the same gate: the same logits
            else:
                stochastic = True
                head.override = again  # the second call's output, already through GATE.TEST_MODE
                try:
                    repeat.append(metrics.per_example_change(base, trainer.model_inference(image), label))
                finally:
                    _reset(head)
            for name, configure in alternatives.items():
                configure(head)
                try:
                    other = trainer.model_inference(image)
                finally:
                    _reset(head)
                changes[name].append(metrics.per_example_change(base, other, label))
            gates.append(output.float().cpu())
            again_all.append(again.float().cpu())
            conds.append(cond.float().cpu())
            labels.append(label.cpu())
            if batch.get("domain") is not None:
                domains.append(torch.as_tensor(batch["domain"]).cpu())
    return {"changes": {name: metrics.concat_examples(parts) for name, parts in changes.items()},
            "repeat": metrics.concat_examples(repeat) if stochastic else None,
            "gate": torch.cat(gates) if gates else None, "gate_repeat": torch.cat(again_all) if gates else None,
            "cond": torch.cat(conds) if conds else None, "labels": torch.cat(labels) if labels else None,
            "domains": torch.cat(domains) if len(domains) == len(labels) and domains else None}


def gate_values(head):
    """A per-task gate's current values (K,), soft (before GATE.TEST_MODE), from one call in eval mode."""
    gate = head.gate
    was_training = gate.training
    gate.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            param = next(gate.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            cond = torch.zeros(1, int(getattr(gate, "cond_dim", 1) or 1), device=device)
            return gate(cond)[0].detach().float().cpu()
    finally:
        gate.train(was_training)


def _or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def task_gradient_probe(trainer, loader, heads, prompt_params, max_batches, seed=0):
    """The task loss's gradient apart from every other loss term's, on training batches.

    For each batch (train mode, as a training step, without the step): losses =
    trainer.compute_losses(model(image), label); "ce" is the task loss, every other term (the gate's
    auxiliary loss, sparsity, remedies' losses, a trainer's regularisers) is auxiliary. Per gate,
    per batch: rho_task = RMS(d ce / d gate params) / RMS(d ce / d prompt params); dL_dg_task_rms =
    RMS(d ce / d gate output); aux_share = ||d aux / d gate params|| / (||d ce / d gate params|| +
    ||d aux / d gate params||) (0 when no auxiliary term reaches the gate). Returns {gate name:
    {figure: list over batches}}.
    """
    out = {h.name: {"rho_task": [], "dL_dg_task_rms": [], "aux_share": [], "task_grad_rms": []} for h in heads}
    prompt_params = [p for p in prompt_params if p.requires_grad]
    with quiet_probe(trainer):
        torch.manual_seed(seed)  # the batches drawn (and any dropout) do not depend on when it runs
        trainer.model.train()
        for batch in test_batches(loader, max_batches):
            image, label = trainer.parse_batch_train(batch)
            outputs = {}
            for h in heads:
                h.listener = (lambda head: lambda name, output, cond, phase: outputs.setdefault(head.name, output))(h)
            with torch.enable_grad(), torch.autocast(device_type=trainer.device.type,
                                                     enabled=getattr(trainer, "prec", "fp32") == "amp"):
                losses = trainer.compute_losses(trainer.model(image), label)
            for h in heads:
                h.listener = None
            ce = losses.get("ce")
            if ce is None or not ce.requires_grad:
                break
            aux = [v for k, v in losses.items() if k != "ce" and v is not None and v.requires_grad]
            gate_params = {h.name: [p for p in h.parameters() if p.requires_grad] for h in heads}
            gate_outputs = {n: o for n, o in outputs.items() if o.requires_grad}
            inputs = prompt_params + [p for ps in gate_params.values() for p in ps] + list(gate_outputs.values())
            ce_grads = torch.autograd.grad(ce, inputs, retain_graph=bool(aux), allow_unused=True)
            aux_grads = torch.autograd.grad(sum(aux), inputs, allow_unused=True) if aux else [None] * len(inputs)
            where = {id(t): i for i, t in enumerate(inputs)}
            prompt_rms = (metrics.rms([_or_zeros(ce_grads[where[id(p)]], p) for p in prompt_params])
                          if prompt_params else None)
            for h in heads:
                params = gate_params[h.name]
                # A parameter the term does not reach gets None from autograd: its gradient is 0.
                task = [_or_zeros(ce_grads[where[id(p)]], p) for p in params]
                extra = [_or_zeros(aux_grads[where[id(p)]], p) for p in params]
                task_l2 = metrics.grad_stats(task)["l2"] or 0.0
                aux_l2 = metrics.grad_stats(extra)["l2"] or 0.0
                task_rms = metrics.rms(task) if params else None
                out[h.name]["task_grad_rms"].append(task_rms)
                out[h.name]["rho_task"].append(metrics.ratio(task_rms, prompt_rms) if params else None)
                out[h.name]["aux_share"].append(aux_l2 / (task_l2 + aux_l2) if task_l2 + aux_l2 > 0 else None)
                o = gate_outputs.get(h.name)
                out[h.name]["dL_dg_task_rms"].append(
                    metrics.rms([_or_zeros(ce_grads[where[id(o)]], o)]) if o is not None else None)
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
