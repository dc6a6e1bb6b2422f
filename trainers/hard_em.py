"""Hard-EM training of a gated choice between options (a hard mixture of prompt experts).

Failure mode targeted: **expert coupling**. Under a soft mixture (CoOpGated's `pool` target),
every prompt receives every image's gradient, weighted by the gate; from a near-uniform start all
prompts are pulled the same way and stay alike, and the gate, whose gradient is the difference
between the prompts' fits, has nothing to choose between. Hard-EM decouples the prompts: each
image trains only the prompt chosen for it, and the gate learns to predict that choice.

For a batch of images x with labels y, K options (prompts) and the gate (router) pi(x):

    E-step (no gradient):  k*(x, y) = argmax_k [ log p_k(y | x) + log pi_k(x) ]
        p_k(y | x) = softmax_c(logits_k(x))_y, the class posterior under option k alone;
        without the prior (PRIOR False) the argmax is over log p_k(y | x) only (winner takes all).
    M-step:  ce     = mean_x -log p_{k*}(y | x)      each image's gradient reaches its option only
             router = w * mean_x -log pi_{k*}(x)     the gate learns the choice from x alone

At test time the labels are unknown, so the gate alone decides (GATE.TEST_MODE hard: its argmax).
Sources: Jacobs, Jordan, Nowlan and Hinton 1991, "Adaptive mixtures of local experts" (the
mixture and its gating network); the hard (Viterbi) variant of EM; Guzman-Rivera, Batra and Kohli
2012, "Multiple choice learning" (each example's loss on its best predictor only).
"""
import torch
import torch.nn.functional as F

ROUTER_ACTIVATIONS = ("softmax",)


def option_log_likelihood(option_logits, labels):
    """(B, K) log p_k(y_b | x_b) from (B, K, C) per-option class logits and (B,) labels."""
    if option_logits.dim() != 3:
        raise ValueError(f"option_logits must be (B, K, C), got shape {tuple(option_logits.shape)}")
    if labels.shape != option_logits.shape[:1]:
        raise ValueError(f"labels must be (B,) = ({option_logits.shape[0]},), got {tuple(labels.shape)}")
    log_p = F.log_softmax(option_logits, dim=-1)
    return log_p.gather(-1, labels.view(-1, 1, 1).expand(-1, option_logits.shape[1], 1)).squeeze(-1)


@torch.no_grad()
def hard_em_assignment(option_logits, labels, log_prior=None):
    """(B,) LongTensor k*(x, y) = argmax_k [log p_k(y | x) + log pi_k(x)] (E-step above);
    `log_prior` (B, K) log pi(x), or None for argmax_k log p_k(y | x). Ties go to the lower index."""
    score = option_log_likelihood(option_logits.detach(), labels)
    if log_prior is not None:
        if log_prior.shape != score.shape:
            raise ValueError(f"log_prior must be (B, K) = {tuple(score.shape)}, got {tuple(log_prior.shape)}")
        score = score + log_prior.detach()
    return score.argmax(dim=-1)


def hard_em_losses(option_logits, labels, router_log_probs, use_prior=True, router_weight=1.0):
    """{"ce": mean -log p_{k*}(y | x), "router": w * mean -log pi_{k*}(x)} and the assignment k*.

    option_logits: (B, K, C) class logits under each option; labels: (B,); router_log_probs:
    (B, K) log pi(x) of the gate (log_softmax of its logits). Returns (losses, assignment).
    """
    assignment = hard_em_assignment(option_logits, labels, router_log_probs if use_prior else None)
    log_likelihood = option_log_likelihood(option_logits, labels)
    rows = torch.arange(labels.shape[0], device=labels.device)
    losses = {"ce": -log_likelihood[rows, assignment].mean(),
              "router": router_weight * F.nll_loss(router_log_probs, assignment)}
    return losses, assignment


def check_router(gate, gate_name):
    """Raise ValueError unless `gate` is a softmax-type gate (its logits give log pi(x))."""
    activation = getattr(gate, "activation", None)
    if activation not in ROUTER_ACTIVATIONS:
        raise ValueError(f"GATE.HARD_EM trains the gate as a router from its softmax logits, but gate '{gate_name}' "
                         f"has activation {activation!r}; use GATE.NAME softmax, gumbel or keyquery (soft)")


def declare_router_trained_by_its_own_loss(gate):
    """Under hard-EM the task loss reaches only the chosen option (the choice is an argmax), and
    the gate learns from the router loss alone: say so through the gate contract's
    `no_task_grad_params` (gates/contract.py), so that the diagnostics do not call its zero
    task-loss gradient an imbalance."""
    gate.no_task_grad_params = tuple(name for name, p in gate.named_parameters() if p.requires_grad)


def router_log_probs(gate, gate_name):
    """(B, K) log pi(x) of the gate's last forward: log_softmax of the logits a softmax-type gate
    keeps (`last_logits`, see gates/contract.py). Raises ValueError for any other gate."""
    check_router(gate, gate_name)
    logits = getattr(gate, "last_logits", None)
    if logits is None:
        raise ValueError(f"gate '{gate_name}' kept no `last_logits` in its last forward; GATE.HARD_EM needs them")
    return F.log_softmax(logits, dim=-1)
